"""Graph rewrites that let the engine run a model faster without changing what it computes.

:func:`fuse` applies both rewrites below.

:func:`fuse_binary_stacks` replaces every run of two or more identical binary units (3x3
convs with an identity shortcut, no channel branch, the same width, a +1/-1 padding and
either no spatial re-scaling or the ``box3(mean_c |x|)`` one), each feeding only the next,
by one :class:`BinaryStack` op: :func:`ebsr_basicsr.kernels.binary_stack` runs the whole
run row by row with its maps in cache. A following ``add`` of the run's output and another
value (the body's global residual) is folded into it. The result equals the unit-by-unit
execution bit for bit.

:func:`fuse_fp_convs` runs the 3x3 FP convs as direct convolutions
(:mod:`ebsr_basicsr.kernels.direct`: register-blocked FMA tiles over a ring of input rows, no
im2col matrix and no BLAS, whose spinning threads took the core the next kernel needed), and
folds the last upsampler conv's pixel shuffle and the ``denormalize`` op after it (range, and
the bilinear image skip or the mean) into the conv's epilogue. Same arithmetic up to the
order of the float sums in the convolution.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .. import kernels as K


def _stackable(op) -> bool:
    """A binary unit the fused stack can run."""
    from .engine import BinaryUnit

    sp = getattr(op, "spatial", None)
    return (isinstance(op, BinaryUnit) and op.kind == "conv" and op.k == 3 and op.cin == op.cout
            and op.shortcut == "identity" and op.shuffle == 1 and not op.fp and op.pad_value in (1, -1)
            and op.channel is None and (sp is None or (sp["mode"] == "absmean" and sp["kernel"] == 3)))


class BinaryStack:
    """Several binary units (and optionally the residual add after them) as one op."""

    pool = None

    def __init__(self, units, with_residual: bool):
        c = units[0].cin
        self.pad_value = units[0].pad_value
        self.w_bits = np.ascontiguousarray(np.stack([u.w_bits for u in units]))
        self.mul = np.ascontiguousarray(np.stack([u.mul for u in units]), np.float32)
        self.bias = np.ascontiguousarray(np.stack([u.bias for u in units]), np.float32)
        self.thr = np.ascontiguousarray(np.stack([np.zeros(c, np.float32) if u.threshold is None else u.threshold
                                                  for u in units]), np.float32)
        self.slope = np.array([1.0 if u.neg_slope is None else u.neg_slope for u in units], np.float32)
        self.spatial = np.array([u.spatial is not None for u in units], bool)
        self.with_residual = with_residual
        self.n_units = len(units)
        self.radius = len(units)

    def __call__(self, x, residual=None):
        out = None if self.pool is None else self.pool.get(x.shape)
        return K.binary_stack(x, self.w_bits, self.mul, self.bias, self.thr, self.slope, self.spatial,
                              self.pad_value, residual, out=out)


def _same_shape(a, b) -> bool:
    return (a.cin == b.cin and a.pad_value == b.pad_value and a.w_bits.shape == b.w_bits.shape
            and (a.threshold is None) == (b.threshold is None))


def fuse_binary_stacks(ops: list, output: str) -> list:
    """``ops`` is the engine's list of ``(op, input names, output name)``; returns a new list
    with every fusable run of binary units replaced by a :class:`BinaryStack`."""
    readers = Counter(name for _, inputs, _ in ops for name in inputs)
    readers[output] += 1
    fused, i = [], 0
    while i < len(ops):
        op, inputs, out = ops[i]
        run = [ops[i]] if _stackable(op) else []
        j = i + 1
        while run and j < len(ops):
            nxt, nxt_in, _ = ops[j]
            prev_out = run[-1][2]
            if not (_stackable(nxt) and tuple(nxt_in) == (prev_out,) and readers[prev_out] == 1
                    and _same_shape(run[0][0], nxt)):
                break
            run.append(ops[j])
            j += 1
        if len(run) < 2:
            fused.append(ops[i])
            i += 1
            continue
        last_out = run[-1][2]
        residual = None
        if j < len(ops):
            nxt, nxt_in, nxt_out = ops[j]
            if type(nxt).__name__ == "Add" and len(nxt_in) == 2 and last_out in nxt_in and readers[last_out] == 1:
                other = nxt_in[1] if nxt_in[0] == last_out else nxt_in[0]
                if other != last_out:
                    residual, last_out = other, nxt_out
                    j += 1
        stack = BinaryStack([u for u, _, _ in run], residual is not None)
        fused.append((stack, [*inputs, *([residual] if residual else [])], last_out))
        i = j
    return fused


# --------------------------------------------------------------------------- FP convs
def _direct_conv(op) -> bool:
    """A 3x3 stride-1 conv with "same" padding (the FP convs of every network here)."""
    from .engine import Conv2d

    return isinstance(op, Conv2d) and op.stride == 1 and op.padding == 1 and op.w.shape[2:] == (3, 3)


class DirectConv:
    """A :class:`~.engine.Conv2d` (with its residual or its pixel shuffle) run by
    :func:`kernels.conv3x3` instead of im2col and BLAS."""

    pool = None
    radius = 1

    def __init__(self, conv):
        self.w, self.b, self.s = conv.w, conv.b, conv.shuffle

    def __call__(self, x, residual=None):
        o, s = self.w.shape[0], self.s
        out = None if self.pool is None else self.pool.get((x.shape[0] * s, x.shape[1] * s, o // (s * s)))
        return K.conv3x3(x, self.w, self.b, residual, s, out=out)


class ConvToImage:
    """An upsampler conv with its pixel shuffle and the following ``denormalize``."""

    pool = None
    radius = 1  # the conv's, and the bilinear skip's

    def __init__(self, conv, denorm):
        self.w, self.b, self.s = conv.w, conv.b, conv.shuffle
        self.range, self.skip, self.mean = denorm.range, denorm.skip, denorm.mean

    def __call__(self, x, image=None):
        return K.conv3x3_to_image(x, self.w, self.b, self.s, self.range, image if self.skip else None, self.mean)


def fuse_fp_convs(ops: list, output: str) -> list:
    from .engine import Denormalize

    readers = Counter(name for _, inputs, _ in ops for name in inputs)
    readers[output] += 1
    fused, i = [], 0
    while i < len(ops):
        op, inputs, out = ops[i]
        if _direct_conv(op) and (len(inputs) == 1 or op.shuffle == 1):
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            if (op.shuffle > 1 and nxt is not None and isinstance(nxt[0], Denormalize) and nxt[1][0] == out
                    and readers[out] == 1 and (nxt[0].skip in (None, "bilinear"))
                    and (not nxt[0].skip or nxt[0].scale == op.shuffle)):
                fused.append((ConvToImage(op, nxt[0]), [*inputs, *nxt[1][1:]], nxt[2]))
                i += 2
                continue
            fused.append((DirectConv(op), inputs, out))
            i += 1
            continue
        fused.append(ops[i])
        i += 1
    return fused


def fuse(ops: list, output: str) -> list:
    """All the rewrites of this module."""
    return fuse_fp_convs(fuse_binary_stacks(ops, output), output)

"""The epilogue shared by the binary and the float convolutions.

For each output pixel ``(ho, wo)`` whose raw values sit in a row ``m`` of a float32 buffer
``src`` (the ±1 dot products of a binary conv, already corrected for zero padding, or a
GEMM row of a float conv), in this order::

    y = src[m, o] * mul[o] + bias[o]                 # affine part
    y *= spatial_scale[ho, wo];  y *= channel_scale[o]
    y += residual;  y = where(y >= 0, y, slope * y)
    store (PixelShuffle'd if s > 1);  bits of y - next_shift < 0 (optional repack)

Absent options are passed as neutral values (scale 1, channel scale ones, slope 1), which
leave every float bit-identical, so one compiled kernel serves all combinations.

Residual modes: 0 none; 1 laid out like the conv output before the shuffle, ``(Ho, Wo, O)``;
2 laid out like the returned map, ``(Ho*s, Wo*s, O/s^2)``. Both add the same element to the
same value (mode 2 is indexed after the shuffle).

Performance notes: :func:`epilogue_rows_nb` is called once per run of pixels (an output row
or a chunk), never per pixel, because every call of a jitted function that takes arrays
costs two atomic reference-count updates per array. Within it the values go from ``src``
to ``out`` in one pass per 64 channels, and the packed bits come from the same registers
(:mod:`._vector`): a second pass re-reading just-stored values with wider loads would stall
on failed store-to-load forwarding.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit

from ._vector import make_epilogue64, make_store_fence
from .bitpack import pack_signs_ref
from .ops import pixel_shuffle_ref, pixel_unshuffle_ref

RES_NONE, RES_PRE, RES_POST = 0, 1, 2
_EMPTY3 = np.empty((0, 0, 0), dtype=np.float32)
_EMPTY2 = np.empty((0, 0), dtype=np.float32)
_EMPTY_BITS = np.empty((0, 0, 0), dtype=np.uint64)
_epilogue64 = make_epilogue64()
_store_fence = make_store_fence()
#: Outputs at least this large are written with streaming stores (bypassing the caches they
#: would not fit in anyway), when 64-byte aligned: measured 13% faster for a 64->64 conv at
#: 256x256 (16 MB of output).
STREAM_BYTES = 8 << 20


@njit(cache=True, fastmath=False, inline="always")
def _direct_rows_nb(src, m0, n, pix0, Wo, mul, bias, ss, has_ss, cs, res, use_res, slope, s, out, ns, pack, bits,
                    stream):
    """Fused epilogue of ``n`` pixels whose channels are in sub-pixel-major order (see
    :func:`shuffle_grouping`; the identity when ``s == 1``), 64 channels per explicit-vector
    step. The residual, if any, has the layout of ``out``."""
    oc = out.shape[2]
    w_out = out.shape[1]
    stride = src.shape[1]
    n_words = (oc + 63) // 64
    for i in range(n):
        q = pix0 + i
        ho = q // Wo
        wo = q - ho * Wo
        sc = ss[ho, wo] if has_ss else np.float32(1)
        row = (m0 + i) * stride
        for a in range(s):
            oy = ho * s + a
            for b in range(s):
                ox = wo * s + b
                group = (a * s + b) * oc
                base = (oy * w_out + ox) * oc
                for cw in range(n_words):
                    cb = 64 * cw
                    word = _epilogue64(src, row + group + cb, mul, bias, group + cb, min(64, oc - cb), sc, cs,
                                       res, base + cb, use_res, slope, out, base + cb, stream, ns, cb)
                    if pack:
                        bits[oy, ox, cw] = word


@njit(cache=True, fastmath=False, inline="always")
def _shuffled_rows_nb(src, m0, n, pix0, Wo, mul, bias, y, ss, has_ss, cs, res, res_mode, slope, s, out, ns,
                      pack, bits):
    """General epilogue (``s > 1`` or residual mode 2) of ``n`` pixels: affine, scales (and
    the pre-shuffle residual and activation) into ``y``, then a scatter into ``out``
    (adding the post-shuffle residual and applying the activation there if needed)."""
    O = y.shape[0]
    oc = out.shape[2]
    us = np.uint64(s)
    one = np.float32(1)
    slope1 = slope if res_mode == 1 else one
    slope2 = slope if res_mode != 1 else one
    for i in range(n):
        m = m0 + i
        q = pix0 + i
        ho = q // Wo
        wo = q - ho * Wo
        sc = ss[ho, wo] if has_ss else one
        if res_mode == 1:
            for o in range(O):
                v = (src[m, o] * mul[o] + bias[o]) * sc * cs[o] + res[ho, wo, o]
                y[o] = v if v >= 0 else v * slope1
        else:
            for o in range(O):
                y[o] = (src[m, o] * mul[o] + bias[o]) * sc * cs[o]
        for a in range(s):
            oy = ho * s + a
            for b in range(s):
                ox = wo * s + b
                lane = np.uint64(a) * us + np.uint64(b)
                for cw in range((oc + 63) // 64):
                    cb = np.uint64(64 * cw)
                    ce = np.uint64(min(oc, 64 * cw + 64))
                    word = np.uint64(0)
                    for c in range(cb, ce):
                        v = y[c * us * us + lane]
                        if res_mode == 2:
                            v = v + res[oy, ox, c]
                        v = v if v >= 0 else v * slope2
                        out[oy, ox, c] = v
                        if pack:
                            word |= np.uint64(v - ns[c] < 0) << (c - cb)
                    if pack:
                        bits[oy, ox, cw] = word


#: Everything the epilogue applies after ``mul``/``bias``, as :func:`prepare_epilogue` makes it
#: (one argument through the jitted kernels instead of twelve): the spatial scale map and
#: whether there is one, the channel scale, the residual and its layout (``RES_*``), the
#: LeakyReLU slope, the PixelShuffle factor, the output map, the next layer's shift and
#: whether to repack into ``bits``, and whether to use streaming stores.
Epilogue = namedtuple("Epilogue", "ss has_ss cs res res_mode slope s out ns has_pack bits stream")


@njit(cache=True, fastmath=False)
def epilogue_rows_nb(src, m0, n, pix0, Wo, mul, bias, y, ep):
    """Apply the whole epilogue ``ep`` (an :data:`Epilogue`) to the ``n`` output pixels
    ``pix0 .. pix0+n-1`` (raster order, ``Wo`` pixels per output row) whose raw values are
    rows ``m0 .. m0+n-1`` of ``src``; ``y`` is a float32 ``(O,)`` scratch row for the general
    path.

    Channel order of ``src`` (and of ``mul``, ``bias``, ``cs``): if ``s > 1`` and the
    residual is not laid out before the shuffle (``res_mode != 1``), sub-pixel-major as
    produced by :func:`shuffle_grouping`, so each output sub-pixel reads contiguous
    channels; otherwise PyTorch's order ``c*s*s + i*s + j``."""
    ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream = ep
    if s == 1 or res_mode != 1:
        _direct_rows_nb(src, m0, n, pix0, Wo, mul, bias, ss, has_ss, cs, res, res_mode != 0, slope, s, out, ns,
                        has_pack, bits, stream)
        if stream:
            _store_fence()
    else:
        _shuffled_rows_nb(src, m0, n, pix0, Wo, mul, bias, y, ss, has_ss, cs, res, res_mode, slope, s, out, ns,
                          has_pack, bits)


def shuffle_grouping(O, s):
    """Permutation ``perm`` of the ``O`` conv output channels into sub-pixel-major order:
    new channel ``(i*s + j)*(O/s^2) + c`` is PyTorch channel ``c*s*s + i*s + j`` (so
    ``w[..., perm]`` reorders a weight's output axis). ``None`` when ``s == 1``."""
    if s == 1:
        return None
    oc = O // (s * s)
    sub, c = np.divmod(np.arange(O), oc)
    return c * s * s + sub


def correlate_ref(padded, w, stride=1):
    """Reference correlation (PyTorch conv2d without padding) of an already padded
    ``(Hp, Wp, C)`` map with ``(O, C, kh, kw)`` weights, summed in float64 -> ``(Ho, Wo, O)``."""
    O, C, kh, kw = w.shape
    padded = np.asarray(padded, np.float64)
    Ho = (padded.shape[0] - kh) // stride + 1
    Wo = (padded.shape[1] - kw) // stride + 1
    acc = np.zeros((Ho, Wo, O), dtype=np.float64)
    for ky in range(kh):
        for kx in range(kw):
            window = padded[ky:ky + stride * (Ho - 1) + 1:stride, kx:kx + stride * (Wo - 1) + 1:stride, :]
            acc += window @ np.asarray(w[:, :, ky, kx], np.float64).T
    return acc


def epilogue_ref(y, spatial_scale=None, channel_scale=None, residual=None, neg_slope=None,
                 out_shuffle=1, next_shift=None):
    """Reference epilogue on the float32 affine output ``y`` ``(Ho, Wo, O)``; returns the
    output map, or ``(map, bits)`` if ``next_shift`` is given."""
    y = y.astype(np.float32)
    s = out_shuffle
    if spatial_scale is not None:
        y = y * spatial_scale[:, :, None]
    if channel_scale is not None:
        y = y * channel_scale
    if residual is not None:
        if residual.shape != y.shape:
            residual = pixel_unshuffle_ref(residual, s)
        y = y + residual
    if neg_slope is not None:
        y = np.where(y >= 0, y, np.float32(neg_slope) * y)
    if s > 1:
        y = pixel_shuffle_ref(y, s)
    y = y.astype(np.float32)
    if next_shift is not None:
        return y, pack_signs_ref(y, next_shift)
    return y


def empty_aligned(shape, dtype=np.float32):
    """``np.empty(shape, dtype)`` whose data starts on a 64-byte boundary. Large conv
    outputs in such buffers are written with streaming (non-temporal) stores."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape)
    raw = np.empty(n * dtype.itemsize + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def _output_buffer(buf, shape, dtype, name, aligned=False):
    """``buf`` if it is a usable preallocated output, else a new (64-byte aligned if
    ``aligned``) array; ValueError if a given buffer has the wrong shape, dtype or layout."""
    if buf is None:
        big = math.prod(shape) * np.dtype(dtype).itemsize >= STREAM_BYTES
        return empty_aligned(shape, dtype) if aligned and big else np.empty(shape, dtype=dtype)
    if not isinstance(buf, np.ndarray) or buf.shape != shape or buf.dtype != dtype \
            or not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError("%s must be a writeable C-contiguous %s array of shape %s, got %s %s"
                         % (name, np.dtype(dtype).name, shape, getattr(buf, "dtype", type(buf)),
                            getattr(buf, "shape", "")))
    return buf


def prepare_epilogue(Ho, Wo, O, spatial_scale, channel_scale, residual, neg_slope,
                     out_shuffle, next_shift, check_map, out=None, bits_out=None):
    """Validate the epilogue options of a conv with output ``(Ho, Wo, O)`` (before the
    shuffle) and turn them into the :data:`Epilogue` of :func:`epilogue_rows_nb`; also return the output
    arrays (``out`` / ``bits_out`` if given, else new ones) and the output-channel
    permutation (or None) that the caller must apply to its weights, ``mul`` and ``bias``
    (the channel scale in it is already permuted). Raises ValueError on a bad shape
    or dtype."""
    s = int(out_shuffle)
    if s != out_shuffle or s < 1:
        raise ValueError("out_shuffle must be a positive integer, got %r" % (out_shuffle,))
    if O % (s * s):
        raise ValueError("out_shuffle=%d needs output channels divisible by %d, got %d" % (s, s * s, O))
    oc = O // (s * s)
    if spatial_scale is None:
        ss, has_ss = _EMPTY2, False
    else:
        ss = np.asarray(spatial_scale)
        if ss.dtype != np.float32 or ss.shape != (Ho, Wo):
            raise ValueError("spatial_scale must be float32 (%d, %d), got %s %s" % (Ho, Wo, ss.dtype, ss.shape))
        ss, has_ss = np.ascontiguousarray(ss), True
    if channel_scale is None:
        cs = np.ones(O, dtype=np.float32)
    else:
        cs = np.asarray(channel_scale)
        if cs.shape != (O,) or not np.issubdtype(cs.dtype, np.floating):
            raise ValueError("channel_scale must be float (%d,), got %s %s" % (O, cs.dtype, cs.shape))
        cs = np.ascontiguousarray(cs, dtype=np.float32)
    if residual is None:
        res, res_mode = _EMPTY3, RES_NONE
    else:
        res = check_map(residual, "residual")
        if res.shape == (Ho, Wo, O):
            res_mode = RES_PRE
        elif res.shape == (Ho * s, Wo * s, oc):
            res_mode = RES_POST
        else:
            raise ValueError("residual must have shape %s (before the shuffle) or %s (after), got %s"
                             % ((Ho, Wo, O), (Ho * s, Wo * s, oc), res.shape))
    slope = np.float32(1) if neg_slope is None else np.float32(neg_slope)
    out = _output_buffer(out, (Ho * s, Wo * s, oc), np.float32, "out", aligned=True)
    if next_shift is None:
        ns, has_pack, bits = np.zeros(oc, dtype=np.float32), False, _EMPTY_BITS
    else:
        ns = np.asarray(next_shift)
        if ns.shape != (oc,) or not np.issubdtype(ns.dtype, np.floating):
            raise ValueError("next_shift must be float (%d,) (channels of the output map), got %s %s"
                             % (oc, ns.dtype, ns.shape))
        ns, has_pack = np.ascontiguousarray(ns, dtype=np.float32), True
        bits = _output_buffer(bits_out, (Ho * s, Wo * s, (oc + 63) // 64), np.uint64, "bits_out")
    perm = shuffle_grouping(O, s) if res_mode != RES_PRE else None
    if perm is not None:
        cs = np.ascontiguousarray(cs[perm])
    stream = out.nbytes >= STREAM_BYTES
    ep = Epilogue(ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream)
    return ep, out, (bits if has_pack else None), perm

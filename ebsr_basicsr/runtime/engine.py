"""Executes an exported model with the bitwise kernels: NumPy + Numba only.

A model is a list of ops (see ``ebsr_basicsr.training.export``) over named NHWC float32 maps of one
image, declared in :mod:`.ops_schema`: the engine builds nothing that
:func:`~.ops_schema.check_model` has not accepted, so each op receives every attribute its
schema declares (``None`` when absent) and tensors of the declared dtypes and shapes. Each op
kind is a small class that prepares its arrays once at load (``__init__(attrs, tensors)``)
and runs in ``__call__``. Binary units pack their input to bits (``x - shift < 0``), run
the XNOR/popcount convolution with every per-channel factor folded into ``mul``/``bias``,
and apply their input-dependent re-scalings, shortcut and activation in the kernel's
epilogue.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import kernels as K
from .format import ModelFileError, load_model
from .fusion import fuse as fuse_graph
from .ops_schema import check_model
from .schema import SchemaError
from .swin import gelu, layer_norm, shifted_window_mask, window_partition, window_reverse

_OPS: dict = {}


def _op(name):
    def register(cls):
        _OPS[name] = cls
        return cls
    return register


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


class BufferPool:
    """Reuses the large output maps of a run: a fresh 16 MB array costs page faults that
    take as long as the binary conv writing it. The engine returns a map here when its last
    reader has run; ops ask for one of the shape they need."""

    def __init__(self):
        self._free: dict = {}

    def get(self, shape, dtype=np.float32) -> np.ndarray:
        free = self._free.get((tuple(shape), np.dtype(dtype)))
        return free.pop() if free else K.empty_aligned(shape, dtype)

    def put(self, array: np.ndarray) -> None:
        if array.flags.c_contiguous and array.flags.writeable:
            self._free.setdefault((array.shape, array.dtype), []).append(array)

    def clear(self) -> None:
        self._free.clear()


GLOBAL = None  # the receptive radius of an op whose output depends on the whole image


class _Op:
    pool: BufferPool | None = None
    #: how many input pixels around an output pixel it reads (0: pixel-wise; GLOBAL: all)
    radius: int | None = 0

    def __init__(self, attrs: dict, tensors: dict):
        """Prepare the op's arrays from its checked ``attrs`` and ``tensors`` (here: none)."""

    def _out(self, shape):
        """An output buffer from the engine's pool (``None``: let the kernel allocate)."""
        return None if self.pool is None else self.pool.get(shape)

    @staticmethod
    def _t(tensors, name):
        """The tensor ``name`` (C-contiguous), or None for an absent optional tensor."""
        return None if name is None else np.ascontiguousarray(tensors[name])


@_op("normalize")
class Normalize(_Op):
    def __init__(self, attrs, tensors):
        self.mean = np.asarray(attrs["mean"], np.float32)
        self.range = np.float32(attrs["range"])

    def __call__(self, x):
        return (x - self.mean) * self.range


@_op("denormalize")
class Denormalize(_Op):
    """``x / range + mean``, or ``x / range + bilinear(input)`` with an image skip."""

    def __init__(self, attrs, tensors):
        self.range = np.float32(attrs["range"])
        self.skip, self.scale = attrs["skip"], attrs["scale"]
        self.mean = None if self.skip else np.asarray(attrs["mean"], np.float32)

    def __call__(self, x, image=None):
        y = x / self.range
        if self.skip:
            return y + K.resize_bilinear(np.ascontiguousarray(image), self.scale)
        return y + self.mean


@_op("add")
class Add(_Op):
    def __call__(self, a, b):
        return np.add(a, b, out=self._out(a.shape))


@_op("conv2d")
class Conv2d(_Op):
    def __init__(self, attrs, tensors):
        self.w = self._t(tensors, attrs["weight"])
        self.b = self._t(tensors, attrs["bias"])
        self.w_matrix = K.conv_weight_matrix(self.w)
        self.stride, self.padding, self.shuffle = attrs["stride"], attrs["padding"], attrs["shuffle"]
        self.radius = self.w.shape[2] // 2 if self.stride == 1 else GLOBAL

    def __call__(self, x, residual=None):
        o, _, k, _ = self.w.shape
        ho = (x.shape[0] + 2 * self.padding - k) // self.stride + 1
        wo = (x.shape[1] + 2 * self.padding - k) // self.stride + 1
        s = self.shuffle
        return K.conv2d(x, self.w, self.b, stride=self.stride, padding=self.padding, out_shuffle=s,
                        residual=residual, w_matrix=self.w_matrix, out=self._out((ho * s, wo * s, o // (s * s))))


@_op("binary_unit")
class BinaryUnit(_Op):
    """``y = Bin(x - shift) * mul + bias``, ``* spatial(x) * gamma(x)``, ``+ shortcut``,
    LeakyReLU, PixelShuffle — on a map (H, W, C) (``kind='conv'``) or on token rows
    (A, L, C) (``kind='linear'``, 1×1, channel statistics per row A)."""

    def __init__(self, attrs, tensors):
        t = lambda name: self._t(tensors, name)  # noqa: E731
        self.kind, self.k = attrs["kind"], attrs["kernel"]
        self.cin, self.cout = attrs["in_channels"], attrs["out_channels"]
        self.w_bits, self.mul, self.bias = t(attrs["w_bits"]), t(attrs["mul"]), t(attrs["bias"])
        self.pad_value = int(attrs["pad_value"])
        self.neg_slope, self.shuffle, self.shortcut = attrs["neg_slope"], attrs["shuffle"], attrs["shortcut"]
        self.threshold = t(attrs["threshold"])
        self.fp = attrs["fp_activations"]
        if self.fp:  # binary weights, FP activations: an exact FP convolution
            w = K.unpack_weights(self.w_bits, self.cin, self.k, self.k) * self.mul[:, None, None, None]
            self.fp_w, self.fp_wm = w.astype(np.float32), K.conv_weight_matrix(w.astype(np.float32))
        if self.kind == "conv" and self.pad_value == 0 and not self.fp:
            self.tap_sums = K.weight_tap_sums(self.w_bits, self.cin)
        else:
            self.tap_sums = None
        sp = attrs["spatial"]
        self.spatial = None if sp is None else dict(sp, weight=t(sp.get("weight")), bias=t(sp.get("bias")))
        ch = attrs["channel"]
        if ch is not None:
            tensor_keys = ("weight", "bias") if ch["mode"] == "affine" else ("fc1_w", "fc1_b", "fc2_w", "fc2_b")
            ch = dict(ch, **{k: t(ch[k]) for k in tensor_keys})
            if ch["mode"] == "affine":
                ch["source"] = np.arange(self.cout) % self.cin
        self.channel = ch
        if self.kind != "conv" or ch is not None:  # token rows, or factors pooled over the image
            self.radius = GLOBAL if ch is not None else 0
        else:
            box = sp["kernel"] // 2 if sp is not None and sp["mode"] == "absmean" else 0
            self.radius = max(self.k // 2, box)

    # -- input-dependent factors ----------------------------------------------------
    def _factors(self, x):
        """(beta (A, Cin) or None, gamma (A, Cout) or None, spatial map or None).

        On a map (``kind='conv'``) one pass of :func:`map_stats` gives both the per-pixel
        statistic and the channel means; token rows (``kind='linear'``) pool per row."""
        sp, ch = self.spatial, self.channel
        if sp is None and ch is None:
            return None, None, None
        if self.kind == "conv":
            pixel, pooled = K.map_stats(x, sp["weight"] if sp is not None and sp["mode"] == "conv" else None)
            pooled = pooled[None]
        else:
            pooled = x.mean(axis=1, dtype=np.float64).astype(np.float32)
            pixel = None
            if sp is not None:
                pixel = np.abs(x).mean(axis=-1).astype(np.float32) if sp["mode"] == "absmean" else x @ sp["weight"]
        spatial = None
        if sp is not None:
            if sp["mode"] == "conv":
                spatial = _sigmoid(pixel + sp["bias"][0])
            elif self.kind == "conv":  # box filter of mean_c|x| (pixel >= 0, so |pixel| = pixel)
                spatial = K.box_filter_mean_abs(pixel[:, :, None], sp["kernel"])
            else:
                spatial = pixel
        beta = gamma = None
        if ch is not None:
            if ch["mode"] == "affine":
                gamma = _sigmoid(ch["weight"] * pooled[:, ch["source"]] + ch["bias"])
            else:
                h = np.maximum(pooled @ ch["fc1_w"].T + ch["fc1_b"], 0)
                out = h @ ch["fc2_w"].T + ch["fc2_b"]
                beta, gamma = (out[:, self.cout:] if ch["shift"] else None), _sigmoid(out[:, :self.cout])
        return beta, gamma, spatial

    # -- the unit -------------------------------------------------------------------
    def __call__(self, x):
        beta, gamma, spatial = self._factors(x)
        per_row = gamma is not None and gamma.shape[0] > 1
        residual = None
        if self.shortcut == "identity":
            residual = x
        elif self.shortcut == "nearest":
            residual = K.resize_nearest(x, self.shuffle)
        if self.fp:
            xin = x if beta is None else x + beta[:, None, :]
            y = K.conv2d(np.ascontiguousarray(xin, np.float32), self.fp_w, self.bias, w_matrix=self.fp_wm)
            return self._finish(y, spatial, gamma, residual, per_row)
        shift = self.threshold
        if beta is not None:
            shift = -beta if shift is None else shift - beta
        if shift is not None and shift.ndim == 2 and shift.shape[0] > 1:  # one shift per row
            bits = np.concatenate([K.pack_signs(x[i:i + 1], np.ascontiguousarray(shift[i]))
                                   for i in range(x.shape[0])], axis=0)
        else:
            bits = K.pack_signs(x, None if shift is None else np.ascontiguousarray(shift.reshape(-1)))
        if per_row:  # per-row channel factors: apply the epilogue here
            y = K.binary_conv2d(bits, self.w_bits, self.cin, self.k, 1, self.pad_value, self.mul, self.bias,
                                spatial_scale=spatial)
            return self._finish(y, None, gamma, residual, True)
        s = self.shuffle
        out = self._out((x.shape[0] * s, x.shape[1] * s, self.cout // (s * s)))
        return K.binary_conv2d(bits, self.w_bits, self.cin, self.k, 1, self.pad_value, self.mul, self.bias,
                               spatial_scale=spatial, channel_scale=None if gamma is None else gamma[0],
                               residual=residual, neg_slope=self.neg_slope, out_shuffle=s,
                               tap_sums=self.tap_sums, out=out)

    def _finish(self, y, spatial, gamma, residual, per_row):
        """The epilogue in NumPy, for the paths the kernel's epilogue does not cover."""
        if spatial is not None:
            y = y * spatial[..., None]
        if gamma is not None:
            y = y * (gamma[:, None, :] if per_row else gamma[0])
        if self.shuffle > 1:
            y = K.pixel_shuffle(np.ascontiguousarray(y, np.float32), self.shuffle)
        if residual is not None:
            y = y + residual
        if self.neg_slope is not None:
            y = np.where(y >= 0, y, np.float32(self.neg_slope) * y)
        return np.ascontiguousarray(y, np.float32)


@_op("layer_norm")
class LayerNorm(_Op):
    def __init__(self, attrs, tensors):
        self.w, self.b = self._t(tensors, attrs["weight"]), self._t(tensors, attrs["bias"])
        self.eps = np.float32(attrs["eps"])

    def __call__(self, x):
        return layer_norm(x, self.w, self.b, self.eps)


@_op("swin_block")
class SwinBlock(_Op):
    radius = GLOBAL  # windows, shifted windows and padding to whole windows
    def __init__(self, attrs, tensors):
        t = lambda name: self._t(tensors, name)  # noqa: E731
        self.heads, self.ws, self.shift, self.scale = attrs["heads"], attrs["window"], attrs["shift"], attrs["scale"]
        self.rel = t(attrs["rel_bias"])
        self.n1 = (t(attrs["norm1_w"]), t(attrs["norm1_b"]), np.float32(attrs["norm1_eps"]))
        self.n2 = (t(attrs["norm2_w"]), t(attrs["norm2_b"]), np.float32(attrs["norm2_eps"]))
        self.qkv, self.proj, self.fc1, self.fc2 = (BinaryUnit(attrs[k], tensors) for k in ("qkv", "proj", "fc1", "fc2"))
        self._masks = {}

    def __call__(self, x):
        h, w, c = x.shape
        ws, shift, heads = self.ws, self.shift, self.heads
        y = layer_norm(x, *self.n1)
        if shift:
            y = np.roll(y, (-shift, -shift), (0, 1))
        win = np.ascontiguousarray(window_partition(y, ws))
        nw, n, _ = win.shape
        qkv = self.qkv(win).reshape(nw, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * np.float32(self.scale), qkv[1], qkv[2]
        attn = q @ k.transpose(0, 1, 3, 2) + self.rel[None]
        if shift:
            if (h, w) not in self._masks:
                self._masks[(h, w)] = shifted_window_mask(h, w, ws, shift)
            attn = attn + self._masks[(h, w)][:, None]
        attn = np.exp(attn - attn.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(nw, n, c)
        y = window_reverse(self.proj(np.ascontiguousarray(out, np.float32)), ws, h, w)
        if shift:
            y = np.roll(y, (shift, shift), (0, 1))
        x = x + y
        t = layer_norm(x, *self.n2).reshape(1, h * w, c)
        hidden = self.fc1(t)
        return x + self.fc2(gelu(hidden)).reshape(h, w, c)


@_op("pad_reflect")
class PadReflect(_Op):
    radius = GLOBAL  # windows, shifted windows and padding to whole windows
    def __init__(self, attrs, tensors):
        self.m = attrs["multiple"]

    def __call__(self, x):
        h, w = x.shape[:2]
        ph, pw = (-h) % self.m, (-w) % self.m
        if not (ph or pw):
            return x
        return np.ascontiguousarray(np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect"))


@_op("crop")
class Crop(_Op):
    radius = GLOBAL  # windows, shifted windows and padding to whole windows
    def __init__(self, attrs, tensors):
        self.s = attrs["scale"]

    def __call__(self, x, image):
        return np.ascontiguousarray(x[: image.shape[0] * self.s, : image.shape[1] * self.s])


class Engine:
    """A loaded runtime model. ``Engine.load(path)``; ``engine.upscale(bgr_uint8)``.

    Memory: when every output pixel of the model depends on a bounded neighbourhood of the
    input (:attr:`receptive_radius` is not None), :meth:`run_native` processes a large image in
    horizontal stripes of at most ``stripe_bytes`` of working maps each, every stripe read
    with :attr:`receptive_radius` rows of context: the result is exactly that of one pass.
    :meth:`working_bytes` is the peak of one :meth:`run`.
    """

    #: working maps of one stripe, in bytes
    stripe_bytes = 512 << 20

    def __init__(self, header: dict, tensors: dict, source: str = "model", fuse: bool = True):
        """Check ``header`` and ``tensors`` against the op schema (:class:`ModelFileError`
        naming ``source`` and the reason if they do not fit), then prepare every op and, with
        ``fuse``, rewrite the graph to run faster (:mod:`.fusion`; the same computation)."""
        try:
            model = check_model(header, tensors)
        except SchemaError as e:
            raise ModelFileError(f"{source}: invalid model: {e}") from None
        self.header = header
        self.scale, self.arch, self.in_channels = model.scale, model.arch, model.in_channels
        self._output = model.output
        self.pool = BufferPool()
        self._ops = []
        for spec in model.ops:
            op = _OPS[spec.kind](spec.attrs, tensors)
            self._ops.append((op, spec.inputs, spec.out))
        if fuse:
            self._ops = fuse_graph(self._ops, self._output)
        for op, _, _ in self._ops:
            op.pool = self.pool
        last_use = {}
        for i, (_, inputs, _) in enumerate(self._ops):
            for name in inputs:
                last_use[name] = i
        # values whose buffers can go back to the pool after op i
        self._release = [[name for name in dict.fromkeys(inputs)
                          if last_use[name] == i and name not in ("input", self._output)]
                         for i, (_, inputs, _) in enumerate(self._ops)]
        self.receptive_radius = self._receptive_radius()
        features = max([self.in_channels] + [op.w.shape[0] for op, _, _ in self._ops if hasattr(op, "w")]
                       + [op.cout for op, _, _ in self._ops if hasattr(op, "cout")]
                       + [op.w_bits.shape[-1] for op, _, _ in self._ops if hasattr(op, "w_bits")])
        # float maps alive at once per input pixel: two of the feature width (an op's input and
        # output), the upsampler's s*s outputs and its result, the input
        self._bytes_per_pixel = 4 * (2 * features + 2 * self.scale ** 2 * self.in_channels + 2 * self.in_channels)

    def _receptive_radius(self):
        """Input pixels around an output pixel that it depends on (LR pixels; None: all)."""
        radius = {"input": 0}
        for op, inputs, out in self._ops:
            before = [radius[name] for name in inputs]
            if op.radius is GLOBAL or GLOBAL in before:
                radius[out] = GLOBAL
            else:
                radius[out] = max(before) + op.radius
        return radius[self._output]

    def stripe_rows(self, height: int, width: int) -> int:
        """Rows per stripe of :meth:`run_native` for an input of this size (``height``: one pass)."""
        if self.receptive_radius is GLOBAL:
            return height
        most = max(16, self.stripe_bytes // max(1, self._bytes_per_pixel * width) - 2 * self.receptive_radius)
        n = -(-height // most)
        return -(-height // n)

    def working_bytes(self, height: int, width: int) -> int:
        """Peak bytes of one :meth:`run` on a ``height`` x ``width`` image, its float32 RGB input
        and output included (the stripes, and for a luma model its YCbCr planes)."""
        rows = self.stripe_rows(height, width)
        window = min(height, rows + 2 * (self.receptive_radius or 0))
        s2 = self.scale ** 2
        full = 4 * height * width * (3 + 3 * s2)  # float RGB input and output
        if self.in_channels == 1:  # Y and CbCr, the model's Y output, the chroma rows along x
            full += 4 * height * width * (3 + s2 + 2 * self.scale)
        return full + self._bytes_per_pixel * window * width

    @classmethod
    def load(cls, path, fuse: bool = True) -> "Engine":
        """Load a model file; ``fuse=False`` runs every op as exported (for comparisons)."""
        header, tensors = load_model(path)
        return cls(header, tensors, str(Path(path)), fuse)

    def run(self, image: np.ndarray, ensemble: bool = False) -> np.ndarray:
        """float32 (H, W, 3) RGB in [0, 1] → float32 (H·s, W·s, 3), not clipped.

        A luma model (one input channel) sees the image's Y (BT.601, as in training) and its
        chroma is upscaled bicubically (:mod:`ebsr_basicsr.kernels.color`); it also accepts
        its native (H, W, 1) Y input and then returns Y.

        ``ensemble``: geometric self-ensemble (EDSR's "+"): the mean of the model's outputs
        on the 8 flips and rotations of the image, each turned back; 8 times the time for a
        little more quality."""
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 3 and self.in_channels == 1:
            y, cbcr = K.rgb_to_ycbcr(np.ascontiguousarray(image, np.float32))
            return K.ycbcr_upscale_to_rgb(self._native(y, ensemble), cbcr, self.scale)
        return self._native(image, ensemble)

    def _native(self, image: np.ndarray, ensemble: bool) -> np.ndarray:
        if not ensemble:
            return self.run_native(image)
        total = None
        for k in range(4):
            for flip in (False, True):
                x = np.rot90(image, k)
                x = x[:, ::-1] if flip else x
                y = self.run_native(np.ascontiguousarray(x))
                y = y[:, ::-1] if flip else y
                y = np.rot90(y, -k)
                total = y.copy() if total is None else np.add(total, y, out=total)
        return np.multiply(total, np.float32(1 / 8), out=total)

    def run_native(self, image: np.ndarray) -> np.ndarray:
        """The graph on its own input: float32 (H, W, in_channels) → (H·s, W·s, out_channels),
        in stripes when the image is large (see the class docstring)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != self.in_channels or 0 in image.shape:
            raise ValueError(f"expected an (H, W, {self.in_channels}) image, got shape {image.shape}")
        image = np.ascontiguousarray(image, np.float32)
        h, w = image.shape[:2]
        rows = self.stripe_rows(h, w)
        if rows >= h:
            return self._run_graph(image)
        s, radius = self.scale, self.receptive_radius
        window = min(h, rows + 2 * radius)  # the same size for every stripe: buffers are reused
        out = None
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            a = max(0, min(r0 - radius, h - window))
            y = self._run_graph(image[a:a + window])
            if out is None:
                out = np.empty((h * s, w * s, y.shape[2]), np.float32)
            out[r0 * s:r1 * s] = y[(r0 - a) * s:(r1 - a) * s]
            self.pool.put(y)
        return out

    def _run_graph(self, image: np.ndarray) -> np.ndarray:
        values = {"input": image}
        for (op, inputs, out), release in zip(self._ops, self._release):
            values[out] = op(*(values[name] for name in inputs))
            for name in release:
                array = values.pop(name)
                if not any(v is array or np.shares_memory(v, array) for v in values.values()):
                    self.pool.put(array)
        return values.pop(self._output)

    def upscale(self, image: np.ndarray, ensemble: bool = False) -> np.ndarray:
        """uint8 (H, W, 3) BGR (OpenCV's order) → uint8 (H·s, W·s, 3) BGR (``ensemble``: see
        :meth:`run`)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) BGR image, got {image.dtype} {image.shape}")
        rgb = image[:, :, ::-1].astype(np.float32) / np.float32(255.0)
        out = self.run(rgb, ensemble)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)[:, :, ::-1].copy()

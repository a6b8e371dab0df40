"""Bit packing of activations and weights.

Conventions of the whole ``ebsr_basicsr.kernels`` package
---------------------------------------------------------
* Feature maps are NHWC without N: float32 arrays ``(H, W, C)``, C-contiguous.
* A value ``v`` is binarised as ``sign(v) = +1`` if ``v >= 0`` (bit 0) and ``-1`` if
  ``v < 0`` (bit 1); NaN counts as +1. With a shift, the bit is that of ``v - shift[c]``
  computed in float32.
* Bits are packed along channels into uint64 words: channel ``c`` goes to word ``c // 64``,
  bit ``c % 64``. A packed map of ``C`` channels has ``CW = ceil(C / 64)`` words per pixel,
  shape ``(H, W, CW)``.
* The unused high bits of the last word are 0 in activations and in weights, so XOR leaves
  them 0 and they never count. For ``K`` valid (channel, tap) products of ±1 values::

      dot = K - 2 * popcount(a XOR w)

* Packed weights have the layout ``(kh, kw, CW, O)`` (uint64, C-contiguous): tap-major,
  output channel innermost, so a binary conv loads 8 consecutive output channels of one
  (tap, channel word) as one 512-bit vector. ``w_packed[ky, kx, cw, o]`` holds the signs of
  ``w[o, 64*cw : 64*cw + 64, ky, kx]`` of a PyTorch ``(O, C, kh, kw)`` weight.

The NumPy packing along channels and ``pack_weights`` live in ``ebsr_basicsr.packing`` (no
Numba), which the exporter shares; this module adds the jitted packing of activations and
the references.
"""
import numpy as np
from numba import njit, prange

from ..packing import n_words, pack_bool_last_axis, pack_weights, unpack_bits_last_axis, valid_bits_mask
from .popcount import make_neg_bits64, popcount_ref

__all__ = [
    "pack_signs", "pack_signs_ref",
    "pack_weights", "pack_weights_ref", "unpack_weights", "unpack_weights_ref",
    "weight_tap_sums", "weight_tap_sums_ref",
    "unpack_signs_ref", "n_words", "valid_bits_mask",
]

_neg_bits64 = make_neg_bits64()
_ONE = np.uint64(1)


# --------------------------------------------------------------------------- pack_signs
def pack_signs_ref(x, shift=None):
    """Reference: packed bits of ``x - shift[c] < 0`` for ``x`` float32 ``(H, W, C)``."""
    x = np.asarray(x, dtype=np.float32)
    if shift is not None:
        x = x - np.asarray(shift, dtype=np.float32)
    return pack_bool_last_axis(x < 0)


def unpack_signs_ref(bits, channels):
    """±1 float32 map ``(H, W, channels)`` from packed bits ``(H, W, CW)`` (bit 1 -> -1)."""
    neg = unpack_bits_last_axis(np.asarray(bits, dtype=np.uint64), channels)
    return np.where(neg, np.float32(-1), np.float32(1))


@njit(cache=True, fastmath=False, inline="always")
def pack_pixel_nb(x, h, w, shift, out):
    """Jitted helper: ``out[h, w, :]`` = packed bits of ``x[h, w, :] - shift < 0``."""
    C = x.shape[2]
    n_full = C // 64
    base = (h * x.shape[1] + w) * C
    for cw in range(n_full):
        out[h, w, cw] = _neg_bits64(x, base + 64 * cw, shift, 64 * cw)
    rem = C - 64 * n_full
    if rem > 0:
        word = np.uint64(0)
        c0 = 64 * n_full
        for b in range(rem):
            if x[h, w, c0 + b] - shift[c0 + b] < 0:
                word |= _ONE << np.uint64(b)
        out[h, w, n_full] = word


@njit(cache=True, fastmath=False, parallel=True)
def _pack_signs_nb(x, shift, out):
    H, W, _ = x.shape
    for h in prange(H):
        for w in range(W):
            pack_pixel_nb(x, h, w, shift, out)
    return out


def pack_signs(x, shift=None):
    """Pack the signs of a float32 ``(H, W, C)`` map along channels.

    Returns uint64 ``(H, W, ceil(C/64))`` whose bit ``c % 64`` of word ``c // 64`` is 1 where
    ``x[..., c] - shift[c] < 0`` (``shift``: optional float32 ``(C,)``, default 0).
    """
    x = _check_map(x, "x")
    C = x.shape[2]
    shift = _check_vector(shift, C, "shift", default=0.0)
    out = np.empty(x.shape[:2] + (n_words(C),), dtype=np.uint64)
    if x.size == 0:
        out[...] = 0
        return out
    return _pack_signs_nb(x, shift, out)


# --------------------------------------------------------------------------- weights
def pack_weights_ref(w):
    """Reference (explicit loops): packed signs of ``w`` float ``(O, C, kh, kw)`` as
    uint64 ``(kh, kw, ceil(C/64), O)``; bit set where ``w < 0``."""
    w = np.asarray(w, dtype=np.float32)
    O, C, kh, kw = w.shape
    out = np.zeros((kh, kw, n_words(C), O), dtype=np.uint64)
    for o in range(O):
        for c in range(C):
            for ky in range(kh):
                for kx in range(kw):
                    if w[o, c, ky, kx] < 0:
                        out[ky, kx, c // 64, o] |= _ONE << np.uint64(c % 64)
    return out


def _check_packed_weights(packed, in_channels, kh=None, kw=None, name="w_packed"):
    packed = np.asarray(packed)
    if packed.dtype != np.uint64 or packed.ndim != 4:
        raise ValueError("%s must be uint64 (kh, kw, CW, O), got %s %s" % (name, packed.dtype, packed.shape))
    if packed.shape[2] != n_words(in_channels):
        raise ValueError("%s has %d channel words, but in_channels=%d needs %d"
                         % (name, packed.shape[2], in_channels, n_words(in_channels)))
    if kh is not None and packed.shape[:2] != (kh, kw):
        raise ValueError("%s has kernel %s, expected (%d, %d)" % (name, packed.shape[:2], kh, kw))
    return packed


def unpack_weights_ref(packed, C, kh, kw):
    """Reference (explicit loops) for :func:`unpack_weights`."""
    packed = np.asarray(packed, dtype=np.uint64)
    O = packed.shape[3]
    w = np.empty((O, C, kh, kw), dtype=np.float32)
    for o in range(O):
        for c in range(C):
            for ky in range(kh):
                for kx in range(kw):
                    bit = (int(packed[ky, kx, c // 64, o]) >> (c % 64)) & 1
                    w[o, c, ky, kx] = -1.0 if bit else 1.0
    return w


def unpack_weights(packed, C, kh, kw):
    """±1 float32 weights ``(O, C, kh, kw)`` from packed ``(kh, kw, ceil(C/64), O)``.

    Raises ValueError if the shape does not match or an unused high bit is set.
    """
    packed = _check_packed_weights(packed, C, kh, kw, name="packed")
    unused = packed & ~valid_bits_mask(C)[None, None, :, None]
    if np.any(unused):
        raise ValueError("packed weights have bits set beyond channel %d" % C)
    neg = unpack_bits_last_axis(np.transpose(packed, (0, 1, 3, 2)), C)  # (kh, kw, O, C)
    w = np.where(neg, np.float32(-1), np.float32(1))
    return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1)))


def weight_tap_sums_ref(w):
    """Reference: ``S[ky*kw + kx, o] = sum_c sign(w[o, c, ky, kx])`` from float weights."""
    s = np.where(np.asarray(w) < 0, -1, 1).sum(axis=1)  # (O, kh, kw)
    O, kh, kw = s.shape
    return np.ascontiguousarray(s.reshape(O, kh * kw).T).astype(np.int64)


def weight_tap_sums(w_packed, in_channels):
    """Per-tap sums of the ±1 weights: int64 ``(kh*kw, O)``,
    ``S[ky*kw + kx, o] = sum_c sign(w[o, c, ky, kx]) = in_channels - 2 * popcount``.

    With zero padding, a tap that falls outside the input contributes ``S[t, o]`` when the
    border is stored as +1 bits; :func:`binary_conv2d` subtracts it on border pixels.
    """
    w_packed = _check_packed_weights(w_packed, in_channels)
    kh, kw, _, O = w_packed.shape
    neg = popcount_ref(w_packed).sum(axis=2)  # (kh, kw, O)
    return (int(in_channels) - 2 * neg).reshape(kh * kw, O).astype(np.int64)


# --------------------------------------------------------------------------- validation
def _check_map(x, name, dtype=np.float32):
    """Return ``x`` as a C-contiguous 3-D array of ``dtype`` or raise ValueError."""
    if not isinstance(x, np.ndarray):
        raise ValueError("%s must be a numpy array, got %s" % (name, type(x).__name__))
    if x.dtype != dtype:
        raise ValueError("%s must be %s, got %s" % (name, np.dtype(dtype).name, x.dtype))
    if x.ndim != 3:
        raise ValueError("%s must be a 3-D (H, W, C) array, got shape %s" % (name, x.shape))
    return np.ascontiguousarray(x)


def _check_vector(v, n, name, default=None):
    """Return ``v`` as a C-contiguous float32 ``(n,)`` array (``default`` fills it if None)."""
    if v is None:
        if default is None:
            return None
        return np.full(n, default, dtype=np.float32)
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.floating) and not np.issubdtype(v.dtype, np.integer):
        raise ValueError("%s must be a real vector, got dtype %s" % (name, v.dtype))
    if v.shape != (n,):
        raise ValueError("%s must have shape (%d,), got %s" % (name, n, v.shape))
    return np.ascontiguousarray(v, dtype=np.float32)

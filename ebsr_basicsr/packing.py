"""The bit-packing convention of the runtime, in NumPy only (no Numba, no torch).

Bit ``c % 64`` of uint64 word ``c // 64`` holds channel ``c``; a set bit is a negative value
(-1), a clear bit +1; unused high bits of the last word are 0. Packed weights have the layout
``(kh, kw, ceil(C/64), O)`` (the full statement is in ``ebsr_basicsr.kernels.bitpack``).

This is the one implementation of that convention: the exporter packs weights with it
without importing the jitted kernels, and ``ebsr_basicsr.kernels`` builds on it (its
``pack_weights_ref`` is the loop-by-loop reference that the tests compare against).
"""
import numpy as np

__all__ = ["n_words", "valid_bits_mask", "pack_bool_last_axis", "unpack_bits_last_axis", "pack_weights"]

_ONE = np.uint64(1)


def n_words(channels):
    """Number of uint64 words holding ``channels`` packed bits: ``ceil(channels / 64)``."""
    return (int(channels) + 63) // 64


def valid_bits_mask(channels):
    """uint64 ``(n_words(channels),)``: bit set for every valid channel position."""
    cw = n_words(channels)
    mask = np.full(cw, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    rem = int(channels) % 64
    if rem:
        mask[-1] = np.uint64((1 << rem) - 1)
    return mask


def pack_bool_last_axis(neg):
    """Pack a boolean array along its last axis (bit ``c % 64`` of word ``c // 64``)."""
    c = neg.shape[-1]
    cw = n_words(c)
    padded = np.zeros(neg.shape[:-1] + (cw * 64,), dtype=np.uint64)
    padded[..., :c] = neg
    padded = padded.reshape(neg.shape[:-1] + (cw, 64))
    return np.bitwise_or.reduce(padded << np.arange(64, dtype=np.uint64), axis=-1)


def unpack_bits_last_axis(words, channels):
    """Inverse of :func:`pack_bool_last_axis`: bool array ``(..., channels)``."""
    bits = (words[..., None] >> np.arange(64, dtype=np.uint64)) & _ONE
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * 64,))
    return bits[..., :channels].astype(bool)


def pack_weights(w):
    """Packed signs of a float weight ``(O, C, kh, kw)`` (PyTorch layout).

    Returns uint64 ``(kh, kw, ceil(C/64), O)``, C-contiguous (see the module docstring);
    bit set where ``w < 0``. A one-time conversion, so it is vectorised NumPy, not jitted.
    """
    w = np.asarray(w)
    if w.ndim != 4 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError("pack_weights expects a float array (O, C, kh, kw), got %s %s" % (w.dtype, w.shape))
    neg = np.transpose(w.astype(np.float32) < 0, (2, 3, 0, 1))  # (kh, kw, O, C)
    words = pack_bool_last_axis(neg)  # (kh, kw, O, CW)
    return np.ascontiguousarray(np.transpose(words, (0, 1, 3, 2)))

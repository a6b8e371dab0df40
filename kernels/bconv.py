"""Binary (XNOR-popcount) convolution with a fused epilogue.

The 3x3 kernel walks output rows in parallel (``prange``); the 1x1 kernel, which also
serves token maps ``(N, 1, C)``, walks chunks of 128 output pixels of the flattened map.
For each tile of 8 output pixels and 8 output channels an LLVM-IR tile (see
:func:`.popcount.make_xor_popcount_tile`) accumulates ``popcount(a XOR w)`` over all taps and
channel words in 512-bit registers and stores the exact ±1 dot products as float32. Once
per row (or chunk), while those are still in L1/L2, the shared epilogue
(:mod:`._epilogue`) applies ``mul``/``bias``, the scales, residual, LeakyReLU and
PixelShuffle and writes the output and, optionally, its repacked sign bits.

Padding: each output row of a 3x3 conv copies the three packed input rows it needs into a
small buffer padded by one pixel (and to whole tiles on the right). ``pad_value=+1`` pads
with 0 bits, ``-1`` with 1 bits (valid channels only), and ``0`` (PyTorch's zero padding of
the signed map) pads with +1 bits and subtracts, on border pixels only, the per-tap weight
sums of the taps that fall outside the map (:func:`.bitpack.weight_tap_sums`), so the integer
dot products are exact.
"""
import numpy as np
from numba import njit, prange

from ._epilogue import correlate_ref, epilogue_ref, epilogue_rows_nb, prepare_epilogue
from .bitpack import (_check_map, _check_packed_weights, _check_vector, n_words, unpack_signs_ref,
                      unpack_weights, valid_bits_mask, weight_tap_sums)
from .popcount import TILE_LANES, make_xor_popcount_tile

__all__ = ["binary_conv2d", "binary_conv2d_ref"]

_P = 8            # output pixels per register tile (1x1 conv)
_P3 = 8           # output pixels per register tile (3x3 conv)
_CHUNK = 16 * _P  # pixels per parallel work item of the 1x1 kernel
_LANES3 = TILE_LANES  # output channels per 3x3 tile call (16 measured no faster)
_LANES1 = TILE_LANES
_tile3 = make_xor_popcount_tile(_P3, 3, 3, _LANES3)
_tile1 = make_xor_popcount_tile(_P, 1, 1, _LANES1)


# --------------------------------------------------------------------------- reference
def binary_conv2d_ref(x_bits, w_packed, in_channels, kernel_size, stride=1, pad_value=1, mul=None,
                      bias=None, *, spatial_scale=None, channel_scale=None, residual=None,
                      neg_slope=None, out_shuffle=1, next_shift=None):
    """Reference for :func:`binary_conv2d`, written with floats: unpack to ±1, pad with
    ``pad_value``, correlate (PyTorch conv2d semantics), then the epilogue in float32."""
    a = unpack_signs_ref(x_bits, in_channels).astype(np.float64)
    w = unpack_weights(w_packed, in_channels, kernel_size, kernel_size).astype(np.float64)
    O = w.shape[0]
    p = kernel_size // 2
    a = np.pad(a, ((p, p), (p, p), (0, 0)), constant_values=float(pad_value))
    dot = correlate_ref(a, w, stride)
    mul = np.ones(O, np.float32) if mul is None else np.asarray(mul, np.float32)
    bias = np.zeros(O, np.float32) if bias is None else np.asarray(bias, np.float32)
    y = dot.astype(np.float32) * mul + bias
    return epilogue_ref(y, spatial_scale, channel_scale, residual, neg_slope, out_shuffle, next_shift)


# --------------------------------------------------------------------------- jitted kernels
@njit(cache=True, fastmath=False, inline="always")
def _fill_rows_nb(x, iy, pad_words, rows):
    """``rows[ky]`` = input row ``iy - 1 + ky`` with one pad pixel on the left and pad
    pixels up to the end of the buffer on the right (a whole pad row outside the map)."""
    H, W, CW = x.shape
    width = rows.shape[1]
    for ky in range(3):
        r = iy - 1 + ky
        if 0 <= r < H:
            src = x[r].reshape(W * CW)
            dst = rows[ky].reshape(width * CW)
            for j in range(W * CW):  # contiguous copy
                dst[CW + j] = src[j]
            for k in range(CW):
                rows[ky, 0, k] = pad_words[k]
            for c in range(W + 1, width):
                for k in range(CW):
                    rows[ky, c, k] = pad_words[k]
        else:
            for c in range(width):
                for k in range(CW):
                    rows[ky, c, k] = pad_words[k]


@njit(cache=True, fastmath=False, inline="always")
def _correct_border_nb(dots, p, taps, iy, ix, H, W):
    """Zero padding: subtract from ``dots[p]`` the tap sums of the 3x3 taps of the window
    centred on input pixel ``(iy, ix)`` that fall outside the ``H x W`` map (they were
    counted as +1 inputs). Integers in float32: exact."""
    for ky in range(3):
        r = iy - 1 + ky
        for kx in range(3):
            c = ix - 1 + kx
            if r < 0 or r >= H or c < 0 or c >= W:
                t = ky * 3 + kx
                for o in range(taps.shape[1]):
                    dots[p, o] -= taps[t, o]


@njit(cache=True, fastmath=False)
def _conv3_row_nb(ho, x, pad_words, w, taps, K, Wo, stride, zero_pad, mul, bias, rows, dots, y, ep):
    """One output row of the 3x3 conv: copy the three input rows it needs into the padded
    buffer ``rows`` (wide enough for whole tiles), run the tiles into ``dots``, correct
    the zero-padded border, then the epilogue."""
    H, W, _ = x.shape
    opad = w.shape[3]
    iy = ho * stride  # centre input row of the windows
    _fill_rows_nb(x, iy, pad_words, rows)
    for x0 in range(0, Wo, _P3):
        for o0 in range(0, opad, _LANES3):
            _tile3(rows, w, dots, x0, 0, x0 * stride, stride, o0, K)
    if zero_pad:
        for wo in range(Wo):
            ix = wo * stride
            if iy == 0 or iy + 1 >= H or ix == 0 or ix + 1 >= W:
                _correct_border_nb(dots, wo, taps, iy, ix, H, W)
    epilogue_rows_nb(dots, 0, Wo, ho * Wo, Wo, mul, bias, y, ep)


@njit(cache=True, fastmath=False, parallel=True)
def _binary_conv3_nb(x, pad_words, w, taps, K, stride, zero_pad, mul, bias, ep):
    H, W, CW = x.shape
    O = mul.shape[0]
    Ho = (H - 1) // stride + 1
    Wo = (W - 1) // stride + 1
    tiles = -(-Wo // _P3)
    width = max(W + 2, (tiles * _P3 - 1) * stride + 3)  # the last tile may read past the border
    for ho in prange(Ho):
        rows = np.empty((3, width, CW), dtype=np.uint64)
        dots = np.empty((tiles * _P3, w.shape[3]), dtype=np.float32)
        y = np.empty(O, dtype=np.float32)
        # np.int64: the parallel lowering types the loop index as unsigned, the serial
        # typing as signed; a fixed type avoids compiling the row function twice.
        _conv3_row_nb(np.int64(ho), x, pad_words, w, taps, K, Wo, stride, zero_pad, mul, bias, rows, dots, y,
                      ep)
    return ep.out


@njit(cache=True, fastmath=False)
def _conv1_chunk_nb(begin, end, xf, w, K, Wo, mul, bias, dots, y, ep):
    """Output pixels ``begin..end-1`` (raster order) of the 1x1 conv. ``xf`` holds at least
    ``_P`` pixels, so a tile that would run past its end is shifted back; ``dots`` row
    ``n - begin + _P`` holds pixel ``n``."""
    N = xf.shape[1]
    opad = w.shape[3]
    for n0 in range(begin, end, _P):
        start = min(n0, N - _P)
        for o0 in range(0, opad, _LANES1):
            _tile1(xf, w, dots, start - begin + _P, 0, start, 1, o0, K)
    epilogue_rows_nb(dots, _P, end - begin, begin, Wo, mul, bias, y, ep)


@njit(cache=True, fastmath=False, parallel=True)
def _binary_conv1_nb(xf, n_pixels, w, K, Wo, mul, bias, ep):
    # xf: (1, >= max(n_pixels, _P), CW) packed input pixels in output raster order.
    O = mul.shape[0]
    n_chunks = (n_pixels + _CHUNK - 1) // _CHUNK
    for ch in prange(n_chunks):
        dots = np.empty((_CHUNK + _P, w.shape[3]), dtype=np.float32)
        y = np.empty(O, dtype=np.float32)
        begin = np.int64(ch) * _CHUNK
        _conv1_chunk_nb(begin, min(n_pixels, begin + _CHUNK), xf, w, K, Wo, mul, bias, dots, y, ep)
    return ep.out


# --------------------------------------------------------------------------- public op
def _check_bits(x_bits, in_channels):
    if not isinstance(x_bits, np.ndarray) or x_bits.dtype != np.uint64 or x_bits.ndim != 3:
        raise ValueError("x_bits must be a uint64 (H, W, CW) array, got %s"
                         % (getattr(x_bits, "dtype", type(x_bits)),))
    if x_bits.shape[2] != n_words(in_channels):
        raise ValueError("x_bits has %d words per pixel, in_channels=%d needs %d"
                         % (x_bits.shape[2], in_channels, n_words(in_channels)))
    return np.ascontiguousarray(x_bits)


def binary_conv2d(x_bits, w_packed, in_channels, kernel_size, stride=1, pad_value=1, mul=None,
                  bias=None, *, spatial_scale=None, channel_scale=None, residual=None,
                  neg_slope=None, out_shuffle=1, next_shift=None, tap_sums=None, out=None, bits_out=None):
    """Binary convolution of packed ±1 activations with packed ±1 weights, fused epilogue.

    Parameters
    ----------
    x_bits : uint64 ``(H, W, ceil(in_channels/64))``, from :func:`pack_signs` (unused high
        bits must be 0).
    w_packed : uint64 ``(k, k, ceil(in_channels/64), O)``, from :func:`pack_weights`.
    in_channels : int, the number ``C`` of valid input channels.
    kernel_size : 1 or 3 (square kernel, padding ``k // 2``).
    stride : 1 or 2.
    pad_value : +1, -1 or 0, the value the ±1 map is padded with (0 is PyTorch's zero padding
        after the sign; it is exact, done with a per-tap correction on border pixels).
    mul, bias : float32 ``(O,)``; default 1 and 0.
    spatial_scale : float32 ``(Ho, Wo)``, optional.
    channel_scale : float32 ``(O,)``, optional.
    residual : float32 ``(Ho, Wo, O)`` (before the shuffle) or ``(Ho*s, Wo*s, O/s^2)``
        (shaped like the returned map; same element-wise sum), optional.
    neg_slope : float, optional LeakyReLU slope.
    out_shuffle : int ``s``; if > 1 the output is written PixelShuffle'd (PyTorch order).
    next_shift : float32 ``(O/s^2,)``, optional; also return the packed bits of
        ``out - next_shift`` (exactly ``pack_signs(out, next_shift)``).
    tap_sums : int64 ``(k*k, O)``, optional precomputed :func:`weight_tap_sums` for
        ``pad_value=0``.
    out, bits_out : optional preallocated C-contiguous outputs (float32 map, uint64 bits) of
        the returned shapes, filled and returned. Reusing buffers between calls avoids the
        page faults of fresh multi-megabyte allocations, which cost about as much as the
        convolution itself.

    Computes, with ``dot[p, o]`` the correlation of the padded ±1 map with the ±1 weights::

        y = dot * mul[o] + bias[o];  y *= spatial_scale[p];  y *= channel_scale[o]
        y += residual[p, o];  y = where(y >= 0, y, neg_slope * y);  PixelShuffle(s)

    Returns float32 ``(Ho*s, Wo*s, O/s^2)``, or ``(out, bits)`` if ``next_shift`` is given.
    """
    C = int(in_channels)
    if C != in_channels or C < 1:
        raise ValueError("in_channels must be a positive integer, got %r" % (in_channels,))
    x_bits = _check_bits(x_bits, C)
    k = kernel_size
    if k not in (1, 3):
        raise ValueError("kernel_size must be 1 or 3, got %r" % (kernel_size,))
    if stride not in (1, 2):
        raise ValueError("stride must be 1 or 2, got %r" % (stride,))
    if pad_value not in (1, -1, 0):
        raise ValueError("pad_value must be +1, -1 or 0, got %r" % (pad_value,))
    w_packed = np.ascontiguousarray(_check_packed_weights(w_packed, C, k, k))
    O = w_packed.shape[3]
    mul = _check_vector(mul, O, "mul", default=1.0)
    bias = _check_vector(bias, O, "bias", default=0.0)
    H, W = x_bits.shape[:2]
    Ho = (H - 1) // stride + 1 if H else 0
    Wo = (W - 1) // stride + 1 if W else 0
    ep, out, bits, perm = prepare_epilogue(Ho, Wo, O, spatial_scale, channel_scale, residual, neg_slope,
                                             out_shuffle, next_shift, _check_map, out, bits_out)
    if out.size == 0 or O == 0:
        return out if bits is None else (out, bits)
    taps = None
    if k == 3 and pad_value == 0:
        taps = weight_tap_sums(w_packed, C) if tap_sums is None else np.asarray(tap_sums)
        if taps.shape != (9, O):
            raise ValueError("tap_sums must have shape (9, %d), got %s" % (O, taps.shape))
    if perm is not None:  # PixelShuffle: output channels in sub-pixel-major order
        w_packed, mul, bias = w_packed[..., perm], mul[perm], bias[perm]
        if taps is not None:
            taps = taps[:, perm]

    # Pad the output channels to whole 8-lane groups (zero weights, results discarded).
    lanes = _LANES3 if k == 3 else _LANES1
    opad = -(-O // lanes) * lanes
    if opad != O:
        w_full = np.zeros(w_packed.shape[:3] + (opad,), dtype=np.uint64)
        w_full[..., :O] = w_packed
        w_packed = w_full
    w_packed = np.ascontiguousarray(w_packed)
    K = C * k * k

    if k == 3:
        pad_words = valid_bits_mask(C) if pad_value == -1 else np.zeros(n_words(C), dtype=np.uint64)
        zero_pad = taps is not None
        taps = np.zeros((9, O), dtype=np.float32) if taps is None else np.ascontiguousarray(taps, dtype=np.float32)
        _binary_conv3_nb(x_bits, pad_words, w_packed, taps, K, stride, zero_pad, np.ascontiguousarray(mul),
                         np.ascontiguousarray(bias), ep)
    else:
        xs = x_bits if stride == 1 else np.ascontiguousarray(x_bits[::stride, ::stride])
        xf = xs.reshape(1, Ho * Wo, xs.shape[2])
        if Ho * Wo < _P:  # fewer pixels than one tile: pad with zero words
            xf = np.concatenate([xf, np.zeros((1, _P - Ho * Wo, xs.shape[2]), dtype=np.uint64)], axis=1)
        _binary_conv1_nb(xf, Ho * Wo, w_packed, K, Wo, np.ascontiguousarray(mul), np.ascontiguousarray(bias), ep)
    return out if bits is None else (out, bits)

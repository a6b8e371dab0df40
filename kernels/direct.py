"""Direct 3x3 float convolutions for the FP layers with few channels on one side: the head of
a luma model (1 -> 64) and the light upsampler (64 -> out_ch * s^2).

An im2col GEMM spends most of its time building and reading a 9x larger matrix when the
input has few channels, and BLAS handles a GEMM with few columns poorly (and its spinning
threads then take the core the next kernel needs). Here each output row is computed from a
ring of three padded input rows by a register-blocked FMA tile
(:func:`._vector.make_conv_fma_tile`, 16 pixels x 16 output channels; with 4 or fewer output
channels, 4 pixels share each 16-lane vector so no lane is wasted), bands of rows in parallel.

* :func:`conv3x3` - ``(H, W, C) -> (H, W, O)`` plus bias (PyTorch ``conv2d``, padding 1),
  plus a residual or with its output PixelShuffle'd.
* :func:`conv3x3_to_image` - the upsampler's conv with its pixel shuffle and the output
  denormalisation fused: ``shuffle(conv(x) + bias) / range + skip``, where ``skip`` is the
  bilinearly upscaled input image (``image_skip``) or a constant mean per channel. Exactly
  the per-op ``Conv2d`` -> ``Denormalize`` sequence, without the full-size maps between them.

References: :func:`conv3x3_ref`, :func:`conv3x3_to_image_ref`.
"""
import numpy as np
from numba import njit, prange

from ._epilogue import shuffle_grouping
from ._vector import make_conv_fma_tile
from .bitpack import _check_map
from .fpconv import conv2d_ref
from .ops import _bilinear_axis, pixel_shuffle_ref, resize_bilinear_ref

__all__ = ["conv3x3", "conv3x3_ref", "conv3x3_to_image", "conv3x3_to_image_ref"]

_P, _LANES = 8, 16  # pixel groups per tile call (16 pixels for the plain tile), lanes per vector
_tile = make_conv_fma_tile(2 * _P, 1)                 # 16 pixels x 16 channels
_tile_g2 = make_conv_fma_tile(_P, 1, KW=4, stride=2)  # 8 x 2 pixels x 8 channels
_tile_g4 = make_conv_fma_tile(_P, 1, KW=6, stride=4)  # 8 x 4 pixels x 4 channels


def _group(O):
    """Pixels per 16-lane vector for ``O`` output channels."""
    return 4 if O <= 4 else 2 if O <= 8 else 1


def _tap_weights(w, G):
    """The tile's weights ``(3, G+2, C, Opad)`` of a conv weight ``(O, C, 3, 3)``: for ``G == 1``
    the taps with the channels padded to 16; else lane ``q*(16/G) + o`` of tap column ``u``
    holds ``w[o, :, ky, u - q]`` (zero where ``u - q`` is outside 0..2)."""
    O, C = w.shape[:2]
    if G == 1:
        opad = -(-O // _LANES) * _LANES
        wt = np.zeros((3, 3, C, opad), np.float32)
        wt[..., :O] = np.transpose(w, (2, 3, 1, 0))
        return wt
    per = _LANES // G
    wt = np.zeros((3, G + 2, C, _LANES), np.float32)
    for q in range(G):
        for kx in range(3):
            wt[:, q + kx, :, q * per:q * per + O] = np.transpose(w[:, :, :, kx], (2, 1, 0))
    return wt


# --------------------------------------------------------------------------- references
def conv3x3_ref(x, w, bias=None, residual=None, out_shuffle=1):
    """Reference: PyTorch ``conv2d(x, w, bias, padding=1)`` on an NHWC map (float64 sums), plus
    ``residual``, PixelShuffle'd by ``out_shuffle``."""
    return conv2d_ref(np.asarray(x, np.float32), np.asarray(w, np.float32), bias, padding=1, residual=residual,
                      out_shuffle=out_shuffle)


def conv3x3_to_image_ref(x, w, bias, s, img_range, image=None, mean=None):
    """Reference: ``pixel_shuffle(conv3x3(x) + bias, s) / img_range`` plus the bilinear ``s``-times
    upscaled ``image`` or plus ``mean`` (one value per output channel)."""
    y = pixel_shuffle_ref(conv3x3_ref(x, w, bias), s) / np.float32(img_range)
    if image is not None:
        return (y + resize_bilinear_ref(np.asarray(image, np.float32), s)).astype(np.float32)
    return (y + np.asarray(mean, np.float32)).astype(np.float32)


# --------------------------------------------------------------------------- kernels
@njit(cache=True, fastmath=False, inline="always")
def _load_row_nb(x, r, ring, slot):
    """Input row ``r`` into both copies of ring ``slot`` (column 0 and the tail stay zero)."""
    W = x.shape[1]
    C = x.shape[2]
    for j in range(W):
        for c in range(C):
            v = x[r, j, c]
            ring[slot, 1 + j, c] = v
            ring[slot + 3, 1 + j, c] = v


@njit(cache=True, fastmath=False, inline="always")
def _zero_row_nb(ring, slot):
    ring[slot] = 0
    ring[slot + 3] = 0


# one small function per tile shape: inlining all three into the band loop made LLVM's code
# for each of them slower (measured 1.7x on the 64 -> 16 conv)
@njit(cache=True, fastmath=False)
def _row_tiles_nb(ring, wt, z, s0, W):
    for o0 in range(0, wt.shape[3], _LANES):  # one group's weights (C*9*16 floats) stay in L1 along the row
        for x0 in range(0, W, 2 * _P):
            _tile(ring, wt, z, x0, s0, x0, o0)


@njit(cache=True, fastmath=False)
def _row_tiles_g2_nb(ring, wt, z, s0, W):
    for x0 in range(0, W, 2 * _P):
        _tile_g2(ring, wt, z, x0 // 2, s0, x0, 0)


@njit(cache=True, fastmath=False)
def _row_tiles_g4_nb(ring, wt, z, s0, W):
    for x0 in range(0, W, 4 * _P):
        _tile_g4(ring, wt, z, x0 // 4, s0, x0, 0)


@njit(cache=True, fastmath=False)
def _band_nb(x, wt, bias, h0, h1, mode, s, img_range, hb, mean, ys0, ys1, yw0, yw1, out):
    """Output rows ``h0 .. h1-1``. ``mode`` 0: ``out[h, w, o] = conv + bias``; 4: the same plus
    the residual ``hb[h, w, o]``; 3: ``conv + bias`` pixel-shuffled; 1: shuffled, divided by the
    range, plus the bilinear skip (``hb``: the input's rows already interpolated along x;
    ``ys*``/``yw*``: the vertical taps); 2: shuffled, divided by the range, plus ``mean``."""
    H, W, C = x.shape
    opad = wt.shape[3]
    O = bias.shape[0]
    G = wt.shape[1] - 2  # pixels per vector
    per = opad if G == 1 else _LANES // G  # lanes per pixel
    tw = _P * max(G, 2)  # pixels per tile call
    tiles = (W + tw - 1) // tw
    width = tiles * tw + 2
    ring = np.zeros((6, width, C), dtype=np.float32)  # 3 padded rows, stored twice; row -1 is 0
    z = np.empty((tiles * tw, opad), dtype=np.float32)
    zf = z.reshape(-1)  # pixel j, channel o at zf[j * per + o] whatever G
    co = O // (s * s)
    vrow = np.empty(W * s * co, dtype=np.float32)
    for r in range(max(h0 - 1, 0), min(h0 + 1, H)):
        _load_row_nb(x, r, ring, r % 3)
    for h in range(h0, h1):
        if h + 1 < H:
            _load_row_nb(x, h + 1, ring, (h + 1) % 3)
        else:
            _zero_row_nb(ring, (h + 1) % 3)
        s0 = (h + 2) % 3
        if G == 1:
            _row_tiles_nb(ring, wt, z, s0, W)
        elif G == 2:
            _row_tiles_g2_nb(ring, wt, z, s0, W)
        else:
            _row_tiles_g4_nb(ring, wt, z, s0, W)
        if mode == 0:
            for j in range(W):
                for o in range(O):
                    out[h, j, o] = zf[j * per + o] + bias[o]
            continue
        if mode == 4:
            for j in range(W):
                for o in range(O):
                    out[h, j, o] = (zf[j * per + o] + bias[o]) + hb[h, j, o]
            continue
        for a in range(s):  # output row h*s + a: its values in order, then the skip in one pass
            oy = h * s + a
            run = s * co  # output pixels j*s .. j*s+s-1 of this row: channels a*s*co .. (a+1)*s*co
            if mode == 3:  # a plain shuffle: straight into the output row
                o_row = out[oy].reshape(-1)
                for j in range(W):
                    src = j * per + a * run
                    dst = j * run
                    for k in range(run):
                        o_row[dst + k] = zf[src + k] + bias[a * run + k]
                continue
            for j in range(W):
                src = j * per + a * run
                for k in range(run):
                    vrow[j * run + k] = (zf[src + k] + bias[a * run + k]) / img_range
            o_row = out[oy].reshape(-1)
            if mode == 1:
                top, bottom = hb[ys0[oy]].reshape(-1), hb[ys1[oy]].reshape(-1)
                wy0, wy1 = yw0[oy], yw1[oy]
                for k in range(W * s * co):
                    o_row[k] = vrow[k] + (wy0 * top[k] + wy1 * bottom[k])
            else:
                for k in range(W * s * co):
                    o_row[k] = vrow[k] + mean[k % co]


@njit(cache=True, fastmath=False, parallel=True)
def _bilinear_rows_nb(image, xs0, xs1, xw0, xw1, hb):
    """``hb[r, ox, c]``: input row ``r`` interpolated along x (the first half of the bilinear
    skip, in the order of :func:`resize_bilinear_ref`)."""
    for r in prange(image.shape[0]):
        for ox in range(hb.shape[1]):
            x0, x1, w0, w1 = xs0[ox], xs1[ox], xw0[ox], xw1[ox]
            for c in range(image.shape[2]):
                hb[r, ox, c] = w0 * image[r, x0, c] + w1 * image[r, x1, c]


@njit(cache=True, fastmath=False, parallel=True)
def _conv_nb(x, wt, bias, bands, mode, s, img_range, hb, mean, ys0, ys1, yw0, yw1, out):
    for i in prange(bands.shape[0] - 1):
        _band_nb(x, wt, bias, bands[i], bands[i + 1], mode, s, img_range, hb, mean, ys0, ys1, yw0, yw1, out)
    return out


# --------------------------------------------------------------------------- public ops
def _prepare(x, w, bias, s):
    """Checked arrays, the tile's weights and the bands of rows. With a shuffle by ``s`` the
    output channels are put in sub-pixel-major order (:func:`._epilogue.shuffle_grouping`), so
    each output pixel's channels are contiguous and a row is written as contiguous runs."""
    from . import get_num_threads

    x = _check_map(x, "x")
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 4 or w.shape[1] != x.shape[2] or w.shape[2:] != (3, 3):
        raise ValueError("w must be (O, %d, 3, 3), got %s" % (x.shape[2], w.shape))
    O = w.shape[0]
    bias = np.zeros(O, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    if bias.shape != (O,):
        raise ValueError("bias must have shape (%d,), got %s" % (O, bias.shape))
    if s < 1 or O % (s * s):
        raise ValueError("%d output channels cannot be shuffled by %d" % (O, s))
    perm = shuffle_grouping(O, s)
    if perm is not None:
        w, bias = w[perm], np.ascontiguousarray(bias[perm])
    wt = _tap_weights(w, _group(O))
    H = x.shape[0]
    n = min(H, max(1, 4 * get_num_threads())) if H else 1
    bands = np.linspace(0, H, n + 1).round().astype(np.int64)
    return x, wt, bias, bands


_NO_AXIS = (np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, np.float32))


def conv3x3(x, w, bias=None, residual=None, out_shuffle=1, out=None):
    """3x3 convolution, stride 1, zero padding 1, of a float32 ``(H, W, C)`` map with ``w``
    ``(O, C, 3, 3)`` plus ``bias`` (plus ``residual`` ``(H, W, O)``) -> float32 ``(H, W, O)``,
    or PixelShuffle'd by ``out_shuffle`` (without a residual) -> ``(H*s, W*s, O/s^2)``."""
    s = int(out_shuffle)
    if s > 1 and residual is not None:
        raise ValueError("a residual cannot be added to a shuffled conv output")
    x, wt, bias, bands = _prepare(x, w, bias, s)
    H, W, _ = x.shape
    O = bias.shape[0]
    res = np.zeros((1, 1, 1), np.float32)
    if residual is not None:
        res = _check_map(residual, "residual")
        if res.shape != (H, W, O):
            raise ValueError("residual must have shape %s, got %s" % ((H, W, O), res.shape))
    if out is None:
        out = np.empty((H * s, W * s, O // (s * s)), np.float32)
    if H * W == 0:
        return out
    mode = 3 if s > 1 else 4 if residual is not None else 0
    return _conv_nb(x, wt, bias, bands, mode, s, np.float32(1), res, np.zeros(1, np.float32), *_NO_AXIS, out)


def conv3x3_to_image(x, w, bias, s, img_range, image=None, mean=None, out=None):
    """``pixel_shuffle(conv3x3(x, w) + bias, s) / img_range + skip`` -> float32 ``(H*s, W*s, Co)``
    with ``Co = O / s^2``; ``skip`` is ``image`` (H, W, Co) upscaled bilinearly (PyTorch,
    ``align_corners=False``) or, without an image, ``mean`` (Co,)."""
    s = int(s)
    x, wt, bias, bands = _prepare(x, w, bias, s)
    H, W, _ = x.shape
    O = bias.shape[0]
    co = O // (s * s)
    if image is not None:
        image = _check_map(image, "image")
        if image.shape != (H, W, co):
            raise ValueError("image must have shape %s, got %s" % ((H, W, co), image.shape))
        mode, mean_arr = 1, np.zeros(co, np.float32)
        hb = np.empty((H, W * s, co), np.float32)
        if H * W:
            _bilinear_rows_nb(image, *_bilinear_axis(W, s), hb)
        axes = _bilinear_axis(H, s)
    else:
        mean_arr = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        if mean_arr.shape != (co,):
            raise ValueError("mean must have %d values, got %d" % (co, mean_arr.size))
        mode, hb = 2, np.zeros((1, 1, 1), np.float32)
        axes = _NO_AXIS
    if out is None:
        out = np.empty((H * s, W * s, co), np.float32)
    if H * W == 0:
        return out
    return _conv_nb(x, wt, bias, bands, mode, s, np.float32(img_range), hb, mean_arr, *axes, out)

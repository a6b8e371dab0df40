"""Colour handling of single-channel (luma) models, as ESPCN and FSRCNN do it.

A luma model sees the Y of the image in BasicSR's YCbCr (ITU-R BT.601, "studio" range:
``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16/255`` for RGB in [0, 1]), the convention
its training data and every paper's Y-PSNR use. Its chroma is upscaled bicubically and the
two are joined back into RGB.

* :func:`rgb_to_ycbcr` - float32 ``(H, W, 3)`` RGB -> ``(H, W, 1)`` Y and ``(H, W, 2)`` CbCr.
* :func:`ycbcr_upscale_to_rgb` - the model's Y output ``(H*s, W*s, 1)`` and the LR CbCr
  ``(H, W, 2)`` -> RGB ``(H*s, W*s, 3)``, the chroma upscaled by bicubic interpolation
  (PyTorch's ``interpolate(mode='bicubic', align_corners=False)``, ``a = -0.75``, borders
  clamped) in two separable float32 passes: the LR rows along x, then each output row from
  four of those, converted to RGB as it is made.

Each has a NumPy reference (``*_ref``); :func:`resize_bicubic_ref` is the reference of the
interpolation itself.
"""
import numpy as np
from numba import njit, prange

from .bitpack import _check_map

__all__ = ["rgb_to_ycbcr", "rgb_to_ycbcr_ref", "ycbcr_upscale_to_rgb", "ycbcr_upscale_to_rgb_ref",
           "resize_bicubic_ref", "bicubic_phase_weights"]

#: RGB (rows) -> Y, Cb, Cr (columns) for RGB in [0, 1] (BasicSR's ``rgb2ycbcr``), and offsets.
_RGB2YCBCR = np.array([[65.481, -37.797, 112.0],
                       [128.553, -74.203, -93.786],
                       [24.966, 112.0, -18.214]], np.float64) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], np.float64) / 255.0
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)

_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


# --------------------------------------------------------------------------- references
def rgb_to_ycbcr_ref(rgb):
    """Reference: ``(Y (H, W, 1), CbCr (H, W, 2))`` float32 of float RGB ``(H, W, 3)``."""
    ycc = np.asarray(rgb, np.float64) @ _RGB2YCBCR + _YCBCR_OFFSET
    return ycc[..., :1].astype(np.float32), np.ascontiguousarray(ycc[..., 1:], np.float32)


def _cubic(t):
    t = np.abs(t)
    return np.where(t <= 1, ((_A + 2) * t - (_A + 3)) * t * t + 1,
                    np.where(t < 2, ((_A * t - 5 * _A) * t + 8 * _A) * t - 4 * _A, 0.0))


def resize_bicubic_ref(x, s):
    """Reference: ``(H, W, C)`` upscaled ``s`` times like PyTorch's
    ``interpolate(mode='bicubic', align_corners=False)`` (float64 sums, float32 result)."""
    x = np.asarray(x, np.float64)

    def axis(n):
        dst = np.arange(n * s)
        src = (dst + 0.5) / s - 0.5
        i0 = np.floor(src).astype(np.int64)
        t = src - i0
        idx = np.clip(i0[:, None] + np.arange(-1, 3)[None], 0, n - 1)
        return idx, _cubic(t[:, None] - np.arange(-1, 3)[None])

    iy, wy = axis(x.shape[0])
    ix, wx = axis(x.shape[1])
    rows = np.einsum("ok,okwc->owc", wy, x[iy])
    return np.einsum("ok,hokc->hoc", wx, rows[:, ix]).astype(np.float32)


def ycbcr_upscale_to_rgb_ref(y, cbcr, s):
    """Reference of :func:`ycbcr_upscale_to_rgb`."""
    chroma = resize_bicubic_ref(cbcr, s).astype(np.float64)
    ycc = np.concatenate([np.asarray(y, np.float64), chroma], axis=2)
    return ((ycc - _YCBCR_OFFSET) @ _YCBCR2RGB).astype(np.float32)


# --------------------------------------------------------------------------- kernels
def bicubic_phase_weights(s):
    """float32 ``(s, 4)``: the 4 bicubic taps (source offsets -1..2 from ``floor(src)``) of the
    ``s`` output phases of an integer upscale by ``s`` (align_corners=False)."""
    phase = np.arange(s)
    src = (phase + 0.5) / s - 0.5
    t = src - np.floor(src)
    return _cubic(t[:, None] - np.arange(-1, 3)[None]).astype(np.float32)


@njit(cache=True, fastmath=False, parallel=True)
def _rgb_to_ycbcr_nb(rgb, m, off, y, cbcr):
    H, W, _ = rgb.shape
    for h in prange(H):
        for w in range(W):
            r, g, b = rgb[h, w, 0], rgb[h, w, 1], rgb[h, w, 2]
            y[h, w, 0] = r * m[0, 0] + g * m[1, 0] + b * m[2, 0] + off[0]
            cbcr[h, w, 0] = r * m[0, 1] + g * m[1, 1] + b * m[2, 1] + off[1]
            cbcr[h, w, 1] = r * m[0, 2] + g * m[1, 2] + b * m[2, 2] + off[2]


def rgb_to_ycbcr(rgb):
    """``(Y (H, W, 1), CbCr (H, W, 2))`` float32 of a float32 RGB ``(H, W, 3)`` map."""
    rgb = _check_map(rgb, "rgb")
    if rgb.shape[2] != 3:
        raise ValueError("rgb_to_ycbcr needs 3 channels, got %d" % rgb.shape[2])
    H, W, _ = rgb.shape
    y = np.empty((H, W, 1), np.float32)
    cbcr = np.empty((H, W, 2), np.float32)
    if H * W:
        _rgb_to_ycbcr_nb(rgb, _RGB2YCBCR.astype(np.float32), _YCBCR_OFFSET.astype(np.float32), y, cbcr)
    return y, cbcr


@njit(cache=True, fastmath=False, parallel=True)
def _chroma_rows_nb(cbcr, s, wts, hc):
    """Horizontal pass: ``hc[ch, r, ox]`` = LR row ``r`` of chroma ``ch`` upscaled along x."""
    H, W, _ = cbcr.shape
    for r in prange(H):
        for j in range(W):
            for b in range(s):
                base = j + int(np.floor((b + 0.5) / s - 0.5)) - 1
                t0 = np.float32(0)
                t1 = np.float32(0)
                for k in range(4):
                    c = min(max(base + k, 0), W - 1)
                    t0 += wts[b, k] * cbcr[r, c, 0]
                    t1 += wts[b, k] * cbcr[r, c, 1]
                hc[0, r, j * s + b] = t0
                hc[1, r, j * s + b] = t1


@njit(cache=True, fastmath=False, parallel=True)
def _ycbcr_upscale_to_rgb_nb(y, hc, s, wts, m, off, out):
    """Vertical pass and the colour conversion, one output row at a time (contiguous rows,
    so the loop over pixels vectorises)."""
    H = hc.shape[1]
    Wo = hc.shape[2]
    for oy in prange(H * s):
        py = oy % s
        base = oy // s + int(np.floor((py + 0.5) / s - 0.5)) - 1
        r0, r1 = min(max(base, 0), H - 1), min(max(base + 1, 0), H - 1)
        r2, r3 = min(max(base + 2, 0), H - 1), min(max(base + 3, 0), H - 1)
        w0, w1, w2, w3 = wts[py, 0], wts[py, 1], wts[py, 2], wts[py, 3]
        cb0, cb1, cb2, cb3 = hc[0, r0], hc[0, r1], hc[0, r2], hc[0, r3]
        cr0, cr1, cr2, cr3 = hc[1, r0], hc[1, r1], hc[1, r2], hc[1, r3]
        for ox in range(Wo):
            cb = w0 * cb0[ox] + w1 * cb1[ox] + w2 * cb2[ox] + w3 * cb3[ox] - off[1]
            cr = w0 * cr0[ox] + w1 * cr1[ox] + w2 * cr2[ox] + w3 * cr3[ox] - off[2]
            yy = y[oy, ox, 0] - off[0]
            out[oy, ox, 0] = yy * m[0, 0] + cb * m[1, 0] + cr * m[2, 0]
            out[oy, ox, 1] = yy * m[0, 1] + cb * m[1, 1] + cr * m[2, 1]
            out[oy, ox, 2] = yy * m[0, 2] + cb * m[1, 2] + cr * m[2, 2]
    return out


def ycbcr_upscale_to_rgb(y, cbcr, s, out=None):
    """RGB float32 ``(H*s, W*s, 3)`` from a luma model's output ``y`` ``(H*s, W*s, 1)`` and
    the LR chroma ``cbcr`` ``(H, W, 2)`` upscaled bicubically (see the module docstring)."""
    y = _check_map(y, "y")
    cbcr = _check_map(cbcr, "cbcr")
    s = int(s)
    H, W, C = cbcr.shape
    if C != 2 or s < 1 or y.shape != (H * s, W * s, 1):
        raise ValueError("ycbcr_upscale_to_rgb: y %s and cbcr %s do not match scale %d" % (y.shape, cbcr.shape, s))
    if out is None:
        out = np.empty((H * s, W * s, 3), np.float32)
    elif out.shape != (H * s, W * s, 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 (%d, %d, 3) array" % (H * s, W * s))
    if H * W == 0:
        return out
    wts = bicubic_phase_weights(s)
    hc = np.empty((2, H, W * s), np.float32)
    _chroma_rows_nb(cbcr, s, wts, hc)
    return _ycbcr_upscale_to_rgb_nb(y, hc, s, wts, _YCBCR2RGB.astype(np.float32), _YCBCR_OFFSET.astype(np.float32),
                                    out)

"""Float32 convolution for the FP head, tail and upsampler, on BLAS GEMMs.

The output is produced in bands of output rows so that the temporary matrices stay small
(about ``_BAND_BYTES``) whatever the image size. Two formulations, picked by shape:

* im2col (the default): a jitted kernel gathers the patches of a band into a
  ``(rows*Wo, kh*kw*C)`` matrix and NumPy's BLAS multiplies it by the ``(kh*kw*C, O)``
  weight matrix. A 1x1 stride-1 conv skips the gather (the map already is the matrix).
* kn2row, when there are few output channels (``2*O <= C``, e.g. a 64 -> 3 tail conv at
  high resolution): one GEMM ``(pixels, C) @ (C, kh*kw*O)`` gives every tap's contribution
  for every input pixel, and a jitted kernel sums the ``kh*kw`` shifted contributions of
  each output pixel. This moves ``kh*kw*O`` floats per pixel instead of ``kh*kw*C`` and
  keeps BLAS away from a GEMM with only ``O`` columns.

In both cases a jitted epilogue adds the bias (and the residual), applies the LeakyReLU and
writes the result PixelShuffle'd straight into the output, so no separate shuffle pass is
needed.
"""
import numpy as np
from numba import njit, prange

from ._epilogue import epilogue_ref, epilogue_rows_nb, prepare_epilogue
from .bitpack import _check_map

__all__ = ["conv2d", "conv2d_ref", "conv_weight_matrix"]

_BAND_BYTES = 8 << 20  # target size of one band's temporary matrix
_MIN_BAND_PIXELS = 1024


def conv2d_ref(x, w, bias=None, *, stride=1, padding=None, neg_slope=None, out_shuffle=1, residual=None):
    """Reference for :func:`conv2d`: direct correlation with float64 sums, then the epilogue
    (bias, residual, LeakyReLU, PixelShuffle) in float32."""
    O, C, kh, kw = w.shape
    p = kh // 2 if padding is None else padding
    xp = np.pad(x.astype(np.float64), ((p, p), (p, p), (0, 0)))
    Ho = (xp.shape[0] - kh) // stride + 1
    Wo = (xp.shape[1] - kw) // stride + 1
    acc = np.zeros((Ho, Wo, O), dtype=np.float64)
    for ky in range(kh):
        for kx in range(kw):
            window = xp[ky:ky + stride * (Ho - 1) + 1:stride, kx:kx + stride * (Wo - 1) + 1:stride, :]
            acc += window @ w[:, :, ky, kx].astype(np.float64).T
    y = acc.astype(np.float32)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    return epilogue_ref(y, residual=residual, neg_slope=neg_slope, out_shuffle=out_shuffle)


def conv_weight_matrix(w):
    """The im2col GEMM operand of a float weight ``(O, C, kh, kw)``: float32
    ``(kh*kw*C, O)`` with row ``(ky*kw + kx)*C + c``. Pass it to :func:`conv2d` as
    ``w_matrix`` to skip the per-call transpose."""
    w = np.asarray(w, dtype=np.float32)
    O, C, kh, kw = w.shape
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(kh * kw * C, O))


@njit(cache=True, fastmath=False, parallel=True)
def _im2col_nb(x, kh, kw, stride, pad, ho0, Wo, cols):
    H, W, C = x.shape
    rows = cols.shape[0] // Wo
    for r in prange(rows):
        iy0 = (ho0 + r) * stride - pad
        for wo in range(Wo):
            m = r * Wo + wo
            ix0 = wo * stride - pad
            for ky in range(kh):
                iy = iy0 + ky
                for kx in range(kw):
                    ix = ix0 + kx
                    base = (ky * kw + kx) * C
                    if 0 <= iy < H and 0 <= ix < W:
                        for c in range(C):
                            cols[m, base + c] = x[iy, ix, c]
                    else:
                        for c in range(C):
                            cols[m, base + c] = 0.0
    return cols


@njit(cache=True, fastmath=False, parallel=True)
def _gemm_epilogue_nb(g, ho0, Wo, mul, bias,
                      ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream):
    for r in prange(g.shape[0] // Wo):
        y = np.empty(g.shape[1], dtype=np.float32)
        ri = np.int64(r)  # one signature for the serial and the parallel typing
        epilogue_rows_nb(g, ri * Wo, Wo, (ho0 + ri) * Wo, Wo, mul, bias, y,
                         ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream)
    return out


@njit(cache=True, fastmath=False)
def _kn2row_row_nb(z, r0, W, H, kh, kw, stride, pad, ho, Wo, acc):
    """``acc[wo, o]`` = sum over the taps inside the map of the shifted contributions
    ``z[(iy - r0) * W + ix, (ky*kw + kx)*O + o]`` (= sum_c x[iy, ix, c] * w[o, c, ky, kx])."""
    O = acc.shape[1]
    uO = np.uint64(O)
    for wo in range(Wo):
        for o in range(O):
            acc[wo, o] = 0
        for ky in range(kh):
            iy = ho * stride - pad + ky
            if iy < 0 or iy >= H:
                continue
            for kx in range(kw):
                ix = wo * stride - pad + kx
                if ix < 0 or ix >= W:
                    continue
                row = (iy - r0) * W + ix
                base = np.uint64((ky * kw + kx) * O)
                for o in range(uO):
                    acc[wo, o] += z[row, base + o]


@njit(cache=True, fastmath=False, parallel=True)
def _kn2row_epilogue_nb(z, r0, W, H, kh, kw, stride, pad, ho0, n_rows, Wo, mul, bias,
                        ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream):
    O = bias.shape[0]
    for r in prange(n_rows):
        acc = np.empty((Wo, O), dtype=np.float32)
        y = np.empty(O, dtype=np.float32)
        ho = ho0 + np.int64(r)
        _kn2row_row_nb(z, r0, W, H, kh, kw, stride, pad, ho, Wo, acc)
        epilogue_rows_nb(acc, 0, Wo, ho * Wo, Wo, mul, bias, y,
                         ss, has_ss, cs, res, res_mode, slope, s, out, ns, has_pack, bits, stream)
    return out


def conv2d(x, w, bias=None, *, stride=1, padding=None, neg_slope=None, out_shuffle=1, residual=None,
           w_matrix=None, out=None):
    """Float32 2-D convolution of an NHWC map (PyTorch ``conv2d`` semantics, zero padding).

    ``x``: float32 ``(H, W, C)``; ``w``: float ``(O, C, kh, kw)``; ``bias``: ``(O,)`` or None;
    ``padding`` defaults to ``kh // 2``. Then, in this order: ``+ bias``, ``+ residual``
    (float32 ``(Ho, Wo, O)`` laid out before the shuffle, or ``(Ho*s, Wo*s, O/s^2)`` like the
    result), LeakyReLU with ``neg_slope`` if given, and PixelShuffle by ``out_shuffle`` fused
    into the store. ``w_matrix`` may pass a cached :func:`conv_weight_matrix` of ``w``
    (used by the im2col path); ``out`` a preallocated C-contiguous float32 output to fill
    (reusing buffers avoids the page faults of fresh large allocations).
    Returns float32 ``(Ho*s, Wo*s, O/s^2)``.
    """
    x = _check_map(x, "x")
    w = np.asarray(w)
    if w.ndim != 4 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError("w must be a float (O, C, kh, kw) array, got %s %s" % (w.dtype, w.shape))
    O, C, kh, kw = w.shape
    H, W, Cx = x.shape
    if Cx != C:
        raise ValueError("x has %d channels but w expects %d" % (Cx, C))
    stride = int(stride)
    if stride < 1:
        raise ValueError("stride must be >= 1, got %r" % (stride,))
    pad = kh // 2 if padding is None else int(padding)
    if pad < 0:
        raise ValueError("padding must be >= 0, got %r" % (padding,))
    Ho = (H + 2 * pad - kh) // stride + 1
    Wo = (W + 2 * pad - kw) // stride + 1
    if Ho <= 0 or Wo <= 0:
        raise ValueError("conv2d: map %dx%d too small for kernel %dx%d with padding %d" % (H, W, kh, kw, pad))
    if bias is None:
        bias_arr = np.zeros(O, np.float32)
    else:
        bias_arr = np.asarray(bias)
        if bias_arr.shape != (O,):
            raise ValueError("bias must have shape (%d,), got %s" % (O, bias_arr.shape))
        bias_arr = np.ascontiguousarray(bias_arr, dtype=np.float32)
    ones = np.ones(O, np.float32)
    args, out, _, perm = prepare_epilogue(Ho, Wo, O, None, None, residual, neg_slope, out_shuffle, None,
                                          _check_map, out)
    w = w.astype(np.float32, copy=False)
    if perm is not None:  # PixelShuffle: output channels in sub-pixel-major order
        w, bias_arr = w[perm], np.ascontiguousarray(bias_arr[perm])
    xflat = x.reshape(H * W, C)
    if kh * kw > 1 and 2 * O <= C:
        # kn2row: Wk[c, (ky*kw + kx)*O + o] = w[o, c, ky, kx]
        wk = np.ascontiguousarray(np.transpose(w, (1, 2, 3, 0)).reshape(C, kh * kw * O))
        row_bytes = 4 * W * kh * kw * O
        n_rows = max(1, min(Ho, (max(_BAND_BYTES // row_bytes, kh) - kh) // stride + 1))
        z_buf = np.empty(((n_rows - 1) * stride + kh) * W * kh * kw * O, dtype=np.float32)
        for ho0 in range(0, Ho, n_rows):
            n = min(n_rows, Ho - ho0)
            r0 = max(0, ho0 * stride - pad)
            r1 = min(H, (ho0 + n - 1) * stride - pad + kh)  # exclusive
            z = z_buf[:(r1 - r0) * W * kh * kw * O].reshape((r1 - r0) * W, kh * kw * O)
            np.dot(xflat[r0 * W:r1 * W], wk, out=z)
            _kn2row_epilogue_nb(z, r0, W, H, kh, kw, stride, pad, ho0, n, Wo, ones, bias_arr, *args)
        return out

    # im2col: wm[(ky*kw + kx)*C + c, o] = w[o, c, ky, kx]
    Kdim = kh * kw * C
    if w_matrix is None:
        wm = conv_weight_matrix(w)
    else:
        wm = np.asarray(w_matrix, dtype=np.float32)
        if wm.shape != (Kdim, O):
            raise ValueError("w_matrix must have shape (%d, %d), got %s" % (Kdim, O, wm.shape))
        wm = np.ascontiguousarray(wm if perm is None else wm[:, perm])
    direct = kh == 1 and kw == 1 and stride == 1 and pad == 0
    rows = max(1, min(Ho, max(_BAND_BYTES // (4 * Kdim), _MIN_BAND_PIXELS) // Wo))
    band_g = np.empty((rows * Wo, O), dtype=np.float32)
    band_cols = None if direct else np.empty((rows * Wo, Kdim), dtype=np.float32)
    for ho0 in range(0, Ho, rows):
        n = min(rows, Ho - ho0)
        g = band_g[:n * Wo]
        if direct:
            cols = xflat[ho0 * Wo:(ho0 + n) * Wo]
        else:
            cols = _im2col_nb(x, kh, kw, stride, pad, ho0, Wo, band_cols[:n * Wo])
        np.dot(cols, wm, out=g)
        _gemm_epilogue_nb(g, ho0, Wo, ones, bias_arr, *args)
    return out

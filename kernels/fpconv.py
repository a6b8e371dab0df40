"""Float32 convolution for the FP head, tail and upsampler, on BLAS GEMMs.

Memory stays bounded whatever the image size: the im2col path works in bands of output rows
(each im2col matrix about ``_BAND_BYTES``), the kn2row path keeps ``kh`` rows per work item.
Two formulations, picked by shape:

* im2col (the default): a jitted kernel gathers the patches of a band into a
  ``(rows*Wo, kh*kw*C)`` matrix and NumPy's BLAS multiplies it by the ``(kh*kw*C, O)``
  weight matrix. A 1x1 stride-1 conv skips the gather (the map already is the matrix).
* kn2row, when there are few output channels (``2*O <= C``, e.g. a 64 -> 3 tail conv at
  high resolution): the product ``x[iy] @ wk`` with ``wk`` of shape ``(C, kh*kw*O)`` gives
  every tap's contribution to every output channel for every pixel of input row ``iy``,
  and each output pixel sums its ``kh*kw`` shifted contributions. Each parallel work item
  keeps the last ``kh`` such rows in a small ring buffer (L2), so the map is read once and
  nothing but the output goes back to memory. That product has few columns (27 for O=3),
  a shape OpenBLAS handles poorly (and very poorly with two threads on a busy machine:
  3.5x slower than one), so it runs on a register-blocked FMA tile of our own
  (:func:`._vector.make_fma_tile`); it is therefore not bound by the BLAS thread count.

In both cases a jitted epilogue adds the bias (and the residual), applies the LeakyReLU and
writes the result PixelShuffle'd straight into the output, so no separate shuffle pass is
needed.
"""
import numba
import numpy as np
from numba import njit, prange

from ._epilogue import correlate_ref, epilogue_ref, epilogue_rows_nb, prepare_epilogue
from ._vector import make_fma_tile
from .bitpack import _check_map

__all__ = ["conv2d", "conv2d_ref", "conv_weight_matrix"]

_FMA_P, _FMA_COLS = 8, 32  # kn2row GEMM tile: 8 pixels x 32 columns (two 512-bit vectors)
_fma_tile = make_fma_tile(_FMA_P, _FMA_COLS // 16)
_BAND_BYTES = 8 << 20  # target size of one band's temporary matrix
_MIN_BAND_PIXELS = 1024


def conv2d_ref(x, w, bias=None, *, stride=1, padding=None, neg_slope=None, out_shuffle=1, residual=None):
    """Reference for :func:`conv2d`: direct correlation with float64 sums, then the epilogue
    (bias, residual, LeakyReLU, PixelShuffle) in float32."""
    p = w.shape[2] // 2 if padding is None else padding
    acc = correlate_ref(np.pad(x.astype(np.float64), ((p, p), (p, p), (0, 0))), w, stride)
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
def _gemm_epilogue_nb(g, ho0, Wo, mul, bias, ep):
    for r in prange(g.shape[0] // Wo):
        y = np.empty(g.shape[1], dtype=np.float32)
        ri = np.int64(r)  # one signature for the serial and the parallel typing
        epilogue_rows_nb(g, ri * Wo, Wo, (ho0 + ri) * Wo, Wo, mul, bias, y, ep)
    return ep.out


@njit(cache=True, fastmath=False, inline="always")
def _kn2row_input_row_nb(x, iy, wk, z):
    """``z[ix, :] = x[iy, ix, :] @ wk`` for one input row: the contribution of every tap to
    every output channel, for every pixel of the row."""
    W, C = x.shape[1], x.shape[2]
    xr = x[iy]
    if W >= _FMA_P:
        for b in range((W + _FMA_P - 1) // _FMA_P):
            m0 = min(b * _FMA_P, W - _FMA_P)  # the last block is shifted back
            for j0 in range(0, wk.shape[1], _FMA_COLS):
                _fma_tile(xr, wk, z, m0, j0)
    else:
        for m in range(W):
            for j in range(wk.shape[1]):
                z[m, j] = 0
            for c in range(C):
                v = xr[m, c]
                for j in range(wk.shape[1]):
                    z[m, j] += v * wk[c, j]


@njit(cache=True, fastmath=False)
def _kn2row_rows_nb(x, wk, O, kh, kw, stride, pad, ho_begin, ho_end, Wo, ring, ring_rows, acc, mul, bias, y,
                    ep):
    """Output rows ``ho_begin .. ho_end-1`` of a kn2row conv. ``ring[k]`` caches the tap
    contributions of input row ``ring_rows[k]`` (the ``kh`` rows a window spans map to
    distinct slots ``iy % kh``), so each input row is multiplied once per work item."""
    H, W = x.shape[0], x.shape[1]
    uO = np.uint64(O)
    for k in range(kh):
        ring_rows[k] = -1
    for ho in range(ho_begin, ho_end):
        for ky in range(kh):
            iy = ho * stride - pad + ky
            if 0 <= iy < H and ring_rows[iy % kh] != iy:
                _kn2row_input_row_nb(x, iy, wk, ring[iy % kh])
                ring_rows[iy % kh] = iy
        for wo in range(Wo):
            for o in range(O):
                acc[wo, o] = 0
            for ky in range(kh):
                iy = ho * stride - pad + ky
                if iy < 0 or iy >= H:
                    continue
                z = ring[iy % kh]
                for kx in range(kw):
                    ix = wo * stride - pad + kx
                    if ix < 0 or ix >= W:
                        continue
                    base = np.uint64((ky * kw + kx) * O)
                    for o in range(uO):
                        acc[wo, o] += z[ix, base + o]
        epilogue_rows_nb(acc, 0, Wo, ho * Wo, Wo, mul, bias, y, ep)


@njit(cache=True, fastmath=False, parallel=True)
def _kn2row_nb(x, wk, O, kh, kw, stride, pad, Ho, Wo, rows_per_item, mul, bias, ep):
    W = x.shape[1]
    for item in prange((Ho + rows_per_item - 1) // rows_per_item):
        ring = np.empty((kh, W, wk.shape[1]), dtype=np.float32)
        ring_rows = np.empty(kh, dtype=np.int64)
        acc = np.empty((Wo, O), dtype=np.float32)
        y = np.empty(O, dtype=np.float32)
        begin = np.int64(item) * rows_per_item
        _kn2row_rows_nb(x, wk, O, kh, kw, stride, pad, begin, min(Ho, begin + rows_per_item), Wo, ring, ring_rows,
                        acc, mul, bias, y, ep)
    return ep.out


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
    ep, out, _, perm = prepare_epilogue(Ho, Wo, O, None, None, residual, neg_slope, out_shuffle, None,
                                          _check_map, out)
    w = w.astype(np.float32, copy=False)
    if perm is not None:  # PixelShuffle: output channels in sub-pixel-major order
        w, bias_arr = w[perm], np.ascontiguousarray(bias_arr[perm])
    xflat = x.reshape(H * W, C)
    if kh * kw > 1 and 2 * O <= C:
        # kn2row: wk[c, (ky*kw + kx)*O + o] = w[o, c, ky, kx], zero columns up to whole tiles
        n_cols = -(-(kh * kw * O) // _FMA_COLS) * _FMA_COLS
        wk = np.zeros((C, n_cols), dtype=np.float32)
        wk[:, :kh * kw * O] = np.transpose(w, (1, 2, 3, 0)).reshape(C, kh * kw * O)
        # a few work items per thread; each recomputes the kh-1 input rows it shares
        rows_per_item = max(8, -(-Ho // (4 * numba.get_num_threads())))
        _kn2row_nb(x, wk, O, kh, kw, stride, pad, Ho, Wo, rows_per_item, ones, bias_arr, ep)
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
        _gemm_epilogue_nb(g, ho0, Wo, ones, bias_arr, ep)
    return out

"""A stack of identical binary units, run row by row with every intermediate map in cache.

The body of the tile-local binary SR networks is ``L`` units of the same shape, each::

    y = (popcount-conv3x3(sign(x - thr)) * mul + bias) * box3(mean_c |x|) + x,  then LeakyReLU(slope)

(``box3`` optional, ``slope`` 1 for none). Run one unit at a time, each reads and writes a
full float map. :func:`binary_stack` instead sweeps the image once: when layer ``l-1`` has
produced row ``r+1``, layer ``l`` can produce row ``r``, so each layer keeps only the three
packed input rows, three rows of ``mean_c |x|`` and two float rows it still needs (its
line buffers), and the only full-size maps are the stack's input and output. The packed
bits and the statistic of the next layer's input come from the same registers as the output
(the fused epilogue), so nothing is read twice.

Work is split into tiles of output rows x columns (one per thread by default). A tile's line
buffers cover its rows and columns plus a halo of ``L`` on each inner side: every layer
widens the region its output depends on by one pixel, so the tile's own pixels are exact and
the halo is recomputed by the neighbour (``L/rows`` extra work per inner edge).

Arithmetic is that of the per-unit path (:func:`binary_conv2d` with its float32 epilogue in
the documented order; the statistic summed in float64 as the reference does), so the result
equals :func:`binary_stack_ref`, which composes the per-unit references.
"""
import numpy as np
from numba import njit, prange

from ._vector import make_epilogue64
from .bconv import binary_conv2d_ref
from .bitpack import _check_map, n_words, pack_signs_ref, valid_bits_mask
from .ops import box_filter_mean_abs_ref
from .popcount import TILE_LANES, make_neg_bits64, make_xor_popcount_tile

__all__ = ["binary_stack", "binary_stack_ref", "stack_tiles"]

_P = 8  # pixels per register tile
_tile = make_xor_popcount_tile(_P, 3, 3, TILE_LANES)
_epilogue64 = make_epilogue64(abs_sums=True)
_neg_bits64 = make_neg_bits64()


# --------------------------------------------------------------------------- reference
def binary_stack_ref(x, w_bits, mul, bias, thr, slope, spatial, pad_value=1, residual=None):
    """Reference: the units applied one after the other with the per-unit references, then
    ``+ residual``. ``w_bits`` (L, 3, 3, CW, C) packed weights, ``mul``/``bias`` (L, C),
    ``thr`` (L, C) thresholds of each unit's input, ``slope`` (L,) LeakyReLU slopes (1 = none),
    ``spatial`` (L,) whether the unit multiplies by ``box3(mean_c |x|)``."""
    y = np.asarray(x, np.float32)
    C = y.shape[2]
    for l in range(len(w_bits)):
        bits = pack_signs_ref(y, thr[l])
        ss = box_filter_mean_abs_ref(y, 3) if spatial[l] else None
        y = binary_conv2d_ref(bits, w_bits[l], C, 3, 1, pad_value, mul[l], bias[l], spatial_scale=ss,
                              residual=y, neg_slope=float(slope[l]))
    if residual is not None:
        y = (y + np.asarray(residual, np.float32)).astype(np.float32)
    return y


# --------------------------------------------------------------------------- tile plan
def stack_tiles(height, width, layers, n_tiles=1, max_cols=512):
    """Output tiles ``(n, 4)`` int64 rows ``[r0, r1)`` x columns ``[c0, c1)``: ``n_tiles`` bands
    of rows (fewer if a band would be thinner than ``2 * layers`` rows) times enough column
    bands that none is wider than ``max_cols``."""
    n_rows = max(1, min(int(n_tiles), height // max(1, 2 * layers) or 1))
    n_cols = max(1, -(-width // int(max_cols)))
    rows = np.linspace(0, height, n_rows + 1).round().astype(np.int64)
    cols = np.linspace(0, width, n_cols + 1).round().astype(np.int64)
    return np.array([(rows[i], rows[i + 1], cols[j], cols[j + 1])
                     for i in range(n_rows) for j in range(n_cols)
                     if rows[i] < rows[i + 1] and cols[j] < cols[j + 1]], np.int64).reshape(-1, 4)


# --------------------------------------------------------------------------- kernel
@njit(cache=True, fastmath=False, inline="always")
def _load_input_row_nb(x, t, c0, bw, thr0, bits_l, slot, stat_l, sslot, CW, C):
    """Layer 0's line buffers for input row ``t``: packed bits (both copies) and mean |x|."""
    W = x.shape[1]
    for j in range(bw):
        base = (t * W + c0 + j) * C
        for cw in range(CW):
            word = _neg_bits64(x, base + 64 * cw, thr0, 64 * cw) if 64 * cw + 64 <= C else \
                _partial_word_nb(x, base, thr0, cw, C)
            bits_l[slot, 1 + j, cw] = word
            bits_l[slot + 3, 1 + j, cw] = word
        acc = 0.0
        for c in range(C):
            acc += abs(np.float64(x[t, c0 + j, c]))
        stat_l[sslot, 1 + j] = acc / C


@njit(cache=True, fastmath=False, inline="always")
def _partial_word_nb(x, base, thr, cw, C):
    word = np.uint64(0)
    xf = x.reshape(-1)
    for c in range(64 * cw, C):
        if xf[base + c] - thr[c] < 0:
            word |= np.uint64(1) << np.uint64(c - 64 * cw)
    return word


@njit(cache=True, fastmath=False, inline="always")
def _pad_rows_nb(bits_l, slot, pad_words, width, CW):
    for c in range(width):
        for k in range(CW):
            bits_l[slot, c, k] = pad_words[k]
            bits_l[slot + 3, c, k] = pad_words[k]


@njit(cache=True, fastmath=False)
def _stack_tile_nb(x, w, mul, bias, thr, slope, spatial, pad_words, K, residual, has_res, out, r_a, r_b, c_a, c_b):
    H, W, C = x.shape
    L = w.shape[0]
    CW = w.shape[3]
    Opad = w.shape[4]
    c0 = max(c_a - L, 0)
    c1 = min(c_b + L, W)
    bw = c1 - c0
    ntile = (bw + _P - 1) // _P
    width = ntile * _P + 2
    # line buffers: packed input rows (3 slots, stored twice so any 3 consecutive rows are
    # contiguous), mean|x| rows (3, zero column on each side), float input rows (2)
    bits = np.empty((L, 6, width, CW), dtype=np.uint64)
    stat = np.zeros((L, 3, bw + 2), dtype=np.float64)
    fl = np.zeros((L, 2, bw, C), dtype=np.float32)
    dots = np.empty((ntile * _P, Opad), dtype=np.float32)
    ones = np.ones(C, dtype=np.float32)
    sink = np.zeros(1, dtype=np.float64)
    colsum = np.zeros(bw + 2, dtype=np.float64)
    ss = np.ones(bw, dtype=np.float32)  # spatial scale of the current row (1 without re-scaling)
    xf, flf, outf, statf = x.reshape(-1), fl.reshape(-1), out.reshape(-1), stat.reshape(-1)  # flat views
    for l in range(L):
        for s in range(3):
            _pad_rows_nb(bits[l], s, pad_words, width, CW)
    r_lo = max(r_a - L, 0)
    r_hi = min(r_b + L, H)
    for t in range(r_lo, r_hi + L):
        if t < r_hi:
            _load_input_row_nb(x, t, c0, bw, thr[0], bits[0], t % 3, stat[0], t % 3, CW, C)
        for l in range(L):
            r = t - l - 1
            if r < max(r_a - (L - 1 - l), 0) or r >= min(r_b + (L - 1 - l), H):
                continue
            bl, wl = bits[l], w[l]
            if r + 1 == H:  # the row below the image is padding
                _pad_rows_nb(bl, H % 3, pad_words, width, CW)
            # XNOR-popcount of the whole buffer row into dots
            s0 = (r + 2) % 3  # slot of row r - 1
            for x0 in range(0, bw, _P):
                for o0 in range(0, Opad, TILE_LANES):
                    _tile(bl, wl, dots, x0, s0, x0, 1, o0, K)
            last = l == L - 1
            nxt = l + 1 if not last else l
            # views made once per row: making one costs atomic reference-count updates
            mul_l, bias_l, thr_n = mul[l], bias[l], thr[nxt]
            slope_l = slope[l]
            if spatial[l]:  # box3 of mean|x|: column sums of the three rows, then across
                for j in range(bw + 2):
                    v = 0.0
                    for dy in range(-1, 2):
                        rr = r + dy
                        if 0 <= rr < H:
                            v += stat[l, rr % 3, j]
                    colsum[j] = v
                for j in range(bw):
                    ss[j] = np.float32((colsum[j] + colsum[j + 1] + colsum[j + 2]) / 9.0)
            else:
                ss[:] = 1
            # the arrays this row reads and writes, chosen once per row: assigning an array
            # to a variable costs atomic reference-count updates, too many per pixel
            j_lo, j_hi = 0, bw
            if last:  # only the tile's own columns; the sums go to a scratch entry
                dest, sums = outf, sink
                d_base = (r * W + c0) * C
                j_lo, j_hi = c_a - c0, c_b - c0
            else:  # the next layer's float row and mean|x| entries
                dest, sums = flf, statf
                d_base = ((l + 1) * 2 + r % 2) * bw * C
            s_base = (nxt * 3 + r % 3) * (bw + 2) + 1
            if l == 0:
                res = xf
                res_base = (r * W + c0) * C
            else:
                res = flf
                res_base = (l * 2 + r % 2) * bw * C
            bits_a, bits_b = bits[nxt, r % 3], bits[nxt, r % 3 + 3]
            for j in range(j_lo, j_hi):
                s_off = 0 if last else s_base + j
                sums[s_off] = 0.0
                for cw in range(CW):
                    cb = 64 * cw
                    word = _epilogue64(dots, j * Opad + cb, mul_l, bias_l, cb, min(64, C - cb), ss[j], ones, res,
                                       res_base + j * C + cb, True, slope_l, dest, d_base + j * C + cb, False,
                                       thr_n, cb, sums, s_off)
                    if not last:
                        bits_a[1 + j, cw] = word
                        bits_b[1 + j, cw] = word
                if last:
                    if has_res:
                        col = c0 + j
                        for c in range(C):
                            out[r, col, c] += residual[r, col, c]
                else:
                    statf[s_off] /= C


@njit(cache=True, fastmath=False, parallel=True)
def _stack_nb(x, w, mul, bias, thr, slope, spatial, pad_words, K, residual, has_res, out, tiles):
    for i in prange(tiles.shape[0]):
        _stack_tile_nb(x, w, mul, bias, thr, slope, spatial, pad_words, K, residual, has_res, out,
                       tiles[i, 0], tiles[i, 1], tiles[i, 2], tiles[i, 3])
    return out


# --------------------------------------------------------------------------- public op
def binary_stack(x, w_bits, mul, bias, thr, slope, spatial, pad_value=1, residual=None, *, tiles=None, out=None):
    """Run ``L`` identical binary units over the float32 ``(H, W, C)`` map ``x`` (see the module
    docstring and :func:`binary_stack_ref` for the arguments) and add ``residual`` (H, W, C)
    if given. ``tiles`` is a plan from :func:`stack_tiles` (default: one tile per thread)."""
    from . import get_num_threads

    x = _check_map(x, "x")
    H, W, C = x.shape
    w_bits = np.asarray(w_bits)
    L = w_bits.shape[0] if w_bits.ndim == 5 else 0
    CW = n_words(C)
    if w_bits.dtype != np.uint64 or w_bits.ndim != 5 or w_bits.shape[1:] != (3, 3, CW, C) or L == 0:
        raise ValueError("w_bits must be uint64 (L, 3, 3, %d, %d), got %s %s" % (CW, C, w_bits.dtype, w_bits.shape))
    f32 = lambda a, name: _stack_param(a, (L, C), name)  # noqa: E731
    mul, bias, thr = f32(mul, "mul"), f32(bias, "bias"), f32(thr, "thr")
    slope = _stack_param(slope, (L,), "slope")
    spatial = np.ascontiguousarray(np.asarray(spatial, dtype=np.bool_).reshape(-1))
    if spatial.shape != (L,):
        raise ValueError("spatial must have %d entries, got %d" % (L, spatial.size))
    if pad_value not in (1, -1):
        raise ValueError("binary_stack pads with +1 or -1, got %r" % (pad_value,))
    has_res = residual is not None
    res = _check_map(residual, "residual") if has_res else np.empty((0, 0, 0), np.float32)
    if has_res and res.shape != x.shape:
        raise ValueError("residual must have the shape of x %s, got %s" % (x.shape, res.shape))
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous float32 array of shape %s" % (x.shape,))
    if H * W == 0:
        return out
    # pad the output channels of the weights to whole 8-lane groups (zero weights, unused)
    opad = -(-C // TILE_LANES) * TILE_LANES
    w_full = np.zeros(w_bits.shape[:4] + (opad,), np.uint64)
    w_full[..., :C] = w_bits
    pad_words = valid_bits_mask(C) if pad_value == -1 else np.zeros(CW, np.uint64)
    if tiles is None:
        tiles = stack_tiles(H, W, L, get_num_threads())
    tiles = np.ascontiguousarray(tiles, dtype=np.int64)
    return _stack_nb(x, w_full, mul, bias, thr, slope, spatial, pad_words, np.int64(9 * C), res, has_res, out, tiles)


def _stack_param(a, shape, name):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if a.shape != shape:
        raise ValueError("%s must have shape %s, got %s" % (name, shape, a.shape))
    return a

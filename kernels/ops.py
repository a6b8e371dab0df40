"""Small NHWC float32 operations used around the convolutions.

Every public op ``foo`` validates its inputs, then calls the jitted ``_foo_nb``; ``foo_ref``
is a plain NumPy reference with the same semantics (PyTorch's, for NHWC maps without N).
"""
import numpy as np
from numba import njit, prange

from .bitpack import _check_map

__all__ = [
    "pixel_shuffle", "pixel_shuffle_ref", "pixel_unshuffle_ref",
    "resize_bilinear", "resize_bilinear_ref", "resize_nearest", "resize_nearest_ref",
    "box_filter_mean_abs", "box_filter_mean_abs_ref", "map_stats", "map_stats_ref",
]


def _check_scale(s, name="s"):
    if int(s) != s or int(s) < 1:
        raise ValueError("%s must be a positive integer, got %r" % (name, s))
    return int(s)


# --------------------------------------------------------------------------- pixel shuffle
def pixel_shuffle_ref(x, s):
    """Reference: ``out[h*s + i, w*s + j, c] = x[h, w, c*s*s + i*s + j]`` (PyTorch order)."""
    H, W, C = x.shape
    return np.ascontiguousarray(
        x.reshape(H, W, C // (s * s), s, s).transpose(0, 3, 1, 4, 2).reshape(H * s, W * s, C // (s * s)))


def pixel_unshuffle_ref(y, s):
    """Reference inverse of :func:`pixel_shuffle_ref`: ``(H*s, W*s, C) -> (H, W, C*s*s)``."""
    Hs, Ws, C = y.shape
    H, W = Hs // s, Ws // s
    return np.ascontiguousarray(y.reshape(H, s, W, s, C).transpose(0, 2, 4, 1, 3).reshape(H, W, C * s * s))


@njit(cache=True, fastmath=False, parallel=True)
def _pixel_shuffle_nb(x, s, out):
    H, W, C = x.shape
    oc = C // (s * s)
    for h in prange(H):
        for i in range(s):
            for w in range(W):
                for j in range(s):
                    for c in range(oc):
                        out[h * s + i, w * s + j, c] = x[h, w, (c * s + i) * s + j]
    return out


def pixel_shuffle(x, s):
    """PixelShuffle of a float32 ``(H, W, C*s*s)`` map into ``(H*s, W*s, C)``, PyTorch order:
    input channel ``c*s*s + i*s + j`` goes to output pixel ``(h*s + i, w*s + j)``, channel ``c``."""
    x = _check_map(x, "x")
    s = _check_scale(s)
    H, W, C = x.shape
    if C % (s * s):
        raise ValueError("pixel_shuffle: channels %d not divisible by s*s = %d" % (C, s * s))
    out = np.empty((H * s, W * s, C // (s * s)), dtype=np.float32)
    if out.size == 0:
        return out
    return _pixel_shuffle_nb(x, s, out)


# --------------------------------------------------------------------------- resizing
def _upscale_args(x, s):
    """Validated ``x`` and ``s`` and the float32 ``(H*s, W*s, C)`` output of a resize."""
    x = _check_map(x, "x")
    s = _check_scale(s)
    H, W, C = x.shape
    return x, s, np.empty((H * s, W * s, C), dtype=np.float32)


def _bilinear_axis(n_in, s):
    """Source indices and weights of PyTorch's bilinear resize (align_corners=False) along
    one axis upscaled by the integer ``s``: ``(i0, i1, w0, w1)`` of length ``n_in * s``."""
    dst = np.arange(n_in * s, dtype=np.float32)
    src = (dst + np.float32(0.5)) * np.float32(1.0 / s) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_bilinear_ref(x, s):
    """Reference: bilinear ``s``-times upscaling of ``(H, W, C)`` matching
    ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False, scale_factor=s)``."""
    H, W, _ = x.shape
    y0, y1, hy0, hy1 = _bilinear_axis(H, s)
    x0, x1, wx0, wx1 = _bilinear_axis(W, s)
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    top = wx0 * x[y0][:, x0] + wx1 * x[y0][:, x1]
    bottom = wx0 * x[y1][:, x0] + wx1 * x[y1][:, x1]
    return (hy0[:, None, None] * top + hy1[:, None, None] * bottom).astype(np.float32)


@njit(cache=True, fastmath=False, parallel=True)
def _resize_bilinear_nb(x, y0, y1, hy0, hy1, x0, x1, wx0, wx1, out):
    Ho, Wo, C = out.shape
    for oy in prange(Ho):
        a, b = y0[oy], y1[oy]
        ha, hb = hy0[oy], hy1[oy]
        for ox in range(Wo):
            l, r = x0[ox], x1[ox]
            wl, wr = wx0[ox], wx1[ox]
            for c in range(C):
                top = wl * x[a, l, c] + wr * x[a, r, c]
                bottom = wl * x[b, l, c] + wr * x[b, r, c]
                out[oy, ox, c] = ha * top + hb * bottom
    return out


def resize_bilinear(x, s):
    """Bilinear upscaling of a float32 ``(H, W, C)`` map by the integer ``s`` ->
    ``(H*s, W*s, C)``, as PyTorch ``interpolate(mode='bilinear', align_corners=False)``."""
    x, s, out = _upscale_args(x, s)
    if out.size == 0:
        return out
    return _resize_bilinear_nb(x, *_bilinear_axis(x.shape[0], s), *_bilinear_axis(x.shape[1], s), out)


def resize_nearest_ref(x, s):
    """Reference: nearest-neighbour upscaling, ``out[y, x] = in[y // s, x // s]``."""
    return np.ascontiguousarray(np.repeat(np.repeat(x, s, axis=0), s, axis=1))


@njit(cache=True, fastmath=False, parallel=True)
def _resize_nearest_nb(x, s, out):
    H, W, C = x.shape
    for h in prange(H):
        for i in range(s):
            for w in range(W):
                for j in range(s):
                    for c in range(C):
                        out[h * s + i, w * s + j, c] = x[h, w, c]
    return out


def resize_nearest(x, s):
    """Nearest-neighbour upscaling of a float32 ``(H, W, C)`` map by the integer ``s``
    (``out[y, x] = in[y // s, x // s]``, as PyTorch ``interpolate(mode='nearest')``)."""
    x, s, out = _upscale_args(x, s)
    if out.size == 0:
        return out
    return _resize_nearest_nb(x, s, out)


# --------------------------------------------------------------------------- pooling
def box_filter_mean_abs_ref(x, k):
    """Reference: ``m = mean_c |x|`` then the ``k x k`` mean with zero padding ``k // 2``
    counting the padding (``avg_pool2d(m, k, 1, k // 2, count_include_pad=True)``) -> (H, W)."""
    H, W, _ = x.shape
    m = np.abs(x).mean(axis=2, dtype=np.float64)
    p = k // 2
    mp = np.pad(m, p)
    acc = np.zeros((H, W), dtype=np.float64)
    for dy in range(k):
        for dx in range(k):
            acc += mp[dy:dy + H, dx:dx + W]
    return (acc / (k * k)).astype(np.float32)


@njit(cache=True, fastmath=False, parallel=True)
def _row_box_sums_nb(m, p, out):
    """``out[h, w] = sum_{|d| <= p} m[h, w + d]`` over the in-range columns (zero padding)."""
    H, W = m.shape
    for h in prange(H):
        for w in range(W):
            t = 0.0
            for d in range(-p, p + 1):
                if 0 <= w + d < W:
                    t += m[h, w + d]
            out[h, w] = t
    return out


@njit(cache=True, fastmath=False, parallel=True)
def _box_filter_mean_abs_nb(x, k, out):
    H, W, C = x.shape
    p = k // 2
    m = np.empty((H, W), dtype=np.float64)
    for h in prange(H):
        for w in range(W):
            t = 0.0
            for c in range(C):
                t += abs(x[h, w, c])
            m[h, w] = t / C
    # horizontal box sums, then the same along columns (on the transpose)
    hs = _row_box_sums_nb(m, p, np.empty((H, W), dtype=np.float64))
    box = _row_box_sums_nb(np.ascontiguousarray(hs.T), p, np.empty((W, H), dtype=np.float64))
    inv = 1.0 / (k * k)
    for h in prange(H):
        for w in range(W):
            out[h, w] = box[w, h] * inv
    return out


def box_filter_mean_abs(x, k):
    """Local mean magnitude of a float32 ``(H, W, C)`` map -> float32 ``(H, W)``: the mean
    over channels of ``|x|``, then a ``k x k`` box mean with zero padding ``k // 2`` that
    counts the padding (``avg_pool2d(..., k, stride=1, padding=k//2,
    count_include_pad=True)``). ``k`` must be odd."""
    x = _check_map(x, "x")
    if int(k) != k or k < 1 or k % 2 == 0:
        raise ValueError("box_filter_mean_abs: k must be a positive odd integer, got %r" % (k,))
    H, W, C = x.shape
    if C == 0:
        raise ValueError("box_filter_mean_abs of a map with no channels")
    out = np.empty((H, W), dtype=np.float32)
    if out.size == 0:
        return out
    return _box_filter_mean_abs_nb(x, int(k), out)


# --------------------------------------------------------------------------- map statistics
def map_stats_ref(x, w=None):
    """Reference: one read of a ``(H, W, C)`` map gives both inputs of the re-scalings:
    ``pixel[h, w]`` = ``mean_c |x|`` (``w`` None) or ``sum_c x * w[c]``, and
    ``channel[c]`` = the mean of channel ``c`` over all pixels. float32 ``(H, W)``, ``(C,)``."""
    x64 = x.astype(np.float64)
    pixel = np.abs(x64).mean(axis=2) if w is None else x64 @ np.asarray(w, np.float64)
    return pixel.astype(np.float32), x64.mean(axis=(0, 1)).astype(np.float32)


@njit(cache=True, fastmath={"reassoc", "nsz"}, parallel=True)
def _map_stats_nb(x, w, use_w, pixel, rows):
    H, W, C = x.shape
    inv = np.float32(1.0 / C)
    for h in prange(H):
        acc = np.zeros(C, dtype=np.float32)
        for j in range(W):
            t = np.float32(0.0)
            if use_w:
                for c in range(C):
                    v = x[h, j, c]
                    acc[c] += v
                    t += v * w[c]
                pixel[h, j] = t
            else:
                for c in range(C):
                    v = x[h, j, c]
                    acc[c] += v
                    t += abs(v)
                pixel[h, j] = t * inv
        for c in range(C):
            rows[h, c] = acc[c]
    return pixel


def map_stats(x, w=None):
    """Per-pixel ``mean_c |x|`` (or ``x · w`` when ``w`` is given) and per-channel means of
    a float32 ``(H, W, C)`` map in one parallel pass (see :func:`map_stats_ref`)."""
    x = _check_map(x, "x")
    H, W, C = x.shape
    if H * W == 0:
        raise ValueError("map_stats of an empty map")
    use_w = w is not None
    if use_w:
        w = np.ascontiguousarray(w, dtype=np.float32)
        if w.shape != (C,):
            raise ValueError("w must have shape (%d,), got %s" % (C, w.shape))
    else:
        w = np.zeros(C, dtype=np.float32)
    rows = np.empty((H, C), dtype=np.float64)
    pixel = _map_stats_nb(x, w, use_w, np.empty((H, W), dtype=np.float32), rows)
    return pixel, (rows.sum(axis=0) / (H * W)).astype(np.float32)

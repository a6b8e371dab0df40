"""Swin transformer helpers of the runtime (NumPy, GELU jitted with Numba): layer norm,
exact GELU, window partition/reverse and the shifted-window attention mask. The engine's
``layer_norm`` and ``swin_block`` ops are built from them.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * w + b).astype(np.float32)


def window_partition(x, ws):
    h, w, c = x.shape
    return x.reshape(h // ws, ws, w // ws, ws, c).transpose(0, 2, 1, 3, 4).reshape(-1, ws * ws, c)


def window_reverse(win, ws, h, w):
    c = win.shape[-1]
    return win.reshape(h // ws, w // ws, ws, ws, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)


def shifted_window_mask(h, w, ws, shift):
    region = np.zeros((h, w), np.float32)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[hs, wsl] = label
            label += 1
    ids = window_partition(region[..., None], ws)[..., 0]
    return np.where(ids[:, None, :] != ids[:, :, None], np.float32(-100.0), np.float32(0.0))


def gelu_ref(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * (1 + erf(x / sqrt 2)) / 2`` (NumPy has no erf: math.erf per element)."""
    erf = np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64) / math.sqrt(2.0)).astype(np.float64)
    return (0.5 * x * (1.0 + erf)).astype(np.float32)


@njit(cache=True, parallel=True)
def _gelu_nb(x, out):
    flat, res = x.reshape(-1), out.reshape(-1)
    for i in prange(flat.size):
        v = np.float64(flat[i])
        res[i] = np.float32(0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU (as ``torch.nn.GELU()``), compiled; :func:`gelu_ref` is its reference."""
    x = np.ascontiguousarray(x, np.float32)
    return _gelu_nb(x, np.empty_like(x))

"""Upscale any supported image with a runtime engine.

:func:`upscale_image` takes an image as :func:`ebsr_basicsr.upscale.imageio.read_image` returns it
(uint8 or uint16; gray, BGR or BGRA) and returns the upscaled image in the same layout and
depth. The engine only ever sees float32 RGB in [0, 1] (see ``Engine.run``):

* gray is replicated to 3 channels for the model and converted back to gray afterwards;
* alpha is upscaled with bicubic interpolation and put back;
* 16-bit images are converted to float directly, never through 8 bit.

Large images are processed in overlapping tiles: each tile is extended by ``tile_pad`` pixels
of context on every side, upscaled, and cropped back to its own area, so the result has no
seams as long as the pad covers the model's receptive field. Tiling is automatic when the
estimated working memory of a single pass exceeds the memory budget.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Mapping, Optional, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: feature width assumed when the engine's header does not say
DEFAULT_FEATURES = 64
_FEATURE_KEYS = ("num_feat", "n_feats", "num_features", "feat", "nf", "channels", "width", "num_channels")
_MIN_AUTO_TILE = 64


class UnsupportedImageError(ValueError):
    """The array is not an image layout this module handles."""


class EngineOutputError(RuntimeError):
    """The engine returned an array of the wrong shape."""


class EngineLike(Protocol):
    scale: int
    header: Mapping[str, Any]

    def run(self, x: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# memory budget and automatic tiling
# --------------------------------------------------------------------------------------------
def feature_width(header: Optional[Mapping[str, Any]]) -> int:
    """The model's feature width from an engine header (top level or one dict deep)."""
    if not isinstance(header, Mapping):
        return DEFAULT_FEATURES
    scopes = [header] + [v for v in header.values() if isinstance(v, Mapping)]
    for scope in scopes:
        for key in _FEATURE_KEYS:
            value = scope.get(key)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
                return int(value)
    return DEFAULT_FEATURES


def bytes_per_input_pixel(scale: int, features: int = DEFAULT_FEATURES) -> int:
    """Estimated peak working memory of one engine pass, per input pixel.

    A handful of float32 feature maps at input resolution, the upsampler's ``features * s**2``
    map before the pixel shuffle, and a few RGB images at output resolution (the result, the
    clipped copy, the output being assembled)."""
    return 4 * (8 * features + features * scale * scale + 4 * 3 * scale * scale)


def available_memory() -> Optional[int]:
    """Memory available to this process in bytes (Linux /proc/meminfo or sysconf), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget(workers: int = 1) -> int:
    """Half of the available memory shared by ``workers``, kept within [256 MiB, 8 GiB]."""
    avail = available_memory()
    budget = (avail // 2) if avail else 2 << 30
    budget //= max(1, workers)
    return int(min(max(budget, 256 << 20), 8 << 30))


def auto_tile_size(height: int, width: int, scale: int, *, features: int = DEFAULT_FEATURES,
                   tile_pad: int = 10, budget: Optional[int] = None) -> int:
    """0 if the whole image fits the memory budget, else the largest tile size that does."""
    if budget is None:
        budget = default_memory_budget()
    per_pixel = bytes_per_input_pixel(scale, features)
    if height * width * per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / per_pixel)) - 2 * tile_pad
    side = max(_MIN_AUTO_TILE, side - side % 8)
    return side


# --------------------------------------------------------------------------------------------
# running the engine
# --------------------------------------------------------------------------------------------
def _checked_run(engine: EngineLike, x: np.ndarray, scale: int) -> np.ndarray:
    out = engine.run(np.ascontiguousarray(x, dtype=np.float32))
    expect = (x.shape[0] * scale, x.shape[1] * scale, 3)
    if not isinstance(out, np.ndarray) or out.shape != expect:
        got = getattr(out, "shape", type(out).__name__)
        raise EngineOutputError(f"engine returned {got} for a {x.shape} input, expected {expect}")
    return out


def _tile_starts(size: int, tile: int):
    """Split [0, size) in ceil(size / tile) nearly equal parts (no thin sliver at the end)."""
    count = -(-size // tile)
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def iter_tiles(engine: EngineLike, rgb: np.ndarray, tile: int, tile_pad: int = 10):
    """Run ``engine.run`` over overlapping tiles of at most ``tile`` x ``tile`` input pixels.

    Yields ``(y, x, result)``: the top-left corner of ``result`` in the output image and the
    engine's float RGB output for that tile, already cropped to the tile's own area. Each
    tile is run with ``tile_pad`` extra pixels of context on each side (clamped to the image);
    ``tile <= 0`` runs the whole image at once."""
    scale = int(engine.scale)
    h, w = rgb.shape[:2]
    if tile <= 0 or (h <= tile and w <= tile):
        yield 0, 0, _checked_run(engine, rgb, scale)
        return
    for y0, y1 in _tile_starts(h, tile):
        py0, py1 = max(y0 - tile_pad, 0), min(y1 + tile_pad, h)
        for x0, x1 in _tile_starts(w, tile):
            px0, px1 = max(x0 - tile_pad, 0), min(x1 + tile_pad, w)
            res = _checked_run(engine, rgb[py0:py1, px0:px1], scale)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            yield y0 * scale, x0 * scale, res[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]


def tile_count(height: int, width: int, tile: int) -> int:
    """How many tiles :func:`iter_tiles` uses for an image."""
    if tile <= 0 or (height <= tile and width <= tile):
        return 1
    return len(_tile_starts(height, tile)) * len(_tile_starts(width, tile))


def run_tiled(engine: EngineLike, rgb: np.ndarray, tile: int, tile_pad: int = 10) -> np.ndarray:
    """``engine.run(rgb)`` computed tile by tile (see :func:`iter_tiles`): float32 RGB, not clipped."""
    scale = int(engine.scale)
    h, w = rgb.shape[:2]
    out = np.empty((h * scale, w * scale, 3), np.float32)
    for y, x, res in iter_tiles(engine, rgb, tile, tile_pad):
        out[y:y + res.shape[0], x:x + res.shape[1]] = res
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma (as cv2.COLOR_RGB2GRAY), with element-wise NumPy arithmetic so a pixel's
    value does not depend on the width of the tile it is in (OpenCV's SIMD paths may)."""
    return (rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587)
            + rgb[..., 2] * np.float32(0.114))


def _max_value(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise UnsupportedImageError(f"unsupported pixel type {dtype} (only 8- and 16-bit images are)")


def upscale_image(engine: EngineLike, img: np.ndarray, *, tile: int = 0, tile_pad: int = 10,
                  memory_budget: Optional[int] = None,
                  on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Upscale an image by ``engine.scale``, keeping its depth and channel layout.

    ``img``: uint8/uint16, (H, W) or (H, W, 1) gray, (H, W, 3) BGR or (H, W, 4) BGRA.
    ``tile``: tile size in input pixels (0: whole image, or automatic tiles when the image
    would need more than ``memory_budget`` bytes, default: see :func:`default_memory_budget`).
    ``tile_pad``: context added around each tile.
    ``on_tile(done, total)``: called after each tile.
    """
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or \
            (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        shape = getattr(img, "shape", None)
        raise UnsupportedImageError(f"unsupported image layout {shape} (expected gray, BGR or BGRA)")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise UnsupportedImageError("image has no pixels")
    maxval = _max_value(img.dtype)
    scale = int(engine.scale)
    h, w = img.shape[:2]
    gray = img.ndim == 2 or img.shape[2] == 1
    alpha = img[..., 3] if (not gray and img.shape[2] == 4) else None

    if gray:
        g = (img if img.ndim == 2 else img[..., 0]).astype(np.float32) / np.float32(maxval)
        rgb = np.repeat(g[..., None], 3, axis=2)
    else:
        rgb = img[..., 2::-1].astype(np.float32) / np.float32(maxval)

    if tile <= 0:
        tile = auto_tile_size(h, w, scale, features=feature_width(getattr(engine, "header", None)),
                              tile_pad=tile_pad, budget=memory_budget)
        if tile:
            log.debug("%dx%d image: automatic tiles of %d px", w, h, tile)

    # each tile goes straight to the output's own type: a float copy of a whole x4 image
    # would take 12 bytes per output pixel
    out = np.empty((h * scale, w * scale) + ((3,) if not gray else ()), img.dtype)
    total = tile_count(h, w, tile)
    for done, (y, x, res) in enumerate(iter_tiles(engine, rgb, tile, tile_pad), 1):
        res = np.clip(res, 0.0, 1.0)
        res = _luma(res) if gray else res[..., ::-1]
        out[y:y + res.shape[0], x:x + res.shape[1]] = np.rint(res * np.float32(maxval))
        if on_tile is not None:
            on_tile(done, total)
    del rgb
    if gray:
        return out if img.ndim == 2 else out[..., None]
    if alpha is None:
        return out
    size = (w * scale, h * scale)
    if alpha.min() == alpha.max():  # fully opaque (or uniform): nothing to interpolate
        big = np.full(size[::-1], alpha.flat[0], img.dtype)
    else:  # OpenCV's cubic resize of 8/16-bit data rounds and saturates to the type
        big = cv2.resize(alpha, size, interpolation=cv2.INTER_CUBIC)
    return np.dstack([out, big])

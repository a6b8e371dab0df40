"""Upscale any supported image with a runtime engine.

:func:`upscale_image` takes an image as :func:`ebsr_basicsr.upscale.imageio.read_image` returns it
(uint8 or uint16; gray, BGR or BGRA) and returns the upscaled image in the same layout and
depth. The engine only ever sees float32 RGB in [0, 1] (see ``Engine.run``):

* gray is replicated to 3 channels for the model and converted back to gray afterwards;
* alpha is upscaled with bicubic interpolation and put back;
* 16-bit images are converted to float directly, never through 8 bit.

Large images are processed in overlapping tiles: each tile is run with ``tile_pad`` pixels
of context on every side, and cropped back to its own area, so the result has no seams as
long as the pad covers the model's receptive field. Every tile is run on a window of the same
size (shifted inwards at the borders), so the engine reuses its buffers from tile to tile.

Memory: the float copy of the input is made one tile at a time, and each tile's result goes
straight into the output in its own type. :func:`memory_estimate` is the one estimate of the
whole pipeline's peak (input, output, alpha, encoding, one engine pass over a tile); when the
whole image would not fit the memory budget, :func:`plan_tiles` picks the largest tiles that
do, or refuses the image (:class:`MemoryBudgetError`) when even the smallest tiles cannot.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional, Protocol

import cv2
import numpy as np

from .interrupts import check as check_interrupt

log = logging.getLogger(__name__)

#: feature width assumed when the model header does not give ``network_g.num_feat``
DEFAULT_FEATURES = 64
_MIN_AUTO_TILE = 64
_MIN_BUDGET = 256 << 20


class UnsupportedImageError(ValueError):
    """The array is not an image layout this module handles."""


class EngineOutputError(RuntimeError):
    """The engine returned an array of the wrong shape."""


class MemoryBudgetError(Exception):
    """An image cannot be upscaled within the memory budget (a refusal, before any allocation)."""


class EngineLike(Protocol):
    scale: int
    header: Mapping[str, Any]

    def run(self, x: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# memory budget and automatic tiling
# --------------------------------------------------------------------------------------------
def model_features(engine: EngineLike) -> int:
    """The model's feature width: ``network_g.num_feat`` of its header, else 64."""
    header = getattr(engine, "header", None)
    net = header.get("network_g") if isinstance(header, Mapping) else None
    value = net.get("num_feat") if isinstance(net, Mapping) else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    return DEFAULT_FEATURES


def memory_estimate(engine: EngineLike, height: int, width: int, *, channels: int = 3, itemsize: int = 1,
                    tile: int = 0, tile_pad: int = 10) -> int:
    """Estimated peak bytes to upscale a ``height`` x ``width`` image of ``channels`` channels
    of ``itemsize`` bytes with tiles of ``tile`` pixels (0: whole image), writing included.

    Held for the whole image: the decoded input, the output (same layout, ``scale**2`` times
    the pixels), the upscaled alpha plane before it is copied in, and one more output-sized
    buffer for the encoding (16-bit to 8-bit conversion, dropped alpha, in-memory encoders).
    Held for one tile: the float32 copy of its window, the engine's working memory on that
    window, and the float result being rounded into the output.

    The engine's working memory is ``engine.working_bytes(h, w)`` when the engine has that
    method, else a guess per input pixel: float32 maps of 8 times the model's feature width,
    the upsampler's map of ``features * scale**2``, and the float RGB input and output."""
    scale = int(engine.scale)
    h, w = int(height), int(width)
    if tile > 0 and (h > tile or w > tile):
        h, w = min(h, tile + 2 * tile_pad), min(w, tile + 2 * tile_pad)
    pixels, out_pixels = int(height) * int(width), int(height) * int(width) * scale * scale
    whole = pixels * channels * itemsize + 2 * out_pixels * channels * itemsize
    if channels == 4:
        whole += out_pixels * itemsize
    working_bytes = getattr(engine, "working_bytes", None)
    if callable(working_bytes):
        working = int(working_bytes(h, w))
    else:
        features = model_features(engine)
        working = h * w * 4 * (3 + 8 * features + features * scale * scale + 3 * scale * scale)
    window = h * w * 4 * 3 + h * w * scale * scale * 4 * 3
    return whole + working + window


def _cgroup_available() -> Optional[int]:
    """Memory left under this process's cgroup limit (containers), or None if unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def available_memory() -> Optional[int]:
    """Memory available to this process in bytes (Linux /proc/meminfo and the cgroup limit,
    or sysconf), or None."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    limited = _cgroup_available()
    if limited is not None:
        avail = limited if avail is None else min(avail, limited)
    return avail


def default_memory_budget(workers: int = 1) -> int:
    """Half of the available memory shared by ``workers`` (2 GiB if unknown), at least 256 MiB."""
    avail = available_memory()
    budget = (avail // 2) if avail else 2 << 30
    return int(max(budget // max(1, workers), _MIN_BUDGET))


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def plan_tiles(engine: EngineLike, height: int, width: int, *, channels: int = 3, itemsize: int = 1,
               tile: int = 0, tile_pad: int = 10, budget: Optional[int] = None) -> int:
    """The tile size to use for an image within the memory budget (see :func:`memory_estimate`).

    ``tile`` > 0 (chosen by the user) is kept if it fits. ``tile`` = 0: 0 if the whole image
    fits, else the largest tile size (a multiple of 8, at least 64) that does. Raises
    MemoryBudgetError when nothing fits (the input and the output alone may not)."""
    if budget is None:
        budget = default_memory_budget()

    def need(t):
        return memory_estimate(engine, height, width, channels=channels, itemsize=itemsize, tile=t,
                               tile_pad=tile_pad)

    if tile > 0:
        if need(tile) > budget:
            raise MemoryBudgetError(
                f"a {width}x{height} image in tiles of {tile} px needs about {format_bytes(need(tile))}, more "
                f"than the memory budget of {format_bytes(budget)} (use a smaller --tile, or --memory-limit)")
        return tile
    if need(0) <= budget:
        return 0
    lo, hi = _MIN_AUTO_TILE, max(height, width)
    if need(lo) > budget:
        raise MemoryBudgetError(
            f"a {width}x{height} image needs about {format_bytes(need(lo))} even in tiles of {lo} px "
            f"(the input and the whole output are held in memory), more than the memory budget of "
            f"{format_bytes(budget)} (--memory-limit)")
    while hi - lo > 8:  # need(lo) fits, need(hi) does not
        mid = (lo + hi) // 2 // 8 * 8
        if mid <= lo:
            break
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid)
    return lo


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


def _windows(size: int, tile: int, pad: int):
    """``(start, end, window_start, window_end)`` of each tile along one axis. Every window
    has the same length, the tile's plus ``pad`` on each side where the image allows: at a
    border the window is shifted inwards (more context on the inner side) rather than cut."""
    if tile <= 0 or size <= tile:
        return [(0, size, 0, size)]
    parts = _tile_starts(size, tile)
    length = min(size, parts[0][1] - parts[0][0] + 2 * pad)
    return [(a, b, min(max(a - pad, 0), size - length), min(max(a - pad, 0), size - length) + length)
            for a, b in parts]


def tile_count(height: int, width: int, tile: int) -> int:
    """How many tiles :func:`iter_tiles` uses for an image."""
    return len(_windows(height, tile, 0)) * len(_windows(width, tile, 0))


def context_pad(engine: EngineLike, tile_pad: int) -> int:
    """The context to read around each tile: at least the model's receptive radius when the
    engine knows it (then tiles join exactly, as one pass would compute them)."""
    radius = getattr(engine, "receptive_radius", None)
    return max(int(tile_pad), radius) if isinstance(radius, int) else int(tile_pad)


def iter_tiles(engine: EngineLike, height: int, width: int, window: Callable[[int, int, int, int], np.ndarray],
               tile: int = 0, tile_pad: int = 10):
    """Run ``engine.run`` over overlapping tiles of at most ``tile`` x ``tile`` input pixels
    of a ``height`` x ``width`` image (``tile <= 0``: the whole image at once).

    ``window(y0, y1, x0, x1)`` returns the float32 RGB input for that area. Yields
    ``(y, x, result)``: the top-left corner of ``result`` in the output image and the
    engine's float RGB output for that tile, cropped to the tile's own area. Each tile is run
    with at least ``tile_pad`` pixels of context on each side (less at the image's borders).
    A pending interrupt is raised before each tile (see :mod:`.interrupts`)."""
    scale = int(engine.scale)
    for y0, y1, wy0, wy1 in _windows(height, tile, tile_pad):
        for x0, x1, wx0, wx1 in _windows(width, tile, tile_pad):
            check_interrupt()
            res = _checked_run(engine, window(wy0, wy1, wx0, wx1), scale)
            oy, ox = (y0 - wy0) * scale, (x0 - wx0) * scale
            yield y0 * scale, x0 * scale, res[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]


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
    ``tile``: tile size in input pixels (0: the whole image, or automatic tiles when the
    image would need more than ``memory_budget`` bytes, default: see :func:`default_memory_budget`;
    MemoryBudgetError if even small tiles would). ``tile_pad``: context added around each tile (at least the engine's
    ``receptive_radius`` when it has one, so tiles are exact).
    ``on_tile(done, total)``: called after each tile.
    """
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or \
            (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        shape = getattr(img, "shape", None)
        raise UnsupportedImageError(f"unsupported image layout {shape} (expected gray, BGR or BGRA)")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise UnsupportedImageError("image has no pixels")
    maxval = np.float32(_max_value(img.dtype))
    scale = int(engine.scale)
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    gray = channels == 1
    plane = img if img.ndim == 2 else img[..., 0]

    budget = default_memory_budget() if memory_budget is None else memory_budget
    tile_pad = context_pad(engine, tile_pad)
    chosen = plan_tiles(engine, h, w, channels=channels, itemsize=img.itemsize, tile=tile, tile_pad=tile_pad,
                        budget=budget)
    if chosen and not tile:
        log.info("%dx%d image: automatic tiles of %d px, to stay within the memory budget of %s",
                 w, h, chosen, format_bytes(budget))
    tile = chosen

    def window(y0, y1, x0, x1):
        """The float32 RGB input of an area, made only for that area."""
        x = np.empty((y1 - y0, x1 - x0, 3), np.float32)
        x[...] = plane[y0:y1, x0:x1, None] if gray else img[y0:y1, x0:x1, 2::-1]
        return np.divide(x, maxval, out=x)

    out = np.empty((h * scale, w * scale) + (() if gray else (channels,)), img.dtype)
    total = tile_count(h, w, tile)
    for done, (y, x, res) in enumerate(iter_tiles(engine, h, w, window, tile, tile_pad), 1):
        np.clip(res, 0.0, 1.0, out=res)
        res = _luma(res) if gray else res[..., ::-1]
        np.multiply(res, maxval, out=res)
        np.rint(res, out=res)
        area = (slice(y, y + res.shape[0]), slice(x, x + res.shape[1]))
        if gray:
            out[area] = res
        else:
            out[area + (slice(0, 3),)] = res
        del res
        if on_tile is not None:
            on_tile(done, total)
    if channels == 4:
        alpha = img[..., 3]
        if alpha.min() == alpha.max():  # fully opaque (or uniform): nothing to interpolate
            out[..., 3] = alpha.flat[0]
        else:  # OpenCV's cubic resize of 8/16-bit data rounds and saturates to the type
            out[..., 3] = cv2.resize(alpha, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    if img.ndim == 3 and gray:
        return out[..., None]
    return out

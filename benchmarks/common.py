"""Helpers shared by the benchmarks: the CPU they ran on, a real photo of any size, timing, peak memory."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (figures are only comparable on the same CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def photo(height: int, width: int | None = None) -> np.ndarray:
    """A real photo (scikit-image's astronaut, tiled if needed) of ``height`` x ``width``,
    RGB float32 in [0, 1]."""
    from skimage import data

    width = height if width is None else width
    img = data.astronaut()
    img = np.tile(img, (-(-height // img.shape[0]), -(-width // img.shape[1]), 1))[:height, :width]
    return np.ascontiguousarray(img, np.float32) / 255.0


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


#: Source of ``peak_rss_kb()`` for the probe scripts the benchmarks run in other processes (some
#: in another Python). It reads the process's own high-water mark, ``VmHWM``: on Linux
#: ``getrusage(RUSAGE_SELF).ru_maxrss`` of a child also counts its parent's memory at fork time
#: (kept across exec), so a probe started by a benchmark holding torch would report that too.
PEAK_RSS_SOURCE = """
def peak_rss_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

"""Numba kernels of the bitwise CPU runtime (``ebsr_basicsr.kernels``).

Bit and layout conventions are stated once in :mod:`.bitpack`. Every public op has a plain
NumPy ``*_ref`` twin that defines its semantics; the public op validates its arguments
(ValueError) and calls a jitted kernel. Kernels compile lazily on first call and are cached
on disk (``cache=True``), so importing this package compiles nothing.

API (maps are float32 NHWC without N, ``(H, W, C)``):

* ``pack_signs(x, shift=None) -> uint64 (H, W, ceil(C/64))``
* ``pack_weights(w (O, C, kh, kw)) -> uint64 (kh, kw, ceil(C/64), O)``;
  ``unpack_weights(packed, C, kh, kw) -> float32 ±1 (O, C, kh, kw)``;
  ``weight_tap_sums(packed, C) -> int64 (kh*kw, O)`` (zero-padding correction)
* ``binary_conv2d(x_bits, w_packed, in_channels, kernel_size, stride=1, pad_value=1,
  mul=None, bias=None, *, spatial_scale, channel_scale, residual, neg_slope, out_shuffle,
  next_shift, tap_sums, out, bits_out) -> out`` or ``(out, bits)``
* ``conv2d(x, w, bias=None, *, stride, padding, neg_slope, out_shuffle, residual,
  w_matrix, out)``; ``conv_weight_matrix(w)``
* ``pixel_shuffle``, ``resize_bilinear``, ``resize_nearest``, ``map_stats`` (per-pixel
  statistic and channel means in one pass), ``box_filter_mean_abs``; ``empty_aligned``
  (output buffers for streaming stores)
* ``binary_stack(x, w_bits, mul, bias, thr, slope, spatial, pad_value, residual, *, tiles)``:
  a stack of identical binary units run row by row with cache-resident line buffers;
  ``stack_tiles`` plans its tiles
* ``rgb_to_ycbcr``, ``ycbcr_upscale_to_rgb`` (the colour path of luma models, chroma
  upscaled bicubically on the fly)

Threads: the parallel kernels use Numba's thread pool. :func:`set_num_threads` sets it (and,
best effort, the thread count of NumPy's bundled OpenBLAS that runs the FP GEMMs); the
environment variable ``EBSR_NUM_THREADS`` sets it at import. Default: all cores. Numba's
setting is per calling thread: call :func:`set_num_threads` in the thread that runs the model.

Threading layer: unless ``NUMBA_THREADING_LAYER`` is set, importing this package selects
Numba's ``workqueue`` layer (if no parallel kernel has run yet). GNU OpenMP's spin-waiting
workers fight with OpenBLAS's between the GEMM and the jitted epilogue of an FP conv and with
other processes on a shared machine: measured on 2 busy cores, a 64->256 conv at 256x256 took
824 ms with ``omp`` and 194 ms with ``workqueue``. The ``workqueue`` layer does not allow
kernels to be called concurrently from several Python threads (processes are fine); set
``NUMBA_THREADING_LAYER=omp`` (or ``tbb``) for that.
"""
import ctypes
import glob
import os

import numba
import numpy as np

from .bitpack import (n_words, pack_signs, pack_signs_ref, pack_weights, pack_weights_ref, unpack_signs_ref,
                      unpack_weights, unpack_weights_ref, valid_bits_mask, weight_tap_sums, weight_tap_sums_ref)
from .bconv import binary_conv2d, binary_conv2d_ref
from ._epilogue import empty_aligned
from .fused import binary_stack, binary_stack_ref, stack_tiles
from .color import rgb_to_ycbcr, rgb_to_ycbcr_ref, resize_bicubic_ref, ycbcr_upscale_to_rgb, ycbcr_upscale_to_rgb_ref
from .fpconv import conv2d, conv2d_ref, conv_weight_matrix
from .ops import (box_filter_mean_abs, box_filter_mean_abs_ref, map_stats, map_stats_ref,
                  pixel_shuffle, pixel_shuffle_ref, pixel_unshuffle_ref, resize_bilinear, resize_bilinear_ref,
                  resize_nearest, resize_nearest_ref)
from .popcount import popcount_ref

__all__ = [
    "set_num_threads", "get_num_threads", "max_threads",
    "pack_signs", "pack_signs_ref", "unpack_signs_ref", "n_words", "valid_bits_mask",
    "pack_weights", "pack_weights_ref", "unpack_weights", "unpack_weights_ref",
    "weight_tap_sums", "weight_tap_sums_ref",
    "binary_conv2d", "binary_conv2d_ref",
    "conv2d", "conv2d_ref", "conv_weight_matrix", "empty_aligned",
    "pixel_shuffle", "pixel_shuffle_ref", "pixel_unshuffle_ref",
    "resize_bilinear", "resize_bilinear_ref", "resize_nearest", "resize_nearest_ref",
    "box_filter_mean_abs", "box_filter_mean_abs_ref", "map_stats", "map_stats_ref",
    "popcount_ref",
    "binary_stack", "binary_stack_ref", "stack_tiles",
    "rgb_to_ycbcr", "rgb_to_ycbcr_ref", "ycbcr_upscale_to_rgb", "ycbcr_upscale_to_rgb_ref", "resize_bicubic_ref",
]

_BLAS_SETTERS = None


def _openblas_thread_setters():
    """Functions setting the thread count of the OpenBLAS bundled with NumPy (empty list if
    NumPy uses another BLAS or the library cannot be found)."""
    setters = []
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                setters.append(fn)
                break
    return setters


def max_threads():
    """Size of Numba's thread pool (``NUMBA_NUM_THREADS``, by default the number of cores)."""
    return numba.config.NUMBA_NUM_THREADS


def set_num_threads(n):
    """Use ``n`` threads (1 <= n <= :func:`max_threads`) in the parallel kernels of the calling
    thread, and in NumPy's bundled OpenBLAS when it can be found."""
    global _BLAS_SETTERS
    n = int(n)
    if not 1 <= n <= max_threads():
        raise ValueError("number of threads must be in [1, %d], got %d" % (max_threads(), n))
    numba.set_num_threads(n)
    if _BLAS_SETTERS is None:
        _BLAS_SETTERS = _openblas_thread_setters()
    for fn in _BLAS_SETTERS:
        fn(n)


def get_num_threads():
    """Number of threads the parallel kernels use in the calling thread."""
    return numba.get_num_threads()


def _threads_from_env():
    value = os.environ.get("EBSR_NUM_THREADS", "").strip()
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        raise ValueError("EBSR_NUM_THREADS must be an integer, got %r" % value) from None
    set_num_threads(max(1, min(n, max_threads())))


if not os.environ.get("NUMBA_THREADING_LAYER") and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"
_threads_from_env()

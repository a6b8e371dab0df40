"""Kernels of the bitwise runtime against their NumPy references, and the references
against PyTorch.

Integer results (bit packing, ±1 dot products) are compared exactly; float results with
tight tolerances (justified where they are not exact).

Under ``NUMBA_DISABLE_JIT=1`` the jitted kernels run as plain Python; the file then
uses reduced case lists so that run stays short (``test_pure_python_subset`` runs it).
"""
import os
import subprocess
import sys
import zlib

import numba
import numpy as np
import pytest

import ebsr_basicsr.kernels as K
from ebsr_basicsr.kernels import fpconv
from ebsr_basicsr.kernels.popcount import popcount_ref

JIT_DISABLED = bool(numba.config.DISABLE_JIT)


def subset(cases, every=3):
    """All cases, or every ``every``-th one (plus the last) in the pure-Python run."""
    if not JIT_DISABLED:
        return cases
    picked = cases[::every]
    return picked if cases[-1] in picked else picked + [cases[-1]]


def rng_for(*key):
    """A generator seeded from ``key`` (stable across runs, unlike ``hash``)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand_map(rng, H, W, C):
    x = rng.standard_normal((H, W, C)).astype(np.float32)
    x[rng.random((H, W, C)) < 0.05] = 0.0  # exact zeros: sign(0) = +1
    return x


def signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# =========================================================================== popcount
def test_popcount_ref_exact():
    rng = np.random.default_rng(0)
    words = (rng.integers(0, 2 ** 63, size=200, dtype=np.uint64) * np.uint64(2)
             + rng.integers(0, 2, 200).astype(np.uint64))
    words[:3] = [0, np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64(1) << np.uint64(63)]
    expected = np.array([bin(int(w)).count("1") for w in words])
    assert np.array_equal(popcount_ref(words), expected)


def test_popcount64_intrinsic():
    from ebsr_basicsr.kernels.popcount import popcount64

    @numba.njit(cache=False)
    def total(a):
        t = 0
        for v in a:
            t += popcount64(v)
        return t

    words = np.array([0, 1, 3, 0xFFFFFFFFFFFFFFFF, 0x8000000000000001, 0x0123456789ABCDEF], dtype=np.uint64)
    assert total(words) == sum(bin(int(w)).count("1") for w in words)


# =========================================================================== packing
PACK_CHANNELS = [1, 3, 63, 64, 65, 128, 130]


@pytest.mark.parametrize("C", subset(PACK_CHANNELS))
@pytest.mark.parametrize("with_shift", [False, True])
def test_pack_signs_matches_ref(C, with_shift):
    rng = rng_for("pack", C, with_shift)
    x = rand_map(rng, 7, 5, C)
    x.flat[:4] = [-0.0, np.nan, -np.inf, np.inf][:min(4, x.size)]
    x.flat[-1] = -1e-30
    shift = (rng.standard_normal(C) * 0.5).astype(np.float32) if with_shift else None
    got = K.pack_signs(x, shift)
    ref = K.pack_signs_ref(x, shift)
    assert got.dtype == np.uint64 and got.shape == (7, 5, (C + 63) // 64)
    assert np.array_equal(got, ref)
    # unused high bits stay 0; round trip through the ±1 map
    assert not np.any(got & ~K.valid_bits_mask(C))
    xs = x - (0 if shift is None else shift)
    assert np.array_equal(K.unpack_signs_ref(got, C), np.where(xs < 0, -1, 1).astype(np.float32))


def test_pack_signs_edge_values():
    x = np.array([[[0.0, -0.0, 1e-45, -1e-45, np.nan, np.inf, -np.inf, -2.0]]], dtype=np.float32)
    bits = int(K.pack_signs(x)[0, 0, 0])
    assert [(bits >> c) & 1 for c in range(8)] == [0, 0, 0, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("C", subset(PACK_CHANNELS))
@pytest.mark.parametrize("k", [1, 3])
def test_pack_unpack_weights(C, k):
    rng = rng_for("w", C, k)
    w = rng.standard_normal((11, C, k, k)).astype(np.float32)
    w[0, 0, 0, 0] = 0.0  # sign(0) = +1
    packed = K.pack_weights(w)
    assert packed.dtype == np.uint64 and packed.shape == (k, k, (C + 63) // 64, 11)
    assert np.array_equal(packed, K.pack_weights_ref(w))
    pm = np.where(w < 0, -1, 1).astype(np.float32)
    assert np.array_equal(K.unpack_weights(packed, C, k, k), pm)
    assert np.array_equal(K.unpack_weights_ref(packed, C, k, k), pm)
    assert np.array_equal(K.weight_tap_sums(packed, C), K.weight_tap_sums_ref(w))


def test_unpack_weights_rejects_bad_input():
    packed = K.pack_weights(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError):
        K.unpack_weights(packed, 65, 3, 3)  # needs 2 words
    with pytest.raises(ValueError):
        K.unpack_weights(packed, 3, 1, 1)
    bad = packed.copy()
    bad[0, 0, 0, 0] = np.uint64(1) << np.uint64(40)  # beyond channel 3
    with pytest.raises(ValueError):
        K.unpack_weights(bad, 3, 3, 3)


# =========================================================================== binary conv
# (H, W, C, O, k, stride, pad_value)
BCONV_CASES = [
    (7, 5, 3, 8, 3, 1, 0),
    (7, 5, 64, 16, 3, 1, 1),
    (7, 5, 65, 12, 3, 2, -1),
    (13, 11, 63, 16, 3, 1, 0),
    (13, 11, 130, 24, 3, 2, 0),
    (13, 11, 128, 8, 3, 1, -1),
    (1, 1, 64, 8, 3, 1, 0),
    (1, 1, 1, 3, 3, 2, -1),
    (2, 9, 1, 5, 3, 1, 0),
    (20, 19, 64, 64, 3, 1, 0),
    (20, 19, 64, 72, 3, 2, 1),
    (17, 33, 65, 64, 3, 2, 0),
    (13, 11, 1, 8, 1, 1, 1),
    (13, 11, 63, 12, 1, 2, 0),
    (13, 11, 130, 16, 1, 1, -1),
    (1, 1, 128, 3, 1, 1, 1),
    (37, 1, 64, 40, 1, 1, 1),   # tokens (N, 1, C) through a 1x1 "linear" layer
    (7, 5, 64, 64, 1, 2, 1),
]


def _bconv_inputs(case, seed_extra=""):
    H, W, C, O, k, stride, pad = case
    rng = rng_for("bconv", case, seed_extra)
    x_bits = K.pack_signs(rand_map(rng, H, W, C))
    w_packed = K.pack_weights(rng.standard_normal((O, C, k, k)).astype(np.float32))
    return rng, x_bits, w_packed


@pytest.mark.parametrize("case", subset(BCONV_CASES))
def test_binary_conv_dot_exact(case):
    """With mul=1 and bias=0 the output is the integer ±1 dot product: compare exactly."""
    H, W, C, O, k, stride, pad = case
    _, x_bits, w_packed = _bconv_inputs(case)
    got = K.binary_conv2d(x_bits, w_packed, C, k, stride, pad)
    ref = K.binary_conv2d_ref(x_bits, w_packed, C, k, stride, pad)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    assert got.shape == ref.shape == (Ho, Wo, O)
    assert np.array_equal(got, ref)
    assert np.all(got == np.round(got))


def _epilogue_kwargs(rng, Ho, Wo, O, opts, s):
    kw = {"out_shuffle": s}
    if "spatial" in opts:
        kw["spatial_scale"] = rng.uniform(0.2, 2.0, (Ho, Wo)).astype(np.float32)
    if "channel" in opts:
        kw["channel_scale"] = rng.uniform(0.2, 2.0, O).astype(np.float32)
    if "residual" in opts:
        kw["residual"] = rng.standard_normal((Ho, Wo, O)).astype(np.float32) * 5
    if "residual_post" in opts:
        kw["residual"] = rng.standard_normal((Ho * s, Wo * s, O // (s * s))).astype(np.float32) * 5
    if "lrelu" in opts:
        kw["neg_slope"] = 0.1
    if "repack" in opts:
        kw["next_shift"] = rng.standard_normal(O // (s * s)).astype(np.float32)
    return kw


EPILOGUES = [
    ((), 1), (("spatial",), 1), (("channel",), 1), (("residual",), 1), (("lrelu",), 1), (("repack",), 1),
    (("spatial", "channel", "residual", "lrelu", "repack"), 1),
    ((), 2), (("residual", "lrelu", "repack"), 2), (("residual_post", "spatial"), 2),
    (("spatial", "channel", "residual_post", "lrelu", "repack"), 3), (("residual", "repack"), 3),
]
EPILOGUE_CASES = [  # output channels divisible by 36 so that shuffles 2 and 3 both apply
    (7, 5, 3, 36, 3, 1, 0),
    (13, 11, 65, 72, 3, 2, -1),
    (20, 19, 64, 72, 3, 1, 1),
    (13, 11, 130, 36, 1, 1, 1),
    (7, 5, 64, 144, 1, 2, 1),
]


@pytest.mark.parametrize("opts,s", subset(EPILOGUES, every=4))
@pytest.mark.parametrize("case", subset(EPILOGUE_CASES, every=2))
def test_binary_conv_epilogue(case, opts, s):
    H, W, C, O, k, stride, pad = case
    rng, x_bits, w_packed = _bconv_inputs(case, opts)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    mul = rng.uniform(-0.5, 0.5, O).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    kw = _epilogue_kwargs(rng, Ho, Wo, O, opts, s)
    got = K.binary_conv2d(x_bits, w_packed, C, k, stride, pad, mul, bias, **kw)
    ref = K.binary_conv2d_ref(x_bits, w_packed, C, k, stride, pad, mul, bias, **kw)
    if "repack" in opts:
        (got, bits), (ref, ref_bits) = got, ref
        # the fused repack is exactly pack_signs of the returned floats
        assert np.array_equal(bits, K.pack_signs_ref(got, kw["next_shift"]))
        assert np.array_equal(bits, K.pack_signs(got, kw["next_shift"]))
        assert bits.shape == ref_bits.shape
    assert got.shape == ref.shape == (Ho * s, Wo * s, O // (s * s))
    # same float32 operations in the same order: equal up to rounding of the last bit
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", subset([(13, 11, 130, 64, 3, 1, 0), (9, 8, 64, 144, 1, 1, 1),
                                         (7, 5, 65, 256, 3, 2, -1)], every=2))
def test_binary_conv_streaming_stores(case, monkeypatch):
    """Large outputs use non-temporal stores: force them on small maps (aligned and not)."""
    from ebsr_basicsr.kernels import _epilogue
    monkeypatch.setattr(_epilogue, "STREAM_BYTES", 0)
    H, W, C, O, k, stride, pad = case
    rng, x_bits, w_packed = _bconv_inputs(case)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    mul = rng.uniform(-0.5, 0.5, O).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    for s in (1, 2):
        kw = _epilogue_kwargs(rng, Ho, Wo, O, ("channel", "residual_post", "lrelu", "repack"), s)
        ref, ref_bits = K.binary_conv2d_ref(x_bits, w_packed, C, k, stride, pad, mul, bias, **kw)
        aligned = K.empty_aligned(ref.shape)
        assert aligned.ctypes.data % 64 == 0
        unaligned = np.empty(ref.size + 1, np.float32)[1:].reshape(ref.shape)
        for out in (None, aligned, unaligned):
            got, bits = K.binary_conv2d(x_bits, w_packed, C, k, stride, pad, mul, bias, out=out, **kw)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
            assert np.array_equal(bits, K.pack_signs(got, kw["next_shift"]))


def test_binary_conv_tap_sums_and_out_buffers():
    case = (13, 11, 65, 16, 3, 1, 0)
    rng, x_bits, w_packed = _bconv_inputs(case)
    ns = rng.standard_normal(16).astype(np.float32)
    out = np.full((13, 11, 16), np.nan, np.float32)
    bits_out = np.zeros((13, 11, 1), np.uint64)
    y, bits = K.binary_conv2d(x_bits, w_packed, 65, 3, 1, 0, tap_sums=K.weight_tap_sums(w_packed, 65),
                              next_shift=ns, out=out, bits_out=bits_out)
    assert y is out and bits is bits_out
    assert np.array_equal(y, K.binary_conv2d_ref(x_bits, w_packed, 65, 3, 1, 0))
    assert np.array_equal(bits, K.pack_signs(y, ns))
    with pytest.raises(ValueError):
        K.binary_conv2d(x_bits, w_packed, 65, 3, out=np.empty((13, 11, 15), np.float32))


@pytest.mark.parametrize("bad", ["dtype", "words", "kernel", "stride", "pad", "mul", "shuffle", "residual",
                                 "spatial", "next_shift", "weights"])
def test_binary_conv_validation(bad):
    _, x_bits, w_packed = _bconv_inputs((7, 5, 64, 16, 3, 1, 1))
    args = dict(x_bits=x_bits, w_packed=w_packed, in_channels=64, kernel_size=3)
    kw = {}
    if bad == "dtype":
        args["x_bits"] = x_bits.astype(np.int64)
    elif bad == "words":
        args["in_channels"] = 65
    elif bad == "kernel":
        args["kernel_size"] = 5
    elif bad == "stride":
        kw["stride"] = 3
    elif bad == "pad":
        kw["pad_value"] = 2
    elif bad == "mul":
        kw["mul"] = np.ones(15, np.float32)
    elif bad == "shuffle":
        kw["out_shuffle"] = 3  # 16 channels not divisible by 9
    elif bad == "residual":
        kw["residual"] = np.zeros((7, 5, 15), np.float32)
    elif bad == "spatial":
        kw["spatial_scale"] = np.zeros((7, 5), np.float64)
    elif bad == "next_shift":
        kw["next_shift"] = np.zeros(17, np.float32)
    elif bad == "weights":
        args["w_packed"] = w_packed[:, :, :, :8].astype(np.float32)
    with pytest.raises(ValueError):
        K.binary_conv2d(**args, **kw)


# =========================================================================== FP conv
# (H, W, C, O, k, stride, padding, shuffle)
FPCONV_CASES = [
    (7, 5, 3, 8, 3, 1, None, 1),      # head-like, im2col
    (13, 11, 16, 12, 3, 2, None, 2),  # im2col, stride 2, shuffle
    (9, 9, 8, 27, 3, 1, None, 3),
    (6, 7, 5, 4, 1, 1, None, 2),      # 1x1: GEMM on the map itself
    (8, 6, 5, 4, 1, 2, None, 1),
    (10, 12, 4, 6, 5, 1, None, 1),
    (1, 1, 3, 3, 3, 1, None, 1),
    (8, 8, 3, 5, 3, 2, 0, 1),         # explicit padding 0
    (9, 8, 16, 4, 3, 1, None, 2),     # kn2row (few output channels)
    (11, 13, 32, 3, 3, 2, None, 1),   # kn2row, stride 2
    (12, 9, 20, 2, 5, 1, 1, 1),       # kn2row, 5x5 with padding 1
    (21, 17, 64, 3, 3, 1, None, 1),   # kn2row tail conv
    (6, 5, 16, 3, 3, 1, None, 1),     # kn2row on rows narrower than one FMA tile
    (7, 3, 12, 4, 3, 2, None, 2),     # kn2row, narrow, stride 2, shuffle
    (40, 37, 40, 20, 3, 1, None, 1),  # kn2row, several work items and column tiles
]


def _fp_tol(C, k):
    # BLAS sums in float32 in its own order, the reference in float64: the error grows
    # like sqrt(number of terms) * eps * |term| with |term| ~ 1 here.
    return 1e-5 * np.sqrt(C * k * k) + 1e-6


@pytest.mark.parametrize("opts", subset([(), ("bias",), ("bias", "lrelu"), ("bias", "residual"),
                                         ("residual_post", "lrelu")], every=2))
@pytest.mark.parametrize("case", subset(FPCONV_CASES))
def test_conv2d_matches_ref(case, opts, monkeypatch):
    H, W, C, O, k, stride, padding, s = case
    monkeypatch.setattr(fpconv, "_BAND_BYTES", 2048)  # many bands, also for these small maps
    monkeypatch.setattr(fpconv, "_MIN_BAND_PIXELS", 8)
    rng = rng_for("fp", case, opts)
    x = rng.standard_normal((H, W, C)).astype(np.float32)
    w = rng.standard_normal((O, C, k, k)).astype(np.float32)
    p = k // 2 if padding is None else padding
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    kw = {"stride": stride, "padding": padding, "out_shuffle": s}
    if "bias" in opts:
        kw["bias"] = rng.standard_normal(O).astype(np.float32)
    if "lrelu" in opts:
        kw["neg_slope"] = 0.2
    if "residual" in opts:
        kw["residual"] = rng.standard_normal((Ho, Wo, O)).astype(np.float32)
    if "residual_post" in opts:
        kw["residual"] = rng.standard_normal((Ho * s, Wo * s, O // (s * s))).astype(np.float32)
    if case[3] % 64 == 0 or "bias" in opts:  # also the streaming stores, on some cases
        from ebsr_basicsr.kernels import _epilogue
        monkeypatch.setattr(_epilogue, "STREAM_BYTES", 0)
    got = K.conv2d(x, w, **kw)
    ref = K.conv2d_ref(x, w, **kw)
    assert got.shape == ref.shape == (Ho * s, Wo * s, O // (s * s))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=_fp_tol(C, k))
    again = K.conv2d(x, w, w_matrix=K.conv_weight_matrix(w), out=np.empty_like(got), **kw)
    np.testing.assert_array_equal(again, got)


def test_conv2d_validation():
    x = np.zeros((5, 5, 4), np.float32)
    w = np.zeros((8, 4, 3, 3), np.float32)
    for bad in [dict(x=x.astype(np.float64)), dict(w=w[:, :3]), dict(bias=np.zeros(7)), dict(out_shuffle=3),
                dict(residual=np.zeros((5, 5, 7), np.float32)), dict(w_matrix=np.zeros((3, 3), np.float32)),
                dict(x=np.zeros((1, 1, 4), np.float32), padding=0)]:
        kw = dict(x=x, w=w)
        kw.update(bad)
        with pytest.raises(ValueError):
            K.conv2d(kw.pop("x"), kw.pop("w"), **kw)


# =========================================================================== small ops
OP_SHAPES = [(7, 5, 3), (13, 11, 8), (1, 1, 4), (2, 9, 18)]


@pytest.mark.parametrize("shape", subset(OP_SHAPES, every=2))
def test_small_ops_match_refs(shape):
    rng = rng_for("ops", shape)
    x = rng.standard_normal(shape).astype(np.float32)
    H, W, C = shape
    for s in (2, 3):
        if C % (s * s) == 0:
            assert np.array_equal(K.pixel_shuffle(x, s), K.pixel_shuffle_ref(x, s))
            assert np.array_equal(K.pixel_unshuffle_ref(K.pixel_shuffle_ref(x, s), s), x)
        np.testing.assert_allclose(K.resize_bilinear(x, s), K.resize_bilinear_ref(x, s), rtol=1e-6, atol=1e-6)
        assert np.array_equal(K.resize_nearest(x, s), K.resize_nearest_ref(x, s))
    for k in (1, 3, 5):
        np.testing.assert_allclose(K.box_filter_mean_abs(x, k), K.box_filter_mean_abs_ref(x, k),
                                   rtol=1e-6, atol=1e-7)
    # float32 sums in the kernel (reassociated), float64 in the reference
    w = rng.standard_normal(C).astype(np.float32)
    for weights in (None, w):
        pixel, channel = K.map_stats(x, weights)
        pixel_ref, channel_ref = K.map_stats_ref(x, weights)
        np.testing.assert_allclose(pixel, pixel_ref, rtol=1e-5, atol=1e-5 * max(1, C ** 0.5))
        np.testing.assert_allclose(channel, channel_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(K.map_stats_ref(x)[0], np.abs(x).mean(axis=2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(K.map_stats_ref(x)[1], x.mean(axis=(0, 1), dtype=np.float64), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(K.map_stats_ref(x, w)[0], x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


def test_small_ops_validation():
    x = np.zeros((4, 4, 8), np.float32)
    with pytest.raises(ValueError):
        K.pixel_shuffle(x, 3)
    with pytest.raises(ValueError):
        K.resize_bilinear(x, 0)
    with pytest.raises(ValueError):
        K.resize_nearest(x.astype(np.float64), 2)
    with pytest.raises(ValueError):
        K.box_filter_mean_abs(x, 4)
    with pytest.raises(ValueError):
        K.map_stats(x[:, :, 0])
    with pytest.raises(ValueError):
        K.map_stats(x, np.zeros(7, np.float32))
    with pytest.raises(ValueError):
        K.map_stats(x[:0])


# =========================================================================== threads
def test_threads_roundtrip():
    n0 = K.get_num_threads()
    try:
        K.set_num_threads(1)
        assert K.get_num_threads() == 1
        K.set_num_threads(K.max_threads())
        assert K.get_num_threads() == K.max_threads()
    finally:
        K.set_num_threads(n0)
    with pytest.raises(ValueError):
        K.set_num_threads(0)
    with pytest.raises(ValueError):
        K.set_num_threads(K.max_threads() + 1)


@pytest.mark.skipif(JIT_DISABLED, reason="checked once, in the JIT run")
def test_env_thread_count():
    code = "import ebsr_basicsr.kernels as K; print(K.get_num_threads())"
    env = dict(os.environ, EBSR_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


# =========================================================================== references vs torch
def _torch():
    return pytest.importorskip("torch")


def _to_nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _from_nchw(t):
    return t[0].permute(1, 2, 0).numpy()


@pytest.mark.skipif(JIT_DISABLED, reason="references only: checked in the JIT run")
@pytest.mark.parametrize("case", BCONV_CASES[:12:2] + BCONV_CASES[12::2])
def test_binary_conv_ref_vs_torch(case):
    torch = _torch()
    F = torch.nn.functional
    H, W, C, O, k, stride, pad = case
    rng, x_bits, w_packed = _bconv_inputs(case, "torch")
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    s = 2 if O % 4 == 0 else 1
    mul = rng.uniform(-0.5, 0.5, O).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    kw = _epilogue_kwargs(rng, Ho, Wo, O, ("spatial", "channel", "residual", "lrelu"), s)
    ref = K.binary_conv2d_ref(x_bits, w_packed, C, k, stride, pad, mul, bias, **kw)

    a = _to_nchw(torch, K.unpack_signs_ref(x_bits, C))
    wt = torch.from_numpy(K.unpack_weights(w_packed, C, k, k))
    p = k // 2
    a = F.pad(a, (p, p, p, p), value=float(pad))
    y = F.conv2d(a.double(), wt.double(), stride=stride).float()
    y = y * torch.from_numpy(mul)[:, None, None] + torch.from_numpy(bias)[:, None, None]
    y = y * torch.from_numpy(kw["spatial_scale"])[None, None] * torch.from_numpy(kw["channel_scale"])[:, None, None]
    y = F.leaky_relu(y + _to_nchw(torch, kw["residual"]), 0.1)
    y = F.pixel_shuffle(y, s)
    np.testing.assert_allclose(ref, _from_nchw(y), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(JIT_DISABLED, reason="references only: checked in the JIT run")
@pytest.mark.parametrize("case", FPCONV_CASES[::2])
def test_conv2d_ref_vs_torch(case):
    torch = _torch()
    F = torch.nn.functional
    H, W, C, O, k, stride, padding, s = case
    rng = rng_for("fp-torch", case)
    x = rng.standard_normal((H, W, C)).astype(np.float32)
    w = rng.standard_normal((O, C, k, k)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    p = k // 2 if padding is None else padding
    ref = K.conv2d_ref(x, w, b, stride=stride, padding=padding, neg_slope=0.2, out_shuffle=s)
    y = F.conv2d(_to_nchw(torch, x).double(), torch.from_numpy(w).double(), torch.from_numpy(b).double(),
                 stride=stride, padding=p).float()
    y = F.pixel_shuffle(F.leaky_relu(y, 0.2), s)
    np.testing.assert_allclose(ref, _from_nchw(y), rtol=1e-5, atol=_fp_tol(C, k))


@pytest.mark.skipif(JIT_DISABLED, reason="references only: checked in the JIT run")
@pytest.mark.parametrize("shape", OP_SHAPES)
def test_small_op_refs_vs_torch(shape):
    torch = _torch()
    F = torch.nn.functional
    rng = rng_for("ops-torch", shape)
    x = rng.standard_normal(shape).astype(np.float32)
    xt = _to_nchw(torch, x)
    H, W, C = shape
    for s in (2, 3, 4):
        if C % (s * s) == 0:
            assert np.array_equal(K.pixel_shuffle_ref(x, s), _from_nchw(F.pixel_shuffle(xt, s)))
        bil = F.interpolate(xt, scale_factor=s, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(K.resize_bilinear_ref(x, s), _from_nchw(bil), rtol=1e-6, atol=1e-6)
        near = F.interpolate(xt, scale_factor=s, mode="nearest")
        assert np.array_equal(K.resize_nearest_ref(x, s), _from_nchw(near))
    np.testing.assert_allclose(K.map_stats_ref(x)[1], xt.double().mean(dim=(0, 2, 3)).float().numpy(),
                               rtol=1e-6, atol=1e-7)
    for k in (1, 3, 5):
        m = xt.abs().double().mean(dim=1, keepdim=True)
        box = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=True)[0, 0].float().numpy()
        np.testing.assert_allclose(K.box_filter_mean_abs_ref(x, k), box, rtol=1e-6, atol=1e-7)


# =========================================================================== fused stack
def _stack_case(rng, H, W, C, L, spatial=True):
    x = rand_map(rng, H, W, C)
    w = np.stack([K.pack_weights(signs(rng, (C, C, 3, 3))) for _ in range(L)])
    mul = (rng.random((L, C)) * 0.05 + 0.01).astype(np.float32)
    bias = (rng.standard_normal((L, C)) * 0.1).astype(np.float32)
    thr = (rng.standard_normal((L, C)) * 0.1).astype(np.float32)
    slope = np.array([0.1 if l % 2 == 0 else 1.0 for l in range(L)], np.float32)
    sp = np.array([spatial if isinstance(spatial, bool) else spatial[l] for l in range(L)], bool)
    return x, w, mul, bias, thr, slope, sp


STACK_CASES = [  # H, W, C, L, pad, tiles (n_tiles, max_cols) or None, residual, spatial
    (1, 1, 64, 2, 1, None, True, True),
    (9, 13, 64, 3, 1, None, True, True),
    (9, 13, 64, 3, 1, (3, 5), True, True),      # row and column tiles with halos
    (20, 17, 70, 4, -1, (2, 8), False, True),   # 2 words per pixel, -1 padding
    (16, 40, 64, 5, 1, (4, 16), True, True),
    (5, 3, 10, 2, 1, None, True, (True, False)),
    (12, 9, 33, 3, -1, (2, 4), True, False),
]


@pytest.mark.parametrize("case", subset(STACK_CASES, every=2))
def test_binary_stack_matches_ref(case):
    """The row-pipelined stack equals the per-unit references bit for bit, whatever the tiling
    (a tile's halo absorbs what its line buffers do not see)."""
    H, W, C, L, pad, tiling, with_res, spatial = case
    rng = rng_for("stack", case)
    x, w, mul, bias, thr, slope, sp = _stack_case(rng, H, W, C, L, spatial)
    res = rand_map(rng, H, W, C) if with_res else None
    tiles = None if tiling is None else K.stack_tiles(H, W, L, *tiling)
    got = K.binary_stack(x, w, mul, bias, thr, slope, sp, pad, res, tiles=tiles)
    ref = K.binary_stack_ref(x, w, mul, bias, thr, slope, sp, pad, res)
    assert got.shape == (H, W, C) and got.dtype == np.float32
    # the statistic is summed in float64 in another order than NumPy's mean: allow the last
    # bit of float32 (it has never differed in these cases)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_binary_stack_ref_is_the_per_unit_engine_path():
    """The reference composes what the engine does per unit: pack, box filter, conv epilogue."""
    rng = rng_for("stack-engine")
    x, w, mul, bias, thr, slope, sp = _stack_case(rng, 7, 6, 64, 2)
    y = x
    for l in range(2):
        pixel, _ = K.map_stats(y)
        ss = K.box_filter_mean_abs(pixel[:, :, None], 3)
        bits = K.pack_signs(y, thr[l])
        y = K.binary_conv2d(bits, w[l], 64, 3, 1, 1, mul[l], bias[l], spatial_scale=ss, residual=y,
                            neg_slope=float(slope[l]))
    np.testing.assert_allclose(K.binary_stack_ref(x, w, mul, bias, thr, slope, sp, 1), y, rtol=1e-5, atol=1e-5)


def test_stack_tiles_cover_the_image_once():
    for H, W, L, n, cols in [(256, 256, 12, 2, 512), (1080, 1920, 12, 2, 512), (7, 5, 12, 4, 512), (64, 64, 3, 8, 16)]:
        tiles = K.stack_tiles(H, W, L, n, cols)
        cover = np.zeros((H, W), int)
        for r0, r1, c0, c1 in tiles:
            cover[r0:r1, c0:c1] += 1
        assert (cover == 1).all()
        assert all(c1 - c0 <= cols for _, _, c0, c1 in tiles)


def test_binary_stack_validation():
    rng = rng_for("stack-bad")
    x, w, mul, bias, thr, slope, sp = _stack_case(rng, 4, 4, 64, 2)
    with pytest.raises(ValueError, match="w_bits"):
        K.binary_stack(x, w[:, :, :, :, :32], mul, bias, thr, slope, sp)
    with pytest.raises(ValueError, match="mul"):
        K.binary_stack(x, w, mul[:1], bias, thr, slope, sp)
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        K.binary_stack(x, w, mul, bias, thr, slope, sp, pad_value=0)
    with pytest.raises(ValueError, match="residual"):
        K.binary_stack(x, w, mul, bias, thr, slope, sp, 1, x[:2])
    with pytest.raises(ValueError, match="spatial"):
        K.binary_stack(x, w, mul, bias, thr, slope, sp[:1])


def test_abs_sum_epilogue_matches_its_reference():
    from ebsr_basicsr.kernels._vector import abs_sum64_ref, make_epilogue64

    epilogue = make_epilogue64(abs_sums=True)

    @numba.njit(cache=False)
    def run(src, mul, bias, cs, res, out, ns, sums, n):
        return epilogue(src, 0, mul, bias, 0, n, np.float32(0.5), cs, res, 0, True, np.float32(0.1), out, 0, False,
                        ns, 0, sums, 1)

    rng = rng_for("abs-sum")
    for n in (64, 37, 1):
        src, res = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
        mul, bias = rng.random(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
        cs, ns = np.ones(64, np.float32), np.zeros(64, np.float32)
        out, sums = np.zeros(64, np.float32), np.array([0.0, 2.0])
        run(src, mul, bias, cs, res, out, ns, sums, n)
        v = (src * mul + bias) * np.float32(0.5) * cs + res
        v = np.where(v >= 0, v, v * np.float32(0.1)).astype(np.float32)[:n]
        np.testing.assert_array_equal(out[:n], v)
        assert sums[1] == 2.0 + abs_sum64_ref(v) and sums[0] == 0.0


# =========================================================================== direct FP convs
DIRECT_CASES = [(1, 1, 1, 64), (7, 9, 1, 64), (13, 5, 64, 16), (16, 16, 64, 4), (5, 17, 3, 48), (9, 8, 64, 64),
                (6, 7, 64, 256),
                (4, 20, 70, 20)]


@pytest.mark.parametrize("case", subset(DIRECT_CASES, every=2))
def test_conv3x3_matches_ref(case):
    H, W, C, O = case
    rng = rng_for("direct", case)
    x = rand_map(rng, H, W, C)
    w = (rng.standard_normal((O, C, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    got = K.conv3x3(x, w, b)
    assert got.shape == (H, W, O)
    # FMA and another summation order than the float64 reference: float32 rounding of 9*C terms
    np.testing.assert_allclose(got, K.conv3x3_ref(x, w, b), rtol=1e-5, atol=1e-5)
    res = rand_map(rng, H, W, O)
    np.testing.assert_allclose(K.conv3x3(x, w, b, res), K.conv3x3_ref(x, w, b, res), rtol=1e-5, atol=1e-5)
    for s in (2, 3, 4):
        if O % (s * s) == 0:
            got = K.conv3x3(x, w, b, out_shuffle=s)
            assert got.shape == (H * s, W * s, O // (s * s))
            np.testing.assert_allclose(got, K.conv3x3_ref(x, w, b, out_shuffle=s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", subset([(7, 9, 64, 2, 1, True), (5, 6, 64, 4, 1, True), (4, 3, 64, 3, 3, True),
                                         (1, 1, 64, 2, 1, True), (6, 5, 32, 4, 3, False)], every=2))
def test_conv3x3_to_image_matches_ref(case):
    H, W, C, s, co, skip = case
    rng = rng_for("to-image", case)
    x = rand_map(rng, H, W, C)
    w = (rng.standard_normal((co * s * s, C, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(co * s * s).astype(np.float32)
    image = rng.random((H, W, co), dtype=np.float32) if skip else None
    mean = None if skip else rng.random(co, dtype=np.float32)
    got = K.conv3x3_to_image(x, w, b, s, 2.0, image, mean)
    assert got.shape == (H * s, W * s, co)
    np.testing.assert_allclose(got, K.conv3x3_to_image_ref(x, w, b, s, 2.0, image, mean), rtol=1e-5, atol=1e-5)


def test_direct_conv_validation():
    x = np.zeros((4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="w must be"):
        K.conv3x3(x, np.zeros((4, 7, 3, 3), np.float32))
    with pytest.raises(ValueError, match="bias"):
        K.conv3x3(x, np.zeros((4, 8, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="cannot be shuffled"):
        K.conv3x3_to_image(x, np.zeros((6, 8, 3, 3), np.float32), None, 2, 1.0, mean=np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="residual cannot be added"):
        K.conv3x3(x, np.zeros((4, 8, 3, 3), np.float32), None, np.zeros((4, 4, 4), np.float32), out_shuffle=2)
    with pytest.raises(ValueError, match="residual must have shape"):
        K.conv3x3(x, np.zeros((4, 8, 3, 3), np.float32), None, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="image must have shape"):
        K.conv3x3_to_image(x, np.zeros((4, 8, 3, 3), np.float32), None, 2, 1.0, np.zeros((4, 4, 3), np.float32))


# =========================================================================== pure-Python mode
@pytest.mark.skipif(JIT_DISABLED, reason="this is the pure-Python run")
def test_pure_python_subset():
    """The reduced case lists also pass with the JIT disabled (kernels as plain Python)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    color = os.path.join(os.path.dirname(__file__), "test_color.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, color]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

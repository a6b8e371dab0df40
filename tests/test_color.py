"""Colour path of luma (Y-channel) models: kernels against their references, the references
against BasicSR / PyTorch, and an exported luma network against PyTorch end to end."""
import numpy as np
import pytest

from ebsr_basicsr import kernels as K

SIZES = [(1, 1), (2, 3), (7, 5), (16, 16), (33, 20)]


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("h, w", SIZES)
def test_rgb_to_ycbcr_matches_reference(h, w):
    rgb = _rgb(h, w)
    y, cbcr = K.rgb_to_ycbcr(rgb)
    y_ref, cbcr_ref = K.rgb_to_ycbcr_ref(rgb)
    assert y.shape == (h, w, 1) and cbcr.shape == (h, w, 2)
    np.testing.assert_allclose(y, y_ref, atol=2e-6)
    np.testing.assert_allclose(cbcr, cbcr_ref, atol=2e-6)


def test_ycbcr_reference_is_basicsrs_bt601():
    basicsr = pytest.importorskip("basicsr.utils.color_util")
    rgb = _rgb(9, 11)
    y, cbcr = K.rgb_to_ycbcr_ref(rgb)
    expected = basicsr.rgb2ycbcr(rgb, y_only=False)
    np.testing.assert_allclose(y[..., 0], expected[..., 0], atol=1e-5)
    np.testing.assert_allclose(cbcr, expected[..., 1:], atol=1e-5)
    np.testing.assert_allclose(y[..., 0], basicsr.bgr2ycbcr(rgb[..., ::-1].copy(), y_only=True), atol=1e-5)


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("h, w", [(1, 1), (2, 3), (6, 7), (12, 9)])
def test_resize_bicubic_reference_is_pytorchs(h, w, s):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((h, w, 2)).astype(np.float32)
    t = torch.from_numpy(x.astype(np.float64)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(t, scale_factor=s, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(K.resize_bicubic_ref(x, s), expected[0].permute(1, 2, 0).numpy(), atol=1e-5)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("h, w", SIZES)
def test_ycbcr_upscale_to_rgb_matches_reference(h, w, s):
    rng = np.random.default_rng(2)
    y = rng.random((h * s, w * s, 1), dtype=np.float32)
    cbcr = rng.random((h, w, 2), dtype=np.float32)
    out = K.ycbcr_upscale_to_rgb(y, cbcr, s)
    np.testing.assert_allclose(out, K.ycbcr_upscale_to_rgb_ref(y, cbcr, s), atol=2e-6)


def test_ycbcr_round_trip_at_scale_one():
    rgb = _rgb(13, 17)
    y, cbcr = K.rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(K.ycbcr_upscale_to_rgb(y, cbcr, 1), rgb, atol=1e-5)


def test_color_kernels_refuse_bad_shapes():
    with pytest.raises(ValueError, match="3 channels"):
        K.rgb_to_ycbcr(np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="do not match scale"):
        K.ycbcr_upscale_to_rgb(np.zeros((8, 8, 1), np.float32), np.zeros((4, 4, 2), np.float32), 3)
    with pytest.raises(ValueError, match="float32"):
        K.rgb_to_ycbcr(np.zeros((4, 4, 3), np.float64))


@pytest.mark.skipif(bool(__import__("numba").config.DISABLE_JIT), reason="checked in the JIT run")
@pytest.mark.parametrize("scale", [2, 4])
def test_exported_luma_network_matches_pytorch(tmp_path, scale):
    """A trained-for-a-few-steps Y-channel SCALESNet, exported and run through the engine on an
    RGB photo, equals PyTorch's eval on the photo's Y with the chroma upscaled bicubically."""
    torch = pytest.importorskip("torch")
    from skimage import data

    from ebsr_basicsr.archs import build_arch
    from ebsr_basicsr.runtime import Engine
    from ebsr_basicsr.runtime.format import save_model
    from ebsr_basicsr.training.export import export_network

    opt = {"type": "SCALESNet", "num_in_ch": 1, "num_out_ch": 1, "num_feat": 64, "num_block": 2,
           "upscale": scale, "upsampler": "light", "image_skip": "bilinear", "channel": None, "body_end": None}
    torch.manual_seed(0)
    net = build_arch(opt)
    optim = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3):  # move thresholds and scales off their initial values
        x = torch.rand(2, 1, 16, 16)
        loss = (net(x) - torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic")).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    net.eval()
    header, tensors = export_network(net, opt)
    path = tmp_path / "luma.ebsr"
    save_model(path, header, tensors)
    engine = Engine.load(path)
    assert engine.in_channels == 1

    rgb = np.ascontiguousarray(data.astronaut()[100:140, 150:196], np.float32) / 255
    out = engine.run(rgb)
    y, cbcr = K.rgb_to_ycbcr_ref(rgb)
    with torch.no_grad():
        y_sr = net.double()(torch.from_numpy(y.astype(np.float64)).permute(2, 0, 1)[None])
    expected = K.ycbcr_upscale_to_rgb_ref(y_sr[0].permute(1, 2, 0).numpy().astype(np.float32), cbcr, scale)
    assert out.shape == (40 * scale, 46 * scale, 3)
    mse = float(np.mean((out - expected) ** 2))
    assert 10 * np.log10(1 / mse) > 50, mse
    native = engine.run_native(y)
    assert native.shape == (40 * scale, 46 * scale, 1)

"""The engine's graph rewrites (ebsr_basicsr.runtime.fusion): the fused engine computes what
the op-by-op engine computes."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ebsr_basicsr.archs import build_arch  # noqa: E402
from ebsr_basicsr.runtime import Engine  # noqa: E402
from ebsr_basicsr.runtime.format import save_model  # noqa: E402
from ebsr_basicsr.training.export import export_network  # noqa: E402
from ebsr_basicsr.weights import MODELS, model_path  # noqa: E402


def _export(tmp_path, opt, steps=3):
    """A network trained a few steps (so thresholds and scales leave their initial values)."""
    torch.manual_seed(0)
    net = build_arch(opt)
    optim = torch.optim.Adam(net.parameters(), 1e-3)
    c = opt.get("num_in_ch", 3)
    for _ in range(steps):
        x = torch.rand(2, c, 16, 16)
        target = torch.nn.functional.interpolate(x, scale_factor=opt["upscale"], mode="bicubic")
        loss = (net(x) - target).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    header, tensors = export_network(net.eval(), opt)
    path = tmp_path / "model.ebsr"
    save_model(path, header, tensors)
    return path


def _photo(h, w):
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[60:60 + h, 100:100 + w], np.float32) / 255


LUMA = {"type": "SCALESNet", "num_in_ch": 1, "num_out_ch": 1, "num_feat": 64, "num_block": 3, "upsampler": "light",
        "image_skip": "bilinear", "channel": None, "body_end": None}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tile_local_luma_model_is_fused_and_unchanged(tmp_path, scale):
    path = _export(tmp_path, dict(LUMA, upscale=scale))
    fused, plain = Engine.load(path), Engine.load(path, fuse=False)
    kinds = [type(op).__name__ for op, _, _ in fused._ops]
    assert kinds == ["Normalize", "DirectConv", "BinaryStack", "ConvToImage"]
    rgb = _photo(37, 45)
    a, b = fused.run(rgb), plain.run(rgb)
    assert a.shape == b.shape == (37 * scale, 45 * scale, 3)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


def test_rgb_model_with_body_end_conv_is_fused_and_unchanged(tmp_path):
    opt = {"type": "SCALESNet", "num_feat": 64, "num_block": 2, "upscale": 2, "upsampler": "light",
           "image_skip": "bilinear", "channel": None}
    path = _export(tmp_path, opt)
    fused, plain = Engine.load(path), Engine.load(path, fuse=False)
    kinds = [type(op).__name__ for op, _, _ in fused._ops]
    assert "BinaryStack" in kinds and "ConvToImage" in kinds
    rgb = _photo(20, 23)
    np.testing.assert_allclose(fused.run(rgb), plain.run(rgb), rtol=0, atol=2e-5)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_models_are_unchanged_by_fusion(name, scale):
    """Fused, every shipped model computes the image it computes unit by unit (the bicubic
    models' channel branch pools over the whole image: their units are not fused, the rest is)."""
    path = model_path(scale, name)
    fused, plain = Engine.load(path), Engine.load(path, fuse=False)
    rgb = _photo(24, 30)
    np.testing.assert_allclose(fused.run(rgb), plain.run(rgb), rtol=0, atol=2e-5)


def test_receptive_radius_and_exact_stripes(tmp_path):
    """A tile-local model knows how far its output looks, and running a large image in
    stripes with that much context gives exactly the one-pass result."""
    path = _export(tmp_path, dict(LUMA, upscale=2))
    engine = Engine.load(path)
    assert engine.receptive_radius == 3 * 2 + 2  # 6 binary units, the head conv, the upsampler
    rgb = _photo(90, 61)
    whole = engine.run(rgb)
    engine.stripe_bytes = 61 * engine._bytes_per_pixel * 30  # force stripes of a few rows
    assert engine.stripe_rows(90, 61) < 90
    np.testing.assert_array_equal(engine.run(rgb), whole)
    assert Engine.load(model_path(2, "bicubic")).receptive_radius is None  # pools over the whole image
    assert Engine.load(model_path(2, "robust")).receptive_radius == 5 * 2 + 2  # 5 blocks: tile-local


def test_working_bytes_stay_bounded_by_the_stripes(tmp_path):
    engine = Engine.load(_export(tmp_path, dict(LUMA, upscale=2)))
    small, big = engine.working_bytes(256, 256), engine.working_bytes(8000, 2000)
    whole_maps = engine._bytes_per_pixel * 8000 * 2000
    assert small < big < whole_maps  # stripes, not the whole feature maps
    assert big < 4 * 8000 * 2000 * (3 + 3 * 4 + 11) + engine.stripe_bytes + engine._bytes_per_pixel * 2000 * 40


def test_tiled_upscale_is_exact_for_a_tile_local_model(tmp_path):
    from ebsr_basicsr.upscale.upscaler import upscale_image

    engine = Engine.load(_export(tmp_path, dict(LUMA, upscale=2)))
    img = np.ascontiguousarray((_photo(70, 53)[:, :, ::-1] * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(upscale_image(engine, img, tile=24), upscale_image(engine, img))


def test_self_ensemble_is_the_mean_of_the_eight_transforms(tmp_path):
    engine = Engine.load(_export(tmp_path, dict(LUMA, upscale=2)))
    rgb = _photo(20, 27)
    y = np.ascontiguousarray(_photo(20, 27)[:, :, :1])
    expected = np.zeros((40, 54, 1), np.float64)
    for k in range(4):
        for flip in (False, True):
            x = np.rot90(y, k)
            x = x[:, ::-1] if flip else x
            out = engine.run_native(np.ascontiguousarray(x))
            out = out[:, ::-1] if flip else out
            expected += np.rot90(out, -k)
    np.testing.assert_allclose(engine.run(y, ensemble=True), expected / 8, atol=1e-6)
    assert engine.run(rgb, ensemble=True).shape == (40, 54, 3)
    assert not np.array_equal(engine.run(rgb, ensemble=True), engine.run(rgb))

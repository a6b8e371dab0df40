"""The training degradations (ebsr_basicsr.data.degradations) and the BasicSR dataset that
draws them per patch (MixedDegradationDataset)."""
import copy

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("basicsr")

from basicsr.utils.matlab_functions import imresize  # noqa: E402

from ebsr_basicsr.data.degradations import (  # noqa: E402
    DOWNSCALERS, Degradation, DegradationError, DegradationMix, add_sensor_noise, bicubic_upscale, downscale,
    gaussian_blur, jpeg, parse_degradation, quantize)


@pytest.fixture(scope="module")
def hr():
    from skimage import data

    img = data.astronaut()[100:228, 150:278, ::-1]  # 128 x 128 BGR crop of a real photo
    return np.ascontiguousarray(img, np.float32) / 255


MIX = {
    "downscale": {"matlab": 0.3, "cubic": 0.4, "area": 0.15, "linear": 0.15},
    "blur": {"prob": 0.2, "sigma": [0.3, 1.0]},
    "noise": {"prob": 0.3, "sigma": [1, 4], "poisson_prob": 0.2, "poisson": [0.05, 0.2], "gray_prob": 0.5},
    "jpeg": {"prob": 0.5, "quality": [55, 95]},
}


# --------------------------------------------------------------------------- single steps
@pytest.mark.parametrize("method", DOWNSCALERS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_matches_its_definition(hr, method, scale):
    img = hr[: 126 if scale == 3 else 128, : 126 if scale == 3 else 128]
    out = downscale(img, scale, method)
    h, w = img.shape[0] // scale, img.shape[1] // scale
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    if method == "matlab":
        expected = imresize(img, 1 / scale)
    else:
        flag = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                "nearest": cv2.INTER_NEAREST}[method]
        expected = cv2.resize(img, (w, h), interpolation=flag)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_downscalers_differ_as_expected(hr):
    """Area averages each s x s block; cubic without antialiasing keeps more aliasing (more
    high-frequency energy) than MATLAB's antialiased bicubic."""
    area = downscale(hr, 4, "area")
    np.testing.assert_allclose(area, hr.reshape(32, 4, 32, 4, 3).mean(axis=(1, 3)), atol=1e-5)

    def hf_energy(x):
        return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())

    assert hf_energy(downscale(hr, 4, "cubic")) > 1.1 * hf_energy(downscale(hr, 4, "matlab"))


def test_downscale_refuses_sizes_not_divisible(hr):
    with pytest.raises(DegradationError, match="not divisible by scale 3"):
        downscale(hr[:128, :127], 3, "cubic")


def test_blur_keeps_mean_and_removes_detail(hr):
    out = gaussian_blur(hr, 1.0)
    assert out.shape == hr.shape
    assert abs(out.mean() - hr.mean()) < 2e-3
    assert np.abs(np.diff(out, axis=1)).mean() < 0.8 * np.abs(np.diff(hr, axis=1)).mean()


def test_noise_is_reproducible_and_has_its_strength():
    flat = np.full((200, 200, 3), 0.5, np.float32)
    a = add_sensor_noise(flat, np.random.default_rng(1), sigma=5)
    b = add_sensor_noise(flat, np.random.default_rng(1), sigma=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_sensor_noise(flat, np.random.default_rng(2), sigma=5))
    assert abs(float((a - flat).std()) * 255 - 5) < 0.2
    gray = add_sensor_noise(flat, np.random.default_rng(1), sigma=5, gray=True)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # luminance noise: same on all channels
    shot = add_sensor_noise(np.concatenate([np.full((100, 200, 3), 0.1, np.float32),
                                            np.full((100, 200, 3), 0.9, np.float32)]),
                            np.random.default_rng(3), poisson=1.0)
    assert shot[100:].std() > 2 * shot[:100].std()  # shot noise grows with brightness


def test_jpeg_is_a_real_jpeg_round_trip(hr):
    out = jpeg(hr, 30)
    assert out.shape == hr.shape and out.dtype == np.float32
    np.testing.assert_array_equal(np.rint(out * 255), out * 255)  # on the 8-bit grid
    ok, data = cv2.imencode(".jpg", np.rint(hr * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 30])
    np.testing.assert_array_equal(out * 255, cv2.imdecode(data, cv2.IMREAD_COLOR).astype(np.float32))
    assert np.abs(jpeg(hr, 95) - hr).mean() < np.abs(out - hr).mean()


def test_degradation_pipeline_order_and_grid(hr):
    d = Degradation("matlab", jpeg=75)
    lr = d.apply(hr, 4)
    np.testing.assert_array_equal(lr, jpeg(quantize(imresize(hr, 0.25)), 75))
    noisy = Degradation("cubic", noise=3.0).apply(hr, 2, np.random.default_rng(0))
    assert noisy.shape == (64, 64, 3)
    np.testing.assert_array_equal(np.rint(noisy * 255), noisy * 255)
    with pytest.raises(DegradationError, match="random generator"):
        Degradation("cubic", noise=3.0).apply(hr, 2)


def test_eight_bit_images_in_and_out(hr):
    hr8 = np.rint(hr * 255).astype(np.uint8)
    d = Degradation("cubic", noise=2.0, jpeg=80)
    lr8 = d.apply_uint8(hr8, 2, np.random.default_rng(1))
    assert lr8.dtype == np.uint8 and lr8.shape == (64, 64, 3)
    lr = d.apply(hr8.astype(np.float32) / 255, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(lr8, np.rint(lr * 255))
    up = bicubic_upscale(lr8, 2)
    assert up.dtype == np.uint8 and up.shape == hr8.shape
    np.testing.assert_array_equal(up, np.clip(np.rint(imresize(lr8 / 255.0, 2) * 255), 0, 255))


@pytest.mark.parametrize("spec", ["matlab", "cubic", "area", "matlab+jpeg75", "linear+blur0.8+noise4+gray+jpeg60",
                                  "nearest+poisson0.2"])
def test_parse_degradation_round_trips(spec):
    assert parse_degradation(spec).name == spec


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("bilinear", "unknown downscale"), ("matlab+jpeg", "cannot read 'jpeg'"),
    ("matlab+jpeg0", "1..100"), ("cubic+sharpen2", "cannot read 'sharpen2'"),
])
def test_parse_degradation_refuses_bad_specs(spec, message):
    with pytest.raises(DegradationError, match=message):
        parse_degradation(spec)


# --------------------------------------------------------------------------- random mixes
def test_mix_draws_follow_the_options():
    mix = DegradationMix(MIX)
    rng = np.random.default_rng(0)
    draws = [mix.sample(rng) for _ in range(4000)]
    share = {m: np.mean([d.downscale == m for d in draws]) for m in MIX["downscale"]}
    for m, weight in MIX["downscale"].items():
        assert abs(share[m] - weight) < 0.03, (m, share[m])
    assert abs(np.mean([d.jpeg is not None for d in draws]) - 0.5) < 0.03
    assert abs(np.mean([d.blur is not None for d in draws]) - 0.2) < 0.03
    qualities = [d.jpeg for d in draws if d.jpeg is not None]
    assert min(qualities) == 55 and max(qualities) == 95
    sigmas = [d.noise for d in draws if d.noise is not None]
    assert abs(len(sigmas) / len(draws) - 0.3) < 0.03 and 1 <= min(sigmas) and max(sigmas) <= 4
    again = [DegradationMix(MIX).sample(r) for r in [np.random.default_rng(0)] for _ in range(50)]
    assert [d.name for d in again] == [d.name for d in draws[:50]]


def test_mix_without_optional_sections_only_downscales():
    mix = DegradationMix({"downscale": {"cubic": 1}})
    d = mix.sample(np.random.default_rng(0))
    assert d == Degradation("cubic")


@pytest.mark.parametrize("patch, message", [
    ({"downscale": None}, "downscale must map"),
    ({"downscale": {"bicubic": 1}}, "unknown downscaler 'bicubic'"),
    ({"downscale": {"cubic": -1}}, "downscale.cubic must be a weight"),
    ({"downscale": {"cubic": 0}}, "must not all be 0"),
    ({"jpeg": {"prob": 1.5, "quality": [50, 90]}}, r"jpeg.prob must be a probability"),
    ({"jpeg": {"prob": 0.5, "quality": [90, 50]}}, r"jpeg.quality must satisfy"),
    ({"jpeg": {"prob": 0.5}}, r"jpeg.quality must be a \[low, high\] pair"),
    ({"jpeg": {"prob": 0.5, "quality": [50, 120]}}, r"<= 100"),
    ({"noise": {"prob": 0.5, "sigma": 3}}, r"noise.sigma must be a \[low, high\] pair"),
    ({"blur": {"prob": 0.5, "sigma": [0.3, 1], "size": 3}}, r"blur: unknown option\(s\) size"),
    ({"sharpen": {"prob": 1}}, r"unknown section\(s\) sharpen"),
])
def test_mix_refuses_bad_options(patch, message):
    opts = copy.deepcopy(MIX)
    opts.update(patch)
    with pytest.raises(DegradationError, match=message):
        DegradationMix(opts)


# --------------------------------------------------------------------------- the dataset
@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("hr")
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(data, name)()[:240, :240, ::-1]
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(img))
    return folder


def _dataset_opt(folder, **extra):
    opt = {"name": "t", "type": "MixedDegradationDataset", "phase": "train", "scale": 4, "dataroot_gt": str(folder),
           "io_backend": {"type": "disk"}, "gt_size": 64, "use_hflip": True, "use_rot": True,
           "degradations": copy.deepcopy(MIX)}
    opt.update(extra)
    return opt


def _build(opt):
    from basicsr.data import build_dataset

    from ebsr_basicsr.training.registration import register_with_basicsr

    register_with_basicsr()
    return build_dataset(copy.deepcopy(opt))


def test_dataset_builds_through_basicsr_and_yields_pairs(hr_folder):
    ds = _build(_dataset_opt(hr_folder, seed=0))
    assert len(ds) == 3
    item = ds[1]
    assert tuple(item["gt"].shape) == (3, 64, 64) and tuple(item["lq"].shape) == (3, 16, 16)
    assert 0 <= float(item["lq"].min()) and float(item["lq"].max()) <= 1
    assert item["gt_path"].endswith("chelsea.png") and "#" in item["lq_path"]
    y = _build(_dataset_opt(hr_folder, seed=0, color="y"))[1]
    assert tuple(y["gt"].shape) == (1, 64, 64) and tuple(y["lq"].shape) == (1, 16, 16)


def test_dataset_lr_is_the_named_degradation_of_the_gt(hr_folder):
    """The LR patch is exactly what its recorded degradation makes of the HR patch."""
    ds = _build(_dataset_opt(hr_folder, seed=3, degradations={"downscale": {"cubic": 1, "area": 1},
                                                             "jpeg": {"prob": 0.5, "quality": [40, 60]}}))
    for i in range(6):
        item = ds[i % 3]
        gt = item["gt"].numpy().transpose(1, 2, 0)[:, :, ::-1]
        d = parse_degradation(item["lq_path"].split("#")[1])
        expected = d.apply(np.ascontiguousarray(gt), 4)
        np.testing.assert_allclose(item["lq"].numpy().transpose(1, 2, 0)[:, :, ::-1], expected, atol=1e-6)


def test_dataset_is_deterministic_with_a_seed(hr_folder):
    a, b, c = (_build(_dataset_opt(hr_folder, seed=s)) for s in (7, 7, 8))
    items_a = [a[i % 3] for i in range(6)]
    items_b = [b[i % 3] for i in range(6)]
    for x, y in zip(items_a, items_b):
        assert x["lq_path"] == y["lq_path"]
        assert np.array_equal(x["lq"].numpy(), y["lq"].numpy()) and np.array_equal(x["gt"].numpy(), y["gt"].numpy())
    assert any(not np.array_equal(x["lq"].numpy(), c[i % 3]["lq"].numpy()) for i, x in enumerate(items_a))


def test_dataset_without_seed_follows_torch_seed(hr_folder):
    import torch

    def draw():
        torch.manual_seed(5)
        ds = _build(_dataset_opt(hr_folder))
        return [ds[i]["lq"].numpy() for i in range(3)]

    for x, y in zip(draw(), draw()):
        np.testing.assert_array_equal(x, y)


def test_dataset_skips_flat_crops(tmp_path):
    from skimage import data

    img = np.full((200, 200, 3), 128, np.uint8)
    img[110:, 110:] = data.astronaut()[:90, :90, ::-1]  # the only detailed corner
    cv2.imwrite(str(tmp_path / "flat.png"), img)

    def detailed_share(min_grad):
        ds = _build(_dataset_opt(tmp_path, seed=0, gt_size=64, min_grad=min_grad, use_rot=False, use_hflip=False))
        return np.mean([np.abs(np.diff(ds[0]["gt"].numpy(), axis=2)).mean() > 0 for _ in range(20)])

    assert detailed_share(0) < 0.7  # about 43% of the crops touch the detailed corner
    assert detailed_share(2) >= 0.9


@pytest.mark.parametrize("patch, message", [
    ({"gt_size": 62}, "gt_size must be a positive multiple of the scale 4"),
    ({"dataroot_gt": None}, "option 'dataroot_gt' is required"),
    ({"degradations": None}, "option 'degradations' is required"),
    ({"color": "lab"}, "color must be 'y'"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"degradations": {"downscale": {"cubic": 1}, "jpeg": {"prob": 2, "quality": [1, 2]}}}, "jpeg.prob"),
])
def test_dataset_refuses_bad_options(hr_folder, patch, message):
    with pytest.raises(DegradationError, match=message):
        _build(_dataset_opt(hr_folder, **patch))


def test_dataset_refuses_empty_folder_and_small_images(tmp_path):
    with pytest.raises(DegradationError, match="no images"):
        _build(_dataset_opt(tmp_path))
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DegradationError, match=r"smaller than gt_size 64"):
        _build(_dataset_opt(tmp_path))[0]

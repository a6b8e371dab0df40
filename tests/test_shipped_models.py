"""The embedded models load, are trained, and beat bicubic on real photos: each family on the
degradation it is made for, and the robust one also where the papers'-protocol one fails."""
import functools

import numpy as np
import pytest

from ebsr_basicsr.runtime import Engine
from ebsr_basicsr.weights import DEFAULT_MODEL, MODELS, SCALES, default_model_path, model_path

skdata = pytest.importorskip("skimage.data")
metrics = pytest.importorskip("basicsr.metrics")
degradations = pytest.importorskip("ebsr_basicsr.data.degradations")

# Mean PSNR gain (dB, Y channel) over MATLAB-bicubic upsampling of the same LR image that each
# family must show on these photos for a degradation, far outside what an untrained or broken
# model could reach (they fall well below bicubic). The bicubic models fall below bicubic on
# `cubic` (OpenCV's resize without antialiasing): that is what the robust ones are for.
MIN_GAIN = {
    ("bicubic", "matlab"): {2: 1.0, 3: 0.8, 4: 0.7},
    ("robust", "matlab"): {2: 0.7, 3: 0.35, 4: 0.3},
    ("robust", "cubic"): {2: 0.5, 3: 0.3, 4: 0.35},
    ("robust", "matlab+jpeg75"): {2: 0.4, 3: 0.25, 4: 0.2},
}


def _photo(name, scale):
    img = getattr(skdata, name)()[:, :, ::-1]  # BGR
    h, w = img.shape[0] // 2, img.shape[1] // 2  # a 256x256-ish crop keeps the test quick
    img = img[h - 128:h + 128, w - 128:w + 128]
    return np.ascontiguousarray(img[: img.shape[0] // scale * scale, : img.shape[1] // scale * scale])


@functools.lru_cache(maxsize=None)
def _gain(name, scale, degradation):
    """Mean Y-PSNR gain of the shipped ``name`` model over bicubic (computed once per case)."""
    engine = Engine.load(model_path(scale, name))
    gains = []
    for photo in ("astronaut", "coffee", "chelsea"):
        hr = _photo(photo, scale)
        lr = degradations.parse_degradation(degradation).apply_uint8(hr, scale)
        bicubic = degradations.bicubic_upscale(lr, scale)
        sr = engine.upscale(lr)
        assert sr.shape == hr.shape
        psnr = lambda img: metrics.calculate_psnr(img, hr, scale, test_y_channel=True)  # noqa: E731
        gains.append(psnr(sr) - psnr(bicubic))
    return float(np.mean(gains))


def test_the_default_is_the_robust_family():
    assert DEFAULT_MODEL == "robust" and set(MODELS) == {"robust", "bicubic"}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_scale_has_an_embedded_model(name, scale):
    engine = Engine.load(model_path(scale, name))
    assert engine.scale == scale
    assert engine.header["network_g"]["upscale"] == scale
    if name == DEFAULT_MODEL:
        assert model_path(scale, name) == default_model_path(scale)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name, degradation", sorted(MIN_GAIN))
def test_embedded_model_beats_bicubic(name, degradation, scale):
    gain = _gain(name, scale, degradation)
    assert gain >= MIN_GAIN[name, degradation][scale], gain


@pytest.mark.parametrize("scale", [2, 4])
def test_robust_model_holds_up_where_the_papers_protocol_fails(scale):
    """On an aliased downscale the bicubic-trained model sharpens the aliasing (below bicubic);
    the robust model, trained on such inputs too, stays well above it."""
    papers = _gain("bicubic", scale, "cubic")
    robust = _gain("robust", scale, "cubic")
    assert papers < 0 < robust and robust - papers >= 1.0, (papers, robust)

"""The embedded default models load, are trained, and beat bicubic on real photos."""
import numpy as np
import pytest

from ebsr_basicsr.runtime import Engine
from ebsr_basicsr.weights import SCALES, default_model_path

skdata = pytest.importorskip("skimage.data")
matlab = pytest.importorskip("basicsr.utils.matlab_functions")
metrics = pytest.importorskip("basicsr.metrics")

# PSNR gain (dB, Y channel) the shipped models must show over MATLAB bicubic on these photos,
# far outside what an untrained or broken model could reach (they fall well below bicubic).
MIN_GAIN = {2: 1.0, 3: 0.8, 4: 0.7}


def _photo(name, scale):
    img = getattr(skdata, name)()[:, :, ::-1]  # BGR
    h, w = img.shape[0] // 2, img.shape[1] // 2  # a 256x256-ish crop keeps the test quick
    img = img[h - 128:h + 128, w - 128:w + 128]
    return np.ascontiguousarray(img[: img.shape[0] // scale * scale, : img.shape[1] // scale * scale])


@pytest.mark.parametrize("scale", SCALES)
def test_every_scale_has_an_embedded_model(scale):
    engine = Engine.load(default_model_path(scale))
    assert engine.scale == scale
    assert engine.header["network_g"]["upscale"] == scale


@pytest.mark.parametrize("scale", SCALES)
def test_embedded_model_beats_bicubic(scale):
    engine = Engine.load(default_model_path(scale))
    gains = []
    for name in ("astronaut", "coffee", "chelsea"):
        hr = _photo(name, scale)
        lr = np.clip(np.rint(matlab.imresize(hr / 255.0, 1 / scale) * 255), 0, 255).astype(np.uint8)
        bicubic = np.clip(np.rint(matlab.imresize(lr / 255.0, scale) * 255), 0, 255).astype(np.uint8)
        sr = engine.upscale(lr)
        assert sr.shape == hr.shape
        psnr = lambda img: metrics.calculate_psnr(img, hr, scale, test_y_channel=True)  # noqa: E731
        gains.append(psnr(sr) - psnr(bicubic))
    assert np.mean(gains) >= MIN_GAIN[scale], gains

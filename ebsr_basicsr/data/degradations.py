"""Low-resolution images the way people actually get them, made from a high-resolution one.

One degradation is a :class:`Degradation`: an optional mild Gaussian blur, a downscale by
one of :data:`DOWNSCALERS`, optional sensor-like noise (Gaussian read noise and Poisson
shot noise) and optional JPEG compression, in that order, then rounding to 8 bits as a real
image file has. :class:`DegradationMix` draws a random one per patch from the ranges an
option file gives (see :class:`~ebsr_basicsr.data.mixed_degradation_dataset.MixedDegradationDataset`);
:func:`parse_degradation` reads the fixed ones used for scoring, such as ``cubic`` or
``matlab+jpeg75``.

What BasicSR already has is used as it is: MATLAB's bicubic ``imresize`` and the Gaussian
kernel. What it lacks is written here: the OpenCV downscalers at an exact integer factor,
JPEG without a warning per call, and noise drawn from a caller's
``numpy.random.Generator`` (BasicSR's noise functions draw from NumPy's global state, so a
patch could not be reproduced from a seed).

Images are float32 BGR ``(H, W, 3)`` in ``[0, 1]``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

#: Downscalers: MATLAB's antialiased bicubic (the papers' protocol) and OpenCV's resizes at
#: ``1/scale`` *without* antialiasing (``cubic``, ``linear``, ``nearest``: what thumbnails and
#: resized video frames look like) or with box averaging (``area``).
DOWNSCALERS = ("matlab", "cubic", "linear", "area", "nearest")
_CV2_FLAGS = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
              "nearest": cv2.INTER_NEAREST}


class DegradationError(ValueError):
    """A degradation spec or option that cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class Degradation:
    """One fixed degradation: ``blur`` (Gaussian sigma in HR pixels) -> ``downscale`` ->
    ``noise`` (Gaussian sigma on the 0..255 scale, Poisson scale) -> ``jpeg`` quality -> 8 bits."""

    downscale: str = "matlab"
    blur: Optional[float] = None
    noise: Optional[float] = None
    poisson: Optional[float] = None
    gray_noise: bool = False
    jpeg: Optional[int] = None

    def __post_init__(self):
        if self.downscale not in DOWNSCALERS:
            raise DegradationError(f"unknown downscale {self.downscale!r}; choose from {', '.join(DOWNSCALERS)}")
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise DegradationError(f"JPEG quality must be in 1..100, got {self.jpeg}")
        for name in ("blur", "noise", "poisson"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise DegradationError(f"{name} must be >= 0, got {value}")

    @property
    def name(self) -> str:
        """The spec :func:`parse_degradation` reads back (``matlab+blur0.8+noise4+jpeg75``)."""
        parts = [self.downscale]
        if self.blur:
            parts.append(f"blur{self.blur:g}")
        if self.noise:
            parts.append(f"noise{self.noise:g}")
        if self.poisson:
            parts.append(f"poisson{self.poisson:g}")
        if self.gray_noise and (self.noise or self.poisson):
            parts.append("gray")
        if self.jpeg is not None:
            parts.append(f"jpeg{self.jpeg}")
        return "+".join(parts)

    def apply(self, hr: np.ndarray, scale: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """The LR image of ``hr`` (float32 BGR, sides divisible by ``scale``), float32 in
        [0, 1] on the 8-bit grid. ``rng`` draws the noise (needed only with noise)."""
        img = hr
        if self.blur:
            img = gaussian_blur(img, self.blur)
        img = downscale(img, scale, self.downscale)
        if self.noise or self.poisson:
            if rng is None:
                raise DegradationError("noise needs a random generator")
            img = add_sensor_noise(img, rng, self.noise or 0.0, self.poisson or 0.0, self.gray_noise)
        if self.jpeg is not None:
            img = jpeg(img, self.jpeg)
        return quantize(img)

    def apply_uint8(self, hr: np.ndarray, scale: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """:meth:`apply` on 8-bit images: the uint8 LR image of the uint8 ``hr``."""
        lr = self.apply(hr.astype(np.float32) / np.float32(255.0), scale, rng)
        return np.clip(np.rint(lr * 255.0), 0, 255).astype(np.uint8)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-style bicubic upsampling (basicsr ``imresize``) of a uint8 image, rounded to uint8:
    the baseline that a model's gain is measured against."""
    from basicsr.utils.matlab_functions import imresize  # torch: imported only when used

    return np.clip(np.rint(imresize(lr.astype(np.float64) / 255.0, scale) * 255.0), 0, 255).astype(np.uint8)


def downscale(img: np.ndarray, scale: int, method: str) -> np.ndarray:
    """``img`` reduced exactly ``scale`` times (its sides must be divisible by ``scale``)."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise DegradationError(f"image size {w}x{h} is not divisible by scale {scale}")
    if method == "matlab":
        from basicsr.utils.matlab_functions import imresize  # torch: imported only when used

        out = imresize(img, 1.0 / scale)
    elif method in _CV2_FLAGS:
        out = cv2.resize(img, (w // scale, h // scale), interpolation=_CV2_FLAGS[method])
    else:
        raise DegradationError(f"unknown downscale {method!r}; choose from {', '.join(DOWNSCALERS)}")
    out = out.reshape(h // scale, w // scale, *img.shape[2:])
    return np.ascontiguousarray(out, dtype=np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur (BasicSR's kernel, size ``2*ceil(3*sigma)+1``, reflected border)."""
    from basicsr.data.degradations import bivariate_Gaussian

    size = 2 * int(np.ceil(3 * sigma)) + 1
    kernel = bivariate_Gaussian(size, sigma, sigma, 0, isotropic=True).astype(np.float32)
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def add_sensor_noise(img: np.ndarray, rng: np.random.Generator, sigma: float = 0.0, poisson: float = 0.0,
                     gray: bool = False) -> np.ndarray:
    """Read noise (Gaussian, ``sigma`` on the 0..255 scale) plus shot noise (Poisson, whose
    strength grows with brightness, scaled by ``poisson``), per channel or, with ``gray``,
    the same on all channels (luminance noise). Clipped to [0, 1]."""
    shape = img.shape[:2] + ((1,) if gray and img.ndim == 3 else img.shape[2:])
    noise = np.zeros(shape, np.float32)
    if sigma:
        noise += rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    if poisson:
        base = img.mean(axis=2, keepdims=True) if gray and img.ndim == 3 else img
        levels = 255.0  # photon counts per unit brightness before scaling
        counts = rng.poisson(np.clip(base, 0, 1) * levels).astype(np.float32)
        noise += (counts / np.float32(levels) - base) * np.float32(poisson)
    return np.clip(img + noise, 0, 1).astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at ``quality``, 4:2:0 as cameras and browsers write them.
    (BasicSR's ``add_jpg_compression`` hands OpenCV a float image, which OpenCV 5 converts
    with a warning per call.)"""
    img8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", img8, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DegradationError(f"JPEG encoding failed at quality {quality}")
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED).reshape(img.shape).astype(np.float32) / np.float32(255.0)


def quantize(img: np.ndarray) -> np.ndarray:
    """Round to the 8-bit grid, as an image file stores it."""
    return (np.clip(np.rint(img * 255.0), 0, 255) / 255.0).astype(np.float32)


_SPEC_PART = re.compile(r"^(blur|noise|poisson|jpeg)([0-9]*\.?[0-9]+)$")


def parse_degradation(spec: str) -> Degradation:
    """Read a fixed degradation: a downscaler, then ``+``-joined extras, e.g. ``cubic``,
    ``area``, ``matlab+jpeg75``, ``linear+blur0.8+noise4+gray``."""
    parts = [p.strip() for p in str(spec).strip().lower().split("+")]
    if not parts[0]:
        raise DegradationError(f"empty degradation spec {spec!r}")
    kwargs: dict = {"downscale": parts[0]}
    for part in parts[1:]:
        if part == "gray":
            kwargs["gray_noise"] = True
            continue
        m = _SPEC_PART.match(part)
        if m is None:
            raise DegradationError(f"cannot read {part!r} in degradation {spec!r}; expected blurSIGMA, "
                                   "noiseSIGMA, poissonSCALE, gray or jpegQUALITY")
        key, value = m.group(1), float(m.group(2))
        kwargs[key] = int(value) if key == "jpeg" else value
    return Degradation(**kwargs)


# --------------------------------------------------------------------------- random mixes
def _range(opts: dict, key: str, where: str, lo: float, hi: float) -> tuple[float, float]:
    value = opts.get(key)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise DegradationError(f"{where}.{key} must be a [low, high] pair of numbers, got {value!r}")
    a, b = float(value[0]), float(value[1])
    if not lo <= a <= b <= hi:
        raise DegradationError(f"{where}.{key} must satisfy {lo:g} <= low <= high <= {hi:g}, got {list(value)}")
    return a, b


def _prob(opts: dict, key: str, where: str, default: float = 0.0) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DegradationError(f"{where}.{key} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _section(opts: dict, key: str, allowed: set) -> dict:
    section = opts.get(key) or {}
    if not isinstance(section, dict):
        raise DegradationError(f"degradations.{key} must be a mapping, got {section!r}")
    unknown = set(section) - allowed
    if unknown:
        raise DegradationError(f"degradations.{key}: unknown option(s) {', '.join(sorted(map(str, unknown)))}; "
                               f"allowed: {', '.join(sorted(allowed))}")
    return section


class DegradationMix:
    """A random degradation per draw, configured by a ``degradations`` option mapping::

        downscale: {matlab: 0.35, cubic: 0.35, area: 0.15, linear: 0.15}   # relative weights
        blur:  {prob: 0.1, sigma: [0.3, 1.0]}                # before the downscale, HR pixels
        noise: {prob: 0.2, sigma: [1, 5], poisson_prob: 0.3, poisson: [0.05, 0.3], gray_prob: 0.4}
        jpeg:  {prob: 0.4, quality: [50, 95]}               # after the downscale

    Every section but ``downscale`` is optional (absent = never applied). Unknown keys,
    probabilities outside [0, 1], empty or inverted ranges and unknown downscalers raise
    :class:`DegradationError` naming the option.
    """

    SECTIONS = {"downscale", "blur", "noise", "jpeg"}

    def __init__(self, opts: dict):
        if not isinstance(opts, dict):
            raise DegradationError(f"degradations must be a mapping, got {opts!r}")
        unknown = set(opts) - self.SECTIONS
        if unknown:
            raise DegradationError(f"degradations: unknown section(s) {', '.join(sorted(map(str, unknown)))}; "
                                   f"allowed: {', '.join(sorted(self.SECTIONS))}")
        weights = opts.get("downscale")
        if not isinstance(weights, dict) or not weights:
            raise DegradationError("degradations.downscale must map downscalers to weights, e.g. "
                                   "{matlab: 0.5, cubic: 0.5}")
        for method, weight in weights.items():
            if method not in DOWNSCALERS:
                raise DegradationError(f"degradations.downscale: unknown downscaler {method!r}; "
                                       f"choose from {', '.join(DOWNSCALERS)}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
                raise DegradationError(f"degradations.downscale.{method} must be a weight >= 0, got {weight!r}")
        total = float(sum(weights.values()))
        if total <= 0:
            raise DegradationError("degradations.downscale: the weights must not all be 0")
        self.methods = list(weights)
        self.weights = np.array([weights[m] for m in self.methods], np.float64) / total

        blur = _section(opts, "blur", {"prob", "sigma"})
        self.blur_prob = _prob(blur, "prob", "degradations.blur")
        self.blur_sigma = _range(blur, "sigma", "degradations.blur", 0.05, 5) if self.blur_prob else None

        noise = _section(opts, "noise", {"prob", "sigma", "poisson_prob", "poisson", "gray_prob"})
        self.noise_prob = _prob(noise, "prob", "degradations.noise")
        self.noise_sigma = _range(noise, "sigma", "degradations.noise", 0, 50) if self.noise_prob else None
        self.poisson_prob = _prob(noise, "poisson_prob", "degradations.noise")
        self.poisson = _range(noise, "poisson", "degradations.noise", 0, 5) if self.poisson_prob else None
        self.gray_prob = _prob(noise, "gray_prob", "degradations.noise")

        jp = _section(opts, "jpeg", {"prob", "quality"})
        self.jpeg_prob = _prob(jp, "prob", "degradations.jpeg")
        self.jpeg_quality = _range(jp, "quality", "degradations.jpeg", 1, 100) if self.jpeg_prob else None

    def sample(self, rng: np.random.Generator) -> Degradation:
        """Draw one degradation."""
        method = self.methods[int(rng.choice(len(self.methods), p=self.weights))]
        blur = float(rng.uniform(*self.blur_sigma)) if rng.random() < self.blur_prob else None
        noise = float(rng.uniform(*self.noise_sigma)) if rng.random() < self.noise_prob else None
        poisson = float(rng.uniform(*self.poisson)) if rng.random() < self.poisson_prob else None
        gray = bool(rng.random() < self.gray_prob)
        quality = None
        if rng.random() < self.jpeg_prob:
            lo, hi = self.jpeg_quality
            quality = int(rng.integers(int(round(lo)), int(round(hi)) + 1))
        return Degradation(method, blur, noise, poisson, gray, quality)

"""Trained runtime models shipped with the package, by name and scale: ``<name>_x<scale>.ebsr``.

* ``robust`` (the default): trained on LR images made with a random mix of the degradations
  people's images have (MATLAB and OpenCV downscales with and without antialiasing, mild
  blur, sensor noise, JPEG), for thumbnails, JPEGs and video frames.
* ``bicubic``: trained on MATLAB-bicubic downscales only, the papers' protocol; the best
  choice for exactly that kind of input and the worst for aliased ones.

:func:`model_path` returns the file of a name and scale, or raises :class:`NoDefaultModel`
when this installation has none (there is never a fallback to untrained weights);
:func:`resolve_model` turns what a user typed after ``--model`` into a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

WEIGHTS_DIR = Path(__file__).resolve().parent
SCALES = (2, 3, 4)
#: name -> what it was trained for
MODELS = {
    "robust": "a mix of downscales (with and without antialiasing), blur, noise and JPEG",
    "bicubic": "MATLAB-bicubic downscales only (the papers' protocol)",
}
DEFAULT_MODEL = "robust"


class NoDefaultModel(FileNotFoundError):
    """No embedded model file exists for the requested name and scale."""


def model_filename(scale: int, name: str = DEFAULT_MODEL) -> str:
    return f"{name}_x{int(scale)}.ebsr"


def model_path(scale: int, name: str = DEFAULT_MODEL) -> Path:
    """Path of the embedded ``name`` model for ``scale`` (2, 3 or 4); NoDefaultModel if absent."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; the embedded ones are: {', '.join(MODELS)}")
    path = WEIGHTS_DIR / model_filename(scale, name)
    if not path.is_file():
        have = available_scales(name)
        extra = f" (this installation has: {', '.join(f'x{s}' for s in have)})" if have else ""
        raise NoDefaultModel(f"no embedded {name} model for x{scale}{extra}; pass a model file with --model FILE")
    return path


def default_model_path(scale: int) -> Path:
    """The default (``robust``) embedded model for ``scale``."""
    return model_path(scale, DEFAULT_MODEL)


def available_scales(name: str = DEFAULT_MODEL) -> List[int]:
    """The scales for which an embedded ``name`` model exists."""
    return [s for s in SCALES if (WEIGHTS_DIR / model_filename(s, name)).is_file()]


def resolve_model(value, scale: int) -> Path:
    """``--model`` as typed: an embedded model's name (for ``scale``) or a model file's path."""
    text = str(value)
    if text in MODELS and not Path(text).exists():
        return model_path(scale, text)
    return Path(text)

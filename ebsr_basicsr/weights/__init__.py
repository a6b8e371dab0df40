"""Trained runtime models shipped with the package: ``ebsr_x2.ebsr``, ``ebsr_x3.ebsr``, ``ebsr_x4.ebsr``.

:func:`default_model_path` returns the file for a scale, or raises :class:`NoDefaultModel`
when this installation has none (there is never a fallback to untrained weights).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

WEIGHTS_DIR = Path(__file__).resolve().parent
SCALES = (2, 3, 4)


class NoDefaultModel(FileNotFoundError):
    """No embedded model file exists for the requested scale."""


def model_filename(scale: int) -> str:
    return f"ebsr_x{int(scale)}.ebsr"


def default_model_path(scale: int) -> Path:
    """Path of the embedded model for ``scale`` (2, 3 or 4); NoDefaultModel if it is absent."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    path = WEIGHTS_DIR / model_filename(scale)
    if not path.is_file():
        have = available_scales()
        extra = f" (this installation has: {', '.join(f'x{s}' for s in have)})" if have else ""
        raise NoDefaultModel(f"no embedded model for x{scale}{extra}; pass a model file with --model FILE")
    return path


def available_scales() -> List[int]:
    """The scales for which an embedded model file exists."""
    return [s for s in SCALES if (WEIGHTS_DIR / model_filename(s)).is_file()]

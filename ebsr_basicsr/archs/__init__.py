"""Binary SR architectures, registered in BasicSR's ``ARCH_REGISTRY``.

Every ``*_arch.py`` module in this folder is imported here (BasicSR's own convention), which
runs its ``@register_arch`` decorators. The classes always land in :data:`ARCHS` (usable
without basicsr, e.g. by the exporter) and, when basicsr is installed and its registry
module is loaded, in ``basicsr.utils.registry.ARCH_REGISTRY`` too.
"""
import importlib
import sys
from pathlib import Path

ARCHS: dict = {}


def register_arch(cls):
    """Class decorator: add an architecture to :data:`ARCHS` (and to BasicSR's registry
    if that is loaded already)."""
    ARCHS[cls.__name__] = cls
    _register_in_basicsr(cls)
    return cls


def _register_in_basicsr(cls) -> None:
    registry_module = sys.modules.get("basicsr.utils.registry")
    registry = getattr(registry_module, "ARCH_REGISTRY", None)
    if registry is not None and cls.__name__ not in registry:
        registry.register(cls)


def register_with_basicsr() -> None:
    """Add every architecture to BasicSR's registry (idempotent)."""
    for cls in ARCHS.values():
        _register_in_basicsr(cls)


def build_arch(opt: dict):
    """Build a network from a ``network_g``-style dict (``type`` + keyword arguments)
    without going through basicsr."""
    opt = dict(opt)
    name = opt.pop("type", None)
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; registered: {', '.join(sorted(ARCHS))}")
    return ARCHS[name](**opt)


for _path in sorted(Path(__file__).parent.glob("*_arch.py")):
    importlib.import_module(f"{__name__}.{_path.stem}")

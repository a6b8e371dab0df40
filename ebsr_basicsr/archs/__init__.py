"""Binary SR architectures, registered in BasicSR's ``ARCH_REGISTRY``.

Every ``*_arch.py`` module in this folder is imported here (BasicSR's own convention), which
runs its ``@register_arch`` decorators. The classes land in :data:`ARCHS` (usable without
basicsr, e.g. by the exporter); nothing here imports basicsr.
:func:`ebsr_basicsr.training.registration.register_with_basicsr` puts them into
``basicsr.utils.registry.ARCH_REGISTRY`` (``import ebsr_basicsr`` arranges that as soon as
basicsr is loaded).
"""
import importlib
from pathlib import Path

ARCHS: dict = {}


def register_arch(cls):
    """Class decorator: add an architecture to :data:`ARCHS`."""
    ARCHS[cls.__name__] = cls
    return cls


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

"""This package's classes in BasicSR's registries: one function, and a clash is an error.

:func:`register_with_basicsr` puts

* every architecture of :data:`ebsr_basicsr.archs.ARCHS` into ``ARCH_REGISTRY`` (the arch
  modules never import basicsr, so they cannot register themselves),
* ``BinarySRModel`` and ``DistillSRModel`` into ``MODEL_REGISTRY`` and
  ``MixedDegradationDataset`` into ``DATASET_REGISTRY``: their modules subclass BasicSR's
  classes and register them when imported (``@MODEL_REGISTRY.register()``, as Real-ESRGAN's
  do), so this function imports them and checks that the names are theirs.

It is called by ``import ebsr_basicsr`` (at once when basicsr is loaded already, otherwise
by an import hook as soon as ``import basicsr`` has finished) and by the train/test entry
points. A name that a registry already gives to another class raises
:class:`RegistrationError` naming both classes (BasicSR's own registry asserts on duplicates
too; nothing is skipped silently); registering one of our classes again changes nothing.
"""
from __future__ import annotations

import importlib
import sys

# (registry, module, class names); a module may import the modules listed before it.
CLASS_MODULES = (
    ("dataset", "ebsr_basicsr.data.mixed_degradation_dataset", ("MixedDegradationDataset",)),
    ("model", "ebsr_basicsr.training.sr_model", ("BinarySRModel",)),
    ("model", "ebsr_basicsr.training.distill", ("DistillSRModel",)),
)


class RegistrationError(RuntimeError):
    """A name is already registered in BasicSR for a class that is not ours."""


def _registry(kind: str):
    from basicsr.utils import registry

    return {"arch": registry.ARCH_REGISTRY, "model": registry.MODEL_REGISTRY,
            "dataset": registry.DATASET_REGISTRY}[kind]


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def register(kind: str, cls: type) -> type:
    """Put ``cls`` into BasicSR's ``kind`` registry (``'arch'``, ``'model'``, ``'dataset'``)
    under its class name. Idempotent for the same class; another class already registered
    under that name raises :class:`RegistrationError`."""
    registry = _registry(kind)
    name = cls.__name__
    if name in registry:
        existing = registry.get(name)
        if existing is cls:
            return cls
        raise RegistrationError(
            f"BasicSR's {kind} registry already has a {name!r} ({_qualified(existing)}), so "
            f"{_qualified(cls)} cannot be registered under that name; two installed packages "
            f"define it: uninstall or rename one of them"
        )
    registry.register(cls)
    return cls


def _being_imported(module_name: str, class_names) -> bool:
    """True while ``module_name`` is half-imported: it imported basicsr itself, which ran the
    import hook before the module's classes existed. It registers them as its import ends."""
    module = sys.modules.get(module_name)
    return module is not None and not all(hasattr(module, c) for c in class_names)


def register_with_basicsr() -> None:
    """Register this package's architectures, models and datasets in BasicSR (idempotent)."""
    from ebsr_basicsr import archs

    for cls in archs.ARCHS.values():
        register("arch", cls)
    skipped = set()
    for kind, module_name, class_names in CLASS_MODULES:
        if kind in skipped or _being_imported(module_name, class_names):
            skipped.add(kind)  # the later modules of this kind may import this one
            continue
        module = importlib.import_module(module_name)
        for name in class_names:
            register(kind, getattr(module, name))

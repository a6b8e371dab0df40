"""Binary neural networks for image super-resolution.

Importing this package is cheap: it imports neither torch nor basicsr. The torch
architectures (``ebsr_basicsr.archs``) are registered in BasicSR's ``ARCH_REGISTRY`` the
moment basicsr's registry module is loaded, or right away if it already is, so
``import ebsr_basicsr`` followed by any basicsr entry point finds ``EBSRNet`` & co.
The bitwise runtime (``ebsr_basicsr.runtime``) never touches torch.
"""
import importlib.abc
import sys

__version__ = "0.1.0"

_BASICSR_REGISTRY = "basicsr.utils.registry"


def _register_archs() -> None:
    from . import archs  # noqa: F401  (importing registers them)

    archs.register_with_basicsr()


class _RegistryLoader(importlib.abc.Loader):
    """Runs basicsr's registry module, then registers our architectures in it."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _register_archs()


class _RegisterWhenBasicsrLoads(importlib.abc.MetaPathFinder):
    """Import hook that waits for ``basicsr.utils.registry`` without importing basicsr."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _BASICSR_REGISTRY:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                spec.loader = _RegistryLoader(spec.loader)
                return spec
        return None


if _BASICSR_REGISTRY in sys.modules:
    _register_archs()
elif not any(isinstance(f, _RegisterWhenBasicsrLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenBasicsrLoads())


def __getattr__(name):
    if name == "count_complexity":
        from .training.complexity import count_complexity

        return count_complexity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

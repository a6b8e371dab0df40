"""Binary neural networks for image super-resolution.

Importing this package is cheap: it imports neither torch nor basicsr. Its architectures,
BasicSR models and datasets are registered in BasicSR's registries
(:func:`ebsr_basicsr.training.registration.register_with_basicsr`) as soon as ``import
basicsr`` has finished, or right away if basicsr is loaded already, so ``import ebsr_basicsr``
followed by any basicsr entry point finds ``EBSRNet``, ``BinarySRModel`` & co. Registering
changes no function of BasicSR. The bitwise runtime (``ebsr_basicsr.runtime``) never touches
torch.
"""
import importlib.abc
import sys

__version__ = "0.1.0"

_BASICSR = "basicsr"


def _register() -> None:
    from .training.registration import register_with_basicsr

    register_with_basicsr()


class _RegisterAfterLoading(importlib.abc.Loader):
    """Runs basicsr's package ``__init__`` (which imports all of basicsr), then registers
    this package's classes and puts basicsr's own loader back."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.inner
        self.inner.exec_module(module)
        _register()


class _RegisterWhenBasicsrLoads(importlib.abc.MetaPathFinder):
    """Import hook that waits for ``import basicsr`` without importing basicsr."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _BASICSR:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None:
                spec.loader = _RegisterAfterLoading(spec.loader)
                return spec
        return None


if _BASICSR in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterWhenBasicsrLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenBasicsrLoads())


def __getattr__(name):
    if name == "count_complexity":
        from .training.complexity import count_complexity

        return count_complexity
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

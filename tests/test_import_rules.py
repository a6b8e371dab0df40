"""The dependency tiers of the package (README, "What is here"), checked in fresh interpreters.

Each rule imports every module of its folders one after the other in a new process and fails
on the first module after which a forbidden package is loaded, naming both.
"""
import importlib.util
import pkgutil
import subprocess
import sys

import pytest

TRAINING_ENTRY = """
from ebsr_basicsr.training import _basicsr_compat, registration
registration.register_with_basicsr()  # what `python -m ebsr_basicsr.train` runs before BasicSR's pipeline
import basicsr.train, basicsr.test
with _basicsr_compat.entry_point_fixes(cpu=True):
    pass
"""

UPSCALE_ONE_IMAGE = """
import numpy as np
from ebsr_basicsr.upscale import batch
from ebsr_basicsr.weights import available_scales, default_model_path
for scale in available_scales()[:1]:
    batch.load_engine(default_model_path(scale)).upscale(np.zeros((8, 8, 3), np.uint8))
"""

CHECK = """
import importlib, sys

def loaded(forbidden):
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))

def check(what, forbidden):
    bad = loaded(forbidden)
    if bad:
        sys.exit(f"{what} imported {', '.join(bad[:8])}")

forbidden = FORBIDDEN
for name in MODULES:
    importlib.import_module(name)
    check(f"importing {name}", forbidden)
exec(EXTRA)
check("the extra code", forbidden)
"""


def modules_of(package: str) -> list:
    """``package`` and all its modules and subpackages, found without importing them."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not a package"
    names = [package]
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        name = f"{package}.{info.name}"
        names += modules_of(name) if info.ispkg else [name]
    return names


def run_check(modules, forbidden, extra=""):
    code = (CHECK.replace("FORBIDDEN", repr(list(forbidden))).replace("MODULES", repr(list(modules)))
            .replace("EXTRA", repr(extra)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def assert_rule(modules, forbidden, extra=""):
    out = run_check(modules, forbidden, extra)
    assert out.returncode == 0, out.stderr[-3000:]


def needs_training_side():
    for name in ("torch", "basicsr"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (the training side is optional)")


def test_module_lists_are_complete():
    training = modules_of("ebsr_basicsr.training")
    assert {"ebsr_basicsr.training.export", "ebsr_basicsr.training.checkpoint", "ebsr_basicsr.training.distill",
            "ebsr_basicsr.training._basicsr_compat", "ebsr_basicsr.training.train"} <= set(training)
    assert {"ebsr_basicsr.runtime.engine", "ebsr_basicsr.runtime.format",
            "ebsr_basicsr.runtime.swin"} <= set(modules_of("ebsr_basicsr.runtime"))
    assert {"ebsr_basicsr.upscale.batch", "ebsr_basicsr.upscale.video"} <= set(modules_of("ebsr_basicsr.upscale"))
    assert "ebsr_basicsr.kernels.bconv" in modules_of("ebsr_basicsr.kernels")


def test_the_check_catches_a_forbidden_import():
    out = run_check(["ebsr_basicsr.runtime.format", "ebsr_basicsr.runtime.engine"], ["numba"])
    assert out.returncode != 0
    assert "importing ebsr_basicsr.runtime.engine imported numba" in out.stderr
    out = run_check(["ebsr_basicsr.runtime.format"], ["numba"], extra="import ebsr_basicsr.kernels")
    assert out.returncode != 0 and "the extra code imported" in out.stderr


def test_training_never_imports_numba_or_the_kernels():
    needs_training_side()
    modules = [name for tier in ("training", "archs", "ops", "data") for name in modules_of(f"ebsr_basicsr.{tier}")]
    modules += ["ebsr_basicsr.train", "ebsr_basicsr.test", "ebsr_basicsr.cli.export", "ebsr_basicsr.cli.basicsr_cli"]
    assert_rule(modules, ["numba", "ebsr_basicsr.kernels", "ebsr_basicsr.runtime.engine"], extra=TRAINING_ENTRY)


def test_runtime_and_upscaling_never_import_torch_or_basicsr():
    """Nor Ray, which the upscaling tier imports only when a run asks for a cluster."""
    modules = (modules_of("ebsr_basicsr.kernels") + modules_of("ebsr_basicsr.runtime")
               + modules_of("ebsr_basicsr.upscale") + ["ebsr_basicsr.cli.upscale", "ebsr_basicsr.weights"])
    assert "ebsr_basicsr.upscale.cluster" in modules
    assert_rule(modules, ["torch", "basicsr", "ray"],
                extra=UPSCALE_ONE_IMAGE)


def test_shared_modules_need_numpy_only():
    assert_rule(["ebsr_basicsr", "ebsr_basicsr._files", "ebsr_basicsr.packing", "ebsr_basicsr.runtime",
                 "ebsr_basicsr.runtime.format"], ["torch", "basicsr", "numba", "cv2", "ebsr_basicsr.kernels"])

"""One registration function puts the architectures, models and datasets into BasicSR's
registries, from the import hook as from the entry points; a name clash is an error."""
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("basicsr")

ARCHS = ["BNNSR", "E2FIFNet", "EBSRNet", "SCALESNet", "SCALESSwinIR"]
ALL_REGISTERED = f"""
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY
from ebsr_basicsr.archs import ARCHS
from ebsr_basicsr.data.mixed_degradation_dataset import MixedDegradationDataset
from ebsr_basicsr.training.distill import DistillSRModel
from ebsr_basicsr.training.sr_model import BinarySRModel
assert sorted(ARCHS) == {ARCHS!r}
assert all(ARCH_REGISTRY.get(n) is ARCHS[n] for n in ARCHS)
assert MODEL_REGISTRY.get("BinarySRModel") is BinarySRModel
assert MODEL_REGISTRY.get("DistillSRModel") is DistillSRModel
assert DATASET_REGISTRY.get("MixedDegradationDataset") is MixedDegradationDataset
"""


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("first", [
    "import ebsr_basicsr; import basicsr",  # the import hook
    "import basicsr; import ebsr_basicsr",  # basicsr loaded already: registered at once
    "import ebsr_basicsr.training.distill",  # a model module that imports basicsr itself
    "import ebsr_basicsr.data.mixed_degradation_dataset",  # the dataset module, likewise
])
def test_everything_is_registered_whatever_is_imported_first(first):
    out = _run(f"{first}\n{ALL_REGISTERED}"
               "from ebsr_basicsr.training.registration import register_with_basicsr\n"
               "register_with_basicsr(); register_with_basicsr()  # idempotent\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "is not found, use name" not in out.stdout  # BasicSR's fallback lookup never ran


def test_a_name_taken_by_another_package_is_an_error():
    """BasicSR's registry asserts on a duplicate name; this package says which two clash
    instead of skipping its own class silently."""
    out = _run("import torch, basicsr\n"
               "from basicsr.utils.registry import ARCH_REGISTRY\n"
               "class EBSRNet(torch.nn.Module): pass\n"
               "ARCH_REGISTRY.register(EBSRNet)  # another plugin took the name\n"
               "import ebsr_basicsr\n")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ebsr_basicsr.training.registration.RegistrationError: BasicSR's arch registry "
                           "already has a 'EBSRNet' (__main__.EBSRNet)"), last
    assert "ebsr_basicsr.archs.ebsr_arch.EBSRNet cannot be registered" in last


def test_register_is_idempotent_for_our_class_and_refuses_another():
    from ebsr_basicsr.training.registration import RegistrationError, register, register_with_basicsr
    from ebsr_basicsr.training.sr_model import BinarySRModel

    register_with_basicsr()
    assert register("model", BinarySRModel) is BinarySRModel
    impostor = type("BinarySRModel", (), {"__module__": "elsewhere"})
    with pytest.raises(RegistrationError, match=r"model registry already has a 'BinarySRModel' "
                                                r"\(ebsr_basicsr\.training\.sr_model\.BinarySRModel\), so "
                                                r"elsewhere\.BinarySRModel cannot"):
        register("model", impostor)
    from basicsr.utils.registry import MODEL_REGISTRY

    assert MODEL_REGISTRY.get("BinarySRModel") is BinarySRModel

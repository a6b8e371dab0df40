"""BasicSR is left as it was: importing ebsr_basicsr and building its networks, datasets and
models through BasicSR replace none of BasicSR's functions; only the train/test entry points
install their process-level fixes, and put the originals back afterwards."""
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("basicsr")

# BasicSR attributes that this package once replaced at import, and those its entry points do.
WATCHED = """
import basicsr.data.prefetch_dataloader, basicsr.models.base_model, basicsr.models.sr_model
import basicsr.train, basicsr.utils, basicsr.utils.dist_util, basicsr.utils.file_client, basicsr.utils.misc
import basicsr.utils.options

def watched():
    base = basicsr.models.base_model.BaseModel
    sr = basicsr.models.sr_model.SRModel
    lmdb = basicsr.utils.file_client.LmdbBackend
    return {
        "BaseModel.model_ema": (base.model_ema, "basicsr/models/base_model.py", "BaseModel.model_ema"),
        "BaseModel.model_to_device": (base.model_to_device, "basicsr/models/base_model.py",
                                      "BaseModel.model_to_device"),
        "SRModel.test": (sr.test, "basicsr/models/sr_model.py", "SRModel.test"),
        "train.load_resume_state": (basicsr.train.load_resume_state, "basicsr/train.py", "load_resume_state"),
        "train.check_resume": (basicsr.train.check_resume, "basicsr/utils/misc.py", "check_resume"),
        "utils.check_resume": (basicsr.utils.check_resume, "basicsr/utils/misc.py", "check_resume"),
        "train.CUDAPrefetcher": (basicsr.train.CUDAPrefetcher, "basicsr/data/prefetch_dataloader.py", "CUDAPrefetcher"),
        "options.init_dist": (basicsr.utils.options.init_dist, "basicsr/utils/dist_util.py", "init_dist"),
        "dist_util.init_dist": (basicsr.utils.dist_util.init_dist, "basicsr/utils/dist_util.py", "init_dist"),
        "LmdbBackend.__init__": (lmdb.__init__, "basicsr/utils/file_client.py", "LmdbBackend.__init__"),
    }

def assert_basicsrs_own(objects):
    import inspect
    for key, (obj, source, qualname) in objects.items():
        where = inspect.getsourcefile(obj).replace(chr(92), "/")
        assert where.endswith(source) and obj.__qualname__ == qualname, f"{key} is {obj.__module__}.{obj.__qualname__}"
"""

BUILD = """
import os, tempfile, cv2, numpy as np, torch
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.models import build_model
net = build_network({"type": "SCALESNet", "num_feat": 8, "num_block": 1, "upscale": 2})
folder = tempfile.mkdtemp()
cv2.imwrite(os.path.join(folder, "a.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
ds = build_dataset({"name": "t", "type": "MixedDegradationDataset", "phase": "train", "scale": 2,
                    "dataroot_gt": folder, "io_backend": {"type": "disk"}, "gt_size": 32,
                    "degradations": {"downscale": {"cubic": 1}}, "seed": 0})
assert ds[0]["lq"].shape == (3, 16, 16)
model = build_model({"name": "m", "model_type": "DistillSRModel", "scale": 2, "num_gpu": 0, "is_train": False,
                     "dist": False, "network_g": {"type": "EBSRNet", "num_feat": 8, "num_block": 1, "upscale": 2},
                     "path": {}})
assert type(model).__name__ == "DistillSRModel"
"""

ENTRY_POINT_FIXES = """
from ebsr_basicsr.training._basicsr_compat import entry_point_fixes
with entry_point_fixes(cpu=True):
    during = watched()
    changed = sorted(k for k in during if during[k][0] is not before[k][0])
    assert changed == ["LmdbBackend.__init__", "options.init_dist", "train.CUDAPrefetcher",
                       "train.load_resume_state"], changed
after = watched()
assert all(after[k][0] is before[k][0] for k in before)
"""


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_import_and_building_leave_basicsr_as_it_was():
    """basicsr first, then ebsr_basicsr (registered at once): the same objects after building."""
    _run(WATCHED + "before = watched()\nassert_basicsrs_own(before)\n"
         "import ebsr_basicsr\n" + BUILD + "after = watched()\n"
         "assert all(after[k][0] is before[k][0] for k in before), "
         "[k for k in before if after[k][0] is not before[k][0]]\n" + ENTRY_POINT_FIXES)


def test_import_hook_leaves_basicsr_as_it_was():
    """ebsr_basicsr first (registered by the import hook): BasicSR's functions are its own."""
    _run("import ebsr_basicsr, sys\nassert 'basicsr' not in sys.modules\n" + WATCHED + BUILD
         + "before = watched()\nassert_basicsrs_own(before)\n"
         "assert type(basicsr.__spec__.loader).__name__ == 'SourceFileLoader'  # the hook put it back\n"
         + ENTRY_POINT_FIXES)


def test_entry_point_fixes_are_undone_after_an_error():
    import basicsr.train

    from ebsr_basicsr.training._basicsr_compat import entry_point_fixes

    original = basicsr.train.load_resume_state
    with pytest.raises(KeyError):
        with entry_point_fixes(cpu=True):
            assert basicsr.train.load_resume_state is not original
            raise KeyError("boom")
    assert basicsr.train.load_resume_state is original

"""Distributed training on the CPU: torchrun --standalone --nproc_per_node=2 with Gloo.

Two processes train a tiny SCALESNet for a few iterations on a tiny paired dataset with
``num_gpu: auto`` and CUDA hidden (a CPU machine), checkpoints are written once, by rank 0,
rank 0 validates alone (no EMA network, so through the bare network), and ``--auto_resume``
continues the run. About half a minute on 2 cores.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")
skdata = pytest.importorskip("skimage.data")
if not torch.distributed.is_available():
    pytest.skip("this torch has no torch.distributed", allow_module_level=True)

NAME = "dist_SCALESNet_x2"
TRAIN = f"""name: {NAME}
model_type: BinarySRModel
scale: 2
num_gpu: auto
manual_seed: 0
datasets:
  train:
    name: tiny
    type: PairedImageDataset
    dataroot_gt: datasets/tiny/tiny_train_HR_sub
    dataroot_lq: datasets/tiny/tiny_train_LR_bicubic/X2_sub
    filename_tmpl: '{{}}'
    io_backend: {{type: disk}}
    gt_size: 32
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
  val:
    name: tiny_val
    type: PairedImageDataset
    dataroot_gt: datasets/tiny_val/GTmod12
    dataroot_lq: datasets/tiny_val/LRbicx2
    io_backend: {{type: disk}}
network_g: {{type: SCALESNet, num_feat: 8, num_block: 1, upscale: 2, upsampler: light}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  ema_decay: 0  # validation through net_g itself: the case that broke
  optim_g: {{type: Adam, lr: !!float 1e-3}}
  scheduler: {{type: MultiStepLR, milestones: [5], gamma: 0.5}}
  total_iter: 4
  pixel_opt: {{type: L1Loss, loss_weight: 1.0}}
val:
  val_freq: 2
  save_img: false
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 2, test_y_channel: true}}
logger: {{print_freq: 1, save_checkpoint_freq: 2, use_tb_logger: false}}
"""


def _torchrun(args, cwd):
    script = Path(sys.executable).parent / "torchrun"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(launcher + ["--standalone", "--nproc_per_node=2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def _basicsr_train():
    """``basicsr train`` as torchrun runs a script, or the same entry point as a module."""
    script = Path(sys.executable).parent / "basicsr"
    return [str(script), "train"] if script.is_file() else ["-m", "ebsr_basicsr.train"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from ebsr_basicsr.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("dist")
    photos = {"hr": {"astronaut": cv2.resize(skdata.astronaut(), (144, 144), interpolation=cv2.INTER_AREA),
                     "coffee": skdata.coffee()[100:196, 150:294]},
              "hr_val": {"rocket": skdata.rocket()[150:198, 250:322]}}
    for folder, images in photos.items():
        (root / folder).mkdir()
        for name, rgb in images.items():
            cv2.imwrite(str(root / folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    prepare(PrepareConfig(str(root / "hr"), str(root / "datasets" / "tiny"), name="tiny", scales=(2,),
                          crop_size=48, step=48), progress=False)
    prepare(PrepareConfig(str(root / "hr_val"), str(root / "datasets" / "tiny_val"), val=True), progress=False)
    (root / "train.yml").write_text(TRAIN)
    return root


def test_two_processes_train_save_once_validate_and_resume(work):
    exp = work / "experiments" / NAME

    out = _torchrun([*_basicsr_train(), "-opt", "train.yml", "--launcher", "pytorch"], work)
    assert "World size (gpu number): 2" in out
    assert "Network: DistributedDataParallel - SCALESNet" in out  # on the CPU, over Gloo
    assert re.search(r"iter:\s+4, lr:\(1\.000e-03,\)", out), out[-3000:]
    psnr = [float(v) for v in re.findall(r"# psnr: ([-\d.naif]+)", out)]
    assert len(psnr) == 3 and all(math.isfinite(v) for v in psnr)  # iterations 2, 4 and the end: rank 0 only
    assert out.count("Saving models and training states.") == 2
    # one experiment folder (no rank renamed another's aside), each checkpoint written once
    assert os.listdir(work / "experiments") == [NAME]
    assert sorted(os.listdir(exp / "models")) == ["net_g_2.pth", "net_g_4.pth", "net_g_latest.pth"]
    assert sorted(os.listdir(exp / "training_states")) == ["2.state", "4.state"]
    assert len(list(exp.glob("train_*.log"))) == 1
    weights = torch.load(exp / "models" / "net_g_4.pth", weights_only=True)["params"]
    assert not any(k.startswith("module.") for k in weights)

    # resume: the scheduler state comes back (lr halved after the milestone at 5)
    out = _torchrun(["-m", "ebsr_basicsr.train", "-opt", "train.yml", "--launcher", "pytorch", "--auto_resume",
                     "--force_yml", "train:total_iter=6"], work)
    assert "Resuming training from epoch: 0, iter: 4." in out, out[-3000:]
    assert re.search(r"iter:\s+6, lr:\(5\.000e-04,\)", out), out[-3000:]
    assert not re.search(r"iter:\s+[1-4], ", out)  # did not start over
    assert sorted(os.listdir(exp / "training_states")) == ["2.state", "4.state", "6.state"]
    assert os.listdir(work / "experiments") == [NAME]


ELASTIC = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from ebsr_basicsr.ops.quantizers import ElasticSign
dist.init_process_group("gloo")
rank = dist.get_rank()
quantizer = ElasticSign(4)
net = DistributedDataParallel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), quantizer))
torch.manual_seed(rank)
net(torch.rand(2, 3, 8, 8) * (rank + 1)).sum().backward()  # each rank a different batch
alphas = [torch.zeros(()) for _ in range(2)]
dist.all_gather(alphas, quantizer.alpha.detach().clone())
assert alphas[0] == alphas[1], alphas
# both ranks done before Gloo is torn down: a rank that tore down while the other still held
# the DDP reducer aborted now and then ("terminate called without an active exception")
dist.barrier()
del net
dist.destroy_process_group()
# and no interpreter teardown: Gloo's threads still racing C++ static destructors at exit
# aborted a rank now and then even after the barrier; everything checked is checked above
import os, sys
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def test_elastic_sign_starts_alike_on_every_rank(tmp_path):
    """alpha is set from the first batch: from the batches of all ranks, not each its own."""
    (tmp_path / "elastic.py").write_text(ELASTIC)
    _torchrun(["elastic.py"], tmp_path)

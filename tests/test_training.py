"""End to end on the CPU: ebsr-prepare -> basicsr train -> --auto_resume -> basicsr test.

Runs the real console commands as subprocesses with CUDA hidden, on a tiny dataset made
from scikit-image's sample photos, with a tiny EBSRNet (16 channels x 2 blocks, x2).
Takes well under a minute on 2 cores; skip it with ``pytest -m "not slow"``.
"""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.slow
pytest.importorskip("basicsr")
skdata = pytest.importorskip("skimage.data")

NAME = "tiny_EBSRNet_x2_cpu"


def _command(tool):
    """The installed console script, or the same entry point through ``python -m``."""
    script = Path(sys.executable).parent / tool
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ebsr_basicsr.cli.basicsr_cli"]


def _run(args, cwd):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.run(_command("basicsr") + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def _write_photos(folder, images):
    folder.mkdir(parents=True)
    for name, rgb in images.items():
        img = rgb if rgb.ndim == 3 else np.stack([rgb] * 3, axis=-1)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _network():
    return """network_g:
  type: EBSRNet
  num_in_ch: 3
  num_out_ch: 3
  upscale: 2
  num_feat: 16
  num_block: 2
"""


def _train_yml():
    return f"""name: {NAME}
model_type: BinarySRModel
scale: 2
num_gpu: 0
manual_seed: 0

datasets:
  train:
    name: tiny
    type: PairedImageDataset
    dataroot_gt: datasets/tiny/tiny_train_HR_sub
    dataroot_lq: datasets/tiny/tiny_train_LR_bicubic/X2_sub
    filename_tmpl: '{{}}'
    io_backend:
      type: disk
    gt_size: 32
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: tiny_val
    type: PairedImageDataset
    dataroot_gt: datasets/tiny_val/GTmod12
    dataroot_lq: datasets/tiny_val/LRbicx2
    io_backend:
      type: disk

{_network()}
path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: !!float 2e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: MultiStepLR
    milestones: [6]
    gamma: 0.5
  total_iter: 4
  warmup_iter: -1
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean

val:
  val_freq: 4
  save_img: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 2
      test_y_channel: true

logger:
  print_freq: 2
  save_checkpoint_freq: 4
  use_tb_logger: false
"""


def _test_yml():
    return f"""name: {NAME}
model_type: BinarySRModel
scale: 2
num_gpu: 0

datasets:
  test_1:
    name: tiny_val
    type: PairedImageDataset
    dataroot_gt: datasets/tiny_val/GTmod12
    dataroot_lq: datasets/tiny_val/LRbicx2
    io_backend:
      type: disk

{_network()}
path:
  pretrain_network_g: experiments/{NAME}/models/net_g_latest.pth
  param_key_g: params_ema
  strict_load_g: true

val:
  save_img: true
  suffix: ~
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 2
      test_y_channel: true
    ssim:
      type: calculate_ssim
      crop_border: 2
      test_y_channel: true
"""


def test_prepare_train_resume_test(tmp_path):
    from ebsr_basicsr.cli.prepare import main as prepare_cli

    work = tmp_path / "work"
    work.mkdir()
    # tiny data from scikit-image's photos: three to train on, two to validate on
    _write_photos(tmp_path / "hr_train", {
        "astronaut": cv2.resize(skdata.astronaut(), (192, 192), interpolation=cv2.INTER_AREA),
        "coffee": skdata.coffee()[100:244, 150:342],
        "chelsea": skdata.chelsea()[50:194, 100:292],
    })
    _write_photos(tmp_path / "hr_val", {
        "rocket": skdata.rocket()[150:246, 250:370],
        "camera": skdata.camera()[100:196, 150:270],
    })
    runner = CliRunner()
    result = runner.invoke(prepare_cli, [str(tmp_path / "hr_train"), "--out", str(work / "datasets" / "tiny"),
                                         "--name", "tiny", "--scales", "2", "--crop-size", "48",
                                         "--step", "48", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(prepare_cli, [str(tmp_path / "hr_val"), "--out", str(work / "datasets" / "tiny_val"),
                                         "--val", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(os.listdir(work / "datasets" / "tiny" / "tiny_train_HR_sub")) == 4 * 4 + 3 * 4 + 3 * 4

    (work / "train.yml").write_text(_train_yml())
    (work / "test.yml").write_text(_test_yml())
    exp = work / "experiments" / NAME

    # 1) train 4 iterations: a checkpoint and a validation at iteration 4
    out = _run(["train", "-opt", "train.yml"], work)
    assert "Start training from epoch: 0, iter: 0" in out
    assert re.search(r"iter:\s+4, lr:\(2\.000e-04,\)", out), out[-3000:]
    assert (exp / "models" / "net_g_4.pth").is_file()
    assert (exp / "training_states" / "4.state").is_file()
    psnr_val = [float(v) for v in re.findall(r"# psnr: ([-\d.naif]+)", out)]
    assert psnr_val and all(math.isfinite(v) for v in psnr_val)

    # 2) resume from that state and continue to iteration 8; the lr is halved after the
    #    milestone at 6 only if the scheduler state was restored along with the optimizer
    out = _run(["train", "-opt", "train.yml", "--auto_resume", "--force_yml", "train:total_iter=8"], work)
    assert "Resuming training from epoch: 0, iter: 4." in out, out[-3000:]
    assert "Start training from epoch: 0, iter: 4" in out
    assert re.search(r"iter:\s+8, lr:\(1\.000e-04,\)", out), out[-3000:]
    assert not re.search(r"iter:\s+2, ", out)  # did not start over
    assert (exp / "models" / "net_g_8.pth").is_file()
    assert (exp / "training_states" / "8.state").is_file()

    # 3) test the final EMA weights: PSNR and SSIM are logged and images written
    out = _run(["test", "-opt", "test.yml"], work)
    psnr = re.findall(r"# psnr: ([-\d.naif]+)", out)
    ssim = re.findall(r"# ssim: ([-\d.naif]+)", out)
    assert psnr and ssim, out[-3000:]
    psnr, ssim = float(psnr[-1]), float(ssim[-1])
    assert math.isfinite(psnr) and 5.0 < psnr < 60.0
    assert math.isfinite(ssim) and 0.0 < ssim <= 1.0
    results = work / "results" / NAME
    logs = list(results.glob(f"test_{NAME}_*.log"))
    assert logs and "# psnr:" in logs[0].read_text()
    assert sorted(os.listdir(results / "visualization" / "tiny_val")) == [f"camera_{NAME}.png", f"rocket_{NAME}.png"]

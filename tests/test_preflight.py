"""basicsr train/test without their data: one clear error naming every missing folder and
the ebsr-prepare commands that make them, a non-zero exit, and no folders left behind."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("basicsr")

from ebsr_basicsr.training.preflight import PreflightError, check  # noqa: E402

NETWORK = "network_g: {type: EBSRNet, num_feat: 8, num_block: 1, upscale: 2}\n"
TRAIN = """name: nodata
model_type: BinarySRModel
scale: 2
num_gpu: 0
datasets:
  train:
    name: tiny
    type: PairedImageDataset
    dataroot_gt: datasets/tiny/tiny_train_HR_sub
    dataroot_lq: datasets/tiny/tiny_train_LR_bicubic/X2_sub
    io_backend: {type: disk}
    gt_size: 32
    batch_size_per_gpu: 2
    num_worker_per_gpu: 0
  val:
    name: tiny_val
    type: PairedImageDataset
    dataroot_gt: datasets/tiny_val/GTmod12
    dataroot_lq: datasets/tiny_val/LRbicx2
    io_backend: {type: disk}
""" + NETWORK + """path: {pretrain_network_g: ~, resume_state: ~}
train:
  optim_g: {type: Adam, lr: !!float 1e-3}
  scheduler: {type: MultiStepLR, milestones: [10], gamma: 0.5}
  total_iter: 2
  pixel_opt: {type: L1Loss, loss_weight: 1.0}
logger: {print_freq: 1, save_checkpoint_freq: 2, use_tb_logger: true}
"""
TEST = """name: nodata
model_type: BinarySRModel
scale: 2
num_gpu: 0
datasets:
  test_1:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: datasets/Set5/GTmod12
    dataroot_lq: datasets/Set5/LRbicx2
    io_backend: {type: disk}
""" + NETWORK + """path: {pretrain_network_g: experiments/nodata/models/net_g_latest.pth}
val: {save_img: false, suffix: ~}
"""


def _basicsr(args, cwd):
    script = Path(sys.executable).parent / "basicsr"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ebsr_basicsr.cli.basicsr_cli"]
    return subprocess.run(command + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _write(folder, text, name="opt.yml"):
    (folder / name).write_text(text)
    return name


def test_train_without_data_says_what_to_prepare_and_creates_nothing(tmp_path):
    _write(tmp_path, TRAIN)
    out = _basicsr(["train", "-opt", "opt.yml"], tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"error: opt.yml names data that is not there (paths relative to {tmp_path}):",
        "  datasets.train.dataroot_gt: datasets/tiny/tiny_train_HR_sub: no such folder",
        "  datasets.train.dataroot_lq: datasets/tiny/tiny_train_LR_bicubic/X2_sub: no such folder",
        "  datasets.val.dataroot_gt: datasets/tiny_val/GTmod12: no such folder",
        "  datasets.val.dataroot_lq: datasets/tiny_val/LRbicx2: no such folder",
        "ebsr-prepare makes them from folders of HR images:",
        "  ebsr-prepare path/to/tiny_HR --out datasets/tiny --name tiny --scales 2",
        "  ebsr-prepare path/to/tiny_val_HR --out datasets/tiny_val --val",
    ]
    assert sorted(os.listdir(tmp_path)) == ["opt.yml"]  # no experiments/ or tb_logger/


def test_test_without_data_or_checkpoint(tmp_path):
    _write(tmp_path, TEST)
    out = _basicsr(["test", "-opt", "opt.yml"], tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "  datasets.test_1.dataroot_lq: datasets/Set5/LRbicx2: no such folder" in out.stderr
    assert "  ebsr-prepare path/to/Set5_HR --out datasets/Set5 --val" in out.stderr
    assert "  path.pretrain_network_g: experiments/nodata/models/net_g_latest.pth: no such file" in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["opt.yml"]  # no results/


def _photos(folder, n=2, size=(72, 96)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 255, (*size, 3), np.uint8))
    return folder


def _commands(message):
    return [line.strip() for line in message.splitlines() if line.startswith("  ebsr-prepare ")]


@pytest.mark.parametrize("lmdb", [False, True])
def test_the_commands_it_prints_make_the_data(tmp_path, monkeypatch, lmdb):
    from ebsr_basicsr.cli.prepare import main as prepare_cli

    text = TRAIN
    if lmdb:
        text = (text.replace("{type: disk}", "{type: lmdb}")
                .replace("tiny_train_HR_sub\n", "tiny_train_HR_sub.lmdb\n")
                .replace("tiny_train_LR_bicubic/X2_sub", "tiny_train_LR_bicubic_X2_sub.lmdb")
                .replace("GTmod12\n", "GTmod12.lmdb\n").replace("LRbicx2\n", "LRbicx2.lmdb\n"))
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, text)
    with pytest.raises(PreflightError) as missing:
        check(["-opt", "opt.yml"], "train")
    commands = _commands(str(missing.value))
    assert len(commands) == 2 and all(c.endswith(" --lmdb") == lmdb for c in commands)
    sources = {"path/to/tiny_HR": _photos(tmp_path / "hr"), "path/to/tiny_val_HR": _photos(tmp_path / "hr_val", 1)}
    for command in commands:
        args = shlex.split(command)[1:]
        args[0] = str(sources[args[0]])
        result = CliRunner().invoke(prepare_cli, args + ["--crop-size", "48", "--step", "24", "--quiet"])
        assert result.exit_code == 0, result.output
    assert check(["-opt", "opt.yml"], "train")["name"] == "nodata"


def test_lmdb_folder_that_is_not_an_lmdb(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets" / "tiny" / "tiny_train_HR_sub.lmdb").mkdir(parents=True)
    text = TRAIN.replace("tiny_train_HR_sub\n", "tiny_train_HR_sub.lmdb\n").replace("{type: disk}", "{type: lmdb}", 1)
    _write(tmp_path, text)
    with pytest.raises(PreflightError) as err:
        check(["-opt", "opt.yml"], "train")
    assert ("  datasets.train.dataroot_gt: datasets/tiny/tiny_train_HR_sub.lmdb: not an LMDB with meta_info.txt "
            "(io_backend is lmdb)") in str(err.value).splitlines()


def test_force_yml_and_unknown_layouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, TRAIN)
    mine = _photos(tmp_path / "mine")
    args = ["-opt", "opt.yml", "--force_yml", f"datasets:train:dataroot_gt={mine}",
            f"datasets:train:dataroot_lq={mine}",
            "datasets:val:dataroot_gt=my/val/hr", "datasets:val:dataroot_lq=~"]
    with pytest.raises(PreflightError) as err:
        check(args, "train")
    lines = str(err.value).splitlines()
    assert lines[1:] == [
        "  datasets.val.dataroot_gt: my/val/hr: no such folder",
        "  (ebsr-prepare names its folders <name>_train_HR_sub, <name>_train_LR_bicubic/X<s>_sub, GTmod12 and "
        "LRbicx<s>; point the options at the folders it wrote)",
    ]
    with pytest.raises(PreflightError, match="the option file has no datasets:train:root") as err:
        check(["-opt", "opt.yml", "--force_yml", "datasets:train:root=x"], "train")
    assert err.value.status == 2
    with pytest.raises(PreflightError, match="option file not found: missing.yml"):
        check(["-opt", "missing.yml"], "train")
    _write(tmp_path, "name: [unclosed\n", "bad.yml")
    with pytest.raises(PreflightError, match="bad.yml is not a readable YAML option file"):
        check(["-opt", "bad.yml"], "train")

"""Every BasicSR option file under options/ parses and builds its network."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTION_FILES = sorted((ROOT / "options").rglob("*.yml"))
SECTION_ORDER = ["name", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "network_g", "network_teacher",
                 "path", "train", "val", "logger", "dist_params"]
OUR_ARCHS = {"BNNSR", "E2FIFNet", "EBSRNet", "SCALESNet", "SCALESSwinIR"}


@pytest.fixture(scope="module")
def basicsr_env():
    pytest.importorskip("basicsr")
    from ebsr_basicsr.training.registration import register_with_basicsr

    register_with_basicsr()
    from basicsr.archs import build_network
    from basicsr.utils.options import ordered_yaml
    from basicsr.utils.registry import ARCH_REGISTRY

    return ARCH_REGISTRY, build_network, ordered_yaml()[0]


def _load(path, loader):
    import yaml

    with open(path) as f:
        return yaml.load(f, Loader=loader)


def _rel(path):
    return path.relative_to(ROOT).as_posix()


def test_option_files_exist():
    names = {_rel(p) for p in OPTION_FILES}
    assert "options/ebsr_x4.yml" in names
    for arch in OUR_ARCHS:
        for s in (2, 3, 4):
            assert f"options/train/{arch}/train_{arch}_x{s}.yml" in names
            assert f"options/test/{arch}/test_{arch}_x{s}.yml" in names


def test_generated_files_are_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_options.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", OPTION_FILES, ids=_rel)
def test_option_file(path, basicsr_env):
    _check_option_file(path, basicsr_env)


def _check_option_file(path, basicsr_env):
    registry, build_network, loader = basicsr_env
    opt = _load(path, loader)

    # BasicSR's section order: general, datasets, network_g, path, train, val, logger
    present = [k for k in opt if k in SECTION_ORDER]
    assert present == sorted(present, key=SECTION_ORDER.index), f"sections out of order: {list(opt)}"
    for key in ("name", "model_type", "scale", "num_gpu", "datasets", "network_g", "path", "val"):
        assert key in opt, f"missing {key}"
    assert opt["num_gpu"] == "auto" or isinstance(opt["num_gpu"], int)

    # the network: a registered arch whose constructor takes exactly these keys
    net_opt = dict(opt["network_g"])
    arch = net_opt.pop("type")
    assert arch in registry, f"{arch} is not registered"
    cls = registry.get(arch)
    inspect.signature(cls).bind(**net_opt)  # raises TypeError on an unknown/missing key
    assert net_opt.get("upscale", opt["scale"]) == opt["scale"]
    net = build_network(dict(opt["network_g"]))
    assert sum(p.numel() for p in net.parameters()) > 0
    # BasicSR's SRModel lacks this package's fixes (EMA BatchNorm statistics, CPU DDP, validation)
    assert opt["model_type"] in ("BinarySRModel", "DistillSRModel")
    if opt["model_type"] == "DistillSRModel":  # the teacher is built the same way
        assert opt["path"]["pretrain_network_teacher"] and opt["train"]["distill_opt"]["type"]
        teacher = build_network(dict(opt["network_teacher"]))
        assert opt["network_teacher"].get("upscale", opt["scale"]) == opt["scale"]
        assert sum(p.numel() for p in teacher.parameters()) > 0
    else:
        assert "network_teacher" not in opt

    # datasets and metrics as BasicSR's SRModel expects them
    is_train = "train" in opt
    for phase, ds in opt["datasets"].items():
        assert phase.split("_")[0] in (("train", "val") if is_train else ("test", "val")), phase
        assert ds["dataroot_gt"] and ds["io_backend"]["type"] in ("disk", "lmdb")
        if ds["type"] == "MixedDegradationDataset":  # LR made on the fly: its mix must be valid
            from ebsr_basicsr.data.degradations import DegradationMix

            assert phase == "train"
            DegradationMix(ds["degradations"])
        else:
            assert ds["type"] == "PairedImageDataset" and ds["dataroot_lq"]
    if is_train:
        train_ds = opt["datasets"]["train"]
        assert train_ds["gt_size"] % opt["scale"] == 0
        assert opt["train"]["optim_g"]["type"] and opt["train"]["pixel_opt"]["type"]
        assert isinstance(opt["logger"]["print_freq"], int)
    else:
        assert opt["path"]["pretrain_network_g"]
        assert "suffix" in opt["val"]  # SRModel reads val.suffix when saving test images
    for metric in opt["val"].get("metrics", {}).values():
        assert metric["crop_border"] == opt["scale"]
        assert metric["test_y_channel"] is True


def test_recipe_ebsr_x4(basicsr_env):
    """options/ebsr_x4.yml is EBSR-light x4 with the papers' recipe."""
    _, _, loader = basicsr_env
    opt = _load(ROOT / "options" / "ebsr_x4.yml", loader)
    net, train, ds = opt["network_g"], opt["train"], opt["datasets"]["train"]
    assert (net["type"], net["num_feat"], net["num_block"], net["upscale"]) == ("EBSRNet", 64, 16, 4)
    assert opt["num_gpu"] == "auto"
    assert ds["gt_size"] == 192 and ds["batch_size_per_gpu"] == 16
    assert ds["dataroot_gt"] == "datasets/DIV2K/DIV2K_train_HR_sub"
    assert ds["dataroot_lq"] == "datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub"
    val = opt["datasets"]["val"]
    assert (val["dataroot_gt"], val["dataroot_lq"]) == ("datasets/Set5/GTmod12", "datasets/Set5/LRbicx4")
    assert train["optim_g"]["type"] == "Adam" and train["optim_g"]["lr"] == 2e-4
    assert list(train["optim_g"]["betas"]) == [0.9, 0.99]
    assert train["scheduler"] == {"type": "MultiStepLR", "milestones": [200000], "gamma": 0.5}
    assert train["total_iter"] == 300000 and train["ema_decay"] == 0.999
    assert train["pixel_opt"]["type"] == "L1Loss"
    assert set(opt["val"]["metrics"]) == {"psnr", "ssim"}


def test_test_options_cover_the_benchmarks(basicsr_env):
    _, _, loader = basicsr_env
    for arch in OUR_ARCHS:
        for s in (2, 3, 4):
            opt = _load(ROOT / "options" / "test" / arch / f"test_{arch}_x{s}.yml", loader)
            names = [d["name"] for d in opt["datasets"].values()]
            assert names == ["Set5", "Set14", "B100", "Urban100", "Manga109"]
            assert all(d["dataroot_lq"].endswith(f"LRbicx{s}") for d in opt["datasets"].values())
            train = _load(ROOT / "options" / "train" / arch / f"train_{arch}_x{s}.yml", loader)
            assert opt["network_g"] == train["network_g"]  # tests the network that was trained
            assert f"experiments/{train['name']}/models/" in opt["path"]["pretrain_network_g"]


@pytest.fixture(scope="module")
def restart_options(tmp_path_factory):
    """The later warm-restart rounds' option files, written by scripts/make_restart_options.py."""
    out = tmp_path_factory.mktemp("restarts")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_restart_options.py"), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_restart_option_files_are_valid(restart_options, basicsr_env):
    out, _ = restart_options
    files = sorted(out.glob("*.yml"))
    assert len(files) >= 2 * 3  # at least one later round at each scale
    for path in files:
        _check_option_file(path, basicsr_env)


def test_restart_rounds_chain_each_stage_to_the_last(restart_options, basicsr_env):
    """Each printed command trains from the checkpoint the command before it leaves."""
    out, printed = restart_options
    loader = basicsr_env[2]
    first = {s: _load(ROOT / "options" / "train" / "Shipped" / f"repolish_SCALESNet_robust_x{s}.yml", loader)
             for s in (2, 3, 4)}
    scale, last_ckpt, exported = None, None, {}
    for line in printed.splitlines():
        if line.startswith("# x"):
            scale = int(line[3:])
            last_ckpt = f"experiments/{first[scale]['name']}/models/net_g_{first[scale]['train']['total_iter']}.pth"
        elif line.startswith("ebsr-export") and "ebsr_basicsr/weights" not in line:
            assert line.split()[1] == last_ckpt
            exported[line.split()[-1]] = last_ckpt
        elif line.startswith("python -m ebsr_basicsr.training.import_model"):
            model, ckpt = line.split()[-2:]
            assert model in exported
            last_ckpt = ckpt
        elif line.startswith("basicsr train"):
            opt = _load(line.split()[3], loader)
            assert opt["scale"] == scale and opt["path"]["pretrain_network_g"] == last_ckpt
            assert opt["path"]["param_key_g"] == "params_ema"
            last_ckpt = f"experiments/{opt['name']}/models/net_g_{opt['train']['total_iter']}.pth"
        elif line.startswith("ebsr-export"):  # the shipped model: the last stage of its scale
            assert line.split()[1] == last_ckpt and line.endswith(f"robust_x{scale}.ebsr")


def test_restart_rounds_follow_the_table(restart_options, basicsr_env):
    out, _ = restart_options
    loader = basicsr_env[2]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_restart_options as mro
    finally:
        sys.path.pop(0)
    for scale, rounds in mro.ROUNDS.items():
        first_rewarm = _load(ROOT / "options" / "train" / "Shipped" / f"rewarm_SCALESNet_robust_x{scale}.yml", loader)
        first_polish = _load(ROOT / "options" / "train" / "Shipped" / f"repolish_SCALESNet_robust_x{scale}.yml", loader)
        for n, spec in enumerate(rounds, start=2):
            polish = _load(out / f"repolish{n}_SCALESNet_robust_x{scale}.yml", loader)
            assert polish["train"]["total_iter"] == polish["train"]["scheduler"]["periods"][0] == spec.repolish
            assert polish["train"]["pixel_opt"]["type"] == "MSELoss"
            assert polish["datasets"]["train"]["degradations"] == first_polish["datasets"]["train"]["degradations"]
            stages = [(polish, first_polish)]
            if spec.rewarm == 0:  # a polish-only round
                assert not (out / f"rewarm{n}_SCALESNet_robust_x{scale}.yml").exists()
            else:
                rewarm = _load(out / f"rewarm{n}_SCALESNet_robust_x{scale}.yml", loader)
                assert rewarm["train"]["total_iter"] == rewarm["train"]["scheduler"]["periods"][0] == spec.rewarm
                assert rewarm["train"]["pixel_opt"]["type"] == "L1Loss"
                assert dict(rewarm["datasets"]["train"]["degradations"]["downscale"]) == _load_text(
                    mro.MIXES[spec.mix])
                stages.append((rewarm, first_rewarm))
            for opt, base in stages:
                ds, base_ds = opt["datasets"]["train"], base["datasets"]["train"]
                assert ds["gt_size"] == (spec.patch or base_ds["gt_size"])
                assert ds["batch_size_per_gpu"] == (spec.batch or base_ds["batch_size_per_gpu"])
                assert ds["dataroot_gt"] == (mro.crops_folder(spec.crops) if spec.crops else base_ds["dataroot_gt"])
                assert opt["train"]["optim_g"] == base["train"]["optim_g"] and opt["network_g"] == base["network_g"]


def _load_text(text):
    import yaml

    return yaml.safe_load(text)

"""DistillSRModel: a BasicSR model whose student also learns from a frozen teacher."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")

TEACHER = {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "upscale": 2}


def _opt(teacher_path, pixel_weight=1.0, **path):
    return {
        "name": "distill", "model_type": "DistillSRModel", "scale": 2, "num_gpu": 0, "is_train": True,
        "dist": False,
        "network_g": {"type": "SCALESNet", "num_feat": 8, "num_block": 1, "upscale": 2, "upsampler": "light"},
        "network_teacher": TEACHER,
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None,
                 "pretrain_network_teacher": teacher_path, **path},
        "train": {"ema_decay": 0, "optim_g": {"type": "Adam", "lr": 3e-3},
                  "scheduler": {"type": "MultiStepLR", "milestones": [1000], "gamma": 0.5},
                  "total_iter": 1000,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": pixel_weight},
                  "distill_opt": {"type": "L1Loss", "loss_weight": 1.0}},
        "val": None, "logger": {"print_freq": 1},
    }


def _build(opt):
    from ebsr_basicsr.training.registration import register_with_basicsr

    register_with_basicsr()
    from basicsr.models import build_model

    return build_model(opt)


@pytest.fixture
def teacher_checkpoint(tmp_path):
    from basicsr.archs import build_network

    torch.manual_seed(1)
    teacher = build_network(dict(TEACHER))
    path = tmp_path / "teacher.pth"
    torch.save({"params": teacher.state_dict()}, path)
    return path, teacher.eval()


def test_student_learns_the_teacher_output_and_the_teacher_stays_frozen(teacher_checkpoint):
    path, teacher = teacher_checkpoint
    torch.manual_seed(0)
    model = _build(_opt(str(path), pixel_weight=0.0))  # the teacher is the only target
    assert type(model).__name__ == "DistillSRModel"
    before = {k: v.clone() for k, v in model.net_teacher.state_dict().items()}

    lq = torch.rand(4, 3, 12, 12)
    gt = torch.rand(4, 3, 24, 24)  # unrelated to the teacher's output
    with torch.no_grad():
        target = teacher(lq)
    losses = []
    for step in range(60):
        model.feed_data({"lq": lq, "gt": gt})
        model.optimize_parameters(step)
        losses.append(model.log_dict["l_distill"])
    assert set(model.log_dict) == {"l_distill", "l_pix"}
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        model.net_g.eval()
        assert (model.net_g(lq) - target).abs().mean() == pytest.approx(losses[-1], rel=0.5)

    for k, v in model.net_teacher.state_dict().items():  # loaded as saved, and never trained
        torch.testing.assert_close(v, teacher.state_dict()[k])
        torch.testing.assert_close(v, before[k])
    assert not any(p.requires_grad for p in model.net_teacher.parameters())
    assert not model.net_teacher.training


def test_pixel_and_distill_losses_add_up(teacher_checkpoint):
    path, _ = teacher_checkpoint
    torch.manual_seed(0)
    model = _build(_opt(str(path)))
    model.feed_data({"lq": torch.rand(2, 3, 12, 12), "gt": torch.rand(2, 3, 24, 24)})
    model.optimize_parameters(0)
    assert model.log_dict["l_pix"] > 0 and model.log_dict["l_distill"] > 0


def test_missing_teacher_is_a_clear_error(tmp_path, teacher_checkpoint):
    with pytest.raises(ValueError, match="pretrain_network_teacher"):
        _build(_opt(None))
    from ebsr_basicsr.training.checkpoint import CheckpointError
    from ebsr_basicsr.training.export import ExportError

    with pytest.raises(CheckpointError, match="no such file") as missing:
        _build(_opt(str(tmp_path / "missing.pth")))
    assert not isinstance(missing.value, ExportError)  # reading a teacher is not exporting
    path, _ = teacher_checkpoint
    with pytest.raises(CheckpointError, match="no 'params_ema' weights"):
        _build(_opt(str(path), param_key_teacher="params_ema"))


def test_resuming_keeps_the_teacher_checkpoint(tmp_path):
    """BasicSR's check_resume repoints every network_* at the run's own checkpoints and
    switches param keys to params; the teacher is not the run's to resume. Checked through
    the load_resume_state that train_pipeline calls under the entry points."""
    import basicsr.train

    from ebsr_basicsr.training._basicsr_compat import entry_point_fixes

    states = tmp_path / "exp" / "training_states"
    states.mkdir(parents=True)
    for it in (500, 1000):
        torch.save({"epoch": 0, "iter": it, "optimizers": [], "schedulers": []}, states / f"{it}.state")
    opt = _opt("teacher.pth", param_key_teacher="params_ema", param_key_g="params_ema",
               pretrain_network_g="start.pth", models="exp/models", training_states=str(states))
    opt["auto_resume"] = True
    with entry_point_fixes(cpu=True):
        state = basicsr.train.load_resume_state(opt)
    assert state["iter"] == 1000
    path = opt["path"]
    assert path["resume_state"] == str(states / "1000.state")
    assert path["pretrain_network_g"].replace("\\", "/") == "exp/models/net_g_1000.pth"
    assert path["param_key_g"] == "params"
    assert path["pretrain_network_teacher"] == "teacher.pth"
    assert path["param_key_teacher"] == "params_ema"
    assert "ignore_resume_networks" not in path

"""BasicSR fixes that apply to every run (the CPU ones are exercised by test_training.py)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")


def _sr_model(ema_decay):
    from ebsr_basicsr.training import _basicsr_compat

    _basicsr_compat.setup()
    from basicsr.models.sr_model import SRModel

    opt = {
        "name": "ema_buffers", "model_type": "SRModel", "scale": 2, "num_gpu": 0, "is_train": True, "dist": False,
        "network_g": {"type": "E2FIFNet", "num_feat": 8, "num_block": 1, "upscale": 2, "upsampler": "light"},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {"ema_decay": ema_decay, "optim_g": {"type": "Adam", "lr": 1e-3},
                  "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
                  "total_iter": 100, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}},
        "val": None, "logger": {"print_freq": 1},
    }
    return SRModel(opt)


def test_ema_network_follows_batchnorm_statistics():
    """BasicSR averages only parameters into net_g_ema; its BatchNorm statistics stayed at
    (0, 1) and the EMA weights, which are validated, saved and exported, were wrong."""
    torch.manual_seed(0)
    model = _sr_model(ema_decay=1e-9)  # the EMA net is then a copy of the trained one
    for _ in range(3):
        model.feed_data({"lq": torch.rand(2, 3, 12, 12) + 2.0, "gt": torch.rand(2, 3, 24, 24)})
        model.optimize_parameters(1)
    trained = dict(model.net_g.named_buffers())
    ema = dict(model.net_g_ema.named_buffers())
    means = [name for name in trained if name.endswith("running_mean")]
    assert means, "E2FIF should have BatchNorm layers"
    for name in means:
        assert trained[name].abs().max() > 0  # the statistics did move...
        torch.testing.assert_close(ema[name], trained[name])  # ...and the EMA net has them
        var = name.replace("running_mean", "running_var")
        torch.testing.assert_close(ema[var], trained[var])

    model.net_g_ema.eval()
    model.net_g.eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 12, 12) + 2.0
        torch.testing.assert_close(model.net_g_ema(x), model.net_g(x))

"""BinarySRModel: BasicSR's SRModel with the fixes this package's option files rely on
(distributed training on the CPU is exercised by test_distributed.py)."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("basicsr")


def _sr_model(ema_decay, **train):
    from basicsr.models import build_model

    from ebsr_basicsr.training.registration import register_with_basicsr

    register_with_basicsr()
    opt = {
        "name": "ema_buffers", "model_type": "BinarySRModel", "scale": 2, "num_gpu": 0, "is_train": True, "dist": False,
        "network_g": {"type": "E2FIFNet", "num_feat": 8, "num_block": 1, "upscale": 2, "upsampler": "light"},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {"ema_decay": ema_decay, "optim_g": {"type": "Adam", "lr": 1e-3},
                  "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
                  "total_iter": 100, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}, **train},
        "val": None, "logger": {"print_freq": 1},
    }
    model = build_model(opt)
    assert type(model).__name__ == "BinarySRModel"
    return model


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


def test_without_ema_validation_runs_the_bare_network():
    """Rank 0 validates alone: a forward through the DistributedDataParallel wrapper would
    broadcast buffers to ranks that never join (test_distributed.py runs the real thing)."""
    torch.manual_seed(0)
    model = _sr_model(ema_decay=0)
    assert not hasattr(model, "net_g_ema")

    class Wrapper(torch.nn.Module):  # stands for DistributedDataParallel: must not be called
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            raise AssertionError("validation went through the wrapper")

    bare = model.net_g
    model.net_g = Wrapper(bare)
    model.get_bare_model = lambda net: net.module if isinstance(net, Wrapper) else net
    model.feed_data({"lq": torch.rand(1, 3, 12, 12)})
    model.test()
    assert model.output.shape == (1, 3, 24, 24)
    assert bare.training  # back in training mode afterwards


def test_speed_options_train_the_same_network():
    """channels_last and compile change how the training steps run, not what they compute:
    from the same weights and batches the losses agree, and the saved state has the same keys
    (the compiled forward is an attribute, not a wrapper module)."""
    batches = [(torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24)) for _ in range(3)]

    def train(**options):
        torch.manual_seed(0)
        model = _sr_model(ema_decay=0.9, **options)
        losses = []
        for lq, gt in batches:
            model.feed_data({"lq": lq, "gt": gt})
            model.optimize_parameters(1)
            losses.append(float(model.log_dict["l_pix"]))
        return model, losses

    plain, plain_losses = train()
    fast, fast_losses = train(channels_last=True, compile=True)
    assert fast.lq.is_contiguous(memory_format=torch.channels_last)
    assert fast.get_bare_model(fast.net_g).forward is not type(fast.get_bare_model(fast.net_g)).forward
    assert fast.net_g.state_dict().keys() == plain.net_g.state_dict().keys()
    assert fast.net_g_ema.state_dict().keys() == plain.net_g_ema.state_dict().keys()
    # float sums in another order: the same descent within float32 noise
    assert fast_losses == pytest.approx(plain_losses, rel=1e-3)

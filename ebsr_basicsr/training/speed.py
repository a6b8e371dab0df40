"""Faster training steps on the CPU, set from the option file's ``train`` section::

    train:
      channels_last: true   # NHWC tensors: oneDNN's fast convolution layout on x86
      compile: true         # torch.compile the training network's forward (inductor)

Measured with ``benchmarks/bench_training.py`` on the robust x4 recipe (SCALESNet 8x64 on Y,
batch 16 of 32x32 LR patches): see the README's training section. Only the training network
is changed: the EMA network that is validated and saved, and every checkpoint, are exactly
as without these options (the compiled function replaces the module's ``forward``
attribute, so parameter names and ``state_dict`` keys do not change).
"""
from __future__ import annotations

import torch
from basicsr.models.sr_model import SRModel


def speed_up(net: torch.nn.Module, train_opt: dict) -> torch.nn.Module:
    """Apply ``train.channels_last`` / ``train.compile`` to the (bare) training network."""
    if train_opt.get("channels_last"):
        net.to(memory_format=torch.channels_last)
    if train_opt.get("compile"):
        net.forward = torch.compile(net.forward)
    return net


def to_memory_format(x: torch.Tensor, train_opt: dict) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if train_opt.get("channels_last") else x



class FastSRModel(SRModel):
    """``SRModel`` with the ``train.channels_last`` / ``train.compile`` options above."""

    def init_training_settings(self):
        super().init_training_settings()
        speed_up(self.get_bare_model(self.net_g), self.opt["train"])

    def feed_data(self, data):
        super().feed_data(data)
        if self.is_train:
            self.lq = to_memory_format(self.lq, self.opt["train"])


def register_with_basicsr() -> None:
    """Add :class:`FastSRModel` to BasicSR's ``MODEL_REGISTRY`` (idempotent)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    if "FastSRModel" not in MODEL_REGISTRY:
        MODEL_REGISTRY.register(FastSRModel)

"""``BinarySRModel``: BasicSR's ``SRModel`` with the fixes this package's option files need.

Option files name it (``model_type: BinarySRModel``), as Real-ESRGAN's name its own models;
nothing in BasicSR is changed, so other models in the same process behave as BasicSR wrote
them. What it changes, each a method of ``SRModel``/``BaseModel``:

* ``model_ema``: BasicSR averages the parameters of ``net_g`` into ``net_g_ema`` but not its
  buffers, so the EMA network kept the BatchNorm running statistics it was built with (mean
  0, variance 1). Validation, testing and the saved ``params_ema`` (which export prefers)
  then saw un-normalised activations: an E2FIF net scored 19 dB *below* bicubic through its
  EMA weights. The buffers are copied after each update.
* ``model_to_device``: with ``--launcher pytorch`` BasicSR wraps the network in a
  ``DistributedDataParallel`` bound to the current CUDA device, which fails without one. A
  CPU run (``num_gpu: 0``, or ``auto`` without a GPU) gets a device-less one, which
  averages gradients over Gloo.
* ``init_training_settings`` / ``feed_data``: two options of the ``train`` section make the
  training steps faster on a CPU (measured with ``benchmarks/bench_training.py``; numbers in
  the README): ``channels_last: true`` (NHWC tensors, oneDNN's fast layout on x86) and
  ``compile: true`` (``torch.compile`` of the training network's ``forward``). Only the
  training network changes: the EMA network that is validated and saved, and every
  checkpoint, are as without them (the compiled function replaces the module's ``forward``
  attribute, so parameter names and ``state_dict`` keys stay the same).
* ``test``: a distributed run validates on rank 0 only. Without an EMA network BasicSR runs
  that validation through the ``DistributedDataParallel`` wrapper, whose forward broadcasts
  the buffers from rank 0: a collective the other ranks never join, so rank 0 died with
  Gloo's "Connection closed by peer" once they had finished (NCCL hangs instead). The bare
  network is used.
"""
from __future__ import annotations

import torch
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel


@MODEL_REGISTRY.register()
class BinarySRModel(SRModel):
    """``SRModel`` with EMA buffers, CPU ``DistributedDataParallel``, collective-free
    validation and the CPU speed options (see the module docstring)."""

    def init_training_settings(self):
        super().init_training_settings()
        net = self.get_bare_model(self.net_g)
        if self.opt["train"].get("channels_last"):
            net.to(memory_format=torch.channels_last)
        if self.opt["train"].get("compile"):
            net.forward = torch.compile(net.forward)

    def feed_data(self, data):
        super().feed_data(data)
        if self.is_train and self.opt["train"].get("channels_last"):
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)

    def model_ema(self, decay=0.999):
        super().model_ema(decay)
        ema_buffers = dict(self.net_g_ema.named_buffers())
        for name, buffer in self.get_bare_model(self.net_g).named_buffers():
            if name in ema_buffers:
                ema_buffers[name].data.copy_(buffer.data)

    def model_to_device(self, net):
        if self.opt.get("dist") and self.device.type == "cpu":
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get("find_unused_parameters", False)
            )
        return super().model_to_device(net)

    def test(self):
        if hasattr(self, "net_g_ema"):
            return super().test()
        net = self.get_bare_model(self.net_g)
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq)
        net.train()

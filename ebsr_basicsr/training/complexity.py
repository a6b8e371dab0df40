"""Parameter and OP counts under the convention of the binary SR papers.

``OPs = FP MACs + binary MACs / 64`` and ``Params = FP params + binary params / 32``,
with biases, normalisation affine parameters, learnable thresholds and layer-wise scalars
left out. MACs are *measured*: the network runs once on a ``1×C×H×W`` input (320×180 LR by
default, as in the papers' tables) with forward hooks on every conv, linear and matmul
module, so what runs at HR size is counted at HR size. A binary layer with full-precision
activations (BNN-SR) does FP MACs: only its weights count as binary.
"""
from __future__ import annotations

import torch
from torch import nn

from ..archs.scales_swinir_arch import MatMul
from ..ops.binary import BinaryConv2d, BinaryLinear

_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    # the network runs on a batch of one, so the whole output is one image's: a transformer's
    # attention and window-wise linear layers batch its windows along the first dimension
    per_output = output.numel()
    if isinstance(module, nn.Conv2d):
        return per_output * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return per_output * module.in_features
    if isinstance(module, MatMul):
        return per_output * inputs[0].shape[-1]
    return 0


def _is_binary_weight(module: nn.Module, name: str) -> bool:
    return isinstance(module, (BinaryConv2d, BinaryLinear)) and name == "weight"


def _counted(module: nn.Module, name: str) -> bool:
    if isinstance(module, _NORMS) or isinstance(module, nn.PReLU):
        return False
    return name not in ("bias", "threshold", "alpha")


def count_complexity(net: nn.Module, lr_hw: tuple[int, int] = (180, 320), in_channels: int | None = None) -> dict:
    """Count MACs (by running ``net`` once) and parameters.

    Returns a dict with ``fp_macs``, ``binary_macs``, ``ops_g`` (FP MACs + binary MACs/64,
    in G), ``fp_params``, ``binary_params`` and ``params_k`` (FP + binary/32, in K).
    """
    if in_channels is None:
        first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        in_channels = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    totals = {"fp_macs": 0, "binary_macs": 0}

    def hook(module, inputs, output):
        binary = isinstance(module, (BinaryConv2d, BinaryLinear)) and module.binary_activations
        totals["binary_macs" if binary else "fp_macs"] += _macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, MatMul))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            param = next(net.parameters())
            net(torch.rand(1, in_channels, *lr_hw, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)

    fp_params = binary_params = 0
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if _is_binary_weight(module, name):
                binary_params += p.numel()
            elif _counted(module, name):
                fp_params += p.numel()
    return {
        **totals,
        "ops_g": (totals["fp_macs"] + totals["binary_macs"] / 64) / 1e9,
        "fp_params": fp_params,
        "binary_params": binary_params,
        "params_k": (fp_params + binary_params / 32) / 1e3,
    }

"""Binary convolution and linear layers.

A binary layer computes ``op(q(x), alpha_o * sign(W))``: ``q`` is an activation quantizer
(``ebsr_basicsr.ops.quantizers``; ``None`` keeps activations full precision, as in BNN-SR),
``sign(W)`` the binarized latent weights and ``alpha_o`` a per-output-channel scale. The
operands are exposed (``quantize_input``, ``weight_signs``, ``weight_alpha``, ``output_scale``)
so that tests can check the layer against a float op on ±1 tensors and the exporter can pack
the signs and fold the factors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import get_quantizer, ste_sign


WEIGHT_SCALES = ("mean", "learnable", "none")


class _BinaryWeights(nn.Module):
    """Latent FP weights with their binarization ``alpha_o * sign(W)``.

    ``weight_scale``: ``'mean'`` — ``alpha_o = mean|W[o]|`` over the other axes, detached
    (XNOR-Net / BBCU); ``'learnable'`` — a learnable per-filter scale initialised to
    ``mean|W[o]|`` (BNN-SR, Ma et al.); ``'none'`` — plain ``sign(W)`` (E2FIF).
    """

    def _init_binary_weights(self, weight_scale: str) -> None:
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"weight_scale must be one of {WEIGHT_SCALES}, got {weight_scale!r}")
        self.weight_scale = weight_scale
        if weight_scale == "learnable":
            with torch.no_grad():
                init = self.weight.abs().flatten(1).mean(1)
            self.scale = nn.Parameter(init.clone())

    def weight_signs(self) -> torch.Tensor:
        return ste_sign(self.weight)  # the STE clipped to |W| <= 1

    def weight_alpha(self) -> torch.Tensor | None:
        """Per-output-channel scale (shape ``[O]``) or ``None``."""
        if self.weight_scale == "mean":
            return self.weight.abs().flatten(1).mean(1).detach()
        if self.weight_scale == "learnable":
            return self.scale
        return None

    def binary_weight(self) -> torch.Tensor:
        w = self.weight_signs()
        alpha = self.weight_alpha()
        if alpha is not None:
            w = w * alpha.view((-1,) + (1,) * (w.dim() - 1))
        return w


class BinaryConv2d(_BinaryWeights, nn.Conv2d):
    """Binary 2D convolution with an explicit padding value.

    Args:
        in_channels, out_channels, kernel_size, stride, bias: as ``nn.Conv2d`` (padding is
            always ``kernel_size // 2``, "same").
        act_quantizer: activation quantizer spec (see ``get_quantizer``); ``None`` keeps the
            input full precision (binary weights only).
        weight_scale: ``'mean'``, ``'learnable'`` or ``'none'`` (see ``_BinaryWeights``).
        pad_value: the value the *quantized* input is padded with: ``+1`` or ``-1`` (cost
            nothing in a bitwise runtime) or ``0`` (PyTorch's zero padding; the runtime
            corrects border pixels). Must be 0 when activations are full precision.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False, *, act_quantizer="approx_sign", weight_scale: str = "mean",
                 pad_value: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)
        self._init_binary_weights(weight_scale)
        self.quantizer = get_quantizer(act_quantizer, in_channels)
        if pad_value not in (-1, 0, 1):
            raise ValueError(f"pad_value must be -1, 0 or +1, got {pad_value!r}")
        if self.quantizer is None and pad_value != 0:
            raise ValueError("full-precision activations are zero padded: use pad_value=0")
        self.pad_value = float(pad_value)

    @property
    def binary_activations(self) -> bool:
        return self.quantizer is not None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The (±1 or FP) input, padded as the convolution sees it."""
        if self.quantizer is not None:
            x = self.quantizer(x)
        p = self.kernel_size[0] // 2
        return F.pad(x, (p, p, p, p), value=self.pad_value) if p else x

    def output_scale(self):
        return None if self.quantizer is None else self.quantizer.output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.quantize_input(x), self.binary_weight(), self.bias, self.stride)
        scale = self.output_scale()
        return y if scale is None else y * scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_scale={self.weight_scale!r}, pad_value={self.pad_value:g}"


class BinaryLinear(_BinaryWeights, nn.Linear):
    """Binary linear layer over the last dimension (tokens × features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 act_quantizer="approx_sign", weight_scale: str = "mean"):
        super().__init__(in_features, out_features, bias=bias)
        self._init_binary_weights(weight_scale)
        self.quantizer = get_quantizer(act_quantizer, in_features)

    @property
    def binary_activations(self) -> bool:
        return self.quantizer is not None

    def output_scale(self):
        return None if self.quantizer is None else self.quantizer.output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x if self.quantizer is None else self.quantizer(x)
        y = F.linear(xq, self.binary_weight(), self.bias)
        scale = self.output_scale()
        return y if scale is None else y * scale

"""Input-dependent re-scalings that give binary layers back what the sign throws away.

* :class:`SpatialRescale` — one factor per pixel (or token), from the FP input:
  ``'conv'`` is EBSR's ``sigmoid(Conv1x1_{C->1}(x))``; ``'absmean'`` is the parameter-free
  XNOR-Net factor ``K = box_k(mean_c |x|)`` (for tokens: ``mean_c |x|``).
* :class:`ChannelRescale` — one factor per output channel (and optionally one shift per
  input channel) from the global average of the FP input: ``'mlp'`` is EBSR's
  ``[beta, g] = MLP(GAP(x))``, ``gamma = sigmoid(g)``; ``'affine'`` is the cheaper
  per-channel ``gamma = sigmoid(w * GAP(x) + b)`` (2 parameters per channel).

Both take the FP input of the binary layer they serve and return factors the layer's
output is multiplied by. Shapes: maps are N×C×H×W, token sequences N×L×C.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL_MODES = ("conv", "absmean")
CHANNEL_MODES = ("mlp", "affine")


class SpatialRescale(nn.Module):
    def __init__(self, channels: int, mode: str = "conv", kernel_size: int = 3):
        super().__init__()
        if mode not in SPATIAL_MODES:
            raise ValueError(f"spatial re-scaling must be one of {SPATIAL_MODES} or None, got {mode!r}")
        self.mode = mode
        self.kernel_size = kernel_size
        if mode == "conv":
            self.proj = nn.Conv2d(channels, 1, 1)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel factor: N×1×H×W for maps, N×L×1 for tokens."""
        if x.dim() == 3:  # tokens
            if self.mode == "absmean":
                return x.abs().mean(-1, keepdim=True)
            return torch.sigmoid(F.linear(x, self.proj.weight.flatten(1), self.proj.bias))
        if self.mode == "absmean":
            k = self.kernel_size
            return F.avg_pool2d(x.abs().mean(1, keepdim=True), k, 1, k // 2, count_include_pad=True)
        return torch.sigmoid(self.proj(x))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", kernel_size={self.kernel_size}" if self.mode == "absmean" else "")


class ChannelRescale(nn.Module):
    """Per-channel scale ``gamma`` (N×C_out) and, with ``shift=True``, per-input-channel
    shift ``beta`` (N×C_in) computed from ``GAP(x)``.

    ``'affine'`` maps input channel ``o % C_in`` to output channel ``o`` (identity when
    ``C_in == C_out``) and cannot produce a shift.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "mlp",
                 hidden_ratio: float = 0.25, shift: bool = True):
        super().__init__()
        if mode not in CHANNEL_MODES:
            raise ValueError(f"channel re-scaling must be one of {CHANNEL_MODES} or None, got {mode!r}")
        if mode == "affine" and shift:
            raise ValueError("the 'affine' channel re-scaling has no input-dependent shift")
        self.mode, self.shift = mode, shift
        self.in_channels, self.out_channels = in_channels, out_channels
        if mode == "mlp":
            hidden = max(4, int(round(in_channels * hidden_ratio)))
            self.fc1 = nn.Linear(in_channels, hidden)
            self.fc2 = nn.Linear(hidden, out_channels + (in_channels if shift else 0))
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        else:
            self.weight = nn.Parameter(torch.zeros(out_channels))
            self.bias = nn.Parameter(torch.zeros(out_channels))
            self.register_buffer("source", torch.arange(out_channels) % in_channels, persistent=False)

    def forward(self, x: torch.Tensor):
        """Returns ``(beta, gamma)``: ``beta`` N×C_in or ``None``, ``gamma`` N×C_out."""
        pooled = x.mean(1) if x.dim() == 3 else x.mean((2, 3))
        if self.mode == "affine":
            return None, torch.sigmoid(self.weight * pooled[:, self.source] + self.bias)
        out = self.fc2(F.relu(self.fc1(pooled)))
        gamma = torch.sigmoid(out[:, :self.out_channels])
        beta = out[:, self.out_channels:] if self.shift else None
        return beta, gamma

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, mode={self.mode!r}, shift={self.shift}"

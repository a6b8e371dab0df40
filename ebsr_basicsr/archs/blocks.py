"""The composable blocks every architecture is assembled from.

* :class:`BinaryUnit` — one binary 3×3 conv (or linear layer) with everything a method puts
  around it: an optional input-dependent channel shift, BatchNorm, spatial and channel
  re-scaling, and an FP shortcut (``y = BinConv(x + beta) * s(x) * gamma(x) + x``).
* :class:`BinaryResBlock` — two units with an activation between, and an optional
  block-level shortcut.
* :func:`make_upsampler` — the ``'fp'``, ``'binary'`` and ``'light'`` upsamplers.
* :class:`BinarySRNet` — head conv, a body of blocks, body-end conv with a global
  residual, upsampler; what ``BNNSR``, ``E2FIFNet``, ``EBSRNet`` and ``SCALESNet`` are.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.binary import BinaryConv2d, BinaryLinear
from ..ops.rescale import ChannelRescale, SpatialRescale

UPSAMPLERS = ("fp", "binary", "light")
ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": lambda: nn.ReLU(),
    None: lambda: nn.Identity(),
}


def conv_spec(*, act_quantizer="approx_sign", weight_scale="mean", pad_value=1.0) -> dict:
    """The keyword arguments of a :class:`BinaryConv2d`, as one dict blocks pass around."""
    return dict(act_quantizer=act_quantizer, weight_scale=weight_scale, pad_value=pad_value)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast an N×C factor over an N×C×H×W map or an N×L×C token sequence."""
    return v[:, None, :] if like.dim() == 3 else v[:, :, None, None]


class BinaryUnit(nn.Module):
    """One binary layer with everything a method puts around it:
    ``y = Bin(x + beta(x)) [-> BN] * s(x) * gamma(x) [+ x]``.

    The layer is a 3×3 :class:`BinaryConv2d` on N×C×H×W maps or, with ``linear=True``, a
    :class:`BinaryLinear` on N×L×C token sequences (the transformer's layers).

    Args:
        in_channels, out_channels: widths (``out_channels`` defaults to ``in_channels``).
        conv: :func:`conv_spec` keyword arguments of the binary layer.
        bias: give the binary layer a bias.
        norm: BatchNorm after the conv (E2FIF).
        spatial: ``None``, ``'conv'`` or ``'absmean'`` (see ``SpatialRescale``).
        channel: ``None``, ``'mlp'`` or ``'affine'`` (see ``ChannelRescale``).
        channel_shift: with ``channel='mlp'``, also an input-dependent shift of the layer's
            input (EBSR's channel-wise shifting).
        mlp_ratio: hidden width of the ``'mlp'`` channel branch, as a fraction of channels.
        shortcut: add the FP input to the output (E2FIF, EBSR, SCALES); needs equal widths.
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, *, conv: dict, linear: bool = False,
                 bias: bool = False, norm: bool = False, spatial: Optional[str] = None,
                 channel: Optional[str] = None, channel_shift: bool = False, mlp_ratio: float = 0.25,
                 spatial_kernel: int = 3, shortcut: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        if shortcut and in_channels != out_channels:
            raise ValueError("a shortcut needs in_channels == out_channels")
        if channel_shift and channel != "mlp":
            raise ValueError("channel_shift needs channel='mlp'")
        if linear:
            if norm:
                raise ValueError("norm is for convolutions")
            conv = {k: v for k, v in conv.items() if k != "pad_value"}
            self.layer = BinaryLinear(in_channels, out_channels, bias=bias, **conv)
        else:
            self.layer = BinaryConv2d(in_channels, out_channels, 3, bias=bias, **conv)
        self.norm = nn.BatchNorm2d(out_channels) if norm else None
        self.spatial = SpatialRescale(in_channels, spatial, spatial_kernel) if spatial else None
        self.channel = (ChannelRescale(in_channels, out_channels, channel, mlp_ratio, channel_shift)
                        if channel else None)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.channel(x) if self.channel is not None else (None, None)
        y = self.layer(x if beta is None else x + _per_channel(beta, x))
        if self.norm is not None:
            y = self.norm(y)
        if self.spatial is not None:
            y = y * self.spatial(x)
        if gamma is not None:
            y = y * _per_channel(gamma, x)
        return y + x if self.shortcut else y


class BinaryResBlock(nn.Module):
    """``unit2(act(unit1(x)))`` plus ``x`` when ``shortcut`` (the units share their options)."""

    def __init__(self, channels: int, unit: dict, act: Optional[str] = "leaky", shortcut: bool = False):
        super().__init__()
        self.unit1 = BinaryUnit(channels, **unit)
        self.act = ACTIVATIONS[act]()
        self.unit2 = BinaryUnit(channels, **unit)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.unit2(self.act(self.unit1(x)))
        return y + x if self.shortcut else y


def _stages(scale: int) -> list[int]:
    if scale in (2, 3):
        return [scale]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"upscale must be 2, 3 or a power of 2, got {scale}")


class BinaryUpStage(nn.Module):
    """BBCU-M style binary upsampling by ``s``: ``PS(BinConv(x)) + nearest(x)``."""

    def __init__(self, channels: int, s: int, conv: dict):
        super().__init__()
        self.conv = BinaryConv2d(channels, channels * s * s, 3, bias=True, **conv)
        self.shuffle = nn.PixelShuffle(s)
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x)) + F.interpolate(x, scale_factor=self.s, mode="nearest")


def make_upsampler(kind: str, num_feat: int, num_out_ch: int, scale: int, conv: dict) -> nn.Sequential:
    """``'fp'``: (FP conv → PixelShuffle) per ×2/×3 stage, then an FP conv to the output;
    ``'binary'``: the same with binary stages (:class:`BinaryUpStage`);
    ``'light'``: one FP conv to ``num_out_ch·s²`` at LR, then PixelShuffle(s)."""
    if kind not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {kind!r}")
    if kind == "light":
        _stages(scale)  # validates
        return nn.Sequential(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
    layers: list[nn.Module] = []
    for s in _stages(scale):
        if kind == "fp":
            layers += [nn.Conv2d(num_feat, num_feat * s * s, 3, 1, 1), nn.PixelShuffle(s)]
        else:
            layers.append(BinaryUpStage(num_feat, s, conv))
    layers.append(nn.Conv2d(num_feat, num_out_ch, 3, 1, 1))
    return nn.Sequential(*layers)


IMAGE_SKIPS = (None, "bilinear")
BODY_ENDS = ("conv", None)


class ImageNormalization:
    """EDSR-style input normalisation ``(x - rgb_mean) * img_range`` and its inverse."""

    def init_normalization(self, num_in_ch: int, num_out_ch: int, img_range: float, rgb_mean: Sequence[float]):
        if len(rgb_mean) != num_in_ch:
            rgb_mean = [sum(rgb_mean) / len(rgb_mean)] * num_in_ch
        self.img_range, self.num_out_ch = img_range, num_out_ch
        self.register_buffer("mean", torch.tensor(list(rgb_mean), dtype=torch.float32).view(1, -1, 1, 1))

    def output_mean(self) -> torch.Tensor:
        """The mean added back to the output (the input mean, or its average for a
        different number of output channels)."""
        return self.mean if self.num_out_ch == self.mean.shape[1] else self.mean.mean(1, keepdim=True)


class BinarySRNet(ImageNormalization, nn.Module):
    """Head conv → ``num_block`` blocks → body-end conv (+ head output) → upsampler.

    The head, the body-end conv and (unless ``upsampler='binary'``) the upsampler are FP,
    as in all the binary SR papers. Inputs are normalised EDSR-style:
    ``(x - rgb_mean) * img_range``. With ``image_skip='bilinear'`` the bilinearly upscaled
    input is added to the output, so the network learns only the residual. With
    ``body_end=None`` there is no body-end conv (the head output is still added back): that
    FP 3×3 conv at LR costs as much as four binary convs in the runtime.
    """

    def __init__(self, num_in_ch: int, num_out_ch: int, num_feat: int, num_block: int, upscale: int,
                 upsampler: str, img_range: float, rgb_mean: Sequence[float], image_skip: Optional[str], *,
                 block: Callable[[], nn.Module], upsampler_conv: dict, body_end: Optional[str] = "conv"):
        super().__init__()
        if image_skip not in IMAGE_SKIPS:
            raise ValueError(f"image_skip must be one of {IMAGE_SKIPS}, got {image_skip!r}")
        if body_end not in BODY_ENDS:
            raise ValueError(f"body_end must be one of {BODY_ENDS}, got {body_end!r}")
        if image_skip and num_in_ch != num_out_ch:
            raise ValueError("image_skip needs num_in_ch == num_out_ch")
        self.upscale, self.image_skip = upscale, image_skip
        self.init_normalization(num_in_ch, num_out_ch, img_range, rgb_mean)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[block() for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1) if body_end == "conv" else None
        self.upsample = make_upsampler(upsampler, num_feat, num_out_ch, upscale, upsampler_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first((x - self.mean) * self.img_range)
        body = self.body(feat)
        feat = (body if self.conv_after_body is None else self.conv_after_body(body)) + feat
        out = self.upsample(feat) / self.img_range
        if self.image_skip:  # the upscaled input already carries the mean
            return out + F.interpolate(x, scale_factor=self.upscale, mode=self.image_skip, align_corners=False)
        return out + self.output_mean()

"""SCALES on a binary SwinIR (lightweight SwinIR size by default).

The linear layers of attention (qkv, proj) and of the MLP (fc1, fc2) are binary
:class:`BinaryUnit` layers with SCALES' re-scalings: the layer-wise scale (elastic sign),
token-wise (spatial) re-scaling ``mean_c|x|`` and feature-wise (channel) re-scaling; the
square one (proj) gets an FP shortcut. The patch-embedding conv, the convs closing each
stage, the softmax/matmuls of attention, LayerNorms and the upsampler stay FP (as the paper
describes the baseline binary SwinIR; which layers it binarized exactly is unpublished).

The input is reflect-padded to a multiple of ``window_size`` and the output cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_arch
from .blocks import BinaryUnit, ImageNormalization, make_upsampler
from .bnnsr_arch import DIV2K_RGB_MEAN
from .scales_arch import scales_conv


class MatMul(nn.Module):
    """``a @ b`` as a module, so the complexity counter sees attention's FP matmuls."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """N×H×W×C → (N·windows)×ws²×C."""
    n, h, w, c = x.shape
    x = x.view(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(N·windows)×ws²×C → N×H×W×C."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """ws²×ws² index into the (2ws-1)² relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """windows×ws²×ws² additive mask (0 or -100) keeping attention inside each region of a
    cyclically shifted map."""
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, unit: dict):
        super().__init__()
        self.num_heads, self.window_size = num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = BinaryUnit(dim, 3 * dim, linear=True, bias=True, shortcut=False, **unit)
        self.proj = BinaryUnit(dim, dim, linear=True, bias=True, shortcut=True, **unit)
        self.bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(window_size), persistent=False)
        self.scores, self.mix = MatMul(), MatMul()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.scores(q * self.scale, k.transpose(-2, -1))
        attn = attn + self.bias_table[self.bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            windows = mask.shape[0]
            attn = (attn.view(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]).view(b, -1, n, n)
        out = self.mix(attn.softmax(-1), v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, unit: dict):
        super().__init__()
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, unit)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = BinaryUnit(dim, hidden, linear=True, bias=True, shortcut=False, **unit)
        self.act = nn.GELU()
        self.fc2 = BinaryUnit(hidden, dim, linear=True, bias=True, shortcut=False, **unit)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        n, _, c = x.shape
        ws, shift = self.window_size, self.shift
        y = self.norm1(x).view(n, h, w, c)
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
        mask = shifted_window_mask(h, w, ws, shift).to(x) if shift else None
        y = window_reverse(self.attn(window_partition(y, ws), mask), ws, h, w)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        x = x + y.reshape(n, h * w, c)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class SwinStage(nn.Module):
    """SwinIR's residual Swin transformer block: ``depth`` Swin blocks, an FP 3×3 conv, a
    residual around both."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, unit: dict):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, unit)
            for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, (h, w))
        return self.conv(tokens.transpose(1, 2).reshape(n, c, h, w)) + x


@register_arch
class SCALESSwinIR(ImageNormalization, nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=60, num_block=4, upscale=4, upsampler="light",
                 img_range=1.0, rgb_mean=DIV2K_RGB_MEAN, depth=6, num_heads=6, window_size=8, mlp_ratio=2.0,
                 layer_scale=True, spatial="absmean", channel="affine"):
        super().__init__()
        if num_feat % num_heads:
            raise ValueError(f"num_feat ({num_feat}) must be divisible by num_heads ({num_heads})")
        self.upscale, self.window_size = upscale, window_size
        self.init_normalization(num_in_ch, num_out_ch, img_range, rgb_mean)
        conv = scales_conv(layer_scale, 1.0)
        unit = dict(conv=conv, spatial=spatial, channel=channel)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.stages = nn.ModuleList(SwinStage(num_feat, depth, num_heads, window_size, mlp_ratio, unit)
                                    for _ in range(num_block))
        self.norm = nn.LayerNorm(num_feat)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = make_upsampler(upsampler, num_feat, num_out_ch, upscale, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        ws = self.window_size
        x = (x - self.mean) * self.img_range
        x = F.pad(x, (0, (-w) % ws, 0, (-h) % ws), mode="reflect")
        feat = self.conv_first(x)
        body = feat
        for stage in self.stages:
            body = stage(body)
        body = self.norm(body.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = self.upsample(self.conv_after_body(body) + feat) / self.img_range + self.output_mean()
        return out[:, :, :h * self.upscale, :w * self.upscale]

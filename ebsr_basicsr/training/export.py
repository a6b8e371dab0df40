"""Turn a trained network into a runtime model file (bit-packed, folded, pickle-free).

The exporter walks the torch module tree and emits the runtime graph
(``ebsr_basicsr.runtime.engine`` executes it) one op per block: every binary layer becomes a
``binary_unit`` whose weights are packed to 1 bit and whose per-output-channel factors
(weight scale, layer-wise scale, conv bias, BatchNorm) are folded into one ``mul``/``bias``
pair; input-dependent re-scalings keep their small FP parameters.

    ebsr-export net_g_latest.pth -opt options/train/EBSR/train_EBSRNet_x4.yml -o ebsr_x4.ebsr
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..archs import build_arch
from ..archs.blocks import BinaryResBlock, BinarySRNet, BinaryUnit, BinaryUpStage
from ..archs.scales_swinir_arch import SCALESSwinIR, SwinBlock
from ..ops.quantizers import RSign
from ..packing import pack_weights
from ..runtime.format import FORMAT_VERSION, save_model
from ..runtime.ops_schema import GraphChecker, check_header
from ..runtime.schema import SchemaError
from .checkpoint import CheckpointError, load_state_dict

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """The checkpoint or options cannot be exported (message says why; an unreadable
    checkpoint's :class:`CheckpointError` comes through with the same message)."""


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def _runnable(check, *args):
    """``check(*args)``, its :class:`SchemaError` (the runtime would refuse the model) as an
    :class:`ExportError`."""
    try:
        return check(*args)
    except SchemaError as e:
        raise ExportError(f"the runtime cannot run this network: {e}") from None


class GraphBuilder:
    """Collects ops (JSON-able dicts) and the arrays they reference; every op is checked
    against the runtime's op schema as it is emitted (:mod:`ebsr_basicsr.runtime.ops_schema`)."""

    def __init__(self, in_channels: int):
        self.ops: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self.checker = GraphChecker(in_channels, self.tensors)

    def tensor(self, prefix: str, array: np.ndarray) -> str:
        name = f"{prefix}.{len(self.tensors)}"
        self.tensors[name] = array
        return name

    def emit(self, op: str, inputs: list[str], **attrs) -> str:
        out = f"v{len(self.ops) + 1}"
        spec = {"op": op, "in": inputs, "out": out, **attrs}
        _runnable(self.checker.add, spec)
        self.ops.append(spec)
        return out

    # ----------------------------------------------------------------- FP layers
    def conv(self, conv: nn.Conv2d, x: str, *, shuffle: int = 1, residual: str | None = None) -> str:
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ExportError(f"unsupported conv {conv}")
        attrs = {"weight": self.tensor("conv.w", _np(conv.weight)), "stride": conv.stride[0],
                 "padding": conv.padding[0], "shuffle": shuffle}
        if conv.bias is not None:
            attrs["bias"] = self.tensor("conv.b", _np(conv.bias))
        return self.emit("conv2d", [x] + ([residual] if residual else []), **attrs)

    # ----------------------------------------------------------------- binary layers
    def binary_unit(self, unit, x: str, **kwargs) -> str:
        return self.emit("binary_unit", [x], **self.unit_attrs(unit, **kwargs))

    def unit_attrs(self, unit, *, neg_slope=None, shuffle: int = 1, shortcut=None) -> dict:
        """Attributes of a :class:`BinaryUnit`, or of the bare binary conv of a
        :class:`BinaryUpStage`, with every per-output-channel factor folded into mul/bias."""
        layer = unit.layer if isinstance(unit, BinaryUnit) else unit.conv
        norm = getattr(unit, "norm", None)
        w = layer.weight.detach()
        out_ch, in_ch = w.shape[:2]
        k = w.shape[2] if w.dim() == 4 else 1
        mul = torch.ones(out_ch) if layer.weight_alpha() is None else layer.weight_alpha().detach().clone()
        bias = torch.zeros(out_ch) if layer.bias is None else layer.bias.detach().clone()
        scale = layer.output_scale()
        if scale is not None:
            mul, bias = mul * scale.detach(), bias * scale.detach()
        if norm is not None:
            s = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
            mul, bias = mul * s, (bias - norm.running_mean) * s + norm.bias.detach()
        signs = w.reshape(out_ch, in_ch, k, k)
        attrs = {
            "kind": "linear" if w.dim() == 2 else "conv", "in_channels": in_ch, "out_channels": out_ch,
            "kernel": k, "w_bits": self.tensor("unit.w", pack_weights(_np(signs))),
            "mul": self.tensor("unit.mul", _np(mul)), "bias": self.tensor("unit.bias", _np(bias)),
            "pad_value": getattr(layer, "pad_value", 1.0), "fp_activations": not layer.binary_activations,
            "neg_slope": neg_slope, "shuffle": shuffle,
            "shortcut": shortcut or ("identity" if getattr(unit, "shortcut", False) else None),
        }
        quantizer = layer.quantizer
        if isinstance(quantizer, RSign):
            attrs["threshold"] = self.tensor("unit.thr", _np(quantizer.threshold))
        spatial = getattr(unit, "spatial", None)
        if spatial is not None:
            attrs["spatial"] = {"mode": spatial.mode, "kernel": spatial.kernel_size}
            if spatial.mode == "conv":
                attrs["spatial"]["weight"] = self.tensor("sp.w", _np(spatial.proj.weight.flatten()))
                attrs["spatial"]["bias"] = self.tensor("sp.b", _np(spatial.proj.bias))
        channel = getattr(unit, "channel", None)
        if channel is not None:
            c = {"mode": channel.mode, "shift": channel.shift}
            if channel.mode == "mlp":
                for name in ("fc1", "fc2"):
                    fc = getattr(channel, name)
                    c[name + "_w"] = self.tensor("ch.w", _np(fc.weight))
                    c[name + "_b"] = self.tensor("ch.b", _np(fc.bias))
            else:
                c["weight"] = self.tensor("ch.w", _np(channel.weight))
                c["bias"] = self.tensor("ch.b", _np(channel.bias))
            attrs["channel"] = c
        if attrs["fp_activations"]:
            self.notes.append("binary weights with full-precision activations run as exact FP convolutions")
        return attrs

    def res_block(self, block: BinaryResBlock, x: str) -> str:
        act = block.act
        slope = (act.negative_slope if isinstance(act, nn.LeakyReLU) else 0.0 if isinstance(act, nn.ReLU)
                 else None)
        y = self.binary_unit(block.unit1, x, neg_slope=slope)
        y = self.binary_unit(block.unit2, y)
        return self.emit("add", [y, x]) if block.shortcut else y

    def upsampler(self, seq: nn.Sequential, x: str) -> str:
        layers = list(seq)
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.PixelShuffle):
                x = self.conv(layer, x, shuffle=nxt.upscale_factor)
                i += 2
            elif isinstance(layer, nn.Conv2d):
                x = self.conv(layer, x)
                i += 1
            elif isinstance(layer, BinaryUpStage):
                x = self.binary_unit(layer, x, shuffle=layer.s, shortcut="nearest")
                i += 1
            else:
                raise ExportError(f"unsupported upsampler layer {layer}")
        return x

    def layer_norm(self, norm: nn.LayerNorm, x: str) -> str:
        return self.emit("layer_norm", [x], weight=self.tensor("ln.w", _np(norm.weight)),
                         bias=self.tensor("ln.b", _np(norm.bias)), eps=norm.eps)

    def swin_block(self, block: SwinBlock, x: str) -> str:
        attn = block.attn
        n = attn.window_size ** 2
        rel = attn.bias_table[attn.bias_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        units = {name: self.unit_attrs(unit) for name, unit in
                 (("qkv", attn.qkv), ("proj", attn.proj), ("fc1", block.fc1), ("fc2", block.fc2))}
        return self.emit("swin_block", [x], heads=attn.num_heads, window=attn.window_size, shift=block.shift,
                         scale=attn.scale, rel_bias=self.tensor("attn.rel", _np(rel)),
                         norm1_w=self.tensor("ln.w", _np(block.norm1.weight)),
                         norm1_b=self.tensor("ln.b", _np(block.norm1.bias)), norm1_eps=block.norm1.eps,
                         norm2_w=self.tensor("ln.w", _np(block.norm2.weight)),
                         norm2_b=self.tensor("ln.b", _np(block.norm2.bias)), norm2_eps=block.norm2.eps,
                         **units)


def _export_cnn(g: GraphBuilder, net: BinarySRNet, x: str) -> str:
    mean = net.mean.flatten().tolist()
    h = g.emit("normalize", [x], mean=mean, range=net.img_range)
    feat = g.conv(net.conv_first, h)
    y = feat
    for block in net.body:
        y = g.res_block(block, y)
    y = g.emit("add", [y, feat]) if net.conv_after_body is None else g.conv(net.conv_after_body, y, residual=feat)
    y = g.upsampler(net.upsample, y)
    if net.image_skip:
        return g.emit("denormalize", [y, x], range=net.img_range, skip=net.image_skip, scale=net.upscale)
    mean = net.output_mean().flatten().tolist()
    return g.emit("denormalize", [y], range=net.img_range, mean=mean)


def _export_swinir(g: GraphBuilder, net: SCALESSwinIR, x: str) -> str:
    h = g.emit("normalize", [x], mean=net.mean.flatten().tolist(), range=net.img_range)
    h = g.emit("pad_reflect", [h], multiple=net.window_size)
    feat = g.conv(net.conv_first, h)
    y = feat
    for stage in net.stages:
        z = y
        for block in stage.blocks:
            z = g.swin_block(block, z)
        y = g.conv(stage.conv, z, residual=y)
    y = g.layer_norm(net.norm, y)
    y = g.conv(net.conv_after_body, y, residual=feat)
    y = g.upsampler(net.upsample, y)
    mean = net.output_mean().flatten().tolist()
    y = g.emit("denormalize", [y], range=net.img_range, mean=mean)
    return g.emit("crop", [y, x], scale=net.upscale)


def export_network(net: nn.Module, network_opt: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """Build the runtime header and tensors of ``net`` (in eval mode), built from
    ``network_opt`` (its ``network_g`` dict, kept in the header)."""
    net = net.eval()
    g = GraphBuilder(net.conv_first.in_channels)
    with torch.no_grad():
        if isinstance(net, BinarySRNet):
            out = _export_cnn(g, net, "input")
        elif isinstance(net, SCALESSwinIR):
            out = _export_swinir(g, net, "input")
        else:
            raise ExportError(f"no exporter for {type(net).__name__}")
    header = {
        "format": "ebsr-basicsr runtime model", "version": FORMAT_VERSION, "producer": f"ebsr-basicsr {__version__}",
        "arch": type(net).__name__, "network_g": network_opt, "scale": net.upscale,
        "in_channels": net.conv_first.in_channels,
        "padding": "binary convs pad their ±1 input with each unit's pad_value (+1/-1 free, 0 corrected)",
        "bit_convention": "bit 1 = -1, bit 0 = +1, packed along channels, 64 per uint64 word",
        "graph": g.ops, "output": out, "notes": sorted(set(g.notes)),
    }
    _runnable(check_header, header)
    _runnable(g.checker.finish, out, net.upscale)
    return header, g.tensors


def build_from_checkpoint(checkpoint, network_opt: dict, param_key: str | None = None) -> nn.Module:
    """Rebuild the network from its options and load the checkpoint strictly."""
    net = build_arch(network_opt)
    try:
        state = load_state_dict(checkpoint, param_key)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{checkpoint}: does not match {network_opt.get('type')} with these options:\n{e}") from None
    return net.eval()


def export_checkpoint(checkpoint, network_opt: dict, output, param_key: str | None = None) -> dict:
    """Export a BasicSR checkpoint to a runtime model file; returns a small report."""
    net = build_from_checkpoint(checkpoint, network_opt, param_key)
    header, tensors = export_network(net, network_opt)
    size = save_model(output, header, tensors)
    fp32_bytes = sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point())
    report = {"output": str(output), "arch": header["arch"], "scale": header["scale"], "bytes": size,
              "fp32_bytes": fp32_bytes, "checkpoint_bytes": Path(checkpoint).stat().st_size,
              "notes": header["notes"]}
    logger.debug("exported %s", report)
    return report

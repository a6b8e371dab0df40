"""A runtime model file back into a trainable network: the way to go on training a shipped model.

An exported file keeps every FP layer exactly and, of each binary layer, the weight signs and
the per-output-channel factors folded into one ``mul``. :func:`network_from_model` rebuilds the
network from the header's ``network_g`` and sets its weights so that it computes exactly what
the file computes: latent weights ``sign * |mul| / a`` (so ``mean|W|``, the weight scale, times
the layer scale ``a`` gives ``mul`` back), the thresholds, the re-scalings' parameters and the FP
convs as they were. The split of ``mul`` between the weight scale and the layer scale is not
in the file; ``a`` is chosen so that every latent weight lies well inside the straight-through
estimator's window ``|W| <= 1``.

Binary layers whose factors the file cannot give back (BatchNorm folded into ``mul``, a
learnable or absent weight scale, FP activations) raise :class:`ModelImportError`.

    python -m ebsr_basicsr.training.import_model MODEL.ebsr OUT.pth
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from ..archs import build_arch
from ..archs.blocks import BinarySRNet, BinaryUnit
from ..ops.quantizers import ElasticSign, RSign
from ..packing import unpack_bits_last_axis
from ..runtime.format import load_model


class ModelImportError(ValueError):
    """The model file cannot be turned back into a trainable network (message says why)."""


def _unpack_signs(w_bits: np.ndarray, in_channels: int) -> np.ndarray:
    """±1 float32 ``(O, C, k, k)`` from packed weights ``(k, k, CW, O)`` (bit 1 = -1)."""
    neg = unpack_bits_last_axis(np.ascontiguousarray(np.moveaxis(w_bits, 3, 0)), in_channels)  # (O, k, k, C)
    return np.where(np.moveaxis(neg, 3, 1), -1.0, 1.0).astype(np.float32)


def _set_conv(conv: nn.Conv2d, op: dict, tensors: dict) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(tensors[op["weight"]]))
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(tensors[op["bias"]]))


def _set_unit(unit: BinaryUnit, op: dict, tensors: dict) -> None:
    layer = unit.layer
    if layer.weight_scale != "mean" or unit.norm is not None or not layer.binary_activations:
        raise ModelImportError("only binary layers with the mean weight scale, binary activations and no "
                           "BatchNorm can be imported (their factors are folded into one mul)")
    mul = tensors[op["mul"]].astype(np.float64)
    if not (np.all(mul > 0) or np.all(mul < 0)):
        raise ModelImportError("a binary layer's mul changes sign across channels")
    quantizer = layer.quantizer
    with torch.no_grad():
        if isinstance(quantizer, ElasticSign):  # mul = mean|W| * alpha: every |W| <= 0.5
            scale = float(np.sign(mul[0]) * 2 * np.abs(mul).max())
            quantizer.alpha.fill_(scale)
            quantizer.initialized.fill_(True)
        else:  # mul is the weight scale mean|W| itself
            scale = 1.0
            if mul[0] < 0 or np.abs(mul).max() > 1:
                raise ModelImportError("a weight scale outside (0, 1] cannot be a mean |W| in the STE window")
        signs = _unpack_signs(tensors[op["w_bits"]], op["in_channels"])
        layer.weight.copy_(torch.from_numpy(signs * (np.abs(mul) / abs(scale))[:, None, None, None]))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(tensors[op["bias"]] / scale))
        elif np.any(tensors[op["bias"]]):
            raise ModelImportError("the file has a bias the network has no place for")
        if isinstance(quantizer, RSign):
            quantizer.threshold.copy_(torch.from_numpy(tensors[op["threshold"]]))
        sp, ch = op.get("spatial"), op.get("channel")
        if sp is not None and sp["mode"] == "conv":
            unit.spatial.proj.weight.copy_(torch.from_numpy(tensors[sp["weight"]]).view_as(unit.spatial.proj.weight))
            unit.spatial.proj.bias.copy_(torch.from_numpy(tensors[sp["bias"]]))
        if ch is not None:
            if ch["mode"] == "affine":
                unit.channel.weight.copy_(torch.from_numpy(tensors[ch["weight"]]))
                unit.channel.bias.copy_(torch.from_numpy(tensors[ch["bias"]]))
            else:
                for name in ("fc1", "fc2"):
                    fc = getattr(unit.channel, name)
                    fc.weight.copy_(torch.from_numpy(tensors[ch[name + "_w"]]))
                    fc.bias.copy_(torch.from_numpy(tensors[ch[name + "_b"]]))


def network_from_model(path) -> tuple[nn.Module, dict]:
    """``(network, network_g)`` computing what the model file at ``path`` computes."""
    header, tensors = load_model(path)
    opt = dict(header["network_g"])
    net = build_arch(opt)
    if not isinstance(net, BinarySRNet):
        raise ModelImportError(f"importing {type(net).__name__} is not supported (only the CNN architectures)")
    convs = [m for m in [net.conv_first] if m is not None]
    units = [u for block in net.body for u in (block.unit1, block.unit2)]
    tail = ([net.conv_after_body] if net.conv_after_body is not None else []) + \
        [m for m in net.upsample if isinstance(m, nn.Conv2d)]
    if any(not isinstance(m, (nn.Conv2d, nn.PixelShuffle)) for m in net.upsample):
        raise ModelImportError("only the fp and light upsamplers can be imported")
    conv_ops = [op for op in header["graph"] if op["op"] == "conv2d"]
    unit_ops = [op for op in header["graph"] if op["op"] == "binary_unit"]
    if len(conv_ops) != len(convs) + len(tail) or len(unit_ops) != len(units):
        raise ModelImportError(f"{path}: its graph does not match {opt.get('type')} with these options")
    for module, op in zip(convs + tail, conv_ops):
        _set_conv(module, op, tensors)
    for unit, op in zip(units, unit_ops):
        _set_unit(unit, op, tensors)
    return net.eval(), opt


def main(argv=None) -> int:
    import argparse

    from .._files import atomic_write
    from ..runtime.format import ModelFileError

    parser = argparse.ArgumentParser(
        prog="python -m ebsr_basicsr.training.import_model",
        description="Turn a runtime model file (.ebsr) back into a BasicSR checkpoint that computes exactly "
                    "what the file computes, to go on training it (pretrain_network_g in an option file).",
        epilog="example: python -m ebsr_basicsr.training.import_model ebsr_basicsr/weights/bicubic_x2.ebsr "
               "net_g.pth")
    parser.add_argument("model", help="the .ebsr model file to read")
    parser.add_argument("output", help="the checkpoint to write (params and params_ema, loadable with "
                                       "torch.load(weights_only=True))")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        net, opt = network_from_model(args.model)
    except (ModelImportError, ModelFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    state = net.state_dict()
    try:
        atomic_write(args.output, lambda f: torch.save({"params": state, "params_ema": state}, f))
    except OSError as e:
        print(f"error: {args.output}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{args.output}: {opt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

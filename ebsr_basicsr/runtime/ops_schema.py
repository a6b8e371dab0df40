"""Every runtime op declared once: its attributes, its tensors, and what it does to the
channels and the pixel grid of its inputs (NumPy only; the exporter imports it too).

The exporter emits its ops through a :class:`GraphChecker`, and the engine runs only what
:func:`check_model` accepted: the header's fields, every op's attributes (types, ranges,
cross-field rules) and tensors (dtype, shape in terms of the attributes and of the input's
channel count, finite values), the value names (each defined once, before use), the
channel counts and pixel grids propagated from the input to the output (which must have
the input's channels on the grid upscaled by ``scale``), and that every tensor is used.

A value's grid is the image grid upscaled by ``factor``; after ``pad_reflect`` it is that
grid reflect-padded to a ``multiple``, then upscaled by ``post``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from ..packing import n_words, valid_bits_mask
from .format import FORMAT_VERSION
from .schema import (MAX_DIM, Choice, Env, Field, Flag, Group, Int, ListOf, Number, Object, SchemaError, Text, Tensor,
                     Variant)

SCALES = (2, 3, 4)
IN_CHANNELS = (1, 3)  # luma (Y) or RGB images
MAX_SHUFFLE = 4
MAX_WINDOW = 64
MAX_CONV_KERNEL = 7
MAX_SPATIAL_KERNEL = 15
MAX_OPS = 4096
MAX_NAME = 100


@dataclass(frozen=True)
class Grid:
    factor: int = 1
    multiple: Optional[int] = None
    post: int = 1

    def up(self, s: int) -> "Grid":
        return Grid(self.factor * s) if self.multiple is None else Grid(self.factor, self.multiple, self.post * s)

    def __str__(self):
        return f"x{self.factor}" if self.multiple is None else \
            f"x{self.factor} padded to a multiple of {self.multiple}, then x{self.post}"


@dataclass(frozen=True)
class Value:
    channels: int
    grid: Grid

    def __str__(self):
        return f"{self.channels} channels on the grid {self.grid}"


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SchemaError(f"{where}: {message}")


def words(name: str) -> Callable[[Env], int]:
    """The number of 64-bit words holding the channels that the field ``name`` counts."""
    return lambda env: n_words(env[name])


def _no_bits_beyond_channels(w_bits: np.ndarray, env: Env) -> str | None:
    if np.any(w_bits & ~valid_bits_mask(env["in_channels"])[None, None, :, None]):
        return f"bits set beyond channel {env['in_channels']}"
    return None


def _f32(*shape) -> Tensor:
    return Tensor("float32", shape)


# ------------------------------------------------------------------------- the binary unit
SPATIAL = Variant("mode", {
    "absmean": Group({"kernel": Field(Int(1, MAX_SPATIAL_KERNEL))},
                     checks=((lambda e: e["kernel"] % 2 == 1, "the spatial kernel must be odd, got {kernel}"),)),
    "conv": Group({"kernel": Field(Int(1, MAX_SPATIAL_KERNEL), optional=True),
                   "weight": Field(_f32("in_channels")), "bias": Field(_f32(1))}),
})


def _mlp_rows(env: Env) -> int:
    return env["out_channels"] + (env["in_channels"] if env["shift"] else 0)


CHANNEL = Variant("mode", {
    "affine": Group({"shift": Field(Choice((False,))),
                     "weight": Field(_f32("out_channels")), "bias": Field(_f32("out_channels"))}),
    "mlp": Group({"shift": Field(Flag()),
                  "fc1_w": Field(_f32("hidden", "in_channels")), "fc1_b": Field(_f32("hidden")),
                  "fc2_w": Field(_f32(_mlp_rows, "hidden")), "fc2_b": Field(_f32(_mlp_rows))}),
})

#: ``y = Bin(x - threshold - beta(x)) * mul + bias``, ``* spatial(x) * gamma(x)``, ``+ shortcut``,
#: LeakyReLU(neg_slope), PixelShuffle(shuffle); on a map (``kind='conv'``) or on token rows
#: (``kind='linear'``, 1x1). ``fp_activations``: binary weights on FP inputs.
UNIT = Group({
    "kind": Field(Choice(("conv", "linear"))),
    "kernel": Field(Int(choices=(1, 3))),
    "in_channels": Field(Int(1, MAX_DIM)),
    "out_channels": Field(Int(1, MAX_DIM)),
    "pad_value": Field(Number(choices=(-1.0, 0.0, 1.0))),
    "fp_activations": Field(Flag()),
    "neg_slope": Field(Number(), optional=True),
    "shuffle": Field(Int(1, MAX_SHUFFLE)),
    "shortcut": Field(Choice(("identity", "nearest")), optional=True),
    "w_bits": Field(Tensor("uint64", ("kernel", "kernel", words("in_channels"), "out_channels"),
                           _no_bits_beyond_channels)),
    "mul": Field(_f32("out_channels")),
    "bias": Field(_f32("out_channels")),
    "threshold": Field(_f32("in_channels"), optional=True),
    "spatial": Field(SPATIAL, optional=True),
    "channel": Field(CHANNEL, optional=True),
}, checks=(
    (lambda e: e["kind"] == "conv" or e["kernel"] == e["shuffle"] == 1, "a linear unit has kernel 1 and shuffle 1"),
    (lambda e: e["out_channels"] % e["shuffle"] ** 2 == 0,
     "out_channels {out_channels} is not divisible by shuffle {shuffle} squared"),
    (lambda e: e["shortcut"] != "identity" or e["in_channels"] == e["out_channels"] and e["shuffle"] == 1,
     "an identity shortcut needs in_channels == out_channels and shuffle 1"),
    (lambda e: e["shortcut"] != "nearest" or e["kind"] == "conv" and
     e["in_channels"] * e["shuffle"] ** 2 == e["out_channels"],
     "a nearest shortcut needs a conv unit with in_channels * shuffle^2 == out_channels"),
    (lambda e: not e["fp_activations"] or e["threshold"] is None, "a unit with FP activations has no threshold"),
    (lambda e: not e["fp_activations"] or e["kernel"] == 1 or e["pad_value"] == 0,
     "a unit with FP activations is zero padded (pad_value 0)"),
))


# ------------------------------------------------------------------------- the ops
@dataclass(frozen=True)
class OpSchema:
    """An op: its attributes (``cin``, the first input's channel count, is in scope), how
    many inputs it takes, and ``output(env, inputs, where)``, the value it makes (raising
    :class:`SchemaError` when the inputs do not fit)."""
    attrs: Group
    inputs: tuple
    output: Callable


def _same(env, ins, where):
    return ins[0]


def _normalize(env, ins, where):
    _require(len(env["mean"]) == ins[0].channels, where,
             f"{len(env['mean'])} means for an input of {ins[0].channels} channels")
    return ins[0]


def _denormalize(env, ins, where):
    x = ins[0]
    if env["skip"] is None:
        _require(len(ins) == 1, where, "takes one input without an image skip")
        _require(len(env["mean"]) in (1, x.channels), where,
                 f"{len(env['mean'])} means for an input of {x.channels} channels")
        return x
    _require(len(ins) == 2, where, "takes the map and the image with an image skip")
    image = ins[1]
    _require(image.grid.multiple is None and x.grid == image.grid.up(env["scale"]) and x.channels == image.channels,
             where, f"cannot add the image ({image}) upscaled x{env['scale']} to a map of {x}")
    return x


def _add(env, ins, where):
    _require(ins[0] == ins[1], where, f"cannot add {ins[0]} and {ins[1]}")
    return ins[0]


def _conv2d(env, ins, where):
    s = env["shuffle"]
    out = Value(env["out"] // (s * s), ins[0].grid.up(s))
    _require(len(ins) == 1 or ins[1] == out, where, f"the residual ({ins[-1]}) does not match the output ({out})")
    return out


def _unit_output(env, ins, where):
    x = ins[0]
    _require(env["kind"] == "conv", where, "a binary_unit on a map must have kind 'conv'")
    _require(env["in_channels"] == x.channels, where, f"in_channels {env['in_channels']} for an input of {x}")
    s = env["shuffle"]
    return Value(env["out_channels"] // (s * s), x.grid.up(s))


def _swin_block(env, ins, where):
    x = ins[0]
    _require(x.grid.multiple is not None and x.grid.multiple % env["window"] == 0, where,
             f"window {env['window']} does not tile a map of {x}")
    return x


def _pad_reflect(env, ins, where):
    x = ins[0]
    _require(x.grid.multiple is None, where, "pads a map that is already padded")
    return Value(x.channels, Grid(x.grid.factor, env["multiple"]))


def _crop(env, ins, where):
    x, image = ins
    s = env["scale"]
    _require(image.grid.multiple is None and x.grid.factor * x.grid.post == image.grid.factor * s, where,
             f"cannot crop a map of {x} to the image ({image}) upscaled x{s}")
    return Value(x.channels, image.grid.up(s))


def _swin_units(env) -> bool:
    c, units = env["cin"], [env[k] for k in ("qkv", "proj", "fc1", "fc2")]
    qkv, proj, fc1, fc2 = ((u["in_channels"], u["out_channels"]) for u in units)
    return (all(u["kind"] == "linear" for u in units) and qkv == (c, 3 * c) and proj == (c, c)
            and fc1[0] == c and fc2 == (fc1[1], c))


_EPS = Number(0.0, 1.0, open_lo=True)

OPS: Mapping[str, OpSchema] = {
    "normalize": OpSchema(Group({"mean": Field(ListOf(Number(), 1, max(IN_CHANNELS))),
                                 "range": Field(Number(0.0, 1e6, open_lo=True))}), (1,), _normalize),
    "denormalize": OpSchema(Group({
        "range": Field(Number(0.0, 1e6, open_lo=True)),
        "mean": Field(ListOf(Number(), 1, max(IN_CHANNELS)), optional=True),
        "skip": Field(Choice(("bilinear",)), optional=True),
        "scale": Field(Int(choices=SCALES), optional=True),
    }, checks=((lambda e: (e["skip"] is None) == (e["scale"] is None) == (e["mean"] is not None),
                "needs either a mean, or an image skip and its scale"),)), (1, 2), _denormalize),
    "add": OpSchema(Group({}), (2,), _add),
    "conv2d": OpSchema(Group({
        "weight": Field(_f32("out", "cin", "k", "k")),
        "bias": Field(_f32("out"), optional=True),
        "stride": Field(Int(choices=(1,))),
        "padding": Field(Int(0, MAX_CONV_KERNEL // 2)),
        "shuffle": Field(Int(1, MAX_SHUFFLE)),
    }, checks=(
        (lambda e: e["k"] % 2 == 1 and e["k"] <= MAX_CONV_KERNEL, "kernel {k} is not odd or is larger than 7"),
        (lambda e: e["padding"] == e["k"] // 2, "padding {padding} is not kernel {k} // 2"),
        (lambda e: e["out"] % e["shuffle"] ** 2 == 0, "{out} output channels do not shuffle by {shuffle}"),
    )), (1, 2), _conv2d),
    "binary_unit": OpSchema(UNIT, (1,), _unit_output),
    "layer_norm": OpSchema(Group({"weight": Field(_f32("cin")), "bias": Field(_f32("cin")), "eps": Field(_EPS)}),
                           (1,), _same),
    "swin_block": OpSchema(Group({
        "heads": Field(Int(1, MAX_DIM)),
        "window": Field(Int(1, MAX_WINDOW)),
        "shift": Field(Int(0, MAX_WINDOW)),
        "scale": Field(Number(0.0, 1e6, open_lo=True)),
        "rel_bias": Field(_f32("heads", lambda e: e["window"] ** 2, lambda e: e["window"] ** 2)),
        "norm1_w": Field(_f32("cin")), "norm1_b": Field(_f32("cin")), "norm1_eps": Field(_EPS),
        "norm2_w": Field(_f32("cin")), "norm2_b": Field(_f32("cin")), "norm2_eps": Field(_EPS),
        "qkv": Field(UNIT), "proj": Field(UNIT), "fc1": Field(UNIT), "fc2": Field(UNIT),
    }, checks=(
        (lambda e: e["cin"] % e["heads"] == 0, "{cin} channels do not split into {heads} heads"),
        (lambda e: e["shift"] < e["window"], "shift {shift} is not smaller than the window {window}"),
        (_swin_units, "qkv, proj, fc1 and fc2 must be linear units {cin}->{cin}*3, {cin}->{cin}, {cin}->hidden, "
                      "hidden->{cin}"),
    )), (1,), _swin_block),
    "pad_reflect": OpSchema(Group({"multiple": Field(Int(1, MAX_WINDOW))}), (1,), _pad_reflect),
    "crop": OpSchema(Group({"scale": Field(Int(choices=SCALES))}), (2,), _crop),
}


# ------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class OpSpec:
    """One checked op: ``attrs`` holds every declared attribute (``None`` when absent),
    tensors by name, nested groups as dicts."""
    kind: str
    inputs: tuple
    out: str
    attrs: dict


def _name(value, where: str) -> str:
    _require(type(value) is str and 1 <= len(value) <= MAX_NAME, where,
             f"expected a value name of 1..{MAX_NAME} characters, got {value!r:.40}")
    return value


class GraphChecker:
    """Checks ops one at a time against :data:`OPS` and the values defined before them."""

    def __init__(self, in_channels: int, tensors: Mapping[str, np.ndarray]):
        self.in_channels = in_channels
        self.tensors, self.used = tensors, set()
        self.values = {"input": Value(in_channels, Grid())}
        self.ops: list[OpSpec] = []

    def add(self, spec) -> OpSpec:
        where = f"op {len(self.ops)}"
        _require(len(self.ops) < MAX_OPS, where, f"more than {MAX_OPS} ops")
        kind = spec.get("op") if type(spec) is dict else None
        if type(kind) is not str or kind not in OPS:
            raise SchemaError(f"{where}: unknown op {kind!r:.40} (made by a newer ebsr-basicsr?)"
                              if type(spec) is dict else f"{where}: expected an object, got {spec!r:.40}")
        schema = OPS[kind]
        where = f"op {len(self.ops)} ({kind})"
        inputs = spec.get("in")
        _require(type(inputs) is list and len(inputs) in range(schema.inputs[0], schema.inputs[-1] + 1), where,
                 f"expected a list of {'-'.join(map(str, schema.inputs))} input names, got {inputs!r:.40}")
        for name in inputs:
            _require(_name(name, where) in self.values, where, f"input {name!r} is not defined before this op")
        out = _name(spec.get("out"), where)
        _require(out not in self.values, where, f"value {out!r} is defined twice")
        ins = [self.values[name] for name in inputs]
        env = Env(self.tensors, self.used, {"cin": ins[0].channels})
        attrs = {k: v for k, v in spec.items() if k not in ("op", "in", "out")}
        scope = schema.attrs.scope(attrs, where, env)
        self.values[out] = schema.output(scope, ins, where)
        op = OpSpec(kind, tuple(inputs), out, scope.maps[1])
        self.ops.append(op)
        return op

    def finish(self, output, scale: int) -> list[OpSpec]:
        """The checked ops, once ``output`` is known to be an upscaled image and every
        tensor has been used."""
        where = "graph"
        _require(_name(output, where) in self.values and output != "input", where,
                 f"the output {output!r} is not made by any op")
        expected = Value(self.in_channels, Grid(scale))
        _require(self.values[output] == expected, where,
                 f"the output has {self.values[output]}, expected {expected}")
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise SchemaError(f"{where}: tensor {unused[0]!r:.60} is not used by any op")
        return self.ops


HEADER = Group({
    "arch": Field(Text(1, MAX_NAME)),
    "scale": Field(Int(choices=SCALES)),
    "in_channels": Field(Int(choices=IN_CHANNELS)),
    "output": Field(Text(1, MAX_NAME)),
    "format": Field(Text(), optional=True),
    "version": Field(Int(choices=(FORMAT_VERSION,)), optional=True),
    "producer": Field(Text(), optional=True),
    "network_g": Field(Object(), optional=True),
    "padding": Field(Text(), optional=True),
    "bit_convention": Field(Text(), optional=True),
    "notes": Field(ListOf(Text()), optional=True),
})


@dataclass(frozen=True)
class Model:
    arch: str
    scale: int
    in_channels: int
    output: str
    ops: list


def check_header(header: dict) -> dict:
    """The header's own fields, checked (the graph is left to a :class:`GraphChecker`)."""
    _require(type(header) is dict, "header", "expected an object")
    return HEADER.check(header, "header", Env({}, set()), skip=("graph",))


def check_model(header: dict, tensors: Mapping[str, np.ndarray]) -> Model:
    """Check a whole model (header and graph) against the schema; raises :class:`SchemaError`."""
    fields = check_header(header)
    graph = header.get("graph")
    _require(type(graph) is list, "header", "the graph must be a list of ops")
    _require(len(graph) <= MAX_OPS, "header", f"more than {MAX_OPS} ops")
    checker = GraphChecker(fields["in_channels"], tensors)
    for spec in graph:
        checker.add(spec)
    ops = checker.finish(fields["output"], fields["scale"])
    return Model(fields["arch"], fields["scale"], fields["in_channels"], fields["output"], ops)

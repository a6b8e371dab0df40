"""Declarative checks of JSON values: the building blocks of the op schema (NumPy only).

A *spec* checks one JSON value and returns it normalised: :class:`Int`, :class:`Number`,
:class:`Choice`, :class:`Flag`, :class:`Text`, :class:`ListOf`, :class:`Object` (any JSON
object, kept as information), :class:`Tensor` (the name of an array whose dtype and shape
are declared in terms of other fields), and :class:`Group` / :class:`Variant` (a JSON
object with declared fields, nested). A :class:`Group` refuses unknown keys, fills absent
optional fields with ``None``, and evaluates plain fields first, then tensors, then nested
groups, then its cross-field checks, so that every tensor shape and check can use the
fields it names.

Shapes are tuples of dimensions: an ``int``; a ``str`` naming a field, or a *free* symbol
that the first tensor using it binds (``"out"`` in a conv weight ``("out", "cin", "k",
"k")``); or a callable of the fields. Failures raise :class:`SchemaError` saying where.
"""
from __future__ import annotations

import math
from collections import ChainMap
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np


class SchemaError(ValueError):
    """A value that does not fit its declaration (the message says where and why)."""


#: largest free dimension a tensor may bind (channel counts, hidden widths)
MAX_DIM = 4096


class Env(ChainMap):
    """The fields checked so far (innermost group first), the tensors, and what the
    checks bound along the way."""

    def __init__(self, tensors: Mapping[str, np.ndarray], used: set, *maps):
        super().__init__(*maps)
        self.tensors, self.used = tensors, used

    def child(self, values: dict) -> "Env":
        """A scope for one group: its free symbols, then its ``values``, then this one."""
        return Env(self.tensors, self.used, {}, values, *self.maps)


def _fail(where: str, message: str):
    raise SchemaError(f"{where}: {message}")


class Spec:
    def check(self, value, where: str, env: Env):
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    """An integer in ``[lo, hi]`` (never a bool or a float), or one of ``choices``."""
    lo: int = 0
    hi: int = MAX_DIM
    choices: tuple = ()

    def check(self, value, where, env):
        if type(value) is not int:
            _fail(where, f"expected an integer, got {value!r:.40}")
        if self.choices and value not in self.choices or not self.lo <= value <= self.hi:
            allowed = ", ".join(map(str, self.choices)) if self.choices else f"{self.lo}..{self.hi}"
            _fail(where, f"{value} is out of range ({allowed})")
        return value


@dataclass(frozen=True)
class Number(Spec):
    """A finite number in ``[lo, hi]`` (``lo`` excluded when ``open_lo``), as a float, or one
    of ``choices``."""
    lo: float = -math.inf
    hi: float = math.inf
    open_lo: bool = False
    choices: tuple = ()

    def check(self, value, where, env):
        try:
            number = float(value) if type(value) in (int, float) else math.nan
        except OverflowError:  # an integer too large for a float
            number = math.nan
        if not math.isfinite(number):
            _fail(where, f"expected a finite number, got {value!r:.40}")
        value = number
        too_low = value <= self.lo if self.open_lo else value < self.lo
        if self.choices and value not in self.choices or too_low or value > self.hi:
            allowed = "(" + ", ".join(f"{c:g}" for c in self.choices) + ")" if self.choices else \
                f"{'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}]"
            _fail(where, f"{value:g} is out of range {allowed}")
        return value


@dataclass(frozen=True)
class Choice(Spec):
    """One of ``values`` (compared with their types: ``True`` is not ``1``)."""
    values: tuple

    def check(self, value, where, env):
        if not any(type(value) is type(v) and value == v for v in self.values):
            _fail(where, f"{value!r:.40} is not one of {', '.join(map(repr, self.values))}")
        return value


@dataclass(frozen=True)
class Text(Spec):
    """A string of ``lo..hi`` characters."""
    lo: int = 0
    hi: int = 1000

    def check(self, value, where, env):
        if type(value) is not str or not self.lo <= len(value) <= self.hi:
            _fail(where, f"expected a string of {self.lo}..{self.hi} characters, got {value!r:.40}")
        return value


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of ``lo..hi`` items, each checked by ``item``, as a tuple."""
    item: Spec
    lo: int = 0
    hi: int = 1000

    def check(self, value, where, env):
        if type(value) is not list or not self.lo <= len(value) <= self.hi:
            _fail(where, f"expected a list of {self.lo}..{self.hi} items, got {value!r:.40}")
        return tuple(self.item.check(v, f"{where}[{i}]", env) for i, v in enumerate(value))


class Object(Spec):
    """Any JSON object (kept as it is: information, not used to run the model)."""

    def check(self, value, where, env):
        if type(value) is not dict:
            _fail(where, f"expected an object, got {value!r:.40}")
        return value


class Flag(Spec):
    def check(self, value, where, env):
        if type(value) is not bool:
            _fail(where, f"expected true or false, got {value!r:.40}")
        return value


@dataclass(frozen=True)
class Tensor(Spec):
    """The name of a tensor of ``dtype`` and ``shape``; float tensors must be finite and
    ``content(array, env)`` may refuse the values (returns a message, or None)."""
    dtype: str
    shape: tuple
    content: Callable[[np.ndarray, Env], str | None] | None = None

    def check(self, value, where, env):
        if type(value) is not str or value not in env.tensors:
            _fail(where, f"refers to a missing tensor {value!r:.60}")
        array = env.tensors[value]
        if not isinstance(array, np.ndarray):
            _fail(where, f"tensor {value!r} is a {type(array).__name__}, not an array")
        if array.dtype != np.dtype(self.dtype):
            _fail(where, f"tensor {value!r} is {array.dtype}, expected {self.dtype}")
        if array.ndim != len(self.shape):
            _fail(where, f"tensor {value!r} has shape {array.shape}, expected a {len(self.shape)}-d tensor")
        expected = []
        for dim, size in zip(self.shape, array.shape):
            if isinstance(dim, str) and dim not in env:  # a free symbol: the first use binds it
                if not 1 <= size <= MAX_DIM:
                    _fail(where, f"tensor {value!r} has shape {array.shape}: {dim} = {size} is out of range "
                                 f"(1..{MAX_DIM})")
                env.maps[0][dim] = size
            expected.append(dim if isinstance(dim, int) else env[dim] if isinstance(dim, str) else dim(env))
        if tuple(array.shape) != tuple(expected):
            _fail(where, f"tensor {value!r} has shape {tuple(array.shape)}, expected {tuple(expected)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            _fail(where, f"tensor {value!r} holds NaN or infinite values")
        problem = self.content(array, env) if self.content else None
        if problem:
            _fail(where, f"tensor {value!r}: {problem}")
        env.used.add(value)
        return value


@dataclass(frozen=True)
class Field:
    spec: Spec
    optional: bool = False  # may be absent or null (then None)


def _order(spec: Spec) -> int:
    return 2 if isinstance(spec, (Group, Variant)) else 1 if isinstance(spec, Tensor) else 0


@dataclass(frozen=True)
class Group(Spec):
    """A JSON object with exactly the declared ``fields``, then ``checks`` across them:
    ``(predicate(env) -> bool, message)`` pairs, the message formatted with the fields."""
    fields: Mapping[str, Field]
    checks: tuple = ()

    def __post_init__(self):
        order = sorted(self.fields.items(), key=lambda item: _order(item[1].spec))
        object.__setattr__(self, "_ordered", tuple(order))

    def check(self, value, where, env, skip=()):
        return self.scope(value, where, env, skip).maps[1]

    def scope(self, value, where, env, skip=()) -> Env:
        """Check ``value``; the scope returned holds its normalised fields and bound symbols."""
        if type(value) is not dict:
            _fail(where, f"expected an object, got {value!r:.40}")
        unknown = sorted(set(value) - set(self.fields) - set(skip), key=str)
        if unknown:
            _fail(where, f"unknown attribute {unknown[0]!r:.60}")
        out: dict = {}
        scope = env.child(out)
        for name, field in self._ordered:
            v = value.get(name)
            if v is None:
                if not field.optional:
                    _fail(where, f"missing attribute {name!r}")
                out[name] = None
            else:
                out[name] = field.spec.check(v, f"{where}.{name}", scope)
        for predicate, message in self.checks:
            if not predicate(scope):
                _fail(where, message.format_map(scope))
        return scope


@dataclass(frozen=True)
class Variant(Spec):
    """A :class:`Group` chosen by the value of its field ``key``."""
    key: str
    cases: Mapping[str, Group]

    def check(self, value, where, env):
        mode = value.get(self.key) if type(value) is dict else None
        if type(mode) is not str or mode not in self.cases:
            _fail(where, f"{self.key} must be one of {', '.join(map(repr, self.cases))}, got {mode!r:.40}")
        return {self.key: mode, **self.cases[mode].check(value, where, env, skip=(self.key,))}

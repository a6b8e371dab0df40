"""Sign quantizers for activations, with their gradient estimators.

Every quantizer returns a tensor of exactly +1 and -1 (``sign(0) = +1``: ``torch.sign``
returns 0 there, which a packed bit cannot represent, so it is never used bare). A
quantizer may also carry a learnable scalar ``output_scale`` (SCALES' layer-wise scaling
factor); the binary layers multiply their output by it, which keeps the quantized tensor
itself ±1 and the scale foldable into the runtime's per-channel multiplier.

Quantizers are selected by a short alias from YAML (``get_quantizer('approx_sign')``),
a dict with a ``type`` key and keyword arguments, ``None`` (full-precision activations)
or an ``nn.Module`` instance.
"""
from __future__ import annotations

import torch
from torch import nn


def channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-channel vector so it broadcasts over ``like``: channels are dim 1 of an
    N×C×H×W map and the last dim of an N×L×C token sequence."""
    if like.dim() == 3:
        return v.view(1, 1, -1)
    return v.view((1, -1) + (1,) * (like.dim() - 2))


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0``, -1 elsewhere (never 0)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _sign_function(name: str, derivative, doc: str):
    """An autograd Function: ``sign`` forward, ``grad * derivative(x)`` backward."""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * derivative(x).to(grad.dtype)

    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": doc})


_SteSign = _sign_function("_SteSign", lambda x: x.abs() <= 1,
                          "Forward ``sign``; backward passes the gradient where ``|x| <= 1`` (clipped STE).")
_ApproxSign = _sign_function("_ApproxSign", lambda x: torch.clamp(2.0 - 2.0 * x.abs(), min=0.0),
                             "Forward ``sign``; backward the derivative of Bi-Real Net's piecewise polynomial, "
                             "``2 - 2|x|`` inside [-1, 1] and 0 outside.")


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    return _SteSign.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    return _ApproxSign.apply(x)


_GRADIENTS = {"ste": ste_sign, "approx": approx_sign}


def _gradient_fn(name: str):
    try:
        return _GRADIENTS[name]
    except KeyError:
        raise ValueError(f"unknown sign gradient {name!r}; choose one of {sorted(_GRADIENTS)}") from None


class SignQuantizer(nn.Module):
    """``sign(x)`` with a chosen gradient estimator (``'ste'`` or ``'approx'``)."""

    def __init__(self, gradient: str = "approx"):
        super().__init__()
        self.gradient = gradient
        self._fn = _gradient_fn(gradient)

    @property
    def output_scale(self):
        """Scalar the layer's output is multiplied by (``None``: no scale)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}"


class RSign(SignQuantizer):
    """ReActNet's RSign: ``sign(x - b)`` with a learnable per-channel threshold ``b``."""

    def __init__(self, channels: int, gradient: str = "approx"):
        super().__init__(gradient)
        self.threshold = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x - channel_view(self.threshold, x))


def _mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes of a distributed run (as is, outside one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


class ElasticSign(RSign):
    """SCALES' layer-wise scaling factor: ``alpha * sign((x - b) / alpha)``.

    ``alpha`` is one learnable scalar per layer. Dividing by it before the sign changes
    nothing in the forward pass but moves the gradient's window to ``|x - b| <= alpha``
    (the elastic binarization of BiT); ``alpha`` is returned as :attr:`output_scale` and
    multiplied into the layer's output, so the quantized tensor stays ±1. ``alpha`` is
    initialised from the first training batch to ``2 * mean|x - b|``; in distributed
    training the mean is taken over every process's batch, so that all start alike.
    """

    def __init__(self, channels: int, gradient: str = "approx"):
        super().__init__(channels, gradient)
        self.alpha = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def output_scale(self) -> torch.Tensor:
        return self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - channel_view(self.threshold, x)
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self.alpha.fill_(float(2 * _mean_over_processes(centred.abs().mean()).clamp(min=1e-3)))
                self.initialized.fill_(True)
        return self._fn(centred / self.alpha.abs().clamp(min=1e-6))


QUANTIZERS = {
    "ste_sign": lambda channels: SignQuantizer("ste"),
    "approx_sign": lambda channels: SignQuantizer("approx"),
    "rsign": lambda channels: RSign(channels, "approx"),
    "rsign_ste": lambda channels: RSign(channels, "ste"),
    "elastic_sign": lambda channels: ElasticSign(channels, "approx"),
}


def get_quantizer(spec, channels: int):
    """Build an activation quantizer from a YAML-friendly spec.

    ``spec`` is ``None`` (full precision: returns ``None``), an alias from
    :data:`QUANTIZERS`, a dict ``{'type': alias, **kwargs}`` or an ``nn.Module``.
    """
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("type", None)
        classes = {"sign": SignQuantizer, "rsign": RSign, "elastic_sign": ElasticSign}
        if name not in classes:
            raise ValueError(f"quantizer dict needs 'type' in {sorted(classes)}, got {name!r}")
        if name == "sign":
            return SignQuantizer(**spec)
        return classes[name](channels, **spec)
    if isinstance(spec, str):
        if spec not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {spec!r}; choose one of {sorted(QUANTIZERS)}")
        return QUANTIZERS[spec](channels)
    raise ValueError(f"cannot build a quantizer from {spec!r} (expected None, a name, a dict or a module)")

"""Reading BasicSR checkpoints: the weights of a ``.pth`` file, without pickle.

Used by the exporter (``ebsr-export``) and by distillation (the teacher's weights); it
imports torch only.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The file is not a readable checkpoint with the requested weights (message says why)."""


PARAM_KEYS = ("params_ema", "params")


def load_state_dict(checkpoint, param_key: str | None = None) -> dict:
    """A BasicSR checkpoint's weights: ``param_key`` if given, else ``params_ema`` if present,
    else ``params``, else the dict itself; ``module.`` prefixes stripped. Read with
    ``weights_only=True`` (no pickle code execution).

    BasicSR's EMA averages parameters only, so in checkpoints written without this plugin's
    fix ``params_ema`` holds BatchNorm statistics that never left their initial values (the
    layer's ``num_batches_tracked`` is 0). Those statistics are taken from ``params``, with a
    warning, instead of exporting a net that normalises with mean 0 and variance 1."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint}: no such file") from None
    except Exception as e:  # torch raises several types for non-checkpoints
        raise CheckpointError(f"{checkpoint}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if param_key is not None and not (isinstance(state, dict) and isinstance(state.get(param_key), dict)):
        keys = sorted(k for k in state if isinstance(state[k], dict)) if isinstance(state, dict) else []
        raise CheckpointError(f"{checkpoint}: has no {param_key!r} weights (it has: {', '.join(keys) or 'none'})")
    if isinstance(state, dict):
        for key in (param_key,) if param_key else PARAM_KEYS:
            if isinstance(state.get(key), dict):
                if key == "params_ema" and isinstance(state.get("params"), dict):
                    _take_untouched_batchnorm_stats(state["params_ema"], state["params"], checkpoint)
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{checkpoint}: does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _take_untouched_batchnorm_stats(ema: dict, params: dict, checkpoint) -> None:
    suffix = "num_batches_tracked"
    stale = [k[: -len(suffix)] for k, v in ema.items()
             if k.endswith(suffix) and int(v) == 0 and k in params and int(params[k]) > 0]
    for prefix in stale:
        for name in ("running_mean", "running_var", suffix):
            if prefix + name in params:
                ema[prefix + name] = params[prefix + name]
    if stale:
        logger.warning("%s: params_ema has %d BatchNorm layers with untrained statistics (BasicSR's EMA "
                       "skips buffers); using those of params", checkpoint, len(stale))

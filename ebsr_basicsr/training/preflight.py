"""What the train/test entry points check before BasicSR starts, so that a missing option
file is one clear error, and not a traceback after BasicSR has created folders.

:func:`read_options` reads the option file as BasicSR will (``--force_yml`` overrides
included).
"""
from __future__ import annotations

import argparse
import os


class PreflightError(Exception):
    """The run cannot start; the message says why and how to fix it. ``status``: the exit
    status (1: data or checkpoint missing, 2: bad arguments or option file)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _arguments(argv):
    parser = argparse.ArgumentParser(add_help=False)  # BasicSR's own parser gives the help
    parser.add_argument("-opt")
    parser.add_argument("--auto_resume", action="store_true")
    parser.add_argument("--force_yml", nargs="+", default=None)
    return parser.parse_known_args(list(argv))[0]


def _override(opt: dict, entry: str) -> None:
    """Apply one ``--force_yml key:sub=value`` the way BasicSR will."""
    from basicsr.utils.options import _postprocess_yml_value

    keys, sep, value = entry.partition("=")
    if not sep:
        raise PreflightError(f"error: --force_yml {entry}: expected key:subkey=value", status=2)
    *parents, last = [k.strip() for k in keys.split(":")]
    node = opt
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        raise PreflightError(f"error: --force_yml {entry}: the option file has no {keys.strip()} "
                             "(--force_yml changes options, it cannot add them)", status=2)
    node[last] = _postprocess_yml_value(value.strip())


def read_options(argv) -> tuple[dict | None, argparse.Namespace]:
    """(the option dict of ``-opt`` with ``--force_yml`` applied, the parsed arguments);
    None instead of the dict when no ``-opt`` is given (BasicSR then prints its usage)."""
    args = _arguments(argv)
    if args.opt is None:
        return None, args
    if not os.path.isfile(args.opt):
        # BasicSR would parse the path itself as YAML text and fail with an unrelated TypeError
        raise PreflightError(f"error: option file not found: {args.opt}", status=2)
    from basicsr.utils.options import yaml_load
    import yaml

    try:
        opt = yaml_load(args.opt)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PreflightError(f"error: {args.opt} is not a readable YAML option file: {exc}", status=2) from None
    if not isinstance(opt, dict):
        raise PreflightError(f"error: {args.opt} is not a BasicSR option file (no key: value mapping)", status=2)
    for entry in args.force_yml or []:
        _override(opt, entry)
    return opt, args


def cpu_run(opt: dict | None) -> bool:
    """True when the run is not meant to use CUDA: ``num_gpu: 0``, or no usable GPU
    (``num_gpu: auto`` on a machine without one)."""
    if opt is not None and opt.get("num_gpu") == 0:
        return True
    import torch

    return not torch.cuda.is_available()


def check(argv, phase: str) -> dict | None:
    """Read the option file of ``argv`` (``sys.argv[1:]``) for the ``phase`` (``'train'``
    or ``'test'``); returns the option dict (None without ``-opt``) or raises
    :class:`PreflightError`."""
    opt, _ = read_options(argv)
    return opt

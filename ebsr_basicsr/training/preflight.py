"""What the train/test entry points check before BasicSR starts, so that a missing option
file, data folder or checkpoint is one clear error, and not a traceback after BasicSR has
created ``experiments/``, ``tb_logger/`` or ``results/`` folders.

:func:`read_options` reads the option file as BasicSR will (``--force_yml`` overrides
included); :func:`check` lists every ``dataroot_*`` of every dataset the phase uses (a
folder, or an LMDB made by ``ebsr-prepare --lmdb``) and the checkpoints under ``path``, and
raises :class:`PreflightError` naming each one that is missing and the ``ebsr-prepare``
commands that make the data.
"""
from __future__ import annotations

import argparse
import os

from ..data.prepare import prepare_command


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


def _data_problems(opt: dict, phase: str):
    """(option key, path, problem, ebsr-prepare command or None) for each missing dataset."""
    problems = []
    datasets = opt.get("datasets") or {}
    for ds_name, ds in datasets.items():
        if not isinstance(ds, dict) or (phase == "train" and ds_name.split("_")[0] not in ("train", "val")):
            continue
        lmdb = (ds.get("io_backend") or {}).get("type") == "lmdb"
        source = f"path/to/{ds.get('name') or ds_name}_HR"
        for key, value in ds.items():
            if not key.startswith("dataroot_") or value is None:
                continue
            path = os.path.expanduser(str(value))
            if not os.path.exists(path):
                problem = "no such folder"
            elif not os.path.isdir(path):
                problem = "not a folder"
            elif lmdb and not (path.endswith(".lmdb") and os.path.isfile(os.path.join(path, "data.mdb"))
                               and os.path.isfile(os.path.join(path, "meta_info.txt"))):
                problem = "not an LMDB with meta_info.txt (io_backend is lmdb)"
            else:
                continue
            command = prepare_command(path, opt.get("scale"), source)
            problems.append((f"datasets.{ds_name}.{key}", path, problem, command))
    return problems


def _checkpoint_problems(opt: dict, auto_resume: bool):
    paths = opt.get("path") or {}
    problems = []
    for key, value in paths.items():
        checked = key.startswith("pretrain_network_") or key == "resume_state"
        # --auto_resume repoints these at the run's own checkpoints; a teacher is never repointed
        if not checked or value is None or (auto_resume and key != "pretrain_network_teacher"):
            continue
        path = os.path.expanduser(str(value))
        if not os.path.isfile(path):
            problems.append((f"path.{key}", path))
    return problems


def check(argv, phase: str) -> dict | None:
    """Read the option file of ``argv`` (``sys.argv[1:]``) and check what the ``phase``
    (``'train'`` or ``'test'``) needs; returns the option dict (None without ``-opt``) or
    raises :class:`PreflightError`."""
    opt, args = read_options(argv)
    if opt is None:
        return None
    where = f"relative to {os.getcwd()}"
    lines = []
    data = _data_problems(opt, phase)
    if data:
        lines.append(f"error: {args.opt} names data that is not there (paths {where}):")
        lines += [f"  {key}: {path}: {problem}" for key, path, problem, _ in data]
        commands = list(dict.fromkeys(c for *_, c in data if c))
        if commands:
            lines.append("ebsr-prepare makes them from folders of HR images:")
            lines += [f"  {c}" for c in commands]
        if any(c is None for *_, c in data):
            lines.append("  (ebsr-prepare names its folders <name>_train_HR_sub, <name>_train_LR_bicubic/X<s>_sub, "
                         "GTmod12 and LRbicx<s>; point the options at the folders it wrote)")
    checkpoints = _checkpoint_problems(opt, args.auto_resume)
    if checkpoints:
        lines.append(f"error: {args.opt} names checkpoints that are not there (paths {where}):")
        lines += [f"  {key}: {path}: no such file" for key, path in checkpoints]
        if phase == "test":
            lines.append("  (train the model first, or point path.pretrain_network_g at a checkpoint)")
    if lines:
        raise PreflightError("\n".join(lines))
    return opt

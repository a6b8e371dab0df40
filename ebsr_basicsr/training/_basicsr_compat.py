"""The process-level fixes of the train/test entry points: the one place where this package
replaces functions of BasicSR, and only while ``ebsr_basicsr.training.train`` /
``ebsr_basicsr.training.test`` run a pipeline (:func:`entry_point_fixes`). Importing
``ebsr_basicsr`` or building its networks, models and datasets through BasicSR changes none
of BasicSR's functions; the fixes that belong to a model are methods of the registered
``BinarySRModel`` (``ebsr_basicsr.training.sr_model``).

BasicSR (1.4.x, including the ``basicsr-volta`` wheel) offers no hook for these; each
replacement behaves like the original on a CUDA run, except where noted.

==================================================  ==========================================
replaced                                            why
==================================================  ==========================================
``basicsr.train.load_resume_state``                 The original maps the saved state onto
                                                    ``torch.cuda.current_device()``, so
                                                    ``--auto_resume`` / ``path.resume_state``
                                                    failed without CUDA; on a CPU run the state
                                                    is mapped to the CPU. ``--auto_resume``
                                                    looks in ``path.training_states`` (where the
                                                    run writes), not a hard-coded
                                                    ``experiments/<name>``, so
                                                    ``path.experiments_root`` is honoured. On
                                                    every run, a distillation teacher keeps its
                                                    checkpoint (below).
``basicsr.train.CUDAPrefetcher``                    ``prefetch_mode: cuda`` creates a CUDA
                                                    stream; a CPU run falls back to the CPU
                                                    prefetcher with a warning.
``basicsr.utils.options.init_dist``                 ``--launcher pytorch`` hard-codes
                                                    ``torch.cuda.set_device`` (a division by
                                                    zero without a GPU) and NCCL; a CPU run
                                                    uses Gloo and never touches CUDA.
``basicsr.utils.file_client.LmdbBackend.__init__``  LMDB refuses to open one environment twice
                                                    in a process, which happens when the train
                                                    and val sets read the same LMDB; read-only,
                                                    lock-free environments (BasicSR's default
                                                    for datasets) are shared per path.
==================================================  ==========================================

The distillation teacher on resume: BasicSR's ``check_resume`` points every ``network_*`` at
the run's own ``net_*_<iter>.pth`` and switches every ``param_key*`` to ``params``. A
teacher (``network_teacher``, see ``ebsr_basicsr.training.distill``) is never trained or
saved by the run, so it keeps its ``pretrain_network_teacher`` and ``param_key_teacher``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os

logger = logging.getLogger("basicsr")


# --------------------------------------------------------------------------- resuming
def _latest_state(state_dir: str) -> str | None:
    """Path of the ``<iter>.state`` file with the highest iteration in ``state_dir``."""
    if not os.path.isdir(state_dir):
        return None
    iters = []
    for entry in os.listdir(state_dir):
        stem, ext = os.path.splitext(entry)
        if ext == ".state":
            try:
                iters.append(int(float(stem)))
            except ValueError:
                continue
    if not iters:
        return None
    return os.path.join(state_dir, f"{max(iters)}.state")


def check_resume_keeping_teacher(opt, resume_iter) -> None:
    """``basicsr.utils.check_resume``, except that ``network_teacher`` keeps its checkpoint
    and ``param_key_teacher``."""
    from basicsr.utils import check_resume

    path = opt["path"]
    if "network_teacher" not in opt or not path.get("resume_state"):
        return check_resume(opt, resume_iter)
    ignored = path.get("ignore_resume_networks")
    key = path.get("param_key_teacher")
    path["ignore_resume_networks"] = [*(ignored or []), "network_teacher"]
    try:
        check_resume(opt, resume_iter)
    finally:
        if ignored is None:
            del path["ignore_resume_networks"]
        else:
            path["ignore_resume_networks"] = ignored
        if key is not None:
            path["param_key_teacher"] = key


def _make_load_resume_state(cpu: bool):
    def load_resume_state(opt):
        """The training state to resume from (or None); points ``path.resume_state`` at it
        and the networks at the matching ``net_*_<iter>.pth`` (see the module docstring)."""
        import torch

        if opt.get("auto_resume"):
            state_dir = (opt["path"].get("training_states")
                         or os.path.join("experiments", opt["name"], "training_states"))
            path = _latest_state(state_dir)
            if path is not None:
                opt["path"]["resume_state"] = path
        else:
            path = opt["path"].get("resume_state") or None
        if path is None:
            return None
        device = torch.device("cpu") if cpu else torch.device("cuda", torch.cuda.current_device())
        state = torch.load(path, map_location=device)
        check_resume_keeping_teacher(opt, state["iter"])
        return state

    return load_resume_state


# ------------------------------------------------------------------------- prefetching
def _make_prefetcher(cpu: bool, cuda_prefetcher):
    def prefetcher(loader, opt):
        if not cpu:
            return cuda_prefetcher(loader, opt)
        from basicsr.data.prefetch_dataloader import CPUPrefetcher

        logger.warning("prefetch_mode 'cuda' needs a CUDA device; using the CPU prefetcher.")
        return CPUPrefetcher(loader)

    return prefetcher


# ------------------------------------------------------------------------- distributed
def _make_init_dist(cpu: bool, original):
    def init_dist(launcher, backend="nccl", **kwargs):
        if not cpu:
            return original(launcher, backend, **kwargs)
        import torch.distributed as dist

        if launcher != "pytorch":
            raise SystemExit(f"error: --launcher {launcher} needs CUDA; on the CPU use --launcher pytorch "
                             "(torchrun) or --launcher none")
        # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Gloo is the CPU backend.
        dist.init_process_group(backend="gloo")

    return init_dist


# ------------------------------------------------------------------------------- LMDB
_LMDB_ENVS: dict = {}


def _shared_lmdb_init(self, db_paths, client_keys="default", readonly=True, lock=False,
                      readahead=False, **kwargs):
    """``LmdbBackend.__init__`` that reuses an already open read-only environment."""
    import lmdb

    keys = [client_keys] if isinstance(client_keys, str) else list(client_keys)
    paths = [str(p) for p in db_paths] if isinstance(db_paths, (list, tuple)) else [str(db_paths)]
    if len(keys) != len(paths):
        raise ValueError(
            f"client_keys and db_paths must have the same length, got {len(keys)} and {len(paths)}"
        )
    self.db_paths = paths
    self._client = {}
    for key, path in zip(keys, paths):
        shareable = readonly and not lock
        cache_key = (os.path.realpath(path), readahead, tuple(sorted(kwargs.items())))
        if shareable and cache_key in _LMDB_ENVS:
            env = _LMDB_ENVS[cache_key]
        else:
            env = lmdb.open(path, readonly=readonly, lock=lock, readahead=readahead, **kwargs)
            if shareable:
                _LMDB_ENVS[cache_key] = env
        self._client[key] = env


# ------------------------------------------------------------------------------ apply
def _replacements(cpu: bool):
    """(owner, attribute, replacement) for every row of the module docstring's table."""
    train_mod = importlib.import_module("basicsr.train")
    options_mod = importlib.import_module("basicsr.utils.options")
    file_client_mod = importlib.import_module("basicsr.utils.file_client")
    return [
        (train_mod, "load_resume_state", _make_load_resume_state(cpu)),
        (train_mod, "CUDAPrefetcher", _make_prefetcher(cpu, train_mod.CUDAPrefetcher)),
        (options_mod, "init_dist", _make_init_dist(cpu, options_mod.init_dist)),
        (file_client_mod.LmdbBackend, "__init__", _shared_lmdb_init),
    ]


@contextlib.contextmanager
def entry_point_fixes(cpu: bool):
    """Install the replacements of the module docstring for the duration of a pipeline run,
    then put BasicSR's originals back. ``cpu``: the run is not meant to use CUDA
    (``num_gpu: 0``, or no GPU)."""
    saved = []
    try:
        for owner, name, replacement in _replacements(cpu):
            saved.append((owner, name, owner.__dict__[name]))
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)

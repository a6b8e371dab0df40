"""Make BasicSR's own train/test pipelines usable on a machine without CUDA.

BasicSR (1.4.x, including the ``basicsr-volta`` wheel) was written for GPU servers. With
``num_gpu: 0`` training, validation and testing already run on the CPU, but a few places
assume CUDA unconditionally. Instead of forking ``basicsr`` or editing site-packages, this
module swaps those few functions for CPU-aware versions at run time. Every replacement
behaves exactly like the original when CUDA is in use, so GPU users see no difference.

What is replaced and why:

* ``basicsr.train.load_resume_state``: the original maps the saved optimizer/scheduler
  state onto ``torch.cuda.current_device()``, which raises ``Torch not compiled with CUDA
  enabled`` / ``No CUDA GPUs are available`` on a CPU machine, so ``--auto_resume`` and
  ``path.resume_state`` could not be used at all. Ours maps the storage to the CPU when the
  run is a CPU run. With ``--auto_resume`` it looks for states under
  ``path.training_states`` (where the run writes them) instead of a hard-coded
  ``experiments/<name>`` relative to the cwd, so ``path.experiments_root`` is honoured.
* ``basicsr.train.CUDAPrefetcher``: ``prefetch_mode: cuda`` creates a ``torch.cuda.Stream``.
  On a CPU run we fall back to the CPU prefetcher (with a warning) instead of crashing.
* ``basicsr.utils.options.init_dist`` and ``BaseModel.model_to_device``: the distributed
  launcher (``--launcher pytorch``) hard-codes ``torch.cuda.set_device`` and the NCCL
  backend, and wraps the network with ``device_ids=[torch.cuda.current_device()]``. Without
  CUDA we use the Gloo backend and a device-less ``DistributedDataParallel`` so that
  multi-process CPU training works too.
* ``basicsr.utils.file_client.LmdbBackend``: LMDB refuses to open the same environment
  twice in one process (``The environment ... is already open in this process``), which
  happens when the train and val sets read the same LMDB, or when a dataloader worker is
  forked after the main process opened it for validation. Read-only, lock-free
  environments (BasicSR's default for datasets) are therefore shared per path.

Two replacements are not about CUDA and so apply to every run:

* ``basicsr.train.check_resume``: on resume it points every ``network_*`` at the run's own
  ``net_*_<iter>.pth`` and switches every ``param_key*`` to ``params``. A distillation
  teacher (``network_teacher``, see ``ebsr_basicsr.training.distill``) is never trained or saved by
  the run, so it keeps its ``pretrain_network_teacher`` and ``param_key_teacher``.

* ``BaseModel.model_ema`` averages the parameters of ``net_g`` into ``net_g_ema`` but not
  its buffers, so the EMA network keeps the BatchNorm running statistics it was built with
  (mean 0, variance 1). Validation, testing and the ``params_ema`` weights that are saved
  (and that export prefers) then see un-normalised activations: an E2FIF net scored 19 dB
  *below* bicubic through its EMA weights. Ours also copies the buffers after each update.

Nothing here is imported by the runtime: it imports torch and basicsr, and is only used by
``ebsr_basicsr.training.train`` / ``ebsr_basicsr.training.test``.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os

logger = logging.getLogger("basicsr")

_APPLIED = False


def _cuda_run(opt) -> bool:
    """True when this run is meant to use CUDA and CUDA can actually be used."""
    import torch

    return bool(opt.get("num_gpu", 0)) and torch.cuda.is_available()


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


def load_resume_state(opt):
    """CPU-aware replacement of ``basicsr.train.load_resume_state``.

    Returns the training state dict (or None) and, like the original, points
    ``opt['path']['resume_state']`` at the state file and the ``pretrain_network_*`` paths
    at the matching ``net_*_<iter>.pth`` files (``basicsr.utils.check_resume``).
    """
    import torch
    from basicsr.utils import check_resume

    path = None
    if opt.get("auto_resume"):
        state_dir = opt["path"].get("training_states") or os.path.join(
            "experiments", opt["name"], "training_states"
        )
        path = _latest_state(state_dir)
        if path is not None:
            opt["path"]["resume_state"] = path
    else:
        path = opt["path"].get("resume_state") or None

    if path is None:
        return None

    if _cuda_run(opt):
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    state = torch.load(path, map_location=device)
    check_resume(opt, state["iter"])
    return state


# ------------------------------------------------------------------------- prefetching
def _make_prefetcher_class(cuda_prefetcher_cls, cpu_prefetcher_cls):
    """A drop-in for ``CUDAPrefetcher(loader, opt)`` that degrades to the CPU prefetcher."""

    def prefetcher(loader, opt):
        if _cuda_run(opt):
            return cuda_prefetcher_cls(loader, opt)
        logger.warning("prefetch_mode 'cuda' needs a CUDA device; using the CPU prefetcher.")
        return cpu_prefetcher_cls(loader)

    return prefetcher


# ------------------------------------------------------------------------- distributed
def _make_init_dist(original):
    @functools.wraps(original)
    def init_dist(launcher, backend="nccl", **kwargs):
        import torch

        if torch.cuda.is_available():
            return original(launcher, backend, **kwargs)
        import torch.distributed as dist

        if launcher != "pytorch":
            raise RuntimeError(
                f"--launcher {launcher} without CUDA is not supported; on CPU use "
                "--launcher pytorch (torchrun), or --launcher none."
            )
        # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Gloo is the CPU backend.
        dist.init_process_group(backend="gloo")

    return init_dist


def _make_model_to_device(original):
    @functools.wraps(original)
    def model_to_device(self, net):
        if self.opt.get("dist") and self.device.type == "cpu":
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(
                net.to(self.device),
                find_unused_parameters=self.opt.get("find_unused_parameters", False),
            )
        return original(self, net)

    return model_to_device


def _make_model_ema(original):
    @functools.wraps(original)
    def model_ema(self, decay=0.999):
        original(self, decay)
        ema_buffers = dict(self.net_g_ema.named_buffers())
        for name, buffer in self.get_bare_model(self.net_g).named_buffers():
            if name in ema_buffers:
                ema_buffers[name].data.copy_(buffer.data)

    return model_ema


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


# ------------------------------------------------------------------ frozen teacher
def _make_check_resume(original):
    @functools.wraps(original)
    def check_resume(opt, resume_iter):
        path = opt["path"]
        if "network_teacher" not in opt or not path.get("resume_state"):
            return original(opt, resume_iter)
        ignored = path.get("ignore_resume_networks")
        key = path.get("param_key_teacher")
        path["ignore_resume_networks"] = [*(ignored or []), "network_teacher"]
        try:
            original(opt, resume_iter)
        finally:
            if ignored is None:
                del path["ignore_resume_networks"]
            else:
                path["ignore_resume_networks"] = ignored
            if key is not None:
                path["param_key_teacher"] = key

    return check_resume


# ---------------------------------------------------------------------- option file
def check_option_file(argv) -> None:
    """Exit with a clear message when ``-opt`` names no file. (BasicSR would parse the
    path itself as YAML text and fail with an unrelated ``TypeError``.)"""
    args = list(argv)
    for i, arg in enumerate(args):
        path = None
        if arg == "-opt" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("-opt="):
            path = arg[len("-opt="):]
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"error: option file not found: {path}")


# ------------------------------------------------------------------------------ apply
def apply() -> None:
    """Install the replacements above into the imported basicsr modules (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    train_mod = importlib.import_module("basicsr.train")
    options_mod = importlib.import_module("basicsr.utils.options")
    file_client_mod = importlib.import_module("basicsr.utils.file_client")
    from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
    from basicsr.models.base_model import BaseModel

    train_mod.load_resume_state = load_resume_state
    train_mod.check_resume = _make_check_resume(train_mod.check_resume)
    train_mod.CUDAPrefetcher = _make_prefetcher_class(CUDAPrefetcher, CPUPrefetcher)
    options_mod.init_dist = _make_init_dist(options_mod.init_dist)
    BaseModel.model_to_device = _make_model_to_device(BaseModel.model_to_device)
    BaseModel.model_ema = _make_model_ema(BaseModel.model_ema)
    file_client_mod.LmdbBackend.__init__ = _shared_lmdb_init
    _APPLIED = True


def setup() -> None:
    """Register this plugin's classes in BasicSR's registries and apply the CPU fixes.

    Must run before ``train_pipeline`` / ``test_pipeline`` (they build networks by name).
    """
    apply()  # imports basicsr, so its registry exists before our archs are registered
    archs = importlib.import_module("ebsr_basicsr.archs")
    register = getattr(archs, "register_with_basicsr", None)
    if register is not None:  # no-op when the import hook has registered them already
        register()
    importlib.import_module("ebsr_basicsr.training.distill").register_with_basicsr()
    importlib.import_module("ebsr_basicsr.training.speed").register_with_basicsr()
    importlib.import_module("ebsr_basicsr.data.mixed_degradation_dataset")  # registers the dataset

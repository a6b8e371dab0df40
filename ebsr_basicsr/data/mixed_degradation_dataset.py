"""A BasicSR dataset that makes each LR patch on the fly from its HR patch with a random
degradation (:class:`~ebsr_basicsr.data.degradations.DegradationMix`), so a network learns
the inputs people actually have (aliased thumbnails, JPEGs, noisy frames) and not only the
papers' MATLAB bicubic.

Option file (``datasets.train``)::

    type: MixedDegradationDataset
    dataroot_gt: datasets/photos/photos_train_HR_sub   # HR images only (folder, or lmdb with io_backend)
    io_backend: {type: disk}
    gt_size: 128               # HR patch side, divisible by the scale
    use_hflip: true
    use_rot: true
    color: y                   # optional: train on the Y channel (BasicSR's bgr2ycbcr)
    min_grad: 2                # optional: redraw crops flatter than this (mean |neighbour difference|, 0..255)
    seed: ~                    # optional: fixed seed (default: from torch's per-worker seed)
    degradations:
      downscale: {matlab: 0.35, cubic: 0.35, area: 0.15, linear: 0.15}
      blur:  {prob: 0.1, sigma: [0.3, 1.0]}
      noise: {prob: 0.2, sigma: [1, 5], poisson_prob: 0.2, poisson: [0.05, 0.3], gray_prob: 0.4}
      jpeg:  {prob: 0.4, quality: [50, 95]}

Randomness: every draw (crop, flips, degradation, noise) comes from one
``numpy.random.Generator``. With ``seed`` set, a fresh dataset yields the same sequence of
patches; without it the generator is seeded from ``torch.initial_seed()`` in each loader
worker, which BasicSR derives from ``manual_seed``, so runs are reproducible and workers differ.
"""
from __future__ import annotations

import numpy as np
import torch
from basicsr.data.data_util import paths_from_folder, paths_from_lmdb
from basicsr.utils import FileClient, bgr2ycbcr, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from .degradations import DegradationError, DegradationMix

_GRAD_TRIES = 10


def _check_options(opt: dict) -> None:
    name = "MixedDegradationDataset"
    for key in ("dataroot_gt", "gt_size", "scale", "degradations"):
        if opt.get(key) is None:
            raise DegradationError(f"{name}: option {key!r} is required")
    scale, gt_size = opt["scale"], opt["gt_size"]
    if not isinstance(scale, int) or scale < 1:
        raise DegradationError(f"{name}: scale must be a positive integer, got {scale!r}")
    if not isinstance(gt_size, int) or gt_size < scale or gt_size % scale:
        raise DegradationError(f"{name}: gt_size must be a positive multiple of the scale {scale}, got {gt_size!r}")
    if opt.get("color") not in (None, "y", "rgb"):
        raise DegradationError(f"{name}: color must be 'y' or omitted, got {opt['color']!r}")
    if opt.get("seed") is not None and not isinstance(opt["seed"], int):
        raise DegradationError(f"{name}: seed must be an integer, got {opt['seed']!r}")


@DATASET_REGISTRY.register()
class MixedDegradationDataset(data.Dataset):
    """HR patches and their on-the-fly degraded LR patches (see the module docstring).

    Items are BasicSR's ``{'lq', 'gt', 'lq_path', 'gt_path'}`` with float32 CHW tensors in
    [0, 1], RGB (or Y with ``color: y``)."""

    def __init__(self, opt: dict):
        super().__init__()
        _check_options(opt)
        self.opt = opt
        self.mix = DegradationMix(opt["degradations"])
        self.scale, self.gt_size = opt["scale"], opt["gt_size"]
        self.min_grad = float(opt.get("min_grad") or 0)
        self.io_backend_opt = dict(opt.get("io_backend") or {"type": "disk"})
        self.file_client = None
        if self.io_backend_opt["type"] == "lmdb":
            self.io_backend_opt["db_paths"] = [opt["dataroot_gt"]]
            self.io_backend_opt["client_keys"] = ["gt"]
            self.paths = paths_from_lmdb(opt["dataroot_gt"])
        else:
            self.paths = sorted(paths_from_folder(opt["dataroot_gt"]))
        if not self.paths:
            raise DegradationError(f"MixedDegradationDataset: no images in {opt['dataroot_gt']}")
        self._rng = None if opt.get("seed") is None else np.random.default_rng(opt["seed"])

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # in each loader worker: torch's per-worker seed
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng

    def _read(self, path: str) -> np.ndarray:
        if self.file_client is None:
            opts = dict(self.io_backend_opt)
            self.file_client = FileClient(opts.pop("type"), **opts)
        img = imfrombytes(self.file_client.get(path, "gt"), float32=True)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        return img[:, :, :3]

    def _crop(self, img: np.ndarray, path: str) -> np.ndarray:
        size = self.gt_size
        h, w = img.shape[:2]
        if h < size or w < size:
            raise DegradationError(f"MixedDegradationDataset: {path} ({w}x{h}) is smaller than gt_size {size}")
        for _ in range(_GRAD_TRIES):
            top, left = int(self.rng.integers(h - size + 1)), int(self.rng.integers(w - size + 1))
            patch = img[top:top + size, left:left + size]
            if self.min_grad <= 0 or _mean_grad(patch) >= self.min_grad:
                break
        if self.opt.get("use_hflip") and self.rng.random() < 0.5:
            patch = patch[:, ::-1]
        if self.opt.get("use_rot"):
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            if self.rng.random() < 0.5:
                patch = patch.transpose(1, 0, 2)
        return np.ascontiguousarray(patch)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        gt = self._crop(self._read(path), path)
        degradation = self.mix.sample(self.rng)
        lq = degradation.apply(gt, self.scale, self.rng)
        if self.opt.get("color") == "y":
            gt, lq = bgr2ycbcr(gt, y_only=True)[..., None], bgr2ycbcr(lq, y_only=True)[..., None]
        gt_t, lq_t = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {"lq": lq_t, "gt": gt_t, "lq_path": f"{path}#{degradation.name}", "gt_path": path}


def _mean_grad(patch: np.ndarray) -> float:
    """Mean absolute neighbour difference of the patch's grey levels, on the 0..255 scale."""
    grey = patch.mean(axis=2) * 255.0
    return float((np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean()) / 2)


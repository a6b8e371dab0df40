"""Knowledge distillation for BasicSR: a student that also learns from a frozen teacher.

``model_type: DistillSRModel`` is :class:`~ebsr_basicsr.training.sr_model.BinarySRModel` (BasicSR's
``SRModel`` with this package's fixes) plus one loss: the student's output
is pulled towards the output of a trained, frozen teacher (typically a full-precision net
such as BasicSR's ``EDSR``) on the same LR patch. It can only help when the teacher is clearly
better than the student: an FP net of a few hundred thousand iterations, not one of the
student's own budget (the README measures both). Everything else
(validation, EMA, checkpoints, resuming, ``net_g`` export) is ``BinarySRModel``'s; the teacher is
never saved, it is rebuilt from its own checkpoint when a run resumes. Option keys::

    network_teacher:            # any architecture in ARCH_REGISTRY, built like network_g
      type: EDSR
      ...
    path:
      pretrain_network_teacher: experiments/teacher/models/net_g_6000.pth   # required
      param_key_teacher: params_ema  # optional: default params_ema, else params
    train:
      pixel_opt: {type: L1Loss, loss_weight: 1.0}    # student vs HR, as in SRModel
      distill_opt: {type: L1Loss, loss_weight: 1.0}  # student vs teacher

The teacher checkpoint is read with ``weights_only=True``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from .checkpoint import load_state_dict
from .sr_model import BinarySRModel


@MODEL_REGISTRY.register()
class DistillSRModel(BinarySRModel):
    """``BinarySRModel`` whose training loss adds ``distill_opt(student(lq), teacher(lq))``."""

    def init_training_settings(self):
        super().init_training_settings()
        path = self.opt["path"].get("pretrain_network_teacher")
        if not path:
            raise ValueError("DistillSRModel needs path.pretrain_network_teacher (the trained teacher's checkpoint)")
        if "network_teacher" not in self.opt:
            raise ValueError("DistillSRModel needs network_teacher (the teacher's architecture)")
        if "distill_opt" not in self.opt["train"]:
            raise ValueError("DistillSRModel needs train.distill_opt (the student-vs-teacher loss)")
        teacher = build_network(self.opt["network_teacher"])
        teacher.load_state_dict(load_state_dict(path, self.opt["path"].get("param_key_teacher")), strict=True)
        self.net_teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.cri_distill = build_loss(self.opt["train"]["distill_opt"]).to(self.device)

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        with torch.no_grad():
            target = self.net_teacher(self.lq)

        loss_dict = OrderedDict()
        l_total = self.cri_distill(self.output, target)
        loss_dict["l_distill"] = l_total
        if self.cri_pix:
            l_pix = self.cri_pix(self.output, self.gt)
            l_total = l_total + l_pix
            loss_dict["l_pix"] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, loss in (("l_percep", l_percep), ("l_style", l_style)):
                if loss is not None:
                    l_total = l_total + loss
                    loss_dict[name] = loss

        l_total.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)


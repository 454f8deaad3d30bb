"""The supported solo-learn methods' objectives at any depth, with solo-learn's own loss functions
(imports ``solo``; used by the ``interloss`` plugin's step).

At the final depth the method's own projector / predictor / momentum projector / queue are used, so
the loss equals the method's ``training_step`` SSL loss on the same batch (tested); at an
intermediate depth d the plugin's aux head d (and predictor d, momentum head d, queue d) stand in.

Inputs: ``f1, f2`` (B, C, h, w) online stage maps of the two views, ``g1, g2`` the momentum
encoder's (or None), ``indexes`` (B,) the images' dataset indexes. Output: (loss, {metric: value}).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.engine.interloss import pool

#: the methods :func:`objective` computes: the two-view methods (solo_sparse.families.gating.TWO_VIEW_METHODS) whose
#: objective is written here (not SimSiam); a new two-view method needs its branch in :func:`objective` first
SUPPORTED = ("simclr", "mocov2plus", "byol", "vicreg", "barlow_twins")
MOMENTUM = ("mocov2plus", "byol")


class Parts:
    """The modules of one depth: projector (maps pooled or spatial input), predictor, momentum projector,
    and for MoCo the queue tensor (2, D, K) plus its enqueue function."""

    def __init__(self, projector: nn.Module, predictor: Optional[nn.Module] = None,
                 momentum_projector: Optional[nn.Module] = None, queue=None, enqueue=None, pooled: bool = True):
        self.projector, self.predictor, self.momentum_projector = projector, predictor, momentum_projector
        self.queue, self.enqueue, self.pooled = queue, enqueue, pooled

    def proj(self, f: torch.Tensor) -> torch.Tensor:
        return self.projector(pool(f) if self.pooled else f)

    def mproj(self, g: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(pool(g) if self.pooled else g)

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """Embedding used to score hard pairs (the projector output)."""
        return self.proj(f)


def objective(method: str, model, parts: Parts, f1, f2, g1=None, g2=None, indexes=None
              ) -> Tuple[torch.Tensor, Dict[str, float]]:
    if method == "simclr":
        from solo.losses.simclr import simclr_loss_func

        z = torch.cat([parts.proj(f1), parts.proj(f2)])
        return simclr_loss_func(z, indexes=indexes.repeat(2), temperature=model.temperature), {}
    if method == "vicreg":
        from solo.losses.vicreg import vicreg_loss_func

        return vicreg_loss_func(parts.proj(f1), parts.proj(f2), sim_loss_weight=model.sim_loss_weight,
                                var_loss_weight=model.var_loss_weight, cov_loss_weight=model.cov_loss_weight), {}
    if method == "barlow_twins":
        from solo.losses.barlow import barlow_loss_func

        return barlow_loss_func(parts.proj(f1), parts.proj(f2), lamb=model.lamb, scale_loss=model.scale_loss), {}
    if method == "byol":
        from solo.losses.byol import byol_loss_func

        p1, p2 = parts.predictor(parts.proj(f1)), parts.predictor(parts.proj(f2))
        with torch.no_grad():
            z1, z2 = parts.mproj(g1), parts.mproj(g2)
        return byol_loss_func(p2, z1) + byol_loss_func(p1, z2), {}
    if method == "mocov2plus":
        from solo.losses.mocov2plus import mocov2plus_loss_func
        from solo.utils.misc import gather

        q1, q2 = F.normalize(parts.proj(f1), dim=-1), F.normalize(parts.proj(f2), dim=-1)
        with torch.no_grad():
            k1, k2 = F.normalize(parts.mproj(g1), dim=-1), F.normalize(parts.mproj(g2), dim=-1)
        queue = parts.queue.clone().detach()
        loss = (mocov2plus_loss_func(q1, k2, queue[1], model.temperature)
                + mocov2plus_loss_func(q2, k1, queue[0], model.temperature)) / 2
        parts.enqueue(torch.stack((gather(k1), gather(k2))))
        return loss, {}
    raise ValueError(f"interloss: no objective for method {method!r}; supported: {', '.join(SUPPORTED)}")


def final_parts(model) -> Parts:
    """The method's own modules (final depth)."""
    return Parts(model.projector, getattr(model, "predictor", None), getattr(model, "momentum_projector", None),
                 getattr(model, "queue", None), getattr(model, "_dequeue_and_enqueue", None))


def classifier_loss(model, feats: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    """solo-learn's online linear classifier on detached pooled features (its ``_base_shared_step``)."""
    from solo.utils.metrics import accuracy_at_k

    logits = model.classifier(feats.detach())
    loss = F.cross_entropy(logits, targets, ignore_index=-1)
    acc1, _ = accuracy_at_k(logits, targets, top_k=(1, min(5, logits.size(1))))
    return loss, {"train_acc1": float(acc1)}

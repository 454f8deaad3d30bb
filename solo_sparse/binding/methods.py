"""Pre-training methods solo-learn lacks, registered into ``solo.methods.METHODS`` by the binding.

Part of the solo-learn binding (imports ``solo``). Registration happens only when a config asks for
solo-sparse (the Hydra callback) or when :func:`register_methods` is called: installing solo-sparse
changes nothing in solo-learn by itself.

- ``rotnet`` — RotNet (Gidaris et al., ICLR 2018), the pretext task of Caron et al. (2020)'s pruning
  study: every large crop is rotated by 0/90/180/270 degrees and a head on the backbone features
  predicts which (4-way cross-entropy, averaged over the four rotations and the large crops).
  ``method_kwargs.rot_hidden_dim`` (default 0): 0 = a linear head, else an MLP with one hidden
  layer (BN + ReLU) of that width. Works with any number of large crops (1 is enough:
  ``augmentations: [{num_crops: 1, ...}]``); multicrop small crops are refused.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import omegaconf
import torch
import torch.nn as nn
import torch.nn.functional as F
from solo.methods.base import BaseMethod
from solo.utils.misc import omegaconf_select


class RotNet(BaseMethod):
    def __init__(self, cfg: omegaconf.DictConfig):
        super().__init__(cfg)
        hidden: int = cfg.method_kwargs.rot_hidden_dim
        if hidden:
            self.rotation_head = nn.Sequential(nn.Linear(self.features_dim, hidden), nn.BatchNorm1d(hidden),
                                               nn.ReLU(), nn.Linear(hidden, 4))
        else:
            self.rotation_head = nn.Linear(self.features_dim, 4)

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        cfg = super(RotNet, RotNet).add_and_assert_specific_cfg(cfg)
        cfg.method_kwargs.rot_hidden_dim = omegaconf_select(cfg, "method_kwargs.rot_hidden_dim", 0)
        if int(cfg.method_kwargs.rot_hidden_dim) < 0:
            raise ValueError(f"method_kwargs.rot_hidden_dim={cfg.method_kwargs.rot_hidden_dim}: expected >= 0")
        if cfg.data.num_small_crops:
            raise ValueError("rotnet predicts rotations of the large crops; multicrop small crops are not supported "
                             f"(data.num_small_crops={cfg.data.num_small_crops})")
        return cfg

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        return super().learnable_params + [{"name": "rotation_head", "params": self.rotation_head.parameters()}]

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        out = super().training_step(batch, batch_idx)   # crop 0 rotation = the plain forward (online classifier)
        X = batch[1][: self.num_large_crops]
        feats, labels = [], []
        for x, f0 in zip(X, out["feats"]):
            rot = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)])
            if not self.no_channel_last:
                rot = rot.to(memory_format=torch.channels_last)
            feats += [f0, self.backbone(rot)]
            labels.append(torch.arange(4, device=x.device).repeat_interleave(x.shape[0]))
        logits = self.rotation_head(torch.cat(feats))
        labels = torch.cat(labels)
        rot_loss = F.cross_entropy(logits, labels)
        self.log("train_rot_loss", rot_loss, on_epoch=True, sync_dist=True)
        self.log("train_rot_acc", (logits.argmax(1) == labels).float().mean(), on_epoch=True, sync_dist=True)
        return rot_loss + out["loss"]


EXTRA_METHODS = {"rotnet": RotNet}


def register_methods() -> None:
    """Add the extra methods to ``solo.methods.METHODS`` in place (idempotent; never replaces solo's own)."""
    import solo.methods as sm

    for k, v in EXTRA_METHODS.items():
        sm.METHODS.setdefault(k, v)

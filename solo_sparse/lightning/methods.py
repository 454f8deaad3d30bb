"""solo-learn's MoCo v2+, BYOL and SimCLR as Lightning modules built from Lightly's pieces (heads, losses, memory
bank, ``update_momentum``), with the encoders named the way Lightly's examples name them (``backbone``,
``backbone_momentum``, ``projection_head``, ``projection_head_momentum``, ``prediction_head``).

They follow solo-learn 1.0.6's recipe where it matters for a comparison between the two hosts: torchvision ResNet
backbone with ``fc`` = Identity (CIFAR stem for cifar10/100); MoCo v2+'s symmetric loss against two queues of
keys (one per view; Lightly's ``NTXentLoss`` with a memory bank is the MoCo loss), projector Linear-ReLU-Linear;
BYOL's projector/predictor Linear-BN-ReLU-Linear and loss 2 - 2 cos per direction, summed; SimCLR's NT-Xent over
both views with a Linear-ReLU-Linear projector; the EMA coefficient on solo-learn's per-step cosine from
``base_tau`` to ``final_tau``; SGD (momentum 0.9) or LARS on lr x batch / 256 with a linear warm-up and cosine
decay per step. Departures: no online linear classifier (it trains on detached features and never touches the
backbone), and the EMA runs at the start of the next step (Lightly's placement) instead of after the step — the
same sequence of updates except the one after the last step.

Each view goes through the backbone in its own call, in view order (online views 0, 1, then the momentum views),
which is the ``crop_order="calls"`` convention of :class:`~solo_sparse.lightning.Sparsify`.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Sequence

import lightning.pytorch as L
import torch
import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum

from solo_sparse.core.checkpoint import HOST_KEY
from solo_sparse.core.config import ConfigError
from solo_sparse.engine.resnet import build_resnet

#: solo-learn method name -> module class (filled below)
METHODS: Dict[str, type] = {}
OPTIMIZERS = ("sgd", "lars", "adamw")


class SoloRecipe(L.LightningModule):
    """The optimizer, schedule and EMA every method here shares, from solo-learn's config keys."""

    momentum_pairs: Sequence[str] = ()     # "<online attr>:<momentum attr>"

    def __init__(self, *, backbone: str = "resnet18", cifar_stem: bool = False, optimizer: str = "sgd",
                 lr: float = 0.3, batch_size: int = 128, weight_decay: float = 1e-4,
                 optimizer_kwargs: Mapping[str, Any] = (), warmup_epochs: float = 0.0, warmup_start_lr: float = 3e-5,
                 min_lr: float = 0.0, base_tau: float = 0.99, final_tau: float = 1.0, cfg: Any = None):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer.name={optimizer!r}: the Lightning trainer runs {', '.join(OPTIMIZERS)}")
        self.backbone = build_resnet(backbone, cifar_stem)
        self.features_dim = 2048 if backbone in ("resnet50", "resnet101", "resnet152") else 512
        self.opt_name, self.batch_size = optimizer, int(batch_size)
        self.base_lr = float(lr) * self.batch_size / 256          # solo-learn scales lr by batch / 256
        self.weight_decay, self.opt_kwargs = float(weight_decay), dict(optimizer_kwargs or {})
        self.warmup_epochs, self.warmup_start_lr, self.min_lr = float(warmup_epochs), float(warmup_start_lr), min_lr
        self.base_tau, self.final_tau = float(base_tau), float(final_tau)
        #: the composed solo-learn config (plugins read a few keys of it, as under solo-learn: the lr warm-up)
        self.cfg = cfg

    def on_save_checkpoint(self, checkpoint):
        # where the encoders live, also for a dense run (no Sparsify writes it then): readers rename the
        # checkpoint into solo-learn's names (momentum_backbone.*, projector.*) and find both encoders
        prefixes = {"backbone": "backbone", "projector": "projection_head"}
        if hasattr(self, "backbone_momentum"):
            prefixes.update(momentum_backbone="backbone_momentum", momentum_projector="projection_head_momentum")
        if hasattr(self, "prediction_head"):
            prefixes["predictor"] = "prediction_head"
        checkpoint.setdefault(HOST_KEY, {"host": "lightning", "module": type(self).__name__,
                                         "family": "momentum" if self.momentum_pairs else "shared",
                                         "prefixes": prefixes, "backbone_names": {}})

    def _momentum_twins(self) -> None:
        for pair in self.momentum_pairs:
            online, mom = pair.split(":")
            setattr(self, mom, copy.deepcopy(getattr(self, online)))
            deactivate_requires_grad(getattr(self, mom))

    def ema(self) -> None:
        """solo-learn's EMA after step t - 1, run at the start of step t: tau on the per-step cosine."""
        t = int(self.trainer.global_step) if self._trainer is not None else 0
        if not self.momentum_pairs or t == 0:
            return
        total = max(1, int(self.trainer.estimated_stepping_batches))
        tau = self.final_tau - (self.final_tau - self.base_tau) * (math.cos(math.pi * (t - 1) / total) + 1) / 2
        for pair in self.momentum_pairs:
            online, mom = pair.split(":")
            update_momentum(getattr(self, online), getattr(self, mom), m=tau)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        kw = dict(self.opt_kwargs)
        if self.opt_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.base_lr, weight_decay=self.weight_decay,
                                  momentum=kw.pop("momentum", 0.9), **kw)
        elif self.opt_name == "lars":
            from lightly.utils.lars import LARS

            opt = LARS(params, lr=self.base_lr, weight_decay=self.weight_decay, momentum=kw.get("momentum", 0.9),
                       trust_coefficient=kw.get("eta", 1e-3))
        else:
            opt = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=self.weight_decay,
                                    betas=tuple(kw.get("betas", (0.9, 0.999))))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(round(self.warmup_epochs * total / max(1, self.trainer.max_epochs)))
        start = self.warmup_start_lr if warm > 0 else self.base_lr

        def factor(step: int) -> float:          # solo-learn's LinearWarmupCosineAnnealingLR, per step
            if step < warm:
                lr = start + (self.base_lr - start) * step / max(1, warm - 1)
            else:
                lr = self.min_lr + (self.base_lr - self.min_lr) * (
                    1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) / 2
            return lr / self.base_lr

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def views(self, batch) -> List[torch.Tensor]:
        views = batch[0]
        if len(views) != 2:
            raise ConfigError(f"{type(self).__name__} trains on two large views; the data gives {len(views)}")
        return list(views)


class MoCoV2Plus(SoloRecipe):
    momentum_pairs = ("backbone:backbone_momentum", "projection_head:projection_head_momentum")

    def __init__(self, *, proj_hidden_dim: int = 2048, proj_output_dim: int = 256, queue_size: int = 65536,
                 temperature: float = 0.2, **kw):
        super().__init__(**kw)
        self.projection_head = MoCoProjectionHead(self.features_dim, proj_hidden_dim, proj_output_dim)
        self._momentum_twins()
        # one queue of keys per view, as solo-learn's (2, D, K) queue: the loss of q1 uses the keys of view 2
        self.criteria = nn.ModuleList(NTXentLoss(temperature=temperature, memory_bank_size=(queue_size,
                                                                                            proj_output_dim))
                                      for _ in range(2))

    def training_step(self, batch, batch_idx):
        self.ema()
        x1, x2 = self.views(batch)
        q1, q2 = (self.projection_head(self.backbone(x)) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = (self.projection_head_momentum(self.backbone_momentum(x)) for x in (x1, x2))
        loss = (self.criteria[1](q1, k2) + self.criteria[0](q2, k1)) / 2
        self.log("train_nce_loss", loss, prog_bar=True)
        return loss

    # Lightly's memory banks are not in the state_dict (persistent=False): they travel in the checkpoint here,
    # so a resumed run continues with the queues it had
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["moco_queues"] = [{"bank": c.memory_bank.bank.clone(), "ptr": c.memory_bank.bank_ptr.clone()}
                                     for c in self.criteria]

    def on_load_checkpoint(self, checkpoint):
        for c, q in zip(self.criteria, checkpoint.get("moco_queues", [])):
            c.memory_bank.bank = q["bank"].to(c.memory_bank.bank)
            c.memory_bank.bank_ptr = q["ptr"].to(c.memory_bank.bank_ptr)


class BYOL(SoloRecipe):
    momentum_pairs = ("backbone:backbone_momentum", "projection_head:projection_head_momentum")

    def __init__(self, *, proj_hidden_dim: int = 4096, proj_output_dim: int = 256, pred_hidden_dim: int = 4096,
                 **kw):
        super().__init__(**kw)
        self.projection_head = BYOLProjectionHead(self.features_dim, proj_hidden_dim, proj_output_dim)
        self.prediction_head = BYOLPredictionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self._momentum_twins()
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, batch, batch_idx):
        self.ema()
        x1, x2 = self.views(batch)
        p1, p2 = (self.prediction_head(self.projection_head(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            z1, z2 = (self.projection_head_momentum(self.backbone_momentum(x)) for x in (x1, x2))
        loss = (2 + 2 * self.criterion(p1, z2)) + (2 + 2 * self.criterion(p2, z1))   # solo: 2 - 2 cos, summed
        self.log("train_neg_cos_sim", loss, prog_bar=True)
        return loss


class SimCLR(SoloRecipe):
    def __init__(self, *, proj_hidden_dim: int = 2048, proj_output_dim: int = 256, temperature: float = 0.1, **kw):
        super().__init__(**kw)
        self.projection_head = SimCLRProjectionHead(self.features_dim, proj_hidden_dim, proj_output_dim,
                                                    batch_norm=False)
        self.criterion = NTXentLoss(temperature=temperature)

    def training_step(self, batch, batch_idx):
        x1, x2 = self.views(batch)
        z1, z2 = (self.projection_head(self.backbone(x)) for x in (x1, x2))
        loss = self.criterion(z1, z2)
        self.log("train_nce_loss", loss, prog_bar=True)
        return loss


METHODS.update({"mocov2plus": MoCoV2Plus, "byol": BYOL, "simclr": SimCLR})

"""``fbs`` — feature boosting and suppression (Gao et al. 2019) as a channel-gating baseline on the
same engine: per gated conv, saliency s = ReLU(phi · mean_hw|x| + rho) from the pooled input,
winner-take-all keeps the ceil(density · C_out) largest per sample, and the saliency replaces BN's γ:
output π ⊙ (norm(conv(x)) + β) (suppressed channels exactly 0). Loss: ``l1_weight`` ·
Σ_l mean_b ||s_l||_1 over every online training forward of the step. Both crops use the same
(input-dependent) gates.

FBS fine-tunes a trained network; here the network trains from scratch, so ``warmup`` (default the
first 25% of training, our choice) keeps every channel — the saliency already in place of γ, the L1
loss on — before winner-take-all starts suppressing. Gates: ``solo_sparse.gating.fbs``; family:
``solo_sparse.families.channel_gating``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from solo_sparse.core.config import ConfigError, StepSpec, check_choice, check_range, key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.families.channel_gating import ChannelGatingPlugin, GatingConfig
from solo_sparse.gating import fbs
from solo_sparse.gating.channel import gated_convs, gating_kind


@dataclass
class FBSConfig(GatingConfig):
    #: share of output channels kept per sample (winner-take-all)
    density: float = 0.5
    #: weight of the L1 loss on the saliencies (our choice; not taken from the FBS paper)
    l1_weight: float = 1e-5
    #: saliency parameters at init: "identity" (φ = 0, ρ = 1: π = 1 = BN's γ, the dense network; our
    #: choice) or "kaiming" (φ as nn.Linear's default, ρ = 1; diverges under SimCLR from scratch)
    saliency_init: str = "identity"
    #: steps / "Nep" / "P%" with every channel kept (saliency in place of γ) before winner-take-all starts
    warmup: Any = "25%"

    def __post_init__(self):
        GatingConfig.__post_init__(self)
        self.warmup = StepSpec.parse("warmup", self.warmup)
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d <= 1.0:
            raise key_error("density", d, "the kept channel share must be in (0, 1]")
        self.density = float(d)
        self.l1_weight = check_range("l1_weight", self.l1_weight, 0.0, float("inf"))
        check_choice("saliency_init", self.saliency_init, ("identity", "kaiming"))
        if self.saliency_init == "identity" and self.warmup.value == 0:
            raise key_error("warmup", 0, "a warm-up > 0 with saliency_init: identity (every saliency is 1 at step 0, "
                                         "so winner-take-all from step 0 would keep channels by index, the same for "
                                         "every input); or saliency_init: kaiming")


class FBS(ChannelGatingPlugin):
    name = "fbs"
    description = "feature boosting and suppression: pooled-input saliency, winner-take-all channel gates, L1"
    Config = FBSConfig
    gate_param_names = ("phi", "rho")

    def convert(self, backbone) -> None:
        kind = gating_kind(backbone)
        if kind is not None:
            if kind != "fbs":
                raise ConfigError(f"backbone built with other gates than plugin '{self.name}' uses")
            for _, c in gated_convs(backbone):
                c.ss_density = self.config.density
            return
        fbs.convert_resnet(backbone, density=self.config.density, stages=self.config.stages, convs=self.config.convs,
                           init=self.config.saliency_init)

    #: runs saved before these keys existed: gated from step 0, φ initialised as nn.Linear
    legacy_defaults = {"warmup": 0, "saliency_init": "kaiming"}

    def on_train_start(self) -> None:
        super().on_train_start()
        self._warm_end = self.steps_of(self.config.warmup)
        self._set_wta()

    def _set_wta(self) -> None:
        on = self.step >= getattr(self, "_warm_end", 0)
        grp = self.view.groups["backbone"]
        for mod in (grp.online, grp.momentum):
            if mod is not None:
                for _, c in gated_convs(mod):
                    c.ss_wta = on

    def after_optimizer_step(self, optimizer) -> None:
        super().after_optimizer_step(optimizer)
        self._set_wta()

    def route(self, branch: Branch) -> str:
        return "a2" if branch.crop == 1 else "a1"     # a label only (for S_c): FBS has no base paths

    def gate_terms(self, online) -> Optional[torch.Tensor]:
        return fbs.saliency_l1(online)

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        terms, self._loss_terms = self._loss_terms, []
        if not terms or self.config.l1_weight == 0:
            return None
        return self.config.l1_weight * sum(terms) / len(terms)

"""``cdg`` — contrastive dual gating (CDG seed): CGNet-style channel gating of the block convs with
per-branch masks and disjoint base paths.

Every gated conv splits its input and output channels into G groups; the base path (1/G of the
input channels, dense) gives Y_base, the mask M = step(normal(Y_base) - tau) (straight-through,
alpha-scaled sigmoid) decides where the conditional path (the other input channels) is added:
Y = Y_base + M * Y_cond. Crop 0 runs branch a1 (diagonal base groups), crop 1 branch a2 (inverse
diagonal): disjoint base paths, separate masks, shared weights and thresholds. Inference, validation
and ``main_linear.py`` use a1. Loss: the method's + ``threshold_weight`` * Σ_l ||s - tau_l||_2
(seed eq. 11) with s = Phi^-1(target), the threshold that gives the target conditional sparsity on
normalised base outputs. ``cg`` > 1: structured CDG (masks per group of cg channels). Engine:
``solo_sparse.cdg``, ``solo_sparse.cdg_plugin``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch

from solo_sparse.cdg import target_threshold, threshold_loss
from solo_sparse.cdg_plugin import GatingConfig, GatingPlugin
from solo_sparse.config import check_int, check_range, key_error
from solo_sparse.plugin import Branch


@dataclass
class CDGConfig(GatingConfig):
    #: G: base path = 1/G of the input channels
    groups: int = 4
    #: structured CDG: masks shared by groups of cg consecutive output channels (1 = unstructured)
    cg: int = 1
    #: target conditional-path sparsity eta* in [0, 1); s = Phi^-1(eta*)
    target: float = 0.75
    #: lambda of the threshold loss
    threshold_weight: float = 0.1
    #: sigmoid slope of the straight-through gradient
    alpha: float = 2.0
    #: initial tau: "target" (= s) or a number
    init_threshold: Union[str, float] = "target"

    def __post_init__(self):
        GatingConfig.__post_init__(self)
        self.groups = check_int("groups", self.groups, 1)
        self.cg = check_int("cg", self.cg, 1)
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 1.0:
            raise key_error("target", t, "the target conditional sparsity must be in [0, 1)")
        self.target = float(t)
        self.threshold_weight = check_range("threshold_weight", self.threshold_weight, 0.0, float("inf"))
        self.alpha = check_range("alpha", self.alpha, 0.0, float("inf"), lo_open=True)
        if self.init_threshold != "target":
            self.init_threshold = check_range("init_threshold", self.init_threshold, -float("inf"), float("inf"))

    @property
    def s(self) -> float:
        return target_threshold(self.target)


class CDG(GatingPlugin):
    name = "cdg"
    kind = "cdg"
    description = ("contrastive dual gating: CGNet channel gating with per-branch masks and disjoint base paths "
                   "(crop 0 diagonal, crop 1 inverse diagonal)")
    Config = CDGConfig

    def convert_kwargs(self) -> Dict[str, Any]:
        c = self.config
        tau0 = c.s if c.init_threshold == "target" else c.init_threshold
        return {"groups": c.groups, "cg": c.cg, "alpha": c.alpha, "init_tau": tau0, "density": 1.0}

    def route(self, branch: Branch) -> str:
        return "a2" if branch.crop == 1 else "a1"

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        if self.config.threshold_weight == 0:
            return None
        loss = threshold_loss(online, self.config.s)
        return None if loss is None else self.config.threshold_weight * loss

"""``fbs`` — feature boosting and suppression (Gao et al. 2019) as a channel-gating baseline on the
same engine: per gated conv, saliency s = ReLU(phi · mean_hw|x| + rho) from the pooled input,
winner-take-all keeps the ceil(density · C_out) largest per sample, the conv's BN output is scaled by
the kept saliencies (the others are exactly 0). Loss: ``l1_weight`` · Σ_l mean_b ||s_l||_1 over every
online training forward of the step. Both crops use the same (input-dependent) gates. Engine:
``solo_sparse.cdg``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from solo_sparse.cdg import saliency_l1
from solo_sparse.cdg_plugin import GatingConfig, GatingPlugin
from solo_sparse.config import check_range, key_error
from solo_sparse.plugin import Branch


@dataclass
class FBSConfig(GatingConfig):
    #: share of output channels kept per sample (winner-take-all)
    density: float = 0.5
    l1_weight: float = 1e-5

    def __post_init__(self):
        GatingConfig.__post_init__(self)
        d = self.density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 < d <= 1.0:
            raise key_error("density", d, "the kept channel share must be in (0, 1]")
        self.density = float(d)
        self.l1_weight = check_range("l1_weight", self.l1_weight, 0.0, float("inf"))


class FBS(GatingPlugin):
    name = "fbs"
    kind = "fbs"
    description = "feature boosting and suppression: pooled-input saliency, winner-take-all channel gates, L1"
    Config = FBSConfig

    def convert_kwargs(self) -> Dict[str, Any]:
        return {"groups": 1, "cg": 1, "alpha": 1.0, "init_tau": 0.0, "density": self.config.density}

    def route(self, branch: Branch) -> str:
        return "a2" if branch.crop == 1 else "a1"     # a label only (for S_c): FBS has no base paths

    def gate_terms(self, online) -> Optional[torch.Tensor]:
        return saliency_l1(online)

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        terms, self._loss_terms = self._loss_terms, []
        if not terms or self.config.l1_weight == 0:
            return None
        return self.config.l1_weight * sum(terms) / len(terms)

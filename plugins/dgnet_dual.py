"""``dgnet_dual`` — one shared encoder trains a dense and a DGNet-gated sub-network at once (VICReg-Dual).

Krishna et al., "Unifying synergies between self-supervised learning and dynamic computation":
crop 0 runs the **gated** branch (DGNet channel gates, Gumbel-sigmoid straight-through), crop 1 the
**dense** branch (gates off), weights shared; with ``separate_bn`` (default, the seed's best
setting) each branch has its own BatchNorm. The budget loss
``budget_weight * (Σ F^R / Σ F^O - target) ** 2`` (λ = 5) pulls the gated branch's FLOPs ratio to
``target`` (t_d). After one run both sub-networks are usable: ``eval_path: gated|dense`` picks the
one that validation and solo-learn's ``main_linear.py`` evaluate. A momentum encoder (BYOL) follows
the same crop policy. Engine: ``solo_sparse.gating.dgnet`` (gates, FLOPs, batch-1 gather path) and
``solo_sparse.families.dgnet``.
"""
from __future__ import annotations

from dataclasses import dataclass

from solo_sparse.core.config import key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.families.dgnet import DGNetConfig, DGNetPlugin


@dataclass
class DGNetDualConfig(DGNetConfig):
    separate_bn: bool = True

    def __post_init__(self):
        DGNetConfig.__post_init__(self)
        if not isinstance(self.separate_bn, bool):
            raise key_error("separate_bn", self.separate_bn, "expected true or false")


class DGNetDual(DGNetPlugin):
    name = "dgnet_dual"
    description = ("one shared encoder, crop 0 through DGNet channel gates under a FLOPs budget, crop 1 dense, "
                   "separate BN per branch (VICReg-Dual, Krishna et al.)")
    Config = DGNetDualConfig

    def __init__(self, config: DGNetDualConfig):
        super().__init__(config)
        self.separate_bn = config.separate_bn

    def branch_mode(self, branch: Branch) -> str:
        return "gated" if branch.crop == 0 else "dense"

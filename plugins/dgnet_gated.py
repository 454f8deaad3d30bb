"""``dgnet_gated`` — the gated-only baseline (Krishna et al. 2022): both crops run the DGNet-gated
network (one BN set) under the same budget loss as ``dgnet_dual``. Engine: ``solo_sparse.gating.dgnet``."""
from __future__ import annotations

from solo_sparse.core.plugin import Branch
from solo_sparse.families.dgnet import DGNetConfig, DGNetPlugin


class DGNetGated(DGNetPlugin):
    name = "dgnet_gated"
    description = "both crops through DGNet channel gates under a FLOPs budget (gated-only baseline)"
    Config = DGNetConfig
    separate_bn = False

    def branch_mode(self, branch: Branch) -> str:
        return "gated"

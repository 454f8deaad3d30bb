"""``cgnet`` — the unified-gating baseline of the CDG seed (CGNet, Hua et al. 2019, in two-view
training): one shared base path (the diagonal groups) and one mask, computed on crop 0 (branch a1)
and reused for crop 1 (same module, same shape; the momentum encoder does the same with its own
crop 0). Same gated convolution, threshold loss and options as its sibling ``cdg``
(``solo_sparse.families.channel_gating``).
"""
from __future__ import annotations

from solo_sparse.core.plugin import Branch
from solo_sparse.families.channel_gating import ThresholdGatingConfig, ThresholdGatingPlugin


class CGNet(ThresholdGatingPlugin):
    name = "cgnet"
    description = "unified channel gating (CGNet): one base path, crop 0's mask reused for crop 1"
    Config = ThresholdGatingConfig
    unified = True

    def route(self, branch: Branch) -> str:
        return "follow" if branch.crop == 1 else "a1"

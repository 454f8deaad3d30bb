"""What the channel-gated convolutions (CGNet/CDG in :mod:`solo_sparse.gating.cgnet`, FBS in
:mod:`solo_sparse.gating.fbs`) share: routing to a branch, recording per-forward statistics, the
exact-FLOPs protocol of :mod:`solo_sparse.engine.flops`, mask similarity between branches, and
measurement on data.

A gated conv is an ``nn.Conv2d`` (its ``weight`` keeps the torchvision name) switched in place by
class swap. Per forward it may record ``_ss_stats`` = dict(kept (B,) share of the conditional path /
of the output channels, cost (B,) exact MACs per sample, dense MACs per sample), and keeps the last
mask of each branch (``_ss_last``) for the similarity S_c.

Branches: ``a1`` / ``a2`` (CDG's two base paths; FBS uses the names as labels only), ``a1_own`` (CGNet with a
mask per view: crop 1 on a1's base path with its own mask, recorded apart from crop 0's) and ``follow``
(CGNet's unified gating: crop 1 reuses the mask crop 0 computed on branch a1).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

BRANCHES = ("a1", "a2", "a1_own", "follow")


class GatedConvBase(nn.Conv2d):
    """Routing and recording state shared by the gated convolutions (set by ``_gate_base_init``)."""

    #: the G of the seed's eq. 13 (CGNet/CDG base-path groups); None where eq. 13 does not apply (FBS)
    eq13_groups: Optional[int] = None

    def _gate_base_init(self) -> None:
        self.ss_mode, self.ss_branch = "gated", "a1"
        self.ss_record = False
        self._ss_stats: Optional[Dict] = None
        self._ss_last: Dict[str, torch.Tensor] = {}        # last mask per branch (detached) for S_c

    def clear(self) -> None:
        """Drop per-step state (cached masks, loss terms); called at every training step start."""
        self._ss_last = {}

    def effective_macs(self, inputs, output, dense: float) -> float:
        """``solo_sparse.engine.flops`` protocol: batch-total exact cost of the last recorded forward."""
        st = self._ss_stats
        if st is None:
            return dense
        cost = torch.as_tensor(st["cost"]).float()
        return float(cost.sum()) if cost.dim() else float(cost) * output.shape[0]


def gated_convs(backbone: nn.Module) -> List[Tuple[str, GatedConvBase]]:
    return [(n, m) for n, m in backbone.named_modules() if isinstance(m, GatedConvBase)]


def gating_kind(backbone: nn.Module) -> Optional[str]:
    """The gate family a backbone was converted with (``cgnet`` | ``fbs``), or None."""
    return getattr(backbone, "ss_gating", None)


def set_branch(backbone: nn.Module, branch: str, mode: str = "gated") -> None:
    """Route every following forward: ``mode`` gated|dense, base path / mask policy ``branch``."""
    if branch not in BRANCHES or mode not in ("gated", "dense"):
        raise ValueError(f"branch must be one of {BRANCHES}, mode gated|dense")
    for _, c in gated_convs(backbone):
        c.ss_branch, c.ss_mode = branch, mode


def set_recording(backbone: nn.Module, on: bool) -> None:
    for _, c in gated_convs(backbone):
        c.ss_record = on
        if not on:
            c._ss_stats = None
            if hasattr(c, "ss_in_kept"):
                c.ss_in_kept = None


def clear_cache(backbone: nn.Module) -> None:
    for _, c in gated_convs(backbone):
        c.clear()


def reduction_eq13(sparsity: float, groups: int) -> float:
    """The seed's eq. 13: D = 1 / (1/G + (1 - eta)(1 - 1/G))."""
    return 1.0 / (1.0 / groups + (1.0 - sparsity) * (1.0 - 1.0 / groups))


def mask_similarity(backbone: nn.Module) -> Dict[str, float]:
    """S_c per gated conv: share of mask elements on which branch a1 and the second view's branch (a2, a1_own
    or follow) agree, 1 - mean(M_a1 XOR M_a2), from the last recorded forwards of each branch (same shapes only)."""
    out = {}
    for n, c in gated_convs(backbone):
        a = c._ss_last.get("a1")
        b = next((c._ss_last[k] for k in ("a2", "a1_own", "follow") if k in c._ss_last), None)
        if a is not None and b is not None and a.shape == b.shape:
            out[n] = 1.0 - float((a ^ b).float().mean())
    return out


@torch.no_grad()
def measure(backbone: nn.Module, X: torch.Tensor, batch_size: int = 256, branch: str = "a1") -> Dict[str, object]:
    """Gated-path statistics on images ``X`` (N, 3, H, W) in eval mode on branch ``branch``:
    conditional (or channel) sparsity per conv and overall, the exact reduction over the gated convs
    (gates' cost included), over the whole network (stem, downsample, FC included), and the seed's
    eq. 13 reduction where it applies (CGNet/CDG). Routing (branch, mode) and the recording flag are restored; the
    per-forward records (``_ss_stats``, the last masks) are this call's afterwards — call it between steps."""
    from solo_sparse.engine.flops import count_macs

    was = backbone.training
    backbone.eval()
    convs = gated_convs(backbone)
    routes = [(c, c.ss_branch, c.ss_mode, c.ss_record) for _, c in convs]
    set_branch(backbone, branch, "gated")
    set_recording(backbone, True)
    kept = {n: 0.0 for n, _ in convs}
    cost = dense = eff = net_dense = 0.0
    n_seen = 0
    try:
        for i in range(0, len(X), batch_size):
            xb = X[i: i + batch_size]
            rep = count_macs(backbone, xb)
            eff += rep.effective
            net_dense += rep.dense
            for n, c in convs:
                st = c._ss_stats
                kept[n] += float(st["kept"].sum())
                cost += float(torch.as_tensor(st["cost"]).sum())
                dense += st["dense"] * len(xb)
            n_seen += len(xb)
    finally:
        set_recording(backbone, False)
        for c, br, mode, rec in routes:  # the caller's routing and recording, as they were
            c.ss_branch, c.ss_mode, c.ss_record = br, mode, rec
        backbone.train(was)
    per = {n: 1.0 - v / n_seen for n, v in kept.items()}
    eta = sum(per.values()) / len(per) if per else 0.0
    out = {"sparsity": per, "mean_sparsity": eta, "exact_gated_reduction": dense / cost if cost else 1.0,
           "network_reduction": net_dense / eff if eff else 1.0}
    if convs and convs[0][1].eq13_groups:
        out["eq13_reduction"] = reduction_eq13(eta, convs[0][1].eq13_groups)
    return out

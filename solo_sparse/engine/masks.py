"""Mask computation at every granularity (plain torch, no state).

All functions take a *score* tensor shaped like the weight — ``(O, I, kh, kw)`` for a conv,
``(O, I)`` for a linear layer — and return a bool mask of the same shape. Unit scores are sums of
element scores over the unit (for magnitude scores: the unit's L1 norm). ``-inf`` scores mark
elements that must stay pruned (a unit containing one is ranked last).

Granularities
- ``element``: any weight.
- ``nm``: groups of ``m`` consecutive input channels at a fixed (out, kh, kw) position, as NVIDIA
  ASP groups conv weights (permute to (O, kh, kw, I), then rows of m). Within a sparsified group the
  ``n`` highest scores survive. A layer at density d has round((1 - d) * numel / (m - n)) groups
  sparsified (the groups that lose the least score); at d = n/m every group is N:M.
- ``block``: blocks of ``K`` output x ``C`` input channels, all kernel taps of a block together.
- ``channel``: whole output channels (filters).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from solo_sparse.core.config import ConfigError


def check_layer_shape(name: str, shape: Sequence[int], granularity: str, n: int, m: int,
                      block: Tuple[int, int]) -> Optional[str]:
    """Return a message when ``shape`` does not fit the pattern, else None. Names the layer."""
    if len(shape) < 2:
        return f"layer '{name}' has a weight of shape {tuple(shape)}: masks need (out, in, ...)"
    out_c, in_c = int(shape[0]), int(shape[1])
    if granularity == "nm" and in_c % m:
        return (f"layer '{name}' has {in_c} input channels per group, not divisible by m={m} "
                f"(N:M groups run along input channels)")
    if granularity == "block":
        k, c = block
        if out_c % k or in_c % c:
            return (f"layer '{name}' weight {tuple(shape)} is not divisible into {k}x{c} blocks over "
                    f"(out={out_c}, in={in_c}) channels")
    return None


def n_keep(total: int, density: float) -> int:
    """Units kept at ``density``: round(density * total), at least one."""
    return max(1, min(total, int(round(density * total))))


def _topk_bool(flat_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest scores. ``torch.topk`` (unsorted) is ~5x faster than a full sort on
    CPU; it is deterministic for a given input, so every DDP rank picks the same units."""
    keep = torch.zeros(flat_scores.numel(), dtype=torch.bool, device=flat_scores.device)
    if k >= flat_scores.numel():
        keep[:] = True
    elif k > 0:
        keep[torch.topk(flat_scores, k, sorted=False).indices] = True
    return keep


def unit_scores(scores: torch.Tensor, granularity: str, block: Tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Per-unit scores: element -> same shape; channel -> (O,); block -> (O/K, I/C)."""
    if granularity == "element":
        return scores
    if granularity == "channel":
        return scores.reshape(scores.shape[0], -1).sum(dim=1)
    if granularity == "block":
        k, c = block
        o, i = scores.shape[:2]
        s = scores.reshape(o, i, -1).sum(dim=2)  # (O, I)
        return s.reshape(o // k, k, i // c, c).sum(dim=(1, 3))
    raise ValueError(f"no unit scores for granularity {granularity!r}")


def expand_units(unit_mask: torch.Tensor, shape: Sequence[int], granularity: str,
                 block: Tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Inverse of :func:`unit_scores` for masks: unit mask -> element mask of ``shape``."""
    if granularity == "element":
        return unit_mask.reshape(shape)
    o, i = shape[0], shape[1]
    rest = [1] * (len(shape) - 2)
    if granularity == "channel":
        return unit_mask.reshape(o, *([1] * (len(shape) - 1))).expand(*shape).clone()
    if granularity == "block":
        k, c = block
        m2 = unit_mask.repeat_interleave(k, 0).repeat_interleave(c, 1)  # (O, I)
        return m2.reshape(o, i, *rest).expand(*shape).clone()
    raise ValueError(granularity)


def _nm_view(t: torch.Tensor, m: int) -> torch.Tensor:
    """(O, I, *k) -> rows of m consecutive input channels: (O * prod(k) * I/m, m)."""
    if t.dim() == 2:
        return t.reshape(-1, m)
    perm = (0, *range(2, t.dim()), 1)
    return t.permute(*perm).reshape(-1, m)


def _nm_unview(rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if len(shape) == 2:
        return rows.reshape(shape)
    o, i, *k = shape
    t = rows.reshape(o, *k, i)
    inv = (0, t.dim() - 1, *range(1, t.dim() - 1))
    return t.permute(*inv).contiguous()


def nm_mask(scores: torch.Tensor, density: float, n: int, m: int) -> torch.Tensor:
    """N:M mask at ``density`` in [n/m, 1]: the cheapest groups become N:M, the rest stay dense."""
    rows = _nm_view(scores, m)
    g_total = rows.shape[0]
    pruned = int(round((1.0 - density) * scores.numel()))
    g = max(0, min(g_total, int(round(pruned / float(m - n)))))
    srt, order = rows.sort(dim=1, descending=True, stable=True)
    keep_rows = torch.ones_like(rows, dtype=torch.bool)
    if g:
        # cost of making a group N:M = score lost = sum of its (m - n) smallest scores
        cost = srt[:, n:].sum(dim=1)
        cost = torch.nan_to_num(cost, nan=float("-inf"))
        chosen = torch.topk(cost, g, largest=False, sorted=False).indices
        nm_rows = torch.zeros(g, m, dtype=torch.bool, device=scores.device)
        nm_rows.scatter_(1, order[chosen, :n], True)
        keep_rows[chosen] = nm_rows
    return _nm_unview(keep_rows, scores.shape)


def nm_group_mask_is_valid(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per-group check: each row of m has either all m kept (dense group) or at most n kept."""
    rows = _nm_view(mask, m).sum(dim=1)
    return (rows == m) | (rows <= n)


def compute_mask(scores: torch.Tensor, density: float, granularity: str = "element", *,
                 n: int = 2, m: int = 4, block: Tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Bool mask keeping the highest-scoring units at ``density`` (at least one unit)."""
    scores = scores.detach().float()
    if granularity == "nm":
        if density < n / m - 1e-9:
            raise ConfigError(f"N:M {n}:{m} cannot go below density {n / m:.4f} (asked {density:.4f})")
        return nm_mask(scores, density, n, m)
    us = unit_scores(scores, granularity, block)
    keep = _topk_bool(us.reshape(-1), n_keep(us.numel(), density)).reshape(us.shape)
    return expand_units(keep, scores.shape, granularity, block)


def xor_share(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of positions where two masks differ (the SyncCP inconsistency I = mean(A xor B))."""
    return float((a ^ b).sum().item()) / a.numel()

"""How a total density is split over layers: uniform, ERK, global magnitude.

All allocations return bool masks per layer via :func:`allocate_masks`; :func:`erk_densities` also
exposes the ERK per-layer densities (used for FLOPs estimates from a config).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from solo_sparse.engine.masks import compute_mask, expand_units, unit_scores


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power: float = 1.0) -> Dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al., RigL), with the capacity rule.

    d_l = eps * (sum(shape_l) / prod(shape_l)) ** power, eps chosen so that sum_l d_l * n_l equals
    density * sum_l n_l. A layer whose d_l would exceed 1 is made dense and eps is solved again
    for the others (RigL's ``get_sparsities_erdos_renyi`` loop).
    """
    numel = {k: int(torch.Size(s).numel()) for k, s in shapes.items()}
    raw = {k: (float(sum(s)) / numel[k]) ** power for k, s in shapes.items()}
    dense: set = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for k in shapes:
            if k in dense:
                rhs -= (1.0 - density) * numel[k]
            else:
                rhs += density * numel[k]
                divisor += raw[k] * numel[k]
        if divisor <= 0:
            return {k: 1.0 for k in shapes}
        eps = rhs / divisor
        over = [k for k in shapes if k not in dense and eps * raw[k] > 1.0]
        if not over:
            break
        mx = max(raw[k] for k in over)
        dense.update(k for k in over if raw[k] >= mx)
    return {k: (1.0 if k in dense else eps * raw[k]) for k in shapes}


def _global_masks(scores: Mapping[str, torch.Tensor], density: float, granularity: str,
                  block: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """One threshold over all layers on per-element-normalised unit scores; each layer keeps >= 1 unit."""
    names = list(scores)
    per_unit, sizes = [], []
    for k in names:
        s = scores[k].detach().float()
        us = unit_scores(s, granularity, block).reshape(-1)
        size = s.numel() // us.numel()
        per_unit.append(us / size)
        sizes.append(torch.full_like(us, float(size)))
    allu = torch.cat(per_unit)
    alls = torch.cat(sizes)
    total = float(sum(scores[k].numel() for k in names))
    target = density * total
    order = torch.argsort(allu, descending=True, stable=True)
    csum = torch.cumsum(alls[order], 0)
    goal = torch.tensor(target + 1e-6, dtype=csum.dtype, device=csum.device)   # on the scores' device (CUDA)
    n_take = int(torch.searchsorted(csum, goal, right=True).item())
    keep_flat = torch.zeros_like(allu, dtype=torch.bool)
    keep_flat[order[:n_take]] = True
    out, off = {}, 0
    for k, us in zip(names, per_unit):
        km = keep_flat[off: off + us.numel()]
        if not km.any():  # never disconnect a layer
            km = km.clone()
            km[int(torch.argmax(us))] = True
        off += us.numel()
        ushape = unit_scores(scores[k].detach().float(), granularity, block).shape
        out[k] = expand_units(km.reshape(ushape), scores[k].shape, granularity, block)
    return out


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float, distribution: str) -> Dict[str, float]:
    """Per-layer target densities for ``uniform``/``erk`` (``global`` depends on scores: None)."""
    if distribution == "uniform":
        return {k: float(density) for k in shapes}
    if distribution == "erk":
        return erk_densities(shapes, density)
    raise ValueError(f"per-layer densities of distribution {distribution!r} depend on the scores")


def allocate_masks(scores: Mapping[str, torch.Tensor], density: float, distribution: str = "uniform",
                   granularity: str = "element", *, n: int = 2, m: int = 4,
                   block: Tuple[int, int] = (8, 8)) -> Dict[str, torch.Tensor]:
    """Masks for all layers at total ``density`` under ``distribution``.

    ``scores[name]`` is shaped like that layer's weight (higher = more important; -inf = keep pruned).
    """
    if distribution == "global" and granularity != "nm":
        return _global_masks(scores, density, granularity, block)
    dens = layer_densities({k: v.shape for k, v in scores.items()}, density, distribution)
    return {k: compute_mask(scores[k], min(1.0, dens[k]), granularity, n=n, m=m, block=block) for k in scores}


def allocate_by_spec(spec, scores: Mapping[str, torch.Tensor], density: float,
                     distribution: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """:func:`allocate_masks` with the layout of a plugin's mask spec (its ``distribution``, ``granularity``,
    ``n``, ``m`` and ``block``: :class:`solo_sparse.core.config.MaskSpec` and the configs built on it);
    ``distribution`` overrides the spec's (an initial distribution that differs from the final one)."""
    return allocate_masks(scores, density, distribution or spec.distribution, spec.granularity, n=spec.n, m=spec.m,
                          block=spec.block)

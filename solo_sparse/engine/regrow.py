"""Prune-and-regrow and mask nesting (plain torch, no state).

Units are those of the granularity (elements, K x C blocks, output channels; for N:M see
:func:`nm_prune_and_regrow`). Scores are shaped like the weight; a unit's score is the sum of its
elements' scores (so group EMA scores are EMA of group sums: the EMA is linear).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Tuple

import torch

from solo_sparse.engine.masks import _nm_unview, _nm_view, expand_units, unit_scores


@dataclass
class RegrowResult:
    mask: torch.Tensor        # new element mask
    died: torch.Tensor        # element mask of units removed by magnitude (the death candidates)
    grown: torch.Tensor       # element mask of units (re)grown by the gradient score

    @property
    def n_died(self) -> int:
        return int(self.died.sum())

    @property
    def oscillation(self) -> float:
        """Share of death candidates that were grown back at once (|died ∧ grown| / |died|).

        The seed's "architecture oscillation" is died ⊕ grown; with equal counts,
        |died ⊕ grown| = 2 (|died| - |died ∧ grown|), so this is its complement, normalised.
        """
        d = int(self.died.sum())
        return float((self.died & self.grown).sum()) / d if d else 0.0

    @property
    def xor_share(self) -> float:
        """mean(died ⊕ grown) over the layer's weights."""
        return float((self.died ^ self.grown).float().mean())


def _units(t: torch.Tensor, granularity: str, block) -> torch.Tensor:
    return unit_scores(t, granularity, block).reshape(-1)


def prune_and_regrow(mask: torch.Tensor, magnitude: torch.Tensor, grow_score: torch.Tensor, fraction: float,
                     granularity: str = "element", block: Tuple[int, int] = (8, 8)) -> RegrowResult:
    """Remove ``fraction`` of the active units with the smallest magnitude, then grow as many of the
    inactive units (the ones just removed included, as in RigL/GraNet) with the largest ``grow_score``.

    The number of active units is unchanged. Regrown weights are to be set to zero by the caller.
    """
    if granularity == "nm":
        raise ValueError("use nm_prune_and_regrow for N:M")
    unit_mask = _units(mask.float(), granularity, block) > 0
    n_active = int(unit_mask.sum())
    n = int(round(fraction * n_active))
    if n == 0 or n_active == unit_mask.numel():
        z = torch.zeros_like(mask)
        return RegrowResult(mask.clone(), z, z.clone())
    mag = _units(magnitude.float(), granularity, block)
    mag = torch.where(unit_mask, mag, torch.full_like(mag, float("inf")))
    die = torch.topk(mag, n, largest=False, sorted=False).indices
    after = unit_mask.clone()
    after[die] = False
    g = _units(grow_score.float(), granularity, block)
    g = torch.where(after, torch.full_like(g, float("-inf")), g)
    grow = torch.topk(g, n, sorted=False).indices
    new = after.clone()
    new[grow] = True
    died_u = torch.zeros_like(unit_mask)
    died_u[die] = True
    grown_u = torch.zeros_like(unit_mask)
    grown_u[grow] = True
    ushape = unit_scores(mask.float(), granularity, block).shape
    ex = lambda u: expand_units(u.reshape(ushape), mask.shape, granularity, block)  # noqa: E731
    return RegrowResult(ex(new), ex(died_u), ex(grown_u))


def nm_prune_and_regrow(mask: torch.Tensor, magnitude: torch.Tensor, grow_score: torch.Tensor, fraction: float,
                        n: int, m: int) -> RegrowResult:
    """Prune-and-regrow for gradual N:M, at the level of groups (the seed's group EMA scores).

    A group is either dense or N:M. Death: ``fraction`` of the dense groups (at least the count that
    can move) become N:M, those losing the least magnitude; regrowth: as many N:M groups turn dense
    again, those whose pruned elements carry the largest gradient score. When every group is N:M
    there is nothing to regrow (the pattern itself is the target).
    """
    rows = _nm_view(mask, m)
    dense_g = rows.all(dim=1)
    n_dense, n_nm = int(dense_g.sum()), int((~dense_g).sum())
    k = min(int(round(fraction * n_dense)), n_nm)
    z = torch.zeros_like(mask)
    if k == 0:
        return RegrowResult(mask.clone(), z, z.clone())
    mag = _nm_view(magnitude.float(), m)
    srt, order = mag.sort(dim=1, descending=True, stable=True)
    cost = torch.where(dense_g, srt[:, n:].sum(1), torch.full_like(srt[:, 0], float("inf")))
    to_nm = torch.topk(cost, k, largest=False, sorted=False).indices
    gs = _nm_view(grow_score.float(), m)
    pruned_score = torch.where(rows, torch.zeros_like(gs), gs).sum(1)
    pruned_score = torch.where(dense_g, torch.full_like(pruned_score, float("-inf")), pruned_score)
    to_dense = torch.topk(pruned_score, k, sorted=False).indices
    new_rows = rows.clone()
    new_rows[to_dense] = True
    nm_rows = torch.zeros(k, m, dtype=torch.bool, device=mask.device)
    nm_rows.scatter_(1, order[to_nm, :n], True)
    new_rows[to_nm] = nm_rows
    died = rows & ~new_rows
    grown = ~rows & new_rows
    return RegrowResult(_nm_unview(new_rows, mask.shape), _nm_unview(died, mask.shape), _nm_unview(grown, mask.shape))


Allocator = Callable[[Dict[str, torch.Tensor], float], Dict[str, torch.Tensor]]


def nested_masks(inner: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor], density: float,
                 allocate: Allocator) -> Dict[str, torch.Tensor]:
    """Masks at total ``density`` that contain ``inner``: every unit of ``inner`` plus the best-scoring
    other units, allocated over layers by ``allocate(scores, density)`` (the plugin's distribution and
    granularity). The SyncCP momentum mask: the online mask plus the momentum weights of largest
    magnitude outside it, so the gap between the encoders is the extra units ("synchronized")."""
    boosted = {k: torch.where(inner[k], torch.full_like(s, 1e30, dtype=torch.float32), s.float())
               for k, s in scores.items()}
    return {k: m | inner[k] for k, m in allocate(boosted, density).items()}

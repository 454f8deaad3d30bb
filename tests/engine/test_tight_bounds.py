"""Exact values where a bound is the point.

- prune-and-regrow's death set is exactly the n smallest-magnitude active units (a ``<=`` bound against the
  n-th order statistic lets an off-by-one through: dying ranks 1..n instead of 0..n-1 passes it);
- the structured (cg > 1) CDG gate costs (6 + 1) C_out H W MACs: the group average is counted;
- ``newest_checkpoint`` is deterministic where modification times tie or are reordered (no sleeps here: the
  times are set explicitly).
"""
import os
from pathlib import Path

import pytest
import torch
import torchvision

from solo_sparse.engine.masks import compute_mask, unit_scores
from solo_sparse.engine.regrow import nm_prune_and_regrow, prune_and_regrow
from solo_sparse.gating.cgnet import CGNetConv2d
from solo_sparse.tools.runner import newest_checkpoint


# ------------------------------------------------------------------------------ prune-and-regrow death set
@pytest.mark.parametrize("granularity,block", [("element", (8, 8)), ("channel", (8, 8)), ("block", (8, 4))])
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_the_death_set_is_exactly_the_n_smallest_active_units(granularity, block, fraction):
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    mask = compute_mask(torch.rand_like(w), 0.5, granularity, block=block)   # active set independent of |w|
    mag = w.abs() * mask
    res = prune_and_regrow(mask, mag, torch.rand_like(w), fraction, granularity, block)
    active = (unit_scores(mask.float(), granularity, block) > 0).flatten()
    umag = unit_scores(mag, granularity, block).flatten()
    n = int(round(fraction * int(active.sum())))
    assert n > 0
    idx = active.nonzero().flatten()
    smallest = set(idx[umag[idx].argsort()[:n]].tolist())
    dead = set((unit_scores(res.died.float(), granularity, block).flatten() > 0).nonzero().flatten().tolist())
    assert dead == smallest
    # and every unit that died is no longer active unless it was regrown at once
    after = (unit_scores(res.mask.float(), granularity, block) > 0).flatten()
    grown = (unit_scores(res.grown.float(), granularity, block) > 0).flatten()
    assert set(idx.tolist()) - dead <= set(after.nonzero().flatten().tolist())
    assert int(after.sum()) == int(active.sum()) and int(grown.sum()) == n


def test_nm_death_set_is_exactly_the_dense_groups_that_lose_least():
    torch.manual_seed(1)
    w = torch.randn(8, 16, 3, 3)
    mask = compute_mask(w.abs(), 0.75, "nm", n=2, m=4)                  # half the groups N:M, half dense
    res = nm_prune_and_regrow(mask, w.abs() * mask, torch.rand_like(w), 0.5, 2, 4)
    groups = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 4)          # noqa: E731 - 4 consecutive input channels
    rows, mags = groups(mask), groups(w.abs() * mask)
    dense = rows.all(1)
    k = min(int(round(0.5 * int(dense.sum()))), int((~dense).sum()))
    cost = mags.sort(1, descending=True).values[:, 2:].sum(1)            # magnitude lost by going 2:4
    idx = dense.nonzero().flatten()
    cheapest = set(idx[cost[idx].argsort()[:k]].tolist())
    died = set(groups(res.died).any(1).nonzero().flatten().tolist())
    assert died == cheapest


# ------------------------------------------------------------------------------ CDG structured gate cost
@pytest.mark.parametrize("cg,gate_per_position", [(1, 6), (4, 7)])
def test_cdg_gate_cost_counts_the_group_average_when_structured(cg, gate_per_position):
    torch.manual_seed(0)
    conv = torchvision.models.resnet.BasicBlock(16, 16).conv1
    conv.__class__ = CGNetConv2d
    conv._gate_init(4, cg, 2.0, 0.2, False, "channel")
    conv.ss_record = True
    with torch.no_grad():
        conv(torch.randn(2, 16, 6, 6))
    st = conv._ss_stats
    kept = conv._ss_last["a1"].float().flatten(1).mean(1)
    dense = 6 * 6 * 16 * 16 * 9
    assert 0 < float(kept.mean()) < 1
    assert torch.allclose(st["cost"], dense / 4 + 0.75 * dense * kept + gate_per_position * 16 * 6 * 6)


# ------------------------------------------------------------------------------ newest_checkpoint
def _ck(root: Path, rel: str, mtime: float) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    os.utime(p, (mtime, mtime))
    return p


T = 1_700_000_000.0


def test_newest_checkpoint_ties_are_broken_by_epoch_then_name(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    for e in (1, 3, 10, 2):                                           # identical times (a coarse clock)
        _ck(tmp_path, f"v{e % 2}/run-abc-ep={e}.ckpt", T)
    assert newest_checkpoint(tmp_path).name == "run-abc-ep=10.ckpt"    # numeric, not lexicographic
    _ck(tmp_path, "v9/epoch=10-step=40.ckpt", T)
    _ck(tmp_path, "v9/epoch=10-step=35.ckpt", T)
    assert newest_checkpoint(tmp_path).name == "epoch=10-step=40.ckpt"
    _ck(tmp_path, "z/epoch=10-step=40.ckpt", T)                        # same name elsewhere: the path decides
    assert newest_checkpoint(tmp_path) == tmp_path / "z" / "epoch=10-step=40.ckpt"


def test_newest_checkpoint_ignores_a_reordered_clock_within_the_tolerance(tmp_path):
    # a run resumed into a new version folder: its ep=2 checkpoint carries an earlier time than the crashed
    # run's ep=1 (skewed or coarse clock)
    _ck(tmp_path, "crashed/r-aaa-ep=1.ckpt", T + 1.0)
    resumed = _ck(tmp_path, "resumed/r-bbb-ep=2.ckpt", T)
    assert newest_checkpoint(tmp_path) == resumed
    plain = _ck(tmp_path, "nothing.ckpt", T + 1.5)                    # no epoch in the name: ranks first
    assert newest_checkpoint(tmp_path) == resumed and plain.exists()


def test_newest_checkpoint_prefers_a_later_run_over_an_older_runs_higher_epoch(tmp_path):
    _ck(tmp_path, "old/r-aaa-ep=11.ckpt", T)
    later = _ck(tmp_path, "new/r-bbb-ep=4.ckpt", T + 3600)              # retrained in the same folder
    assert newest_checkpoint(tmp_path) == later

import pytest
import torch

from solo_sparse.engine.density import allocate_masks, erk_densities
from solo_sparse.engine.masks import n_keep

SHAPES = {"a": (64, 3, 3, 3), "b": (64, 64, 3, 3), "c": (128, 64, 3, 3), "d": (128, 128, 3, 3), "e": (10, 128)}


def scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=g) for k, s in SHAPES.items()}


def test_uniform_exact_per_layer():
    masks = allocate_masks(scores(), 0.2, "uniform")
    for _k, m in masks.items():
        assert int(m.sum()) == n_keep(m.numel(), 0.2)


def test_erk_formula_and_total():
    d = erk_densities(SHAPES, 0.1)
    numel = {k: torch.Size(s).numel() for k, s in SHAPES.items()}
    total = sum(numel.values())
    assert sum(d[k] * numel[k] for k in SHAPES) == pytest.approx(0.1 * total, rel=1e-9)
    # non-dense layers follow eps * (sum(shape) / prod(shape)) with one eps
    eps = {k: d[k] / (sum(SHAPES[k]) / numel[k]) for k in SHAPES if d[k] < 1}
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-9)


def test_erk_capacity_rule_makes_small_layers_dense():
    d = erk_densities(SHAPES, 0.5)
    assert d["a"] == 1.0           # the stem-like 3-input layer would exceed 1: made dense
    assert all(v <= 1.0 for v in d.values())
    numel = {k: torch.Size(s).numel() for k, s in SHAPES.items()}
    assert sum(d[k] * numel[k] for k in SHAPES) == pytest.approx(0.5 * sum(numel.values()), rel=1e-9)


def test_erk_masks_match_densities():
    masks = allocate_masks(scores(), 0.3, "erk")
    d = erk_densities(SHAPES, 0.3)
    for k, m in masks.items():
        assert int(m.sum()) == n_keep(m.numel(), min(1.0, d[k]))


def test_global_one_threshold():
    sc = scores(1)
    masks = allocate_masks(sc, 0.25, "global")
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(int(m.sum()) for m in masks.values()) - round(0.25 * total)) <= 1
    kept_min = min(sc[k][masks[k]].min() for k in sc)
    pruned_max = max(sc[k][~masks[k]].max() for k in sc if (~masks[k]).any())
    assert kept_min >= pruned_max


def test_global_never_disconnects_a_layer():
    sc = scores(2)
    sc["e"] = sc["e"] * 1e-6
    masks = allocate_masks(sc, 0.05, "global")
    assert masks["e"].any()


def test_global_block_granularity_is_block_structured():
    sc = {k: v for k, v in scores(3).items() if k in ("b", "c", "d")}
    masks = allocate_masks(sc, 0.3, "global", "block", block=(8, 8))
    for m in masks.values():
        o, i = m.shape[:2]
        per = m.reshape(o // 8, 8, i // 8, 8, -1).float().mean(dim=(1, 3, 4))
        assert set(per.unique().tolist()) <= {0.0, 1.0}

import pytest
import torch
from conftest import TinyNet

from solo_sparse.core.config import MaskSpec
from solo_sparse.engine.density import allocate_masks
from solo_sparse.engine.masks import compute_mask, nm_group_mask_is_valid
from solo_sparse.engine.regrow import nested_masks, nm_prune_and_regrow, prune_and_regrow
from solo_sparse.engine.scores import GradientScore
from solo_sparse.engine.sparsifier import ModuleGroup, WeightSparsifier


def test_element_prune_and_regrow():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    mask = compute_mask(w.abs(), 0.3)
    g = torch.rand_like(w)
    res = prune_and_regrow(mask, w.abs() * mask, g, 0.2)
    assert int(res.mask.sum()) == int(mask.sum())                   # density unchanged
    n = int(round(0.2 * int(mask.sum())))
    assert res.n_died == n and int(res.grown.sum()) == n
    act = w.abs()[mask]
    assert w.abs()[res.died].max() <= act.sort().values[n]           # the smallest active magnitudes died
    cand = ~(mask & ~res.died)                                       # inactive after death (incl. the dead)
    assert g[res.grown].min() >= g[cand & ~res.grown].max()          # the best gradient scores grew
    assert 0.0 <= res.oscillation <= 1.0


def test_block_prune_and_regrow_keeps_blocks():
    torch.manual_seed(1)
    w = torch.randn(32, 16, 3, 3)
    mask = compute_mask(w.abs(), 0.5, "block", block=(8, 8))
    res = prune_and_regrow(mask, w.abs() * mask, torch.rand_like(w), 0.5, "block", (8, 8))
    per = res.mask.reshape(4, 8, 2, 8, 9).float().mean(dim=(1, 3, 4))
    assert set(per.unique().tolist()) <= {0.0, 1.0} and int(per.sum()) == 4


def test_nm_prune_and_regrow_groups():
    torch.manual_seed(2)
    w = torch.randn(8, 16, 3, 3)
    mask = compute_mask(w.abs(), 0.75, "nm", n=2, m=4)
    res = nm_prune_and_regrow(mask, w.abs() * mask, torch.rand_like(w), 0.5, 2, 4)
    assert nm_group_mask_is_valid(res.mask, 2, 4).all()
    assert int(res.mask.sum()) == int(mask.sum())
    full = compute_mask(w.abs(), 0.5, "nm", n=2, m=4)                # all groups N:M: nothing to regrow
    assert torch.equal(nm_prune_and_regrow(full, w.abs(), torch.rand_like(w), 0.5, 2, 4).mask, full)


def test_nested_masks_contain_inner_and_take_the_best_others():
    torch.manual_seed(3)
    s = {"a": torch.rand(64, 32), "b": torch.rand(16, 8)}
    inner = {k: compute_mask(torch.rand_like(v), 0.1) for k, v in s.items()}
    outer = nested_masks(inner, s, 0.4, lambda sc, d: allocate_masks(sc, d, "uniform"))
    for k in s:
        assert not (inner[k] & ~outer[k]).any()
        assert outer[k].float().mean().item() == pytest.approx(0.4, abs=1e-2)
        extra = outer[k] & ~inner[k]                       # the added units are the best-scoring outside inner
        assert s[k][extra].min() >= s[k][~outer[k]].max()


def test_gradient_score_ema_convention():
    net = TinyNet()
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", net)}, MaskSpec())
    ema, inst = GradientScore(sp.layers, 0.1), GradientScore(sp.layers, None)
    grads = []
    for _i in range(3):
        net.zero_grad()
        net(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
        grads.append(net.layer1[0].weight.grad.abs().clone())
        ema.update()
        inst.update()
    want = grads[0]
    for gi in grads[1:]:
        want = 0.9 * want + 0.1 * gi                                  # s = (1 - e) s_old + e |g|, e = 0.1
    assert torch.allclose(ema.scores["backbone.layer1.0"], want)
    assert torch.equal(inst.scores["backbone.layer1.0"], grads[-1])
    one = GradientScore(sp.layers, 1.0)                               # e = 1 is the instant gradient
    one.scores = {k: v * 7 for k, v in ema.scores.items()}
    one.update()
    assert torch.allclose(one.scores["backbone.layer1.0"], grads[-1])
    with pytest.raises(ValueError, match=r"ema must be in \(0, 1\]"):
        GradientScore(sp.layers, 0.0)

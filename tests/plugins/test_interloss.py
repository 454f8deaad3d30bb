"""Intermediate contrastive loss engine (no solo-learn): crops, hard-pair selection, truncated
forwards, heads, depth sampling, config validation, the plugin stacking rule, MACs accounting."""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.config import ConfigError
from solo_sparse.engine import interloss as IL
from solo_sparse.tools.evaluate import build_resnet


def test_take_crops_matches_slicing_and_keeps_channels_last():
    x = torch.randn(3, 5, 8, 8)
    off = torch.tensor([[0, 0], [2, 1], [3, 3]])
    got = IL.take_crops(x, off, 5, 4)
    for b in range(3):
        t, le = off[b].tolist()
        assert torch.equal(got[b], x[b, :, t:t + 5, le:le + 4])
    cl = IL.take_crops(x.to(memory_format=torch.channels_last), off, 5, 4)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, got)
    assert IL.crop_size(8, 8, 0.75) == (6, 6) and IL.crop_size(1, 1, 0.75) == (1, 1)


def test_hard_pair_by_loss_is_the_largest_infonce_with_negatives():
    torch.manual_seed(0)
    b, m, T = 4, 3, 0.2
    x1, x2 = torch.randn(b, 6, 8, 8), torch.randn(b, 6, 8, 8)
    embed = nn.Sequential(nn.Flatten(1), nn.LazyLinear(5))
    embed(torch.zeros(1, 6, 6, 6))
    o1, o2, size, _ = IL.select_hard_pair(x1, x2, embed, m, 0.75, torch.Generator().manual_seed(7), by="loss",
                                          temperature=T)
    g = torch.Generator().manual_seed(7)
    a1 = IL.random_offsets(b, m, 8, 8, 6, 6, g)
    a2 = IL.random_offsets(b, m, 8, 8, 6, 6, g)
    with torch.no_grad():
        e1 = torch.stack([torch.stack([F.normalize(embed(x1[k:k + 1, :, a1[i, k, 0]:a1[i, k, 0] + 6,
                                                             a1[i, k, 1]:a1[i, k, 1] + 6]), dim=1)[0]
                                        for k in range(b)]) for i in range(m)])           # (M, B, D)
        e2 = torch.stack([torch.stack([F.normalize(embed(x2[k:k + 1, :, a2[i, k, 0]:a2[i, k, 0] + 6,
                                                             a2[i, k, 1]:a2[i, k, 1] + 6]), dim=1)[0]
                                        for k in range(b)]) for i in range(m)])
    for k in range(b):
        best = None
        for i in range(m):
            for j in range(m):
                pos = float(e1[i, k] @ e2[j, k]) / T
                negs = [float(e1[i, k] @ e2[c, n]) / T for c in range(m) for n in range(b) if n != k]
                loss = -pos + float(torch.logsumexp(torch.tensor([pos, *negs]), 0))
                if best is None or loss > best[0]:
                    best = (loss, a1[i, k].tolist(), a2[j, k].tolist())
        assert o1[k].tolist() == best[1] and o2[k].tolist() == best[2], k
    # the two rules can choose differently: negatives matter
    c1, c2, _, _ = IL.select_hard_pair(x1, x2, embed, m, 0.75, torch.Generator().manual_seed(7), by="cosine")
    assert size == (6, 6) and (c1.tolist() != o1.tolist() or c2.tolist() != o2.tolist())


def test_hard_pair_is_the_least_similar_of_the_m_by_m_pairs():
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 6, 8, 8), torch.randn(4, 6, 8, 8)
    embed = nn.Sequential(nn.Flatten(1), nn.LazyLinear(5))
    embed(torch.zeros(1, 6, 6, 6))
    m = 3
    o1, o2, size, sim = IL.select_hard_pair(x1, x2, embed, m, 0.75, torch.Generator().manual_seed(7), by="cosine")
    # brute force with the same random offsets
    g = torch.Generator().manual_seed(7)
    a1 = IL.random_offsets(4, m, 8, 8, 6, 6, g)
    a2 = IL.random_offsets(4, m, 8, 8, 6, 6, g)
    for b in range(4):
        best = None
        for i in range(m):
            for j in range(m):
                e1 = embed(x1[b:b + 1, :, a1[i, b, 0]:a1[i, b, 0] + 6, a1[i, b, 1]:a1[i, b, 1] + 6])
                e2 = embed(x2[b:b + 1, :, a2[j, b, 0]:a2[j, b, 0] + 6, a2[j, b, 1]:a2[j, b, 1] + 6])
                s = float(F.cosine_similarity(e1, e2))
                if best is None or s < best[0]:
                    best = (s, a1[i, b].tolist(), a2[j, b].tolist())
        assert o1[b].tolist() == best[1] and o2[b].tolist() == best[2], b
        assert float(sim[b]) == pytest.approx(best[0], abs=1e-5)
    assert size == (6, 6)


def test_forward_maps_matches_the_backbone_and_crops_replay():
    torch.manual_seed(0)
    net = build_resnet("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = IL.forward_maps(net, x, 4)
        torch.testing.assert_close(IL.pool(maps[4]), net(x))
        assert [maps[j].shape[1] for j in (1, 2, 3, 4)] == IL.stage_channels(net) == [64, 128, 256, 512]
        head = {j: IL.adapt_head(nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 8)), c)
                for j, c in zip((1, 2), (64, 128))}
        m1, m2, c1, c2, sims = IL.two_view_forward(net, x, x.flip(3), 3, (1, 2), lambda j: head[j], 4, 0.75,
                                                   torch.Generator().manual_seed(1))
        assert m1[1].shape[-2:] == (6, 6) and m1[2].shape[-2:] == (2, 2) and set(sims) == {1, 2}
        # a momentum encoder replaying the chosen crops sees the same maps (same weights here)
        r1 = IL.forward_maps(net, x, 3, c1)
        for j in (1, 2, 3):
            torch.testing.assert_close(r1[j], m1[j])


def test_adapt_head_is_a_fresh_copy_with_new_input_width():
    proj = nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    head = IL.adapt_head(proj, 128)
    assert head(torch.randn(4, 128, 3, 3)).shape == (4, 16)
    lin = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert lin[0].in_features == 128 and lin[-1].out_features == 16
    assert lin[-1].weight.data_ptr() != proj[3].weight.data_ptr()
    assert isinstance(head[2][1], nn.BatchNorm1d)     # the method's layers are kept


def test_ema_and_frozen_copy():
    a = nn.Linear(3, 2)
    b = IL.frozen_copy(a)
    assert not any(p.requires_grad for p in b.parameters())
    with torch.no_grad():
        a.weight.add_(1.0)
    before = b.weight.clone()
    IL.ema_(a, b, 0.9)
    torch.testing.assert_close(b.weight, 0.9 * before + 0.1 * a.weight)


def test_draw_depth_is_deterministic_and_follows_the_weights():
    d = [1, 2, 3, 4]
    assert [IL.draw_depth(d, [1, 1, 1, 1], 0, s) for s in range(50)] == \
        [IL.draw_depth(d, [1, 1, 1, 1], 0, s) for s in range(50)]
    draws = [IL.draw_depth(d, [0.5, 0.0, 0.25, 0.25], 3, s) for s in range(4000)]
    assert 2 not in draws
    assert draws.count(1) / 4000 == pytest.approx(0.5, abs=0.03)
    assert draws.count(4) / 4000 == pytest.approx(0.25, abs=0.03)


def _cfg(**kw):
    from solo_sparse_plugins.interloss import InterLossConfig

    return InterLossConfig(**kw)


@pytest.mark.parametrize("kw,key", [
    ({"heads": [0]}, "heads"), ({"heads": [4]}, "heads"), ({"heads": []}, "heads"), ({"heads": [1, 1]}, "heads"),
    ({"num_crops": 0}, "num_crops"), ({"crop_fraction": 0.0}, "crop_fraction"),
    ({"crop_fraction": 1.5}, "crop_fraction"), ({"heads": [1, 2], "hard_blocks": [3]}, "hard_blocks"),
    ({"weights": [1, 1]}, "weights"), ({"weights": [0, 0, 0, 0]}, "weights"), ({"hard_pairs": "yes"}, "hard_pairs"),
    ({"loss_weights": [1, 1]}, r"loss_weights=\[1, 1\]: 4 non-negative numbers"),
    ({"loss_weights": [1, -1, 1, 1]}, "loss_weights"), ({"loss_weights": [1, 1, 1, 0]}, "final loss needs a positive"),
    ({"hard_by": "random"}, "hard_by='random': allowed: loss, cosine"), ({"hard_temperature": 0}, "hard_temperature"),
    ({"hard_pair_keys": "momentum"}, "hard_pair_keys='momentum': allowed: auto, key, online"),
])
def test_config_errors_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(**kw)


def test_config_defaults_and_probabilities():
    c = _cfg()
    assert c.depths == [1, 2, 3, 4] and c.probs == [0.25] * 4 and c.hard_blocks == [1, 2]
    assert _cfg(weights=[1, 1, 2, 4]).probs == [0.125, 0.125, 0.25, 0.5]
    assert c.depth_weights == [1.0] * 4 and c.hard_by == "loss"                  # the final loss at weight 1
    assert _cfg(loss_weights=[0.5, 0.5, 0.5, 1]).depth_weights == [0.5, 0.5, 0.5, 1.0]
    assert _cfg(hard_pairs=False, hard_blocks=[]).hard_blocks == []


def test_stacking_rule():
    from solo_sparse.core.plugin import Plugin, PluginHost, check_stack
    from solo_sparse.core.registry import build_plugins

    ok = build_plugins({"plugins": ["synccp", "interloss"], "synccp": {"final_density": 0.2}, "interloss": {}})
    assert [p.name for p in ok] == ["synccp", "interloss"]
    PluginHost(ok)
    with pytest.raises(ConfigError, match="branch-dependent plugin"):
        PluginHost(build_plugins({"plugins": ["cdg", "interloss"], "interloss": {}}))

    class Driver(Plugin):
        name = "driver2"
        drives_step = True

    with pytest.raises(ConfigError, match="combine at most one"):
        check_stack([ok[1], Driver(None)])


def test_check_backbone_refuses_non_resnets():
    with pytest.raises(ValueError, match="lacks"):
        IL.check_backbone(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_unsupported_method_refused_by_the_plugin_contract():
    from solo_sparse_plugins.interloss import InterLoss

    InterLoss.check_method("byol", "momentum")
    with pytest.raises(ConfigError, match=r"plugin 'interloss' .*method 'simsiam' is not supported \(supported: simclr"):
        InterLoss.check_method("simsiam", "shared")


def _crop_embed(embed, x, off, b, size=6):
    t, le = off[b].tolist()
    return F.normalize(embed(x[b:b + 1, :, t:t + size, le:le + size]), dim=1)[0]


@pytest.mark.parametrize("with_queue", [True, False])
def test_hard_pair_against_the_key_encoder_is_the_largest_symmetric_infonce(with_queue):
    """Queries from the online maps and head, keys from the momentum maps and momentum head at the same crop
    places, negatives from the queue (MoCo v2+: queue[1] for view-1 queries, queue[0] for view-2 queries) or,
    without one, the other images' keys — brute force over the M x M pairs."""
    torch.manual_seed(0)
    b, m, T = 4, 3, 0.2
    y1, y2 = torch.randn(b, 6, 8, 8), torch.randn(b, 6, 8, 8)
    k1, k2 = y1 + 0.5 * torch.randn_like(y1), y2 + 0.5 * torch.randn_like(y2)   # the key encoder's maps
    eq, ek = nn.Sequential(nn.Flatten(1), nn.Linear(216, 5)), nn.Sequential(nn.Flatten(1), nn.Linear(216, 5))
    negs = (F.normalize(torch.randn(5, 7), dim=0), F.normalize(torch.randn(5, 7), dim=0)) if with_queue else None
    o1, o2, size, sim = IL.select_hard_pair_keys(y1, y2, k1, k2, eq, ek, m, 0.75, torch.Generator().manual_seed(7),
                                                 by="loss", temperature=T, negatives=negs)
    g = torch.Generator().manual_seed(7)
    a1, a2 = IL.random_offsets(b, m, 8, 8, 6, 6, g), IL.random_offsets(b, m, 8, 8, 6, 6, g)

    def nce(q, k, neg_list):
        pos = float(q @ k) / T
        return -pos + float(torch.logsumexp(torch.tensor([pos, *[float(q @ n) / T for n in neg_list]]), 0))

    with torch.no_grad():
        Q1 = [[_crop_embed(eq, y1, a1[i], n) for n in range(b)] for i in range(m)]
        Q2 = [[_crop_embed(eq, y2, a2[i], n) for n in range(b)] for i in range(m)]
        K1 = [[_crop_embed(ek, k1, a1[i], n) for n in range(b)] for i in range(m)]
        K2 = [[_crop_embed(ek, k2, a2[i], n) for n in range(b)] for i in range(m)]
        for n in range(b):
            best = None
            for i in range(m):
                for j in range(m):
                    if with_queue:
                        n1, n2 = list(negs[0].T), list(negs[1].T)
                    else:          # every key crop of the other images, of the other view
                        n1 = [K2[c][o] for c in range(m) for o in range(b) if o != n]
                        n2 = [K1[c][o] for c in range(m) for o in range(b) if o != n]
                    loss = (nce(Q1[i][n], K2[j][n], n1) + nce(Q2[j][n], K1[i][n], n2)) / 2
                    if best is None or loss > best[0]:
                        cos = (float(Q1[i][n] @ K2[j][n]) + float(Q2[j][n] @ K1[i][n])) / 2
                        best = (loss, a1[i, n].tolist(), a2[j, n].tolist(), cos)
            assert o1[n].tolist() == best[1] and o2[n].tolist() == best[2], n
            assert float(sim[n]) == pytest.approx(best[3], abs=1e-5)
    # scoring against the key encoder is not scoring the online maps twice
    p1, p2, _, _ = IL.select_hard_pair(y1, y2, eq, m, 0.75, torch.Generator().manual_seed(7), by="loss", temperature=T)
    assert (p1.tolist(), p2.tolist()) != (o1.tolist(), o2.tolist())


def test_two_view_forward_with_a_key_encoder_returns_its_cropped_maps():
    torch.manual_seed(0)
    net, key = build_resnet("resnet18").eval(), build_resnet("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    head = {j: IL.adapt_head(nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 8)), c)
            for j, c in zip((1, 2), (64, 128))}
    khead = {j: IL.frozen_copy(h) for j, h in head.items()}
    order = []
    with torch.no_grad():
        m1, m2, c1, c2, sims, g1, g2 = IL.two_view_forward(
            net, x, x.flip(3), 3, (1, 2), lambda j: head[j], 4, 0.75, torch.Generator().manual_seed(1),
            key_backbone=key, key_embed_at=lambda j: khead[j], negatives_at=lambda j: None, switch=order.append)
        r1, r2 = IL.forward_maps(key, x, 3, c1), IL.forward_maps(key, x.flip(3), 3, c2)
        q1 = IL.forward_maps(net, x, 3, c1)
    for j in (1, 2, 3):          # the key maps are the key encoder's, cropped where the online maps were
        torch.testing.assert_close(g1[j], r1[j])
        torch.testing.assert_close(g2[j], r2[j])
        torch.testing.assert_close(m1[j], q1[j])
    assert not torch.equal(g1[3], m1[3])
    assert order[:2] == ["online", "momentum"] and order[-1] == "online" and order.count("momentum") == 4


def test_the_collapse_warning_is_given_once_per_run_not_once_per_resume():
    from solo_sparse.core.plugin import PluginHost
    from solo_sparse_plugins.interloss import InterLoss

    assert not InterLoss.from_params({})._warned_collapse
    p = InterLoss.from_params({})
    p._warned_collapse = True
    state = PluginHost([p]).state_dict()
    assert state["interloss"]["extra"]["warned_collapse"] is True
    q = InterLoss.from_params({})
    PluginHost([q]).load_state_dict(state)
    assert q._warned_collapse
    state["interloss"]["extra"] = {}                      # a checkpoint saved before the flag was: not given yet
    r = InterLoss.from_params({})
    PluginHost([r]).load_state_dict(state)
    assert not r._warned_collapse


@pytest.mark.parametrize("method", ["simclr", "vicreg", "barlow_twins"])
def test_key_scoring_on_a_method_without_a_key_encoder_is_refused_at_setup(method):
    """``hard_pair_keys: key`` needs a momentum (key) encoder: refused before step 0 with the key, the value, the
    method and what is allowed -- also without solo-learn (the plugin's own setup, any host)."""
    import torchvision

    from solo_sparse.core.plugin import ModelView
    from solo_sparse.core.registry import build_plugins
    from solo_sparse.engine.sparsifier import ModuleGroup

    def view():
        return ModelView({"backbone": ModuleGroup("backbone", torchvision.models.resnet18(), None)}, "shared",
                         method=method)

    (p,) = build_plugins({"plugins": ["interloss"], "hard_pair_keys": "key"})
    with pytest.raises(ConfigError, match=re.escape(
            f"solo_sparse.hard_pair_keys='key': method '{method}' has no key (momentum) encoder to score hard pairs "
            "against (methods with one: mocov2plus, byol); allowed here: auto, online")):
        p.setup(view())

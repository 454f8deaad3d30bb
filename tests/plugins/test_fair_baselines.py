"""The SyncCP comparison made fair (issue 26): SDCLR and GraNet as their authors' code runs them, SyncCP's
``momentum_mask: own`` recomputed, its N:M start in group units, and one pruning window for every plugin.

Plain torch (TinyNet pairs driven through the PluginHost hooks as the binding drives them); the solo-learn
matrix is in integration/test_defaults_matrix_solo.py, the harness's window in tools/test_bench_window.py."""
import copy
import math

import pytest
import torch
from conftest import TinyNet
from helpers import make_host, train

from solo_sparse import get_plugin
from solo_sparse.core.config import ConfigError
from solo_sparse.core.plugin import Branch
from solo_sparse.engine.density import erk_densities
from solo_sparse.engine.schedule import is_update_step
from solo_sparse.engine.sparsifier import set_damaged


def plugin(name, **params):
    return get_plugin(name).from_params(params)


def pair(seed=0):
    torch.manual_seed(seed)
    on = TinyNet()
    mo = copy.deepcopy(on)
    for p in mo.parameters():
        p.requires_grad = False
    return on, mo


def updates_of(p):
    """Record the steps at which ``p`` changed its masks."""
    steps = []
    orig = p.update_masks

    def update(opt):
        changed = orig(opt)
        if changed:
            steps.append(p.step)
        return changed

    p.update_masks = update
    return steps


# ------------------------------------------------------------------ SDCLR
def _pruned_energy(sp, enc_w="momentum"):
    """Share of the momentum encoder's weight energy at the positions the online mask prunes."""
    on_m, w = sp.masks("online"), sp.weights(enc_w)
    return sum(float(w[k][~on_m[k]].pow(2).sum()) for k in w) / sum(float(w[k].pow(2).sum()) for k in w)


def test_sdclr_online_damage_the_momentum_encoder_sees_the_pruned_online_network():
    p = plugin("sdclr", density=0.2)
    on, mo = pair()
    host = make_host(p, on, mo)
    sp = p.sparsifier
    assert p.damage == "online"
    opt = torch.optim.SGD(on.parameters(), lr=0.5, momentum=0.9)
    train(host, on, mo, opt, 5)
    assert _pruned_energy(sp) == 0.0                       # was ~0.8: the EMA copied the dense stored weights
    before = {k: m.clone() for k, m in sp.masks().items()}
    host.on_epoch_start(1)                                  # masks re-derived by magnitude
    assert sum(int((before[k] ^ m).sum()) for k, m in sp.masks().items()) > 0
    assert _pruned_energy(sp) == 0.0
    assert all(torch.equal(m, sp.masks("momentum")[k]) for k, m in sp.masks().items())
    # kept positions: the EMA of the online weights, exactly as solo-learn's update computes it
    prev = {k: w.clone() for k, w in sp.weights("momentum").items()}
    train(host, on, mo, opt, 1, seed=7)
    for k, w in sp.weights("momentum").items():
        kept = sp.masks()[k]
        assert torch.allclose(w[kept], (0.9 * prev[k] + 0.1 * sp.weights()[k])[kept], atol=1e-6)
    assert float((on.layer1[0].weight != 0).float().mean()) == 1.0   # the online stored weights stay dense


def test_a_checkpoint_says_which_encoders_keep_dense_stored_weights():
    """The GPU check's leak count asks the contract (stored_dense_encoders of the saved state): SDCLR's online
    encoder keeps dense stored weights by design, its momentum encoder and gmp's encoders are hard-masked."""
    p = plugin("sdclr", density=0.2)
    on, mo = pair()
    make_host(p, on, mo)
    assert get_plugin("sdclr").stored_dense_encoders(p.extra_state()) == ("online",)
    g = plugin("gmp", final_density=0.2)
    on, mo = pair()
    make_host(g, on, mo)
    assert get_plugin("gmp").stored_dense_encoders(g.extra_state()) == ()
    assert get_plugin("gmp").stored_dense_encoders({}) == ()                 # checkpoints before the key


def test_sdclr_prunes_by_one_global_threshold_the_stem_included():
    p = plugin("sdclr", density=0.3)
    on, mo = pair()
    with torch.no_grad():
        on.down.weight.mul_(10.0)            # a layer of larger weights keeps more of them under one threshold
    mo.load_state_dict(on.state_dict())
    make_host(p, on, mo)
    sp = p.sparsifier
    assert "backbone.conv1" in [L.name for L in sp]                   # the stem is pruned too
    w, m = sp.weights(), sp.masks()
    kept_min = min(float(w[k][m[k]].abs().min()) for k in w)
    pruned_max = max(float(w[k][~m[k]].abs().max()) for k in w)
    assert kept_min >= pruned_max                                     # one threshold over every layer
    dens = sp.layer_densities()
    assert dens["backbone.down"] > 0.9 and sp.density() == pytest.approx(0.3, abs=2e-3)


def _dense_bns(net):
    return {n: m for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_sdclr_branch_damage_has_batchnorms_of_its_own_outside_the_network():
    p = plugin("sdclr", density=0.2)
    on, _ = pair()
    keys = set(on.state_dict())
    host = make_host(p, on, None)
    assert p.damage == "branch" and p.config.branch_bn == "separate" and p.modules() is p.norms
    assert {k for k in on.state_dict() if not k.endswith("weight_mask")} == keys     # a plain network's keys
    assert {id(q) for g in p.param_groups(0.1) for q in g["params"]} == {id(q) for q in p.norms.parameters()}
    with torch.no_grad():                                  # make the twins distinguishable from the dense BNs
        for t in p.norms.twins.values():
            t.weight.mul_(1.5)
            t.bias.add_(0.2)
    bns = _dense_bns(on)
    stats = {n: (m.running_mean.clone(), int(m.num_batches_tracked), m.running_var.clone()) for n, m in bns.items()}
    # the expected crop-1 network: pruned weights, the twins in place of the dense BNs
    ref = copy.deepcopy(on)
    for mod in ref.modules():
        mod._forward_hooks.clear()
        mod._forward_pre_hooks.clear()
    set_damaged(ref, True)
    ref.bn1 = copy.deepcopy(p.norms.twins["backbone--bn1"])
    ref.layer1[1] = copy.deepcopy(p.norms.twins["backbone--layer1-1"])
    x = torch.randn(4, 3, 8, 8)
    host.on_crop(Branch(crop=1))
    y1 = on(x)
    assert torch.allclose(y1, ref(x), atol=1e-5)
    for n, m in bns.items():                               # the dense BNs' statistics never saw the damaged batch
        assert torch.equal(m.running_mean, stats[n][0]) and int(m.num_batches_tracked) == stats[n][1]
        assert torch.equal(m.running_var, stats[n][2]) and m.momentum == 0.1
    assert all(int(t.num_batches_tracked) == 1 for t in p.norms.twins.values())
    y1.pow(2).sum().backward()
    assert all(m.weight.grad is None or not m.weight.grad.any() for m in bns.values())
    assert all(t.weight.grad is not None and t.weight.grad.abs().sum() > 0 for t in p.norms.twins.values())
    host.on_crop(Branch(crop=0))                           # crop 0: the dense weights and the dense BNs
    dense = copy.deepcopy(ref)
    set_damaged(dense, False)
    dense.bn1, dense.layer1[1] = copy.deepcopy(on.bn1), copy.deepcopy(on.layer1[1])
    for mod in (dense.bn1, dense.layer1[1]):
        mod._forward_hooks.clear()
        mod._forward_pre_hooks.clear()
    assert torch.allclose(on(x), dense(x), atol=1e-5)
    assert all(int(t.num_batches_tracked) == 1 for t in p.norms.twins.values())
    on.zero_grad()                                          # both crops in one graph, one backward (as SimCLR)
    host.on_crop(Branch(crop=0))
    a = on(x)
    host.on_crop(Branch(crop=1))
    (a.sum() + on(x).pow(2).sum()).backward()
    assert all(m.weight.grad is not None for m in bns.values())
    q = plugin("sdclr", density=0.2, branch_bn="shared")
    make_host(q, pair()[0], None)
    assert q.modules() is None and q.param_groups(0.1) == []


def test_sdclr_branch_norms_follow_a_replaced_batchnorm():
    """``sync_batchnorm: True`` replaces the network's BatchNorms after set-up: the twins must still be used."""
    p = plugin("sdclr", density=0.2)
    on, _ = pair()
    host = make_host(p, on, None)
    new = torch.nn.BatchNorm2d(on.bn1.num_features)
    new.load_state_dict(on.bn1.state_dict())
    on.bn1 = new                                             # what convert_sync_batchnorm does to every BN
    before = new.running_mean.clone()
    host.on_crop(Branch(crop=1))
    on(torch.randn(4, 3, 8, 8))
    assert torch.equal(new.running_mean, before) and int(p.norms.twins["backbone--bn1"].num_batches_tracked) == 1


# ------------------------------------------------------------------ GraNet
def test_granet_death_rate_is_cosine_annealed_from_half_to_0005_over_training():
    p = plugin("granet", final_density=0.2, start=1, end=5, every=2)
    assert (p.config.regrow_fraction, p.config.regrow_fraction_final, p.config.regrow_decay) == (0.5, 0.005, "cosine")
    seen = []
    on, mo = pair()
    host = make_host(p, on, mo, total_steps=40, log=lambda m: seen.append(dict(m)))
    assert p.death_rate(0) == 0.5 and p.death_rate(40) == pytest.approx(0.005)
    assert p.death_rate(20) == pytest.approx(0.2525)
    assert p.death_rate(10) == pytest.approx(0.005 + 0.495 * (1 + math.cos(math.pi / 4)) / 2)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 9)
    rates = [m["solo_sparse/regrow/death_rate"] for m in seen if "solo_sparse/regrow/death_rate" in m]
    assert rates == [pytest.approx(p.death_rate(s)) for s in (1, 3, 5, 7, 9)]
    q = plugin("granet", final_density=0.2, regrow_decay="constant", regrow_fraction=0.3)
    make_host(q, *pair(), total_steps=40)
    assert q.death_rate(30) == 0.3


@pytest.mark.slow
def test_granet_prunes_and_regrows_every_delta_t_until_the_end_of_training():
    seen = []
    p = plugin("granet", final_density=0.2, start=1, end=5, every=2)
    on, mo = pair()
    host = make_host(p, on, mo, total_steps=14, log=lambda m: seen.append(dict(m)))
    steps = updates_of(p)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 14)
    assert steps == [1, 3, 5, 7, 9, 11, 13]                # after the schedule's end (5) too
    died = [m["solo_sparse/regrow/died"] for m in seen if "solo_sparse/regrow/died" in m]
    assert all(d > 0 for d in died[-4:])                    # weights still die and regrow after the end ...
    assert p.sparsifier.density() == pytest.approx(0.2, abs=3e-3)   # ... at the final density
    s = plugin("synccp", final_density=0.2, start=1, end=5, every=2)   # SyncCP keeps its own setting
    on2, mo2 = pair()
    host2 = make_host(s, on2, mo2, total_steps=14)
    s_steps = updates_of(s)
    train(host2, on2, mo2, torch.optim.SGD(on2.parameters(), lr=0.05), 14)
    assert s_steps == [1, 3, 5]


def test_granet_gradual_pruning_uses_one_global_magnitude_threshold():
    p = plugin("granet", init_density=1.0, final_density=0.3, start=1, end=1, every=1, regrow_decay="constant",
               regrow_fraction=0.0)
    on, mo = pair()
    with torch.no_grad():
        on.down.weight.mul_(10.0)
    mo.load_state_dict(on.state_dict())
    host = make_host(p, on, mo)
    w0 = {k: v.clone() for k, v in p.sparsifier.weights().items()}
    train(host, on, mo, torch.optim.SGD(on.parameters(), lr=0.0), 1)     # lr 0: the update sees w0
    m = p.sparsifier.masks()
    kept_min = min(float(w0[k][m[k]].abs().min()) for k in w0)
    pruned_max = max(float(w0[k][~m[k]].abs().max()) for k in w0)
    assert kept_min >= pruned_max and p.sparsifier.density() == pytest.approx(0.3, abs=2e-3)
    assert p.sparsifier.layer_densities()["backbone.down"] > 0.9


def test_granet_initial_masks_are_random_erk_and_leave_the_run_random_stream_alone():
    p = plugin("granet", final_density=0.1)
    assert p.config.init_density == 0.5 and p.config.init_masks == "random"
    on, mo = pair(seed=3)
    w0 = {f"backbone.{n}": mod.weight.detach().clone() for n, mod in on.named_modules()
          if isinstance(mod, torch.nn.Conv2d)}
    state = torch.get_rng_state()
    make_host(p, on, mo)
    assert torch.equal(torch.get_rng_state(), state)
    sp = p.sparsifier
    want = erk_densities(sp.shapes(), 0.5)
    for k, d in sp.layer_densities().items():
        assert d == pytest.approx(min(1.0, want[k]), abs=2.0 / sp.shapes()[k].numel())
    w, m = w0, sp.masks()
    top = {k: w[k].abs() >= w[k].abs().flatten().kthvalue(w[k].numel() - int(m[k].sum()) + 1).values
           for k in m if 0 < m[k].float().mean() < 1}
    overlap = sum(int((m[k] & top[k]).sum()) for k in top) / sum(int(m[k].sum()) for k in top)
    assert overlap < 0.8                                    # random, not the largest weights (magnitude: 1.0)
    again = plugin("granet", final_density=0.1)
    make_host(again, *pair(seed=3))
    other = plugin("granet", final_density=0.1)
    make_host(other, *pair(seed=4))
    assert all(torch.equal(v, again.sparsifier.masks()[k]) for k, v in m.items())
    assert any(not torch.equal(v, other.sparsifier.masks()[k]) for k, v in m.items())


@pytest.mark.parametrize("params,match", [
    ({"regrow_fraction_final": 0.6}, r"^solo_sparse.regrow_fraction_final=0.6: must be in \[0, "
                                     r"solo_sparse.regrow_fraction=0.5\]"),
    ({"regrow_fraction_final": 1.0}, r"^solo_sparse.regrow_fraction_final=1.0: must be in \[0.0, 1.0\)"),
    ({"regrow_fraction_final": -0.1}, r"^solo_sparse.regrow_fraction_final=-0.1: must be in \[0.0, 1.0\)"),
    ({"regrow_fraction": 1.0}, r"^solo_sparse.regrow_fraction=1.0: must be in \[0.0, 1.0\)"),
    ({"regrow_decay": "linear"}, r"^solo_sparse.regrow_decay='linear': allowed: cosine, constant"),
    ({"init_masks": "best"}, r"^solo_sparse.init_masks='best': allowed: random, magnitude"),
    ({"init_distribution": "erk", "granularity": "nm"}, r"^solo_sparse.init_distribution='erk': granularity 'nm'"),
    ({"death_rate": 0.5}, r"^solo_sparse.death_rate=0.5: write regrow_fraction"),
])
def test_granet_death_rate_schedule_keys_out_of_range_are_refused(params, match):
    with pytest.raises(ConfigError, match=match) as e:
        plugin("granet", **params)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ SyncCP
def test_momentum_mask_own_is_recomputed_so_a_dropped_weight_can_return():
    p = plugin("synccp", final_density=0.2, density_gap=0.3, start=1, end=8, every=1, distribution="uniform",
               momentum_mask="own")
    on, mo = pair()
    host = make_host(p, on, mo)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 3)
    sp = p.sparsifier
    L = next(L for L in sp if L.name == "backbone.layer1.0")
    dropped = (~L.mask("momentum")).flatten().nonzero()[0, 0]
    with torch.no_grad():                   # its stored weight grows large again (the online encoder regrew it)
        L.momentum.weight.view(-1)[dropped] = 100.0
    train(host, on, mo, opt, 1, seed=3)
    assert bool(L.mask("momentum").flatten()[dropped])      # the top-(d + Δs) of |W_momentum|, recomputed
    assert sp.density("momentum") == pytest.approx(sp.density("online") + 0.3, abs=5e-3)
    x = torch.randn(2, 3, 8, 8)                              # its forward is masked, its stored weights dense
    ref = copy.deepcopy(mo)
    with torch.no_grad():
        for m in ref.modules():
            if hasattr(m, "weight_mask"):
                m.weight.mul_(m.weight_mask)
    set_damaged(ref, False)
    assert torch.allclose(mo(x), ref(x), atol=1e-5)


def test_nm_start_has_30_percent_of_the_groups_nm_by_default():
    p = plugin("synccp", granularity="nm", n=2, m=4, start=1, end=6, every=1)
    assert p.config.init_density == pytest.approx(0.85)
    host = make_host(p, *pair())
    rows = [m.permute(0, 2, 3, 1).reshape(-1, 4) for m in p.sparsifier.masks().values()]
    share = sum(int((r.sum(1) < 4).sum()) for r in rows) / sum(r.shape[0] for r in rows)
    assert share == pytest.approx(0.3, abs=0.01)
    assert plugin("synccp", granularity="nm", n=1, m=4).config.init_density == pytest.approx(1 - 0.3 * 0.75)
    assert plugin("synccp").config.init_density == 0.7
    del host


# ------------------------------------------------------------------ one window
@pytest.mark.parametrize("name,params", [("gmp", {}), ("granet", {}), ("synccp", {}),
                                         ("synccp", {"csi_rule": "resync"}), ("synccp", {"start": 3, "end": 9})])
@pytest.mark.slow
def test_window_overrides_make_every_plugin_prune_over_the_same_steps(name, params):
    cls = get_plugin(name)
    base = {"final_density": 0.2, "every": 3, **params}
    keys = cls.window_overrides("10%", "75%", cls.from_params(base).config)
    p = cls.from_params({**base, **keys})
    on, mo = pair()
    host = make_host(p, on, mo, total_steps=40)
    steps = updates_of(p)
    densities = []
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    for s in range(32):
        train(host, on, mo, opt, 1, seed=s)
        densities.append(p.sparsifier.density())
    window = p.schedule()[:2] if name == "gmp" else p.window()
    assert window == (4, 30)                                  # 10% and 75% of 40 steps
    if name == "gmp":
        steps = [s for s in range(1, 33) if is_update_step(s, *p.schedule())]
    assert [s for s in steps if s <= 30] == [*range(4, 29, 3), 30]   # the same update steps for every plugin
    assert densities[2] == densities[0] > 0.2 + 0.1                    # nothing pruned before step 4 ...
    assert densities[29] == pytest.approx(0.2, abs=3e-3)              # ... the final density at step 30
    assert get_plugin("sdclr").window_overrides("10%", "75%", None) is None              # no window: fixed density

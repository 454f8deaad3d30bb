import copy

import pytest
import torch
from conftest import TinyNet
from helpers import make_host, resume, snapshot, train

from solo_sparse import get_plugin
from solo_sparse.core.config import ConfigError
from solo_sparse.engine.masks import nm_group_mask_is_valid


def plugin(name, **params):
    return get_plugin(name).from_params(params)


def pair(seed=0):
    torch.manual_seed(seed)
    on = TinyNet()
    mo = copy.deepcopy(on)
    for p in mo.parameters():
        p.requires_grad = False
    return on, mo


def run(p, steps, on=None, mo=None, lr=0.05, logs=None, start_seed=0, **host_kw):
    if on is None:
        on, mo = pair()
    host = make_host(p, on, mo, log=(logs.update if logs is not None else None), **host_kw)
    opt = torch.optim.SGD(on.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    for s in range(steps):
        train(host, on, mo, opt, 1, seed=start_seed + s)
    return host, on, mo, opt


@pytest.mark.parametrize("dist", ["uniform", "erk"])
def test_synccp_gap_nested_and_no_leak_at_every_step(dist):
    p = plugin("synccp", final_density=0.2, density_gap=0.3, start=2, end=10, every=2, distribution=dist)
    on, mo = pair()
    host = make_host(p, on, mo)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sp = p.sparsifier
    assert sp.density("online") == pytest.approx(0.7, abs=3e-3) and sp.density("momentum") == 1.0
    for s in range(12):
        train(host, on, mo, opt, 1, seed=s)
        gap = sp.density("momentum") - sp.density("online")
        assert gap == pytest.approx(0.3, abs=5e-3)
        for k, m in sp.masks("online").items():
            assert not (m & ~sp.masks("momentum")[k]).any()           # online mask inside the momentum mask
        assert sp.leaked("online") == 0 and sp.leaked("momentum") == 0
    assert sp.density("online") == pytest.approx(0.2, abs=3e-3)
    assert sp.density("momentum") == pytest.approx(0.5, abs=3e-3)


def test_regrown_weights_start_at_zero_and_are_gradient_chosen():
    logs = {}
    p = plugin("synccp", final_density=0.3, init_density=0.3, start=1, end=1, every=1, regrow_fraction=0.3,
               distribution="uniform")
    on, mo = pair()
    host = make_host(p, on, mo, log=logs.update)
    before = {k: m.clone() for k, m in p.sparsifier.masks().items()}
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 1)
    grown_any = False
    for k, m in p.sparsifier.masks().items():
        grown = m & ~before[k]
        grown_any |= bool(grown.any())
        w = dict(p.sparsifier.weights())[k]
        assert (w[grown] == 0).all()                                  # regrown weights start at zero
    assert grown_any and logs["solo_sparse/regrow/grown"] > 0
    assert "solo_sparse/regrow/oscillation" in logs


def test_csi_arms_on_divergence_then_fires_and_logs_its_scale():
    logs = {}
    p = plugin("synccp", final_density=0.2, density_gap=0.3, every=1, distribution="uniform", csi_warmup=0,
               csi_rule="resync")
    on, mo = pair()
    host, on, mo, opt = run(p, 1, on, mo, logs=logs)
    # copies: the pseudo masks are nested, I = the gap, r = 0 (the literal rule would fire here)
    assert p.trigger_step is None and logs["solo_sparse/csi/I"] == pytest.approx(0.3, abs=1e-3)
    assert logs["solo_sparse/csi/r"] == 0.0 and logs["solo_sparse/csi/gap"] == pytest.approx(0.3)
    with torch.no_grad():                                             # make the encoders disagree
        for m in mo.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn_like(m.weight))
    opt.param_groups[0]["lr"] = 0.0
    train(host, on, mo, opt, 1)
    r = logs["solo_sparse/csi/r"]
    assert p._csi_armed and p.trigger_step is None and r > 0.05
    # I and r are one measurement on two scales: I = gap + 2 r d_online
    assert logs["solo_sparse/csi/I"] == pytest.approx(0.3 + 2 * r * 0.2, abs=2e-3)
    with torch.no_grad():                                             # re-synchronize them
        for a, b in zip(on.modules(), mo.modules()):
            if isinstance(a, torch.nn.Conv2d):
                b.weight.copy_(a.weight)
    train(host, on, mo, opt, 1)
    assert p.trigger_step == 3 and logs["solo_sparse/csi/trigger_step"] == 3


def test_csi_hysteresis_does_not_fire_between_the_thresholds():
    p = plugin("synccp", final_density=0.2, every=1, distribution="uniform", csi_warmup=0, csi_arm=0.3,
               csi_fire=0.01, csi_rule="resync")
    host, on, mo, opt = run(p, 1)
    p._csi_armed = True
    seen = []
    orig = p.indicator
    for r in (0.2, 0.05, 0.02, 0.005):                # inside the band: armed, no trigger; below: fires
        p.indicator = lambda r=r: (0.3, r)
        p.step += 1
        p._csi_momentum()
        seen.append(p.trigger_step)
    p.indicator = orig
    assert seen[:3] == [None, None, None] and seen[3] is not None


def test_csi_literal_rule_is_the_default_fires_at_the_first_check_on_copies_and_keeps_logging():
    logs, seen = {}, []
    p = plugin("synccp", final_density=0.2, every=2, distribution="uniform", csi_warmup=3)
    assert p.config.csi_rule == "literal"
    on, mo = pair()
    host = make_host(p, on, mo, log=lambda m: (logs.update(m), seen.append(dict(m))))
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 2)
    assert p.trigger_step is None and "solo_sparse/csi/I" not in logs          # nothing before the warm-up ends
    train(host, on, mo, opt, 1, seed=2)
    assert p.trigger_step == 3 and logs["solo_sparse/csi/r"] == 0.0            # copies: r = 0, I = Δs at once
    train(host, on, mo, opt, 4, seed=3)
    checks = [m["solo_sparse/csi/r"] for m in seen if "solo_sparse/csi/r" in m]
    assert len(checks) == 3 and p.trigger_step == 3                            # steps 3, 5, 7: still measured


def test_csi_waits_for_its_warmup_and_keeps_the_ramp_length_when_late():
    logs = {}
    p = plugin("synccp", final_density=0.2, every=1, distribution="uniform", csi_warmup=6, csi_rule="literal",
               csi_ramp=10)
    host, on, mo, opt = run(p, 5, logs=logs)
    assert p.trigger_step is None and "solo_sparse/csi/I" not in logs          # no check before the warm-up
    train(host, on, mo, opt, 2, seed=5)
    assert p.trigger_step == 6 and p.window() == (6, 16)                      # the ramp keeps its 10 steps
    # a trigger so late that the ramp would pass the end of training: capped there, with a warning
    q = plugin("synccp", final_density=0.2, every=1, distribution="uniform", csi_warmup=35, csi_rule="literal",
               csi_ramp=10, csi_timeout=36)
    host, on, mo, opt = run(q, 34)
    with pytest.warns(UserWarning, match="ramp is cut to 5 steps"):
        train(host, on, mo, opt, 1, seed=34)
    assert q.window() == (35, 40)
    train(host, on, mo, opt, 5, seed=36)
    assert q.sparsifier.density("online") == pytest.approx(0.2, abs=3e-3)   # the final density is reached


def test_csi_timeout_starts_the_schedule():
    logs = {}
    p = plugin("synccp", final_density=0.2, every=1, csi_timeout=5, csi_warmup=0, distribution="uniform",
               csi_rule="resync")
    with pytest.warns(UserWarning, match="CSI did not fire by"):
        run(p, 6, logs=logs)
    assert p.trigger_step == 5 and logs["solo_sparse/csi/timed_out"] == 1.0


def test_csi_shared_encoder_compares_consecutive_epochs():
    logs = {}
    p = plugin("synccp", final_density=0.2, every=1, distribution="uniform", csi_tau=0.1, csi_warmup=0)
    on, _ = pair()
    host = make_host(p, on, None, log=logs.update)
    opt = torch.optim.SGD(on.parameters(), lr=0.0)
    host.on_epoch_end(0)
    assert p.trigger_step is None                                     # first epoch: nothing to compare
    train(host, on, None, opt, 2)
    host.on_epoch_end(1)                                              # frozen weights: I = 0 < tau
    assert p.trigger_step == 2 and logs["solo_sparse/csi/I"] == 0.0


def _nm_share(mask, m=4):
    """Share of N:M groups (rows of m input channels with fewer than m kept)."""
    rows = mask.permute(0, 2, 3, 1).reshape(-1, m)
    return float((rows.sum(1) < m).float().mean())


def test_synccp_nm_gap_is_in_units_of_groups():
    # the paper's 2:4 setting: 30% of the online groups N:M at the start, 0% of the momentum ones, Δs = 30%
    p = plugin("synccp", granularity="nm", n=2, m=4, init_density=0.85, density_gap=0.3, start=1, end=6, every=1)
    host, on, mo, opt = run(p, 1)
    share = lambda enc: sum(_nm_share(m) * m.numel() for m in p.sparsifier.masks(enc).values()) / sum(  # noqa: E731
        m.numel() for m in p.sparsifier.masks(enc).values())
    assert share("online") == pytest.approx(0.3, abs=0.01) and share("momentum") == pytest.approx(0.0, abs=0.01)
    train(host, on, mo, opt, 2, seed=3)
    for m in p.sparsifier.masks().values():
        assert nm_group_mask_is_valid(m, 2, 4).all()
    train(host, on, mo, opt, 5, seed=10)
    for m in p.sparsifier.masks().values():
        assert (m.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2).all()      # online: every group 2:4
    assert share("momentum") == pytest.approx(0.7, abs=0.01)                  # momentum: 70% of its groups
    assert p.sparsifier.density("momentum") == pytest.approx(0.65, abs=5e-3)  # = density 1 - 0.7 * 0.5


def test_synccp_blocks():
    p = plugin("synccp", granularity="block", block=[8, 8], final_density=0.25, density_gap=0.25, start=1, end=4,
               every=1, distribution="uniform")
    run(p, 5)
    for m in p.sparsifier.masks().values():
        o, i = m.shape[:2]
        per = m.reshape(o // 8, 8, i // 8, 8, -1).float().mean(dim=(1, 3, 4))
        assert set(per.unique().tolist()) <= {0.0, 1.0}
    assert p.sparsifier.density() == pytest.approx(0.25, abs=0.02)


def test_granet_independent_schedules_instant_gradient():
    p = plugin("granet", final_density=0.2, momentum_final_density=0.4, start=1, end=6, every=1,
               distribution="uniform")
    run(p, 7)
    assert p.scores.ema is None
    assert p.sparsifier.density("online") == pytest.approx(0.2, abs=3e-3)
    assert p.sparsifier.density("momentum") == pytest.approx(0.4, abs=3e-3)
    assert p.sparsifier.leaked("momentum") == 0


def test_sdclr_soft_masks_rederived_each_epoch():
    p = plugin("sdclr", density=0.2)
    on, mo = pair()
    host = make_host(p, on, mo)
    sp = p.sparsifier
    assert sp.density("online") == pytest.approx(0.2, abs=3e-3)
    assert all(torch.equal(m, sp.masks("momentum")[k]) for k, m in sp.masks().items())   # the momentum copy too
    assert float((on.layer1[0].weight != 0).float().mean()) == 1.0   # stored weights stay dense
    x = torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(on)
    with torch.no_grad():
        for m in ref.modules():
            if hasattr(m, "weight_mask"):
                m.weight.mul_(m.weight_mask)
    assert torch.allclose(on(x), ref(x), atol=1e-6)                  # ... but the forward is masked
    before = {k: v.clone() for k, v in sp.masks().items()}
    opt = torch.optim.SGD(on.parameters(), lr=0.5, momentum=0.9)
    train(host, on, mo, opt, 5)
    host.on_epoch_start(1)
    changed = sum(int((before[k] ^ v).sum()) for k, v in sp.masks().items())
    assert changed > 0 and sp.density() == pytest.approx(0.2, abs=3e-3)


def test_sdclr_on_a_shared_encoder_damages_crop_1_only():
    from solo_sparse.core.plugin import Branch

    p = plugin("sdclr", density=0.2)
    on, _ = pair()
    host = make_host(p, on, None)
    assert p.config.damage == "branch" and not p.branch_independent
    from solo_sparse.engine.sparsifier import set_damaged

    dense = copy.deepcopy(on)                                  # the same weights, no mask
    set_damaged(dense, False)
    pruned = copy.deepcopy(on)
    set_damaged(pruned, False)
    with torch.no_grad():
        for m in pruned.modules():
            if hasattr(m, "weight_mask"):
                m.weight.mul_(m.weight_mask)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        host.on_crop(Branch(crop=0))
        y0 = on(x)
        host.on_crop(Branch(crop=1))
        y1 = on(x)
        host.on_crop(Branch(crop=0, phase="eval"))
        ye = on(x)
    assert torch.equal(y0, dense(x)) and torch.equal(ye, dense(x))      # crop 0 and evaluation: dense weights
    assert torch.allclose(y1, pruned(x), atol=1e-6) and not torch.allclose(y1, y0)   # crop 1: weight * mask
    # the branches differ by exactly the mask: gradients of crop 1 never reach pruned positions
    on.zero_grad()
    host.on_crop(Branch(crop=1))
    on(x).pow(2).sum().backward()
    for m in on.modules():
        if hasattr(m, "weight_mask"):
            assert (m.weight.grad[~m.weight_mask] == 0).all()
    assert float((on.layer1[0].weight != 0).float().mean()) == 1.0     # stored weights stay dense
    from solo_sparse import get_plugin as gp

    assert not gp("sdclr").evaluates_masked({"damage": "branch"}) and gp("sdclr").evaluates_masked({"damage": "online"})


def test_sdclr_damage_momentum_needs_a_momentum_encoder():
    on, _ = pair()
    with pytest.raises(ConfigError, match="damage=momentum but method 'toy' has no momentum encoder"):
        make_host(plugin("sdclr", damage="momentum"), on, None)
    on, mo = pair()
    p = plugin("sdclr", damage="momentum", density=0.3)
    make_host(p, on, mo)
    assert p.sparsifier.density("online") == 1.0 and p.sparsifier.density("momentum") == pytest.approx(0.3, abs=3e-3)


def test_score_ema_spike_decays_with_the_half_life_the_key_implies():
    from solo_sparse.engine.scores import GradientScore

    class L:  # one "layer" whose gradient we set by hand
        name = "w"

        def __init__(self):
            self.online = torch.nn.Linear(1, 1, bias=False)

    layer = L()
    sc = GradientScore([layer], ema=0.1)
    grads = [0.0] * 3 + [1.0] + [0.0] * 20
    for g in grads:
        layer.online.weight.grad = torch.full((1, 1), g)
        sc.update()
    # a spike of 1 seen k steps ago weighs 0.1 * 0.9^k: half of its first value after ln 2 / -ln 0.9 = 6.6 steps
    s_after = [0.1 * 0.9 ** k for k in range(21)]
    assert float(sc.scores["w"]) == pytest.approx(s_after[20], rel=1e-5)
    half = next(k for k, v in enumerate(s_after) if v <= s_after[0] / 2)
    assert half == 7
    inst = GradientScore([layer], ema=1.0)                   # 1.0 is the instant gradient
    for g in (5.0, 2.0):
        layer.online.weight.grad = torch.full((1, 1), g)
        inst.update()
    assert float(inst.scores["w"]) == 2.0


def test_momentum_mask_own_is_its_own_magnitude_mask():
    p = plugin("synccp", final_density=0.2, density_gap=0.3, start=1, end=6, every=1, distribution="uniform",
               momentum_mask="own")
    host, on, mo, opt = run(p, 8)
    sp = p.sparsifier
    assert sp.density("momentum") == pytest.approx(0.5, abs=5e-3)
    assert sp.leaked("momentum") == 0
    # not forced to contain the online mask: with separately trained encoders the two disagree somewhere
    outside = sum(int((m & ~sp.masks("momentum")[k]).sum()) for k, m in sp.masks("online").items())
    nested = plugin("synccp", final_density=0.2, density_gap=0.3, start=1, end=6, every=1, distribution="uniform")
    run(nested, 8)
    assert outside > 0
    assert sum(int((m & ~nested.sparsifier.masks("momentum")[k]).sum())
               for k, m in nested.sparsifier.masks("online").items()) == 0


def test_synccp_defaults_on_a_shared_encoder_start_at_the_first_check_after_the_warmup():
    logs = {}
    p = plugin("synccp", every=3, csi_warmup=4)                      # csi_tau unset: no pair to synchronise
    on, _ = pair()
    host = make_host(p, on, None, log=logs.update)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, None, opt, 3)
    assert p.trigger_step is None
    train(host, on, None, opt, 1, seed=3)
    assert p.trigger_step == 4 and logs["solo_sparse/csi/trigger_step"] == 4
    assert p.sparsifier.density() == pytest.approx(0.7, abs=3e-3)   # the ramp starts from init_density


def test_momentum_mask_own_is_refused_on_a_shared_encoder():
    on, _ = pair()
    with pytest.raises(ConfigError, match=r"^solo_sparse.momentum_mask='own': needs a momentum encoder and 'toy' "
                                          r"has none; allowed there: nested"):
        make_host(plugin("synccp", momentum_mask="own"), on, None)


def test_csi_warmup_or_ramp_longer_than_training_is_refused():
    on, mo = pair()
    with pytest.raises(ConfigError, match=r"csi_warmup=50 is step 50, at or after the last training step \(40\)"):
        make_host(plugin("synccp", csi_warmup=50), on, mo)
    on, mo = pair()
    with pytest.raises(ConfigError, match=r"csi_ramp=60 is 60 steps, longer than training \(40\)"):
        make_host(plugin("synccp", csi_ramp=60), on, mo)


def test_synccp_resume_is_exact():
    def fresh():
        return plugin("synccp", final_density=0.2, start=2, end=10, every=2, distribution="uniform")

    on, mo = pair()
    p = fresh()
    host = make_host(p, on, mo)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    for s in range(10):
        train(host, on, mo, opt, 1, seed=s)
    on2, mo2 = pair()
    q = fresh()
    h2 = make_host(q, on2, mo2)
    opt2 = torch.optim.SGD(on2.parameters(), lr=0.05, momentum=0.9)
    for s in range(5):
        train(h2, on2, mo2, opt2, 1, seed=s)
    saved = snapshot(on2, mo2, opt2, h2)
    on3, mo3 = pair(seed=9)
    r = fresh()
    h3, opt3 = resume(r, on3, mo3, saved)
    for s in range(5, 10):
        train(h3, on3, mo3, opt3, 1, seed=s)
    for a, b in zip(list(on.state_dict().values()) + list(mo.state_dict().values()),
                    list(on3.state_dict().values()) + list(mo3.state_dict().values())):
        assert torch.equal(a, b)
    for k in p.scores.scores:
        assert torch.equal(p.scores.scores[k], r.scores.scores[k])


@pytest.mark.parametrize("params,match", [
    ({"density_gap": -0.1}, r"solo_sparse.density_gap=-0.1: must be a number in \[0, 1\]"),
    ({"final_density": 0.8, "init_density": 0.9}, r"final_density \+ solo_sparse.density_gap = 0.8 \+ 0.3 > 1"),
    ({"csi_tau": 1.0}, r"solo_sparse.csi_tau=1.0: must be in \(0.0, 1.0\)"),
    ({"csi_tau": 0}, r"csi_tau=0: must be in \(0.0, 1.0\)"),
    ({"score_momentum": 0.1}, r"score_momentum=0.1: removed: .*Write score_ema.*score_ema: 1 - m"),
    ({"csi_tolerance": 0.02}, r"csi_tolerance=0.02: removed: .*csi_arm, csi_fire"),
    ({"score_ema": 0.0}, r"score_ema=0.0: must be in \(0.0, 1.0\]"),
    ({"score_ema": 1.5}, r"score_ema=1.5: must be in \(0.0, 1.0\]"),
    ({"momentum_mask": "shared"}, r"momentum_mask='shared': allowed: nested, own"),
    ({"csi_rule": "sometimes"}, r"csi_rule='sometimes': allowed: literal, resync"),
    ({"csi_arm": 0.02, "csi_fire": 0.05, "csi_rule": "resync"}, r"csi_fire=0.05: must be below solo_sparse.csi_arm"),
    ({"csi_ramp": 0}, r"csi_ramp='0': must be > 0"),
    ({"csi_warmup": "soon"}, r"solo_sparse.csi_warmup='soon'"),
    ({"start": "soon"}, r"solo_sparse.start='soon': expected 'csi'"),
])
def test_synccp_bad_config(params, match):
    with pytest.raises(ConfigError, match=match):
        plugin("synccp", **params)


def test_nm_indivisible_layer_error_or_skip():
    class Odd(TinyNet):
        def __init__(self):
            super().__init__()
            self.layer1[0] = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
            self.layer1[3] = torch.nn.Conv2d(32, 32, 3, padding=1, bias=False)
            self.down = torch.nn.Conv2d(32, 64, 1, bias=False)
            self.mid = torch.nn.Conv2d(6, 6, 1)

    with pytest.raises(ConfigError, match=r"layer 'backbone.mid' has 6 input channels .* m=4"):
        make_host(plugin("synccp", granularity="nm", csi_tau=0.1), Odd(), None)
    with pytest.warns(UserWarning, match="backbone.mid"):
        p = plugin("synccp", granularity="nm", on_indivisible="skip", csi_tau=0.1)
        make_host(p, Odd(), None)
    assert p.sparsifier.skipped == ["backbone.mid"]


@pytest.mark.parametrize("params,match", [
    ({"init_density": 0.05}, r"init_density=0.05 < solo_sparse.final_density=0.1"),
    ({"momentum_init_density": 0.3}, r"momentum_init_density=0.3 < solo_sparse.momentum_final_density=0.4"),
    ({"granularity": "nm", "momentum_final_density": 0.3}, r"momentum_final_density=0.3: granularity 'nm' cannot go below"),
    ({"granularity": "nm", "final_density": 0.6}, r"final_density=0.6: granularity 'nm' ends at n/m"),
    ({"start": "csi"}, r"solo_sparse.start='csi': this plugin needs an explicit start"),
])
def test_granet_bad_config(params, match):
    with pytest.raises(ConfigError, match=match):
        plugin("granet", **params)


def test_csi_curve_is_read_from_the_run_log_and_drawn(tmp_path, capsys):
    from solo_sparse.tools.report import plot_csi, read_csi

    p = plugin("synccp", final_density=0.2, every=1, distribution="uniform", csi_warmup=0, csi_rule="literal")
    run(p, 2)
    (tmp_path / "train.log").write_text("noise\n" + capsys.readouterr().err)   # what the runner keeps
    curve = read_csi(tmp_path)
    # the check at step 1 fires; the one at step 2 is still measured (after the trigger)
    assert curve["steps"] == [1, 2] and curve["I"][0] == pytest.approx(0.3, abs=1e-3) and curve["r"][0] == 0.0
    assert curve["gap"] == pytest.approx(0.3) and curve["trigger_step"] == 1 and not curve["timed_out"]
    png = plot_csi(curve, tmp_path / "csi.png", "test")
    assert png.exists() and png.stat().st_size > 1000
    assert read_csi(tmp_path / "nothing-here") == {}


def test_csi_curve_prefers_every_check_and_a_restarted_run_is_not_doubled(tmp_path):
    """Lightning's CSV logger keeps one CSI point per log_every_n_steps; the reports on stderr have every
    check. A run killed and restarted in the same folder leaves two metrics.csv with the same steps."""
    import os

    from solo_sparse.core import events
    from solo_sparse.tools.report import read_csi, read_metrics

    header = "epoch,step,solo_sparse/csi/I,solo_sparse/csi/r\n"
    for i, v in enumerate(("0.5", "0.3")):                       # version_0: the killed attempt
        d = tmp_path / "lightning_logs" / f"version_{i}"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(header + f"2,99,{v},0.0\n")
        os.utime(d / "metrics.csv", (1000 + i, 1000 + i))
    assert read_metrics(tmp_path)["solo_sparse/csi/I"] == [(99, 0.3)]   # the newest file wins
    lines = [events.line("synccp", "csi", s, I=0.3, r=0.0, gap=0.3, note=" (rule resync: ...)") for s in (39, 59, 79, 99)]
    lines.append(events.line("synccp", "schedule_start", 117, cause="csi_timeout reached", note="; cubic ramp ..."))
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    curve = read_csi(tmp_path)
    assert curve["steps"] == [39, 59, 79, 99] and curve["r"] == [0.0] * 4
    assert curve["trigger_step"] == 117 and curve["timed_out"]

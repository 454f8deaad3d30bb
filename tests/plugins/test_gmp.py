import copy

import pytest
import torch
from helpers import make_host, resume, snapshot, train

from solo_sparse import get_plugin
from solo_sparse.core.config import ConfigError
from solo_sparse.engine.masks import nm_group_mask_is_valid
from solo_sparse.engine.schedule import cubic_density


def gmp(**params):
    return get_plugin("gmp").from_params(params)


def test_schedule_followed_and_masks_shared(tiny_pair):
    online, momentum = tiny_pair
    p = gmp(final_density=0.2, start=2, end=10, every=2)
    host = make_host(p, online, momentum)
    opt = torch.optim.SGD(online.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sp = p.sparsifier
    prev = None
    for step in range(1, 13):
        train(host, online, momentum, opt, 1, seed=step)
        assert p.step == step
        masks = {k: v.clone() for k, v in sp.masks("online").items()}
        # density follows the cubic schedule at update steps (exact up to per-layer rounding)
        last_update = max([t for t in (2, 4, 6, 8, 10) if t <= step], default=0)
        want = cubic_density(last_update, 2, 10, 1.0, 0.2)
        assert sp.density("online") == pytest.approx(want, abs=2e-3)
        # online and momentum masks equal; nothing pruned is non-zero in either encoder
        for k, m in sp.masks("momentum").items():
            assert torch.equal(m, masks[k])
        assert sp.leaked("online") == 0 and sp.leaked("momentum") == 0
        # monotone: a pruned weight never comes back
        if prev is not None:
            for k in masks:
                assert not (masks[k] & ~prev[k]).any()
        prev = masks
    assert sp.density("online") == pytest.approx(0.2, abs=2e-3)


def test_magnitude_criterion(tiny_pair):
    online, momentum = tiny_pair
    p = gmp(final_density=0.5, start=1, end=1, every=1)
    host = make_host(p, online, momentum)
    opt = torch.optim.SGD(online.parameters(), lr=0.0)  # weights frozen: masks must be |w|-top-k
    before = {k: w.clone() for k, w in p.sparsifier.weights().items()}
    train(host, online, momentum, opt, 1)
    for k, m in p.sparsifier.masks().items():
        w = before[k].abs()
        assert w[m].min() >= w[~m].max()


def test_init_density_applied_at_construction(tiny_pair):
    online, momentum = tiny_pair
    p = gmp(init_density=0.6, final_density=0.3)
    make_host(p, online, momentum)
    assert p.sparsifier.density("online") == pytest.approx(0.6, abs=2e-3)
    assert p.sparsifier.density("momentum") == pytest.approx(0.6, abs=2e-3)
    assert p.sparsifier.leaked("momentum") == 0


def test_nm_ramp_ends_all_groups_nm(tiny_pair):
    online, momentum = tiny_pair
    p = gmp(granularity="nm", n=2, m=4, start=1, end=4, every=1)
    host = make_host(p, online, momentum)
    opt = torch.optim.SGD(online.parameters(), lr=0.01, momentum=0.9)
    train(host, online, momentum, opt, 2)
    mid = p.sparsifier.density()
    assert 0.5 < mid < 1.0
    for m in p.sparsifier.masks().values():
        assert nm_group_mask_is_valid(m, 2, 4).all()
    train(host, online, momentum, opt, 3)
    for m in p.sparsifier.masks().values():
        assert (m.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2).all()


def test_shared_encoder_method_without_momentum(tiny_pair):
    online, _ = tiny_pair
    p = gmp(final_density=0.5, start=0, end=2, every=1)
    host = make_host(p, online, None)
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    train(host, online, None, opt, 3)
    assert p.sparsifier.density() == pytest.approx(0.5, abs=2e-3)
    assert "density/momentum" not in p.density_metrics()


def test_state_roundtrip_and_resume_equivalence(tiny_pair):
    online, momentum = tiny_pair
    on2, mo2 = copy.deepcopy(online), copy.deepcopy(momentum)
    # uninterrupted run
    p = gmp(final_density=0.3, start=1, end=8, every=1)
    host = make_host(p, online, momentum)
    opt = torch.optim.SGD(online.parameters(), lr=0.05, momentum=0.9)
    for s in range(8):
        train(host, online, momentum, opt, 1, seed=s)
    # interrupted after 4 steps: save module + optimizer + plugin state, rebuild, load, continue
    q = gmp(final_density=0.3, start=1, end=8, every=1)
    h2 = make_host(q, on2, mo2)
    opt2 = torch.optim.SGD(on2.parameters(), lr=0.05, momentum=0.9)
    for s in range(4):
        train(h2, on2, mo2, opt2, 1, seed=s)
    saved = snapshot(on2, mo2, opt2, h2)
    torch.manual_seed(123)
    on3 = type(on2)()
    mo3 = copy.deepcopy(on3)
    r = gmp(final_density=0.3, start=1, end=8, every=1)
    h3, opt3 = resume(r, on3, mo3, saved)
    assert r.step == 4
    for s in range(4, 8):
        train(h3, on3, mo3, opt3, 1, seed=s)
    for (k, a), b in zip(online.state_dict().items(), on3.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(momentum.state_dict().items(), mo3.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_with_other_config_refused(tiny_pair):
    online, momentum = tiny_pair
    h = make_host(gmp(final_density=0.3), online, momentum)
    state = h.state_dict()
    h2 = make_host(gmp(final_density=0.2), copy.deepcopy(type(online)()), None)
    with pytest.raises(ConfigError, match="final_density: saved 0.3, now 0.2"):
        h2.load_state_dict(state)


@pytest.mark.parametrize("params,match", [
    ({"final_density": 1.5}, r"solo_sparse.final_density=1.5: must be in \(0, 1\]"),
    ({"final_density": 0}, r"final_density=0.0: must be in \(0, 1\]"),
    ({"init_density": 0.3, "final_density": 0.5}, "init_density must be >= final_density"),
    ({"granularity": "nm", "n": 4, "m": 2}, "N:M needs n <= m"),
    ({"granularity": "nm", "final_density": 0.1}, "ends at n/m"),
    ({"granularity": "nm", "distribution": "erk"}, "only 'uniform'"),
    ({"granularity": "diagonal"}, "allowed: element, nm, block, channel"),
    ({"distribution": "random"}, "allowed: uniform, global, erk"),
    ({"block": [8]}, r"solo_sparse.block=\[8\]: expected \[K, C\]"),
    ({"start": "10ep", "end": "2ep"}, "before solo_sparse.start"),
    ({"final_densty": 0.1}, r"unknown key final_densty for plugin 'gmp'; valid keys: .*final_density"),
    ({"include": ["head"]}, "allowed: backbone, projector, predictor"),
])
def test_bad_config_is_refused_with_key_and_allowed(params, match):
    with pytest.raises(ConfigError, match=match):
        gmp(**params)


def test_unknown_plugin_lists_available():
    with pytest.raises(ConfigError, match=r"unknown plugin \(did you mean 'gmp'\?\); available: .*gmp"):
        get_plugin("gmpp")


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3),
], ids=["sgd-nesterov", "adamw", "adam-l2"])
def test_no_leak_without_per_step_weight_masking(tiny_pair, make_opt):
    """Weights are only re-masked when masks change: masked gradients + zeroed state must keep pruned weights at 0."""
    online, momentum = tiny_pair
    p = gmp(final_density=0.3, start=0, end=3, every=1)
    host = make_host(p, online, momentum)
    opt = make_opt(online.parameters())
    for s in range(10):
        train(host, online, momentum, opt, 1, seed=s)
        assert p.sparsifier.leaked("online") == 0 and p.sparsifier.leaked("momentum") == 0, s

"""CDG / CGNet / FBS channel gating: engine equations, base paths, branches, FLOPs, plugins."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from solo_sparse.core.config import ConfigError
from solo_sparse.core.plugin import Branch, ModelView, ModuleGroup, PluginHost
from solo_sparse.gating import fbs as fbs_gates
from solo_sparse.gating.cgnet import (
    CGNetConv2d,
    _GateMix,
    base_assignment,
    convert_resnet,
    normalise,
    smooth_step,
    target_threshold,
)
from solo_sparse.gating.channel import gated_convs, mask_similarity, measure, reduction_eq13, set_branch, set_recording
from solo_sparse_plugins.cdg import CDG
from solo_sparse_plugins.cgnet import CGNet
from solo_sparse_plugins.fbs import FBS


def resnet(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)()


def one_conv(unified=False, groups=4, cg=1, tau=0.0, cin=16, cout=16, norm="channel"):
    torch.manual_seed(0)
    blk = torchvision.models.resnet.BasicBlock(cin, cout)
    net = nn.Sequential()
    conv = blk.conv1
    conv.__class__ = CGNetConv2d
    conv._gate_init(groups, cg, 2.0, tau, unified, norm)
    return conv, net


def test_base_paths_are_disjoint_unbiased_permutations():
    for G in (1, 2, 3, 4, 5, 8):
        a1, a2 = base_assignment(G, "a1"), base_assignment(G, "a2")
        assert sorted(a1) == sorted(a2) == list(range(G))          # unbiased: every input group once
        if G > 1:
            assert all(x != y for x, y in zip(a1, a2))              # disjoint (o, b(o)) blocks
    assert base_assignment(4, "a2") == [3, 2, 1, 0]                 # the seed's inverse diagonal
    assert base_assignment(3, "a2") == [1, 2, 0]


@pytest.mark.parametrize("norm", ["channel", "sample"])
@pytest.mark.parametrize("branch", ["a1", "a2"])
def test_gated_conv_equals_base_plus_masked_conditional_path(branch, norm):
    conv, _ = one_conv(tau=0.3, norm=norm)
    conv.ss_branch = branch
    x = torch.randn(3, 16, 6, 6)
    a = base_assignment(4, branch)
    W = conv.weight.detach()
    Wb = torch.zeros_like(W)
    for o in range(4):
        Wb[o * 4:(o + 1) * 4, a[o] * 4:(a[o] + 1) * 4] = W[o * 4:(o + 1) * 4, a[o] * 4:(a[o] + 1) * 4]
    yb = F.conv2d(x, Wb, padding=1)
    yf = F.conv2d(x, W, padding=1)
    m = ((normalise(yb, norm) - 0.3) > 0).float()
    ref = yb + m * (yf - yb)
    with torch.no_grad():
        assert torch.allclose(conv(x), ref, atol=1e-5)
    # all open -> the dense conv; all closed -> the base path only
    conv.tau.data.fill_(-1e4)
    assert torch.allclose(conv(x), yf, atol=1e-5)
    conv.tau.data.fill_(1e4)
    assert torch.allclose(conv(x), yb, atol=1e-5)


@pytest.mark.parametrize("norm", ["channel", "sample"])
@pytest.mark.parametrize("scaled", [False, True])
def test_fused_gate_matches_composition_in_value_and_gradient(norm, scaled):
    torch.manual_seed(1)
    full, base = (torch.randn(3, 8, 4, 4, dtype=torch.double, requires_grad=True) for _ in range(2))
    tau = torch.randn(8, dtype=torch.double, requires_grad=True)
    scale = (torch.rand(8, dtype=torch.double) + 0.1).requires_grad_() if scaled else None
    leaves = (full, base, tau) + ((scale,) if scaled else ())
    w = torch.randn(3, 8, 4, 4, dtype=torch.double)
    out, m = _GateMix.apply(full, base, normalise(base, norm), tau, scale, 2.0)
    (out * w).sum().backward()
    g = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    m2 = smooth_step(normalise(base, norm) - tau[None, :, None, None], 2.0)
    ms = m2 * scale[None, :, None, None] if scaled else m2
    (((base + ms * (full - base))) * w).sum().backward()
    assert torch.equal(m, m2)
    for a, t in zip(g, leaves):
        assert torch.allclose(a, t.grad, atol=1e-10)
    assert g[2].abs().sum() > 0                                     # the threshold learns
    if scaled:
        assert g[3].abs().sum() > 0                                 # and so does the scale


def test_straight_through_gradient_is_the_alpha_sigmoid():
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    m = smooth_step(z, 3.0)
    assert m.tolist() == [0.0, 0.0, 1.0]
    m.sum().backward()
    s = torch.sigmoid(3 * z.detach())
    assert torch.allclose(z.grad, 3 * s * (1 - s))


def test_normalisations_per_channel_and_per_sample():
    y = torch.randn(4, 16, 5, 5) * torch.tensor([1.0, 10.0, 100.0, 1000.0])[:, None, None, None]
    n = normalise(y, "channel")                                     # CGNet's instance norm over (H, W)
    assert torch.allclose(n.mean((2, 3)), torch.zeros(4, 16), atol=1e-5)
    assert torch.allclose(n.var((2, 3), unbiased=False), torch.ones(4, 16), atol=1e-3)
    n = normalise(y, "sample")                                      # per sample over (C, H, W)
    assert torch.allclose(n.mean((1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(n.var((1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    # on a 1x1 map the per-channel statistic is degenerate: every value normalises to 0
    assert torch.equal(normalise(torch.randn(2, 8, 1, 1), "channel"), torch.zeros(2, 8, 1, 1))
    # a sample's mask does not depend on the other samples in the batch (the two views never mix)
    conv, _ = one_conv()
    conv.ss_record = True
    x = torch.randn(4, 16, 5, 5)
    with torch.no_grad():
        conv(x)
        m_all = conv._ss_last["a1"][:1].clone()
        conv(x[:1] * 1.0)
        assert torch.equal(conv._ss_last["a1"], m_all)


def test_target_threshold_gives_the_target_sparsity():
    assert abs(target_threshold(0.5)) < 1e-6
    assert abs(target_threshold(0.75) - 0.6745) < 1e-3
    net = resnet()
    convert_resnet(net, groups=4, init_tau=target_threshold(0.75))
    r = measure(net, torch.randn(32, 3, 64, 64))                   # 64 px: layer4 keeps 2x2 maps
    assert 0.68 < r["mean_sparsity"] < 0.82, r["mean_sparsity"]


def test_structured_masks_are_constant_over_channel_groups():
    conv, _ = one_conv(cg=4, tau=0.2)
    conv.ss_record = True
    with torch.no_grad():
        conv(torch.randn(2, 16, 5, 5))
    m = conv._ss_last["a1"].view(2, 4, 4, 5, 5)
    assert torch.equal(m, m[:, :, :1].expand_as(m))
    assert 0 < m.float().mean() < 1


def test_conversion_keeps_names_dense_output_and_default_convs():
    net, ref = resnet(), resnet()
    convert_resnet(net, groups=4, init_tau=-1e4)
    names = [n for n, _ in gated_convs(net)]
    assert names[:2] == ["layer1.0.conv1", "layer1.0.conv2"] and len(names) == 16
    assert "conv1" not in names and not any("downsample" in n for n in names)
    assert set(ref.state_dict()) <= set(net.state_dict())
    assert {k for k in net.state_dict() if k not in ref.state_dict()} == {f"{n}.tau" for n in names}
    net.eval(), ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-4)
    r50 = resnet("resnet50")
    convert_resnet(r50, groups=2)
    assert all(c.kernel_size == (3, 3) for _, c in gated_convs(r50)) and len(gated_convs(r50)) == 16
    r50b = resnet("resnet50")
    convert_resnet(r50b, groups=2, convs="block", stages=(4,))
    assert len(gated_convs(r50b)) == 9


def test_conversion_refusals():
    with pytest.raises(ConfigError, match="groups=3"):
        convert_resnet(resnet(), groups=3)
    with pytest.raises(ConfigError, match="cg=5"):
        convert_resnet(resnet(), groups=4, cg=5)
    with pytest.raises(ConfigError, match="ResNet"):
        convert_resnet(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_flops_eq13_and_exact_count_by_hand():
    assert reduction_eq13(0.0, 4) == 1.0
    assert abs(reduction_eq13(0.72, 4) - 1 / (0.25 + 0.28 * 0.75)) < 1e-12
    conv, _ = one_conv(tau=0.0)
    conv.ss_record = True
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        conv(x)
    st = conv._ss_stats
    m = conv._ss_last["a1"].float()
    dense = 6 * 6 * 16 * 16 * 9
    kept = m.flatten(1).mean(1)
    expect = dense / 4 + 0.75 * dense * kept + 6 * 16 * 36
    assert st["dense"] == dense
    assert torch.allclose(st["cost"], expect)


def test_measure_reports_both_reductions():
    net = resnet()
    convert_resnet(net, groups=4, init_tau=target_threshold(0.75))
    r = measure(net, torch.randn(16, 3, 32, 32), batch_size=8)
    assert r["eq13_reduction"] > 2.0
    assert 1.5 < r["exact_gated_reduction"] < r["eq13_reduction"] + 0.3
    assert 1.0 < r["network_reduction"] < r["exact_gated_reduction"]     # stem + downsample + fc stay dense
    assert set(r["sparsity"]) == {n for n, _ in gated_convs(net)}


def test_measure_leaves_the_callers_routing_as_it_was():
    net = resnet()
    convert_resnet(net, groups=4, init_tau=target_threshold(0.75))
    set_branch(net, "a2", "dense")                     # e.g. a training step's second crop, dense
    net.train()
    measure(net, torch.randn(4, 3, 32, 32), batch_size=4)
    assert all((c.ss_branch, c.ss_mode, c.ss_record) == ("a2", "dense", False) for _, c in gated_convs(net))
    assert net.training


def test_fbs_winner_take_all_and_saliency_in_place_of_gamma():
    net = resnet()
    fbs_gates.convert_resnet(net, density=0.25, init="kaiming")        # distinct saliencies per channel
    set_recording(net, True)
    net.eval()
    blk = net.layer1[0]
    x = torch.randn(3, 64, 8, 8)
    with torch.no_grad():
        pi = blk.conv1.saliency(x)
        assert ((pi > 0).sum(1) <= 16).all()
        y = blk.conv1(x)                                        # the forward stores the kept saliencies
        pi = blk.conv1._ss_pi.clone()
        bn = blk.bn1
        h = blk.conv1.gated_bn(bn, y)
        x_hat = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
        # pi replaces gamma: pi * (x_hat + beta), so a suppressed channel is exactly 0
        assert torch.allclose(h, pi[:, :, None, None] * (x_hat + bn.bias[None, :, None, None]), atol=1e-5)
        assert bool(((h.abs().sum((2, 3)) == 0) == (pi == 0)).all())
        bn.weight.data.mul_(7.0)                                # gamma no longer matters on the gated path
        blk.conv1._ss_pi = pi
        assert torch.allclose(blk.conv1.gated_bn(bn, y), h)
        out = blk(x)
        assert out.shape == x.shape
        # conv2 saw conv1's kept channels: its exact cost scales with both shares
        st = blk.conv2._ss_stats
        assert (st["cost"] < st["dense"] * 0.3).all()


def test_fbs_identity_init_starts_from_the_dense_network():
    """saliency_init "identity" (the default): φ = 0, ρ = 1, so π = 1 = BN's γ at init and the warm-up network is
    exactly the dense one; the "kaiming" init (nn.Linear's φ) is not, and its saliency follows the input's scale."""
    torch.manual_seed(0)
    dense = resnet()
    x = torch.randn(8, 3, 32, 32)
    ref = dense(x)
    for init in ("identity", "kaiming"):
        net = copy.deepcopy(dense)
        fbs_gates.convert_resnet(net, density=0.5, init=init)
        for _, c in gated_convs(net):
            c.ss_wta = False                                  # the plugin's warm-up: every channel kept
        y = net(x)
        assert torch.allclose(y, ref, atol=1e-5) == (init == "identity"), init
        c = net.layer3[1].conv1
        h = torch.rand(4, 256, 4, 4)
        s1, s2 = c.saliency(h), c.saliency(3 * h)
        if init == "identity":                                # a constant 1, whatever the input's scale
            assert torch.equal(s1, torch.ones_like(s1)) and torch.equal(s2, s1)
        else:
            assert not torch.allclose(s1, s2)
    p = FBS.from_params({})
    assert p.config.saliency_init == "identity"
    assert FBS.from_saved({"density": 0.5}).config.saliency_init == "kaiming"   # runs saved before the key
    with pytest.raises(ValueError, match="'zero'"):
        fbs_gates.convert_resnet(resnet(), init="zero")
    with pytest.raises(ConfigError, match=r"solo_sparse\.warmup=0: .*a warm-up > 0 with saliency_init: identity"):
        FBS.from_params({"warmup": 0})
    assert FBS.from_params({"warmup": 0, "saliency_init": "kaiming"}).config.warmup.value == 0


def test_a_run_saved_before_the_fbs_keys_resumes_with_their_legacy_values():
    from solo_sparse.core.config import config_to_state
    from solo_sparse.core.plugin import PluginHost

    old = FBS.from_params({"warmup": 0, "saliency_init": "kaiming"})
    saved = {k: v for k, v in config_to_state(old.config).items() if k not in ("warmup", "saliency_init")}
    state = {"fbs": {"config": saved, "step": 7, "epoch": 1, "extra": {}}}
    host = PluginHost([FBS.from_params({"warmup": 0, "saliency_init": "kaiming"})])
    host.load_state_dict(state)
    assert host.plugins[0].step == 7
    with pytest.raises(ConfigError, match="saliency_init: saved 'kaiming', now 'identity'"):
        PluginHost([FBS.from_params({})]).load_state_dict(state)


# ------------------------------------------------------------------ plugins on the host
def host_for(plugin, momentum=False, crops=2, method="simclr"):
    online = resnet()
    mom = copy.deepcopy(online) if momentum else None
    logs = {}
    view = ModelView({"backbone": ModuleGroup("backbone", online, mom)}, "momentum" if momentum else "shared",
                     method=method, num_large_crops=crops, log=logs.update)
    host = PluginHost([plugin])
    host.setup(view)
    host.set_schedule_info(10, 100)
    host.on_train_start()
    return host, online, mom, logs


def two_view_step(host, online, opt, x, mom=None):
    host.on_step_start()
    zs = []
    for crop in (0, 1):
        host.on_crop(Branch(crop=crop))
        zs.append(online(x[crop]))
    if mom is not None:
        for crop in (0, 1):
            host.on_crop(Branch(crop=crop, encoder="momentum"))
            with torch.no_grad():
                mom(x[crop])
    loss = (zs[0] - zs[1]).pow(2).mean()
    extra = host.extra_loss()
    total = loss + (extra if extra is not None else 0)
    opt.zero_grad()
    total.backward()
    opt.step()
    host.after_optimizer_step(opt)
    return extra


def test_cdg_routes_crops_to_disjoint_branches_and_logs():
    p = CDG.from_params({"target": 0.75, "ramp": 0})
    host, online, _, logs = host_for(p)
    seen = []
    orig = online.layer1[0].conv1.forward

    def spy(x):
        seen.append(online.layer1[0].conv1.ss_branch)
        return orig(x)

    online.layer1[0].conv1.forward = spy
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(2, 4, 3, 32, 32)
    extra = two_view_step(host, online, opt, x)
    assert seen == ["a1", "a2"]
    assert extra is not None and float(extra.detach()) == pytest.approx(0.0, abs=1e-6)   # tau starts at s
    for k in ("sparsity/a1", "sparsity/a2", "flops_reduction_eq13/a1", "flops_reduction_exact/a2",
              "mask_similarity"):
        assert f"solo_sparse/{k}" in logs, k
    assert 0.6 < logs["solo_sparse/sparsity/a1"] < 0.9
    assert 0.0 < logs["solo_sparse/mask_similarity"] < 1.0
    host.on_epoch_end(0)
    assert "solo_sparse/sparsity/a2/layer1.0.conv1" in logs
    assert "solo_sparse/mask_similarity/layer4.1.conv2" in logs
    host.on_crop(Branch(crop=1, phase="eval"))
    assert online.layer1[0].conv1.ss_branch == "a1"                 # inference = a1's path


@pytest.mark.slow
def test_threshold_loss_pulls_tau_to_s():
    p = CDG.from_params({"target": 0.5, "init_threshold": -1.0, "threshold_weight": 1.0, "ramp": 0})
    host, online, _, _ = host_for(p)
    taus = [c.tau for _, c in gated_convs(online)]
    opt = torch.optim.SGD(taus, lr=0.5)
    x = torch.randn(2, 4, 3, 32, 32)
    before = sum(float(torch.linalg.vector_norm(t)) for t in taus)
    l0 = float(two_view_step(host, online, opt, x))
    assert l0 == pytest.approx(before, rel=1e-4)                    # Σ_l ||s - tau_l||_2 with s = 0
    for _ in range(4):
        two_view_step(host, online, opt, x)
    after = sum(float(torch.linalg.vector_norm(t)) for t in taus)
    # each layer's term has a unit-norm gradient: 5 steps at lr 0.5 shrink 16 norms by ~2.5 each
    assert after < before - 30, (before, after)


@pytest.mark.slow
def test_ramp_follows_the_cubic_schedule_and_shifts_both_encoders():
    p = CDG.from_params({"target": 0.75, "ramp": 8, "ramp_from": 0.0, "threshold_weight": 0.0})
    host, online, mom, logs = host_for(p, momentum=True, method="byol")
    # eta(t) = 0.75 - 0.75 (1 - t/8)^3, reached at step 8 and held
    for t, eta in [(0, 0.0), (2, 0.75 - 0.75 * 0.75 ** 3), (4, 0.75 - 0.75 * 0.5 ** 3), (8, 0.75), (20, 0.75)]:
        assert p.target_at(t) == pytest.approx(eta)
    c, m = online.layer3[1].conv2, mom.layer3[1].conv2
    assert float(c.tau[0]) == pytest.approx(target_threshold(0.0))        # tau starts at s(ramp_from)
    with torch.no_grad():
        c.tau[5] += 0.3                                                    # a learned offset is kept
        m.tau[5] += 0.3
    opt = torch.optim.SGD(online.parameters(), lr=0.0)
    x = torch.randn(2, 4, 3, 32, 32)
    sparsity = []
    for step in range(1, 11):
        two_view_step(host, online, opt, x, mom)
        s = target_threshold(p.target_at(step))
        assert float(c.tau[0]) == pytest.approx(s, abs=1e-5)
        assert float(c.tau[5]) == pytest.approx(s + 0.3, abs=1e-5)
        assert torch.allclose(m.tau, c.tau, atol=1e-5)                   # momentum twin shifted too
        sparsity.append(logs["solo_sparse/sparsity/a1"])
    assert logs["solo_sparse/target_sparsity"] == pytest.approx(0.75)
    assert sparsity[0] < 0.5 < 0.6 < sparsity[-1]                          # the gates close along the ramp
    # resume mid-ramp: a fresh plugin on the restored weights continues exactly like the running one
    p = CDG.from_params({"target": 0.75, "ramp": 8, "threshold_weight": 0.0})
    host, online, mom, _ = host_for(p, momentum=True, method="byol")
    for _ in range(3):
        two_view_step(host, online, opt, x, mom)
    p2 = CDG.from_params({"target": 0.75, "ramp": 8, "threshold_weight": 0.0})
    host2, online2, mom2, _ = host_for(p2, momentum=True, method="byol")
    online2.load_state_dict(online.state_dict())
    mom2.load_state_dict(mom.state_dict())
    host2.load_state_dict(host.state_dict())
    assert p2.step == 3 and p2._s_applied == pytest.approx(target_threshold(p.target_at(3)))
    for _ in range(2):
        two_view_step(host, online, opt, x, mom)
        two_view_step(host2, online2, torch.optim.SGD(online2.parameters(), lr=0.0), x, mom2)
    for (_, a), (_, b) in zip(gated_convs(online), gated_convs(online2)):
        assert torch.equal(a.tau, b.tau)


@pytest.mark.slow
def test_ramp_threshold_loss_targets_the_current_s():
    p = CDG.from_params({"target": 0.5, "ramp": "1ep", "threshold_weight": 1.0})   # 10 steps per epoch here
    host, online, _, _ = host_for(p)
    taus = [conv.tau for _, conv in gated_convs(online)]
    with torch.no_grad():
        for t in taus:
            t.add_(0.2)                                                    # 0.2 off the schedule
    opt = torch.optim.SGD(taus, lr=0.0)
    x = torch.randn(2, 2, 3, 32, 32)
    for step in range(12):
        s = target_threshold(p.target_at(step))
        want = sum(float(torch.linalg.vector_norm(s - t.detach())) for t in taus)
        assert float(two_view_step(host, online, opt, x)) == pytest.approx(want, rel=1e-5)
        assert want == pytest.approx(sum(0.2 * math.sqrt(t.numel()) for t in taus), rel=1e-4)


def test_cdg_refuses_a_moco_queue_smaller_than_a_batch():
    online = resnet()
    view = ModelView({"backbone": ModuleGroup("backbone", online, copy.deepcopy(online))}, "momentum",
                     method="mocov2plus", num_large_crops=2, method_kwargs={"queue_size": 64}, batch_size=128)
    with pytest.raises(ConfigError, match=r"queue_size=64 is smaller than one batch \(128\)"):
        PluginHost([CDG.from_params({})]).setup(view)


def test_small_maps_refused_at_1x1_and_warned_at_2x2():
    def view(size):
        return ModelView({"backbone": ModuleGroup("backbone", resnet(), None)}, "shared", method="simclr",
                         num_large_crops=2, input_size=size)

    with pytest.raises(ConfigError, match=r"at 32 px the gated convs of layer4 see 1x1 maps.*norm=sample"):
        PluginHost([CDG.from_params({})]).setup(view(32))
    with pytest.warns(UserWarning, match=r"at 64 px the gated convs of layer4 see 2x2 maps"):
        PluginHost([CDG.from_params({})]).setup(view(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PluginHost([CDG.from_params({"stages": [1, 2]})]).setup(view(64))        # 16x16 and 8x8: no warning
    PluginHost([CDG.from_params({"norm": "sample", "stages": [4]})]).setup(view(32))   # allowed, it warns


def test_momentum_probe_measures_query_key_agreement_and_key_drift(capsys):
    p = CDG.from_params({"stages": [1], "ramp": 0})
    host, online, mom, logs = host_for(p, momentum=True, method="byol")
    p.pairs.probe_every = 1
    opt = torch.optim.SGD(online.parameters(), lr=0.0)
    x = torch.randn(2, 4, 3, 32, 32)
    two_view_step(host, online, opt, x, mom)
    assert logs["solo_sparse/diag/online_momentum_cos"] == pytest.approx(1.0, abs=1e-5)   # twins: same function
    assert "solo_sparse/diag/key_drift_cos" not in logs
    with torch.no_grad():                                         # the momentum encoder drifts away
        for prm in mom.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
    two_view_step(host, online, opt, x, mom)
    assert logs["solo_sparse/diag/online_momentum_cos"] < 0.99 and logs["solo_sparse/diag/key_drift_cos"] < 0.99
    assert online.training and mom.training and "probe 2: online_momentum_cos=" in capsys.readouterr().err


def test_a_non_finite_evaluation_path_is_reported(capsys):
    from solo_sparse.families.gating import PairMonitor

    class P:
        name = "fbs"

        @staticmethod
        def route_eval(net):
            pass

    mon = PairMonitor(P())
    mon.online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1))
    mon.fixed = torch.randn(4, 3, 8, 8)
    a = torch.randn(8, 16)
    for crop, f in ((0, a), (1, a + 0.01)):
        mon.on_crop(crop)
        mon._hook(mon.online, None, f)
    mon.step_end()
    assert mon.epoch_end(0)["diag/shift_sensitivity"] < 0.5 and "non-finite" not in capsys.readouterr().err
    mon.online[1].running_var.fill_(-1.0)                         # eval-mode BN: sqrt of a negative variance
    for crop, f in ((0, a), (1, a + 0.01)):
        mon.on_crop(crop)
        mon._hook(mon.online, None, f)
    mon.step_end()
    with pytest.warns(UserWarning, match="at epoch 1 the online encoder's evaluation path .* non-finite features"):
        mon.epoch_end(1)


def test_collapse_is_logged_and_reported_once(capsys):
    from solo_sparse.families.gating import PairMonitor

    class P:
        name = "cdg"

    mon = PairMonitor(P())
    net = nn.Linear(4, 4).train()
    torch.manual_seed(0)
    a = torch.randn(256, 64)

    def step(f0, f1):
        for crop, f in ((0, f0), (1, f1)):
            mon.on_crop(crop)
            mon._hook(net, None, f)
        mon.step_end()

    step(a, a + 0.05 * torch.randn_like(a))                       # two views of the same images
    m0 = mon.epoch_end(0)
    assert m0["pair/pos_cos"] > 0.95 and abs(m0["pair/neg_cos"]) < 0.5 and m0["pair/margin"] > 0.5
    step(a, a.roll(3, 0))                                         # "view 1" is another image: collapsed pairing
    with pytest.warns(UserWarning, match="collapse: at epoch 1"):
        m1 = mon.epoch_end(1)
    assert m1["pair/margin"] < 0.05
    step(a, a.roll(3, 0))
    mon.epoch_end(2)                                               # reported once
    assert capsys.readouterr().err.count("collapse") == 1
    # through a plugin: the metrics are logged at every epoch end
    p = CDG.from_params({"stages": [1]})
    host, online, _, logs = host_for(p)
    two_view_step(host, online, torch.optim.SGD(online.parameters(), lr=0.0), torch.randn(2, 4, 3, 32, 32))
    host.on_epoch_end(0)
    assert {"solo_sparse/pair/pos_cos", "solo_sparse/pair/neg_cos", "solo_sparse/pair/margin"} <= set(logs)


def test_monitor_lines_are_read_back_from_a_run_log_and_drawn(tmp_path, capsys):
    """What the bench stores for a gated run (pair margin per epoch, encoder agreement per probe) is what the
    monitor printed: its stderr lines, written to the run's train.log, read back number for number."""
    from solo_sparse.families.gating import PairMonitor
    from solo_sparse.tools.report import plot_monitor, read_monitor

    class P:
        name = "cdg"

        def log(self, m):
            pass

        def route_eval(self, net):
            pass

    torch.manual_seed(0)
    online, mom = nn.Linear(8, 8), nn.Linear(8, 8)
    mon = PairMonitor(P(), probe_every=1)
    mon.attach(online, mom)
    x = torch.randn(32, 8)
    seen = []
    for epoch in range(2):
        for _ in range(2):
            for crop, inp in ((0, x), (1, x + 0.1 * torch.randn_like(x))):
                mon.on_crop(crop)
                online(inp)
            mon.step_end()
            with torch.no_grad():                                 # the probe's fixed batch: 16 images of crop 0
                q, k = (torch.nn.functional.normalize(net(x[:16]), dim=1) for net in (online, mom))
            seen.append(float((q * k).sum(1).mean()))
        m = mon.epoch_end(epoch)
    (tmp_path / "train.log").write_text("noise\n" + capsys.readouterr().err)
    got = read_monitor(tmp_path)
    assert got["epochs"] == [0, 1] and got["pos"][-1] == pytest.approx(m["pair/pos_cos"], abs=1e-4)
    assert got["neg"][-1] == pytest.approx(m["pair/neg_cos"], abs=1e-4)
    assert got["probe_steps"] == [1, 2, 3, 4] and got["key_drift_cos"][0] is None
    assert got["online_momentum_cos"] == pytest.approx(seen, abs=1e-4)
    assert got["shift"] == [None, None]                                # not images: no shift probe
    assert read_monitor(tmp_path / "absent") == {}
    pytest.importorskip("matplotlib")
    assert plot_monitor({"run": got}, tmp_path / "m.png", "t").stat().st_size > 1000
    assert plot_monitor({"run": {}}, tmp_path / "n.png", "t") is None


def test_cgnet_masks_each_view_on_one_base_path():
    """The CDG paper's CGNet baseline: one shared (diagonal) base path, each view's mask from its own input."""
    p = CGNet.from_params({})
    host, online, mom, logs = host_for(p, momentum=True, method="byol")
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(2, 4, 3, 32, 32)
    seen = []
    c = online.layer2[0].conv2
    orig = c._paths
    c._paths = lambda xx, assign: (seen.append(list(assign)), orig(xx, assign))[1]
    two_view_step(host, online, opt, x, mom)
    assert seen == [[0, 1, 2, 3], [0, 1, 2, 3]]                    # the diagonal base path for both views
    assert set(c._ss_last) == {"a1", "a1_own"}
    assert not torch.equal(c._ss_last["a1"], c._ss_last["a1_own"])  # different views, their own masks
    assert mask_similarity(online)["layer2.0.conv2"] < 1.0
    assert "solo_sparse/sparsity/a1_own" in logs
    assert CGNet.eval_paths() == ("a1",)


def test_cgnet_unified_reuses_crop0_mask():
    """unified: true is the paper's Table 1 ablation: crop 1 reuses crop 0's masks."""
    p = CGNet.from_params({"unified": True})
    host, online, mom, _ = host_for(p, momentum=True, method="byol")
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(2, 4, 3, 32, 32)
    two_view_step(host, online, opt, x, mom)
    c = online.layer2[0].conv2
    assert torch.equal(c._ss_last["a1"], c._ss_last["follow"])
    assert mask_similarity(online)["layer2.0.conv2"] == 1.0
    m = mom.layer2[0].conv2
    assert m._ss_cache is not None and m.ss_branch == "follow"      # the momentum twin follows its own crop 0


def test_fbs_warmup_keeps_every_channel_then_winner_take_all():
    p = FBS.from_params({"density": 0.25, "warmup": 2})
    host, online, _, logs = host_for(p)
    opt = torch.optim.SGD(online.parameters(), lr=0.0)
    x = torch.randn(2, 4, 3, 32, 32)
    two_view_step(host, online, opt, x)
    assert logs["solo_sparse/sparsity/a1"] < 0.05                  # warm-up: every channel kept (ReLU zeros aside)
    two_view_step(host, online, opt, x)
    two_view_step(host, online, opt, x)
    assert logs["solo_sparse/sparsity/a1"] == pytest.approx(0.75, abs=0.02)


def test_fbs_plugin_l1_loss_and_density():
    p = FBS.from_params({"density": 0.25, "l1_weight": 1e-3, "warmup": 0, "saliency_init": "kaiming"})
    host, online, _, logs = host_for(p)
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(2, 4, 3, 32, 32)
    extra = two_view_step(host, online, opt, x)
    assert extra is not None and float(extra) > 0
    assert logs["solo_sparse/sparsity/a1"] == pytest.approx(0.75, abs=0.02)
    assert online.layer1[0].conv1.phi.grad is not None


def test_masks_follow_momentum_and_gate_params_group():
    p = CDG.from_params({"gate_lr_scale": 10.0})
    host, online, mom, _ = host_for(p, momentum=True, method="mocov2plus")
    assert torch.equal(online.layer1[0].conv1.tau, mom.layer1[0].conv1.tau)
    assert all(not q.requires_grad for q in mom.parameters())
    groups = p.param_groups(0.3)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(3.0) and groups[0]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) == 32                          # tau and the conditional-path scale of 16 convs


@pytest.mark.parametrize("cls,params,match", [
    (CDG, {"target": 1.0}, "target"), (CDG, {"target": -0.1}, "target"), (CDG, {"groups": 0}, "groups"),
    (CDG, {"cg": 0}, "cg"), (CDG, {"alpha": 0}, "alpha"), (CDG, {"convs": "all"}, "convs"),
    (CDG, {"stages": [5]}, "stages"), (CDG, {"ramp": "x"}, "ramp"), (CDG, {"target": 0.5, "ramp_from": 0.6}, "ramp_from"),
    (FBS, {"density": 0.0}, "density"), (FBS, {"saliency_init": "zero"}, "saliency_init"), (CGNet, {"init_threshold": "x"}, "init"),
])
def test_config_errors_name_the_key(cls, params, match):
    with pytest.raises(ConfigError, match=match):
        cls.from_params(params)


def test_refusals_before_training():
    with pytest.raises(ConfigError, match="groups=3"):
        host_for(CDG.from_params({"groups": 3}))
    with pytest.raises(ConfigError, match="cg=6"):
        host_for(CDG.from_params({"cg": 6}))
    # two crops, two-view methods, ResNet only: tests/core/test_gating_contract.py (every gating plugin)


def test_prepare_eval_backbone_strict_round_trip():
    p = CDG.from_params({"cg": 8})
    _, online, _, _ = host_for(p)
    for _, c in gated_convs(online):
        c.tau.data.uniform_(0, 1)
    sd = online.state_dict()
    fresh = resnet(seed=5)
    CDG.from_params({"cg": 8}).prepare_eval_backbone(fresh)
    fresh.load_state_dict(sd, strict=False)
    for k, v in sd.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert all(c.ss_branch == "a1" and c.ss_cg == 8 for _, c in gated_convs(fresh))
    fresh2 = resnet()
    CDG.from_params({}).prepare_eval_backbone(fresh2)
    with pytest.raises(RuntimeError, match="lacks .* key"):
        fresh2.load_state_dict({k: v for k, v in sd.items() if not k.endswith(".tau")}, strict=False)


def test_backbone_variants_and_mismatch():
    v = CDG.backbone_variants()
    assert set(v) == {"resnet18_cdg", "resnet50_cdg"}
    net = v["resnet18_cdg"](None, groups=2)
    assert len(gated_convs(net)) == 16 and gated_convs(net)[0][1].ss_G == 2
    view = ModelView({"backbone": ModuleGroup("backbone", net, None)}, "shared", num_large_crops=2)
    with pytest.raises(ConfigError, match="groups=2"):
        PluginHost([CDG.from_params({"groups": 4})]).setup(view)
    assert math.isfinite(target_threshold(0.0))
    set_branch(net, "a2")
    assert all(c.ss_branch == "a2" for _, c in gated_convs(net))


def test_monitor_reports_the_shift_sensitivity_of_the_eval_path_each_epoch(tmp_path, capsys):
    from solo_sparse.engine.probes import shift_sensitivity
    from solo_sparse.families.gating import PairMonitor
    from solo_sparse.tools.report import read_monitor

    routed = []

    class P:
        name = "cdg"

        def log(self, m):
            pass

        def route_eval(self, net):
            routed.append(net)

    torch.manual_seed(0)
    online = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    mon = PairMonitor(P())
    mon.attach(online)
    x = torch.randn(20, 3, 16, 16)
    for crop in (0, 1):
        mon.on_crop(crop)
        online(x)
    mon.step_end()
    m = mon.epoch_end(0)
    want = shift_sensitivity(online, x[:16], 1)
    assert m["diag/shift_sensitivity"] == pytest.approx(want) and want > 0 and routed   # on the eval path
    (tmp_path / "train.log").write_text(capsys.readouterr().err)
    assert read_monitor(tmp_path)["shift"] == [pytest.approx(want, abs=1e-5)]


@pytest.mark.parametrize("plugin,cfg,depends", [
    (CGNet, {}, True), (CGNet, {"control": "base_only", "unified": False}, False),
    (CGNet, {"control": "random", "unified": False}, False), (CDG, {}, True), (FBS, {}, True)])
def test_cost_depends_on_input_only_where_a_gate_reads_it(plugin, cfg, depends):
    """`solo-sparse flops CKPT` asks for images only where the cost needs them: the static controls' cost is the same
    for every input (base path alone, or a fixed pattern), so any input of the size measures it exactly."""
    from solo_sparse.engine.resnet import build_resnet

    net = build_resnet("resnet18")
    plugin.rebuild_backbone(net, cfg)
    assert plugin.cost_depends_on_input(net) is depends
    if not depends:
        x = torch.randn(2, 3, 32, 32)
        a = plugin.measure_backbone(net, x)["network_macs_ratio"]
        assert a == pytest.approx(plugin.measure_backbone(net, torch.zeros(1, 3, 32, 32))["network_macs_ratio"])


@pytest.mark.parametrize("cls,params", [(CDG, {"stages": [1], "ramp": 2}), (FBS, {"stages": [1]})])
def test_the_pair_monitor_survives_a_resume(cls, params):
    """A resumed run probes the same fixed batch against the same previous key at the same cadence, and does not
    repeat a collapse warning already given (the monitor's state rides in the plugin's checkpointed state)."""
    torch.manual_seed(0)
    p = cls.from_params(params)
    host, online, mom, logs = host_for(p, momentum=True, method="byol")
    p.pairs.probe_every = 2
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(2, 4, 3, 32, 32)
    for _ in range(3):
        two_view_step(host, online, opt, x, mom)
    p.pairs.warned = True
    saved = copy.deepcopy(host.state_dict())
    assert torch.equal(saved[p.name]["extra"]["monitor"]["fixed"], x[0][:16])

    q = cls.from_params(params)
    host2, online2, mom2, logs2 = host_for(q, momentum=True, method="byol")
    q.pairs.probe_every = 2
    online2.load_state_dict(online.state_dict())
    mom2.load_state_dict(mom.state_dict())
    host2.load_state_dict(saved)
    m, n = p.pairs, q.pairs
    assert torch.equal(m.fixed, n.fixed) and torch.equal(m.prev_key, n.prev_key)
    assert (m.steps, m.n, m.sums, m.warned) == (n.steps, n.n, n.sums, n.warned) == (3, 3, m.sums, True)
    y = torch.randn(2, 4, 3, 32, 32)                                  # other images: the fixed batch stays
    two_view_step(host, online, opt, y, mom)
    two_view_step(host2, online2, torch.optim.SGD(online2.parameters(), lr=0.01), y, mom2)
    assert logs2["solo_sparse/diag/key_drift_cos"] == pytest.approx(logs["solo_sparse/diag/key_drift_cos"], abs=1e-6)
    assert torch.equal(n.fixed, x[0][:16]) and n.steps == 4
    if cls is CDG:
        assert saved[p.name]["extra"]["s_applied"] == p._s_applied       # the family's own state is kept beside it


def test_the_resumed_monitor_batch_follows_the_encoder_to_its_device():
    """Lightning restores a checkpoint before it moves the module to its device: the monitor's saved tensors are
    loaded where they are and moved to the online encoder's device when a probe or the shift measure uses them."""
    from solo_sparse.families.gating import PairMonitor

    class P:
        name = "cdg"

        @staticmethod
        def route_eval(net):
            pass

    mon = PairMonitor(P())
    mon.online = nn.Linear(4, 4, device="meta")                  # stands for an encoder moved to another device
    mon.load_state_dict({"fixed": torch.randn(2, 4), "prev_key": torch.randn(2, 4), "steps": 3})
    assert mon.fixed.device.type == "cpu" and mon.steps == 3     # loaded as is, not moved at load time
    mon._here()
    assert mon.fixed.device.type == "meta" and mon.prev_key.device.type == "meta"
    used = []
    mon._here = lambda: used.append(1)
    mon.fixed, mon.prev_key = torch.randn(2, 3, 8, 8), None
    mon.online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    mon.momentum = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    mon.plugin.log = lambda d: None
    mon.shift()
    mon.probe()
    assert used == [1, 1]                                         # both users move the tensors first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_monitor_resumed_on_the_cpu_probes_on_the_gpu():
    p = CDG.from_params({"stages": [1]})
    host, online, mom, logs = host_for(p, momentum=True, method="byol")
    p.pairs.load_state_dict({"fixed": torch.randn(16, 3, 32, 32), "prev_key": torch.randn(16, 512), "steps": 1})
    online.cuda()
    mom.cuda()
    p.pairs.probe()
    assert p.pairs.fixed.is_cuda and "solo_sparse/diag/key_drift_cos" in logs

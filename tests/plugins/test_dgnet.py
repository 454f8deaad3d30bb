"""DGNet channel gates, gated ResNets (branches, separate BN, FLOPs, batch-1 gather), dgnet_dual/gated plugins."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse.core.config import ConfigError
from solo_sparse.core.plugin import Branch, ModelView, PluginHost
from solo_sparse.engine.sparsifier import ModuleGroup
from solo_sparse.gating.dgnet import (
    ChannelGate,
    block_input_shapes,
    budget_ratio_from_network,
    convert_resnet,
    copy_dense_bn_to_gated,
    flops_ratio,
    gated_blocks,
    is_static,
    measure,
    set_mode,
    set_static_keep,
    start_recording,
    time_network,
    untrained_gates,
)
from solo_sparse_plugins.dgnet_dual import DGNetDual
from solo_sparse_plugins.dgnet_gated import DGNetGated


def resnet(arch="resnet18"):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()
    return net


def random_gates(net, p_open=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _, b in gated_blocks(net):
        b.gate.b2.data = torch.where(torch.rand(b.gate.b2.shape, generator=g) < p_open, 4.0, -4.0)
        b.gate.w2.data.normal_(0, 0.5, generator=g)   # input-dependent masks


def test_gate_straight_through_and_deterministic_inference():
    torch.manual_seed(0)
    gate = ChannelGate(16, 8, reduction=4)
    x = torch.randn(6, 16, 5, 5)
    m = gate(x)
    assert m.shape == (6, 8) and set(m.detach().unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    assert gate.b2.grad is not None and gate.b2.grad.abs().sum() > 0       # straight-through gradient
    gate.eval()
    assert torch.equal(gate(x), (gate.logits(x) > 0).float()) and torch.equal(gate(x), gate(x))
    # gates start open (bias 3): most channels open under the Gumbel noise
    gate.train()
    assert gate(torch.randn(64, 16, 5, 5)).mean() > 0.85
    with pytest.raises(ConfigError, match="reduction=3"):
        ChannelGate(16, 8, reduction=3)


def test_conversion_keeps_torchvision_names_and_dense_output():
    net, ref = resnet(), resnet()
    keys = set(ref.state_dict())
    convert_resnet(net)
    sd = net.state_dict()
    assert keys <= set(sd)
    extra = set(sd) - keys
    assert all(".gate." in k or "_g." in k for k in extra)
    assert any(k.startswith("layer1.0.bn1_g.") for k in extra) and any(k.startswith("bn1_g.") for k in extra)
    assert any("downsample_bn_g" in k for k in extra)
    # dense path equals the plain network, and the dense keys load into a plain resnet18
    x = torch.randn(3, 3, 32, 32)
    net.eval(), ref.eval()
    set_mode(net, "dense")
    assert torch.allclose(net(x), ref(x), atol=1e-6)
    plain = resnet()
    plain.load_state_dict({k: v for k, v in sd.items() if k in keys})


def test_gated_branch_uses_its_own_bn_and_gates():
    net = resnet()
    convert_resnet(net)
    copy_dense_bn_to_gated(net)
    net.train()
    before_dense = net.layer1[0].bn1.running_mean.clone()
    before_g = net.layer1[0].bn1_g.running_mean.clone()
    set_mode(net, "gated")
    net(torch.randn(4, 3, 32, 32))
    assert torch.equal(net.layer1[0].bn1.running_mean, before_dense)       # dense BN untouched
    assert not torch.equal(net.layer1[0].bn1_g.running_mean, before_g)
    set_mode(net, "dense")
    g_now = net.layer1[0].bn1_g.running_mean.clone()
    net(torch.randn(4, 3, 32, 32))
    assert torch.equal(net.layer1[0].bn1_g.running_mean, g_now)
    assert not torch.equal(net.layer1[0].bn1.running_mean, before_dense)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_batch1_gather_equals_masked_computation(arch):
    net = resnet(arch)
    convert_resnet(net)
    random_gates(net)
    net.eval()
    set_mode(net, "gated")
    xs = torch.randn(4, 1, 3, 32, 32)
    fast = []
    for x in xs:
        fast.append(net(x))
        assert any(b.ss_last_path == "gather" for _, b in gated_blocks(net))   # the path under test ran
    fast = torch.cat(fast)
    for _, b in gated_blocks(net):
        b.ss_gather = False
    masked = torch.cat([net(x) for x in xs])
    assert torch.allclose(fast, masked, atol=1e-4, rtol=1e-4)
    # a batch of 4 (masked path) agrees with four batch-1 runs (eval BN, deterministic gates)
    assert torch.allclose(net(xs[:, 0]), masked, atol=1e-4, rtol=1e-4)
    # every gate closed in a block: the block is skipped (its constant added), equals the masked computation
    for _, b in gated_blocks(net):
        b.ss_gather = True
    blk = gated_blocks(net)[0][1]
    blk.gate.b2.data.fill_(-50.0)
    blk.gate.w2.data.zero_()
    fast = net(xs[0])
    assert blk.ss_last_path == "skip"
    blk.ss_gather = False
    assert torch.allclose(fast, net(xs[0]), atol=1e-4)


def test_batch1_gathers_only_below_the_kept_share_threshold():
    net = resnet()
    convert_resnet(net)
    random_gates(net, p_open=0.5)
    net.eval()
    set_mode(net, "gated")
    blk = gated_blocks(net)[0][1]
    x = torch.randn(1, 3, 32, 32)
    net(x)
    rho = blk._ss_rho
    assert 0.0 < rho < 1.0 and blk.ss_last_path == "gather"
    ref = net(x)
    blk.ss_gather_max_keep = rho - 1e-6                       # just above the threshold: masked path
    out = net(x)
    assert blk.ss_last_path == "masked" and torch.allclose(out, ref, atol=1e-4)
    net(torch.randn(2, 3, 32, 32))                            # batches never gather
    assert all(b.ss_last_path == "masked" for _, b in gated_blocks(net))


def test_flops_ratio_formula_matches_hand_count():
    net = resnet()
    convert_resnet(net)
    random_gates(net)
    net.train()
    set_mode(net, "gated")
    rec = start_recording(net)
    x = torch.randn(4, 3, 32, 32)
    net(x)
    blocks = gated_blocks(net)
    assert len(rec) == len(blocks) == 8
    # hand count for the first block of layer2 (stride 2, with downsample): input 64x8x8 at 32 px
    name, blk = blocks[2]
    assert name == "layer2.0"
    fr, fo = rec[2]
    hw_out = 4 * 4
    d1 = hw_out * 128 * 64 * 9
    d2 = hw_out * 128 * 128 * 9
    dds = hw_out * 128 * 64
    assert fo == pytest.approx(d1 + d2 + dds)
    gate = 64 * 8 * 8 + 64 * 16 + 2 * 16 + 16 * 128 + 128
    rho_b = (fr - dds - gate) / (d1 + d2)
    assert ((rho_b >= 0) & (rho_b <= 1)).all()
    # rho per sample is a multiple of 1/128 (a share of the 128 gated channels)
    assert torch.allclose(rho_b * 128, (rho_b * 128).round(), atol=1e-3)
    r = flops_ratio(rec)
    assert r.requires_grad and 0 < float(r) < 1
    # the budget quantity moves the gates: its gradient reaches every gate bias
    r.backward()
    assert all(b.gate.b2.grad is not None for _, b in blocks)


def test_measure_reports_both_counts():
    net = resnet()
    convert_resnet(net)
    random_gates(net, p_open=0.3)
    m = measure(net, torch.randn(8, 3, 32, 32))
    assert 0.1 < m["gated_blocks_flops_ratio"] < 0.6
    assert 0.1 < m["network_macs_ratio"] < 0.7
    assert set(m["kept_channels"]) == {n for n, _ in gated_blocks(net)}
    assert net.ss_mode == "dense"   # restored


def test_sync_batchnorm_keeps_branch_bns():
    net = resnet()
    convert_resnet(net)
    keys = set(net.state_dict())
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(net.layer1[0].bn1_g, nn.SyncBatchNorm) and isinstance(net.bn1_g, nn.SyncBatchNorm)
    assert set(net.state_dict()) == keys
    net.eval()
    set_mode(net, "gated")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_conversion_refusals():
    with pytest.raises(ConfigError, match="torchvision ResNet"):
        convert_resnet(nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ConfigError, match="reduction=3"):
        convert_resnet(resnet(), reduction=3)
    with pytest.raises(ConfigError, match="stages"):
        convert_resnet(resnet(), stages=(5,))


# ------------------------------------------------------------------------------ plugins
def host_for(plugin, momentum=False, crops=2):
    online = resnet()
    mom = copy.deepcopy(online) if momentum else None
    view = ModelView({"backbone": ModuleGroup("backbone", online, mom)}, "momentum" if momentum else "shared",
                     method="vicreg", num_large_crops=crops)
    host = PluginHost([plugin])
    host.setup(view)
    host.set_schedule_info(10, 100)
    host.on_train_start()
    return host, online, mom


def two_view_step(host, online, opt, x):
    host.on_step_start()
    zs = []
    for crop in (0, 1):
        host.on_crop(Branch(crop=crop))
        zs.append(online(x))
    loss = (zs[0] - zs[1]).pow(2).mean()
    extra = host.extra_loss()
    total = loss + (extra if extra is not None else 0)
    opt.zero_grad()
    total.backward()
    opt.step()
    host.after_optimizer_step(opt)
    return extra


@pytest.mark.slow
def test_dgnet_dual_routes_crops_and_budget_loss_pulls_to_target():
    p = DGNetDual.from_params({"target": 0.3, "budget_weight": 50.0})
    host, online, _ = host_for(p)
    modes = []
    orig = online.forward

    def spy(x):
        modes.append(online.ss_mode)
        return orig(x)

    online.forward = spy
    gate_params = [q for n, q in online.named_parameters() if ".gate." in n]
    opt = torch.optim.SGD(gate_params, lr=30.0)   # the budget gradient per gate is ~1/(gated channels)
    x = torch.randn(8, 3, 32, 32)
    for _ in range(40):
        assert two_view_step(host, online, opt, x) is not None
    assert modes[:2] == ["gated", "dense"]
    online.train()
    rec = start_recording(online)
    set_mode(online, "gated")
    with torch.no_grad():
        online(x)
    final = float(flops_ratio(rec))
    assert abs(final - 0.3) < 0.1, final   # started near 1.0 (gates open)


def test_dgnet_gated_gates_both_crops_and_warmup_has_no_loss():
    p = DGNetGated.from_params({"warmup": 3})
    assert p.leaves_parameters_unused
    host, online, _ = host_for(p)
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32)
    assert two_view_step(host, online, opt, x) is None        # warm-up: gates open, no budget loss
    assert all(b._ss_rho == 1.0 for _, b in gated_blocks(online))
    host.on_step_start()
    host.on_crop(Branch(crop=1))
    assert online.ss_mode == "gated"
    for _ in range(3):
        two_view_step(host, online, opt, x)
    assert two_view_step(host, online, opt, x) is not None
    assert not hasattr(online, "bn1_g")                         # one BN set


def test_the_cost_is_measured_on_the_path_the_backbone_is_routed_to():
    """A dgnet checkpoint evaluated on its dense path costs the dense MACs (no gate statistics); on its gated path
    the measured gated cost — as the bench's per-path rows report them."""
    net = resnet()
    convert_resnet(net)
    random_gates(net, p_open=0.3)
    X = torch.randn(4, 3, 32, 32)
    p = DGNetDual.from_params({})
    p.route_eval(net, "dense")
    assert DGNetDual.measure_backbone(net, X) is None
    p.route_eval(net, "gated")
    m = DGNetDual.measure_backbone(net, X)
    assert m["network_macs_ratio"] < 0.7 and m["gate_sparsity"] > 0.3 and net.ss_mode == "gated"


def test_dgnet_eval_path_and_momentum_twin():
    p = DGNetDual.from_params({"eval_path": "dense"})
    host, online, mom = host_for(p, momentum=True)
    assert all(not q.requires_grad for q in mom.parameters())
    assert torch.equal(online.layer1[0].gate.w1, mom.layer1[0].gate.w1)
    host.on_crop(Branch(crop=0, phase="eval"))
    assert online.ss_mode == "dense"
    host.on_crop(Branch(crop=0, encoder="momentum"))
    assert mom.ss_mode == "gated"


@pytest.mark.parametrize("params,match", [
    ({"target": 0.0}, "target"), ({"target": 1.5}, "target"), ({"reduction": 0}, "reduction"),
    ({"stages": [0]}, "stages"), ({"eval_path": "both"}, "eval_path"), ({"warmup": "10%"}, "warmup"),
    ({"separate_bn": "yes"}, "separate_bn"), ({"gate_lr_scale": 0}, "gate_lr_scale"),
    ({"control": "random"}, "control"), ({"control": "static", "warmup": 5}, "warmup.*no gate"),
    ({"control": "static", "budget": "latency"}, "budget.*MACs"),
    ({"control": "static", "gate_lr_scale": 30}, "gate_lr_scale=30.*does nothing"),
    ({"control": "static", "reduction": 8}, "reduction=8.*does nothing"),
])
def test_dgnet_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        DGNetDual.from_params(params)


def test_dgnet_refusals():
    with pytest.raises(ConfigError, match="reduction=3"):
        host_for(DGNetDual.from_params({"reduction": 3}))
    with pytest.raises(ConfigError, match="two-view"):       # MoCo is not symmetric (the other refusals:
        DGNetDual.check_method("mocov2plus", "momentum")       # tests/core/test_gating_contract.py)


def test_prepare_eval_backbone_strict_round_trip():
    p = DGNetDual.from_params({"target": 0.3})
    host, online, _ = host_for(p)
    sd = online.state_dict()
    fresh = resnet()
    DGNetDual.from_params({"target": 0.3}).prepare_eval_backbone(fresh)
    assert fresh.ss_mode == "gated"
    fresh.load_state_dict(sd, strict=False)
    for k, v in sd.items():
        assert torch.equal(fresh.state_dict()[k], v), k
    fresh2 = resnet()
    DGNetDual.from_params({}).prepare_eval_backbone(fresh2)
    with pytest.raises(RuntimeError, match="lacks .* key"):
        fresh2.load_state_dict({k: v for k, v in sd.items() if ".gate." not in k}, strict=False)


def test_backbone_variants_build_gated_resnets():
    v = DGNetDual.backbone_variants()
    net = v["resnet18_dgnet"](None, reduction=8)
    assert len(gated_blocks(net)) == 8 and net.layer1[0].gate.hidden == 8
    assert hasattr(net, "inplanes") and hasattr(net, "fc") and hasattr(net, "maxpool")
    with pytest.raises(ConfigError, match="reduction"):
        PluginHost([DGNetDual.from_params({"reduction": 4})]).setup(
            ModelView({"backbone": ModuleGroup("backbone", net, None)}, "shared", num_large_crops=2))


def test_gate_lr_scale_makes_its_own_param_group():
    p = DGNetDual.from_params({"gate_lr_scale": 30.0})
    host, online, _ = host_for(p)
    groups = host.param_groups(0.3)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(9.0)
    names = {id(q): n for n, q in online.named_parameters()}
    assert groups[0]["params"] and all(".gate." in names[id(q)] for q in groups[0]["params"])
    assert DGNetDual.from_params({}).param_groups(0.3) == []


def saved_and_loaded(host, online, tmp_path):
    """``online`` (routed to its gated path, eval mode) saved as a training checkpoint and loaded back by
    solo_sparse.tools.evaluate.load_backbone: (the rebuilt backbone, its info)."""
    from solo_sparse.tools.evaluate import load_backbone

    online.eval()
    set_mode(online, "gated")
    ck = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in online.state_dict().items()},
                "solo_sparse": host.state_dict()}, ck)
    return load_backbone(str(ck))


def test_load_backbone_rebuilds_a_gated_checkpoint(tmp_path):
    """solo_sparse.tools.evaluate.load_backbone (CLI evaluate, the benchmarks) rebuilds the gated network from the
    checkpoint's plugin state: strict, same outputs, plugin name and config reported."""
    p = DGNetDual.from_params({"target": 0.3, "reduction": 8})
    host, online, _ = host_for(p)
    random_gates(online)
    net, info = saved_and_loaded(host, online, tmp_path)
    assert info["gating"] == "dgnet_dual" and info["gating_config"]["reduction"] == 8
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x), online(x), atol=1e-5)


@pytest.mark.parametrize("arch,target", [("resnet18", 0.3), ("resnet18", 0.5), ("resnet50", 0.5)])
def test_static_control_is_a_narrower_network_at_the_target_ratio(arch, target):
    """control: static keeps the same first channels for every input, with no parameters and no gate cost, and its
    gated blocks cost ``target`` of their MACs -- at 224 px (where the share is solved) and at 64 px alike."""
    net = resnet(arch)
    convert_resnet(net, separate_bn=False, control="static")
    assert not [n for n, _ in net.named_parameters() if ".gate." in n]
    reached = set_static_keep(net, target)
    assert abs(reached - target) < 0.01
    for _, blk in gated_blocks(net):
        k = blk.gate.kept
        assert 1 <= k < blk.gate.out_channels and torch.equal(blk.gate.keep[:k], torch.ones(k))
        assert blk.gate.cost(8, 8) == 0.0
    m = measure(net, torch.randn(6, 3, 64, 64))
    assert abs(m["gated_blocks_flops_ratio"] - reached) < 1e-6
    assert all(abs(v - blk.gate.kept / blk.gate.out_channels) < 1e-9
               for (_, blk), v in zip(gated_blocks(net), m["kept_channels"].values()))
    with pytest.raises(ConfigError, match="target=0.05"):
        set_static_keep(resnet50_static(), 0.05)     # below what conv3 + downsample cost


def resnet50_static():
    net = resnet("resnet50")
    convert_resnet(net, separate_bn=False, control="static")
    return net


def test_static_control_plugin_trains_no_gate_and_round_trips(tmp_path):
    p = DGNetGated.from_params({"control": "static", "target": 0.3})
    host, online, _ = host_for(p)
    assert is_static(online) and host.param_groups(0.3) == [] and untrained_gates(online) is None
    logged = []
    p.view._log = logged.append
    opt = torch.optim.SGD(online.parameters(), lr=0.01)
    x = torch.randn(4, 3, 32, 32)
    assert two_view_step(host, online, opt, x) is None                # no budget loss: nothing to train
    ratio = [d["solo_sparse/flops_ratio"] for d in logged if "solo_sparse/flops_ratio" in d]
    assert ratio and abs(ratio[-1] - 0.3) < 0.01                         # the fixed ratio, logged
    online.layer1[0].gate.set_kept(5)                 # the checkpoint's kept channels win over the recomputed ones
    net, info = saved_and_loaded(host, online, tmp_path)
    assert info["gating_config"]["control"] == "static" and is_static(net) and net.layer1[0].gate.kept == 5
    assert torch.allclose(net(x), online(x), atol=1e-5)
    assert net.ss_mode == "gated" and DGNetGated.measure_backbone(net, x)["gate_sparsity"] > 0.6
    with pytest.raises(ConfigError, match="control=static but .*control=none"):   # built static, config dynamic
        PluginHost([DGNetGated.from_params({})]).setup(
            ModelView({"backbone": ModuleGroup("backbone", net, None)}, "shared", num_large_crops=2))


def test_measuring_leaves_the_backbone_as_it_was():
    """measure / set_static_keep / block_input_shapes restore routing, held-open gates, a plugin's cost-record list
    and every module's train/eval flag; time_network too (set_static_keep dropped the record list, and all reset the
    flags)."""
    for control in ("none", "static"):
        net = resnet()
        convert_resnet(net, separate_bn=True, control=control)
        rec = start_recording(net)
        set_mode(net, "gated", gates_open=True)
        net.train()
        net.layer2.eval()                                  # a caller's frozen part
        net.layer1[0].ss_gather, net.layer1[1]._ss_force = False, (3, None)
        before = [(n, m.training) for n, m in net.named_modules()]
        measure(net, torch.randn(2, 3, 32, 32))
        block_input_shapes(net, 32)
        time_network(net, 32, reps=1)
        if control == "static":
            set_static_keep(net, 0.4)
        assert [(n, m.training) for n, m in net.named_modules()] == before
        assert net.ss_mode == "gated" and all(b.ss_gates_open and b.ss_record is rec for _, b in gated_blocks(net))
        assert rec == []
        assert not net.layer1[0].ss_gather and net.layer1[1]._ss_force == (3, None) and net.layer2[0].ss_gather


def test_the_gates_own_cost_is_counted_per_image(monkeypatch):
    """measure(): the gates' MACs enter the whole-network ratio once per image -- the same image once or eight times
    gives the same ratio, and it exceeds the gate-free one by the gates' MACs over the dense network's (they were
    counted once per batch: 0.5211 at batch 1 vs 0.5192 at batch 8 on a gated ResNet-18, 64 px)."""
    from solo_sparse.engine.flops import count_macs

    net = resnet()
    convert_resnet(net, separate_bn=False)
    random_gates(net)
    x = torch.randn(1, 3, 64, 64)
    one, eight = measure(net, x)["network_macs_ratio"], measure(net, x.expand(8, -1, -1, -1))["network_macs_ratio"]
    assert abs(one - eight) < 1e-9, (one, eight)
    gates = sum(blk.gate.cost(*shape[1:]) for (_, blk), shape in
                zip(gated_blocks(net), block_input_shapes(net, 64).values()))
    monkeypatch.setattr(ChannelGate, "cost", lambda self, h, w: 0.0)
    free = measure(net, x.expand(8, -1, -1, -1))["network_macs_ratio"]
    assert gates > 0 and eight - free == pytest.approx(gates / count_macs(net, x).dense, rel=1e-6)


@pytest.mark.parametrize("arch,size", [("resnet18", 64), ("resnet50", 32)])
def test_the_budget_ratio_follows_exactly_from_the_whole_network_ratio(arch, size):
    """The rows of a finished suite keep only the whole-network MACs ratio; the gated blocks' budget ratio (what t_d
    constrains) follows from it exactly -- the two count the same effective MACs and differ only by the stem."""
    net = resnet(arch)
    convert_resnet(net)
    for seed, p_open in ((0, 0.5), (1, 0.2)):
        random_gates(net, p_open, seed)
        m = measure(net, torch.randn(3, 3, size, size))
        assert budget_ratio_from_network(net, m["network_macs_ratio"], size) == pytest.approx(
            m["gated_blocks_flops_ratio"], abs=1e-6)
    assert budget_ratio_from_network(net, 1.0, size) == pytest.approx(1.0)       # every channel of every block


def test_static_checkpoint_cost_needs_no_data(tmp_path, capsys):
    """``solo-sparse flops CKPT`` on a static-control checkpoint: exact without images (the plugin says its cost
    does not depend on the input); the DGNet gate's still asks for --data. measure() at batch 1 counts the
    module form, not the gather that a MAC counter cannot see (it reported a ratio of 1.0)."""
    from solo_sparse.tools.cli import main

    p = DGNetGated.from_params({"control": "static", "target": 0.3})
    host, online, _ = host_for(p)
    net, _ = saved_and_loaded(host, online, tmp_path)
    assert not DGNetGated.cost_depends_on_input(net)
    ratio = DGNetGated.measure_backbone(net, torch.randn(3, 3, 32, 32))["network_macs_ratio"]
    assert ratio < 0.5
    assert abs(DGNetGated.measure_backbone(net, torch.randn(1, 3, 32, 32))["network_macs_ratio"] - ratio) < 1e-9
    assert main(["flops", str(tmp_path / "run.ckpt")]) == 0
    out = capsys.readouterr().out
    assert f"MACs ratio {ratio:.4f}" in out and "the same for every input" in out, out
    set_mode(net, "dense")
    assert not DGNetGated.cost_depends_on_input(net)
    gated, _ = saved_and_loaded(*host_for(DGNetGated.from_params({}))[:2], tmp_path)
    assert DGNetGated.cost_depends_on_input(gated)
    assert main(["flops", str(tmp_path / "run.ckpt")]) == 2
    assert "pass --data DIR" in capsys.readouterr().err


def test_static_control_previews_its_cost_before_training():
    """``solo-sparse flops CONFIG``: the static control's cost is known from the config; the gate's is not."""
    from solo_sparse.engine.flops import count_macs

    net = resnet()
    what = DGNetGated.from_params({"control": "static", "target": 0.3}).preview_backbone(net)
    assert "static" in what and "19/64" in what and net.ss_mode == "gated"
    rep = count_macs(net, (1, 3, 64, 64))
    assert 0.3 < rep.effective / rep.dense < 0.4
    assert DGNetGated.from_params({}).preview_backbone(resnet()) is None


def test_static_control_batch1_gathers_the_kept_channels():
    net = resnet()
    convert_resnet(net, separate_bn=False, control="static")
    set_static_keep(net, 0.3)
    net.eval()
    set_mode(net, "gated")
    x = torch.randn(1, 3, 64, 64)
    for _, blk in gated_blocks(net):
        blk.ss_gather = False
    ref = net(x)
    for _, blk in gated_blocks(net):
        blk.ss_gather = True
    assert torch.allclose(net(x), ref, atol=1e-4)
    assert {blk.ss_last_path for _, blk in gated_blocks(net)} == {"gather"}

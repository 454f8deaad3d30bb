"""DGNet batch-1 execution chosen by the measured cost model, and the latency budget.

No timing is asserted (timings here are noisy): the tests check that the table is built, cached on
disk under the machine key and reused, that every path the plan can pick gives the masked outputs, and
that ``budget: latency`` weighs kept shares by the table's latencies (built first, with progress lines,
when the table is missing)."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse.core.config import ConfigError
from solo_sparse.engine.costmodel import LatencyTable, interp, machine_key
from solo_sparse.gating.dgnet import (
    attach_latency_table,
    block_input_shapes,
    convert_resnet,
    detach_latency_table,
    flops_ratio,
    gated_blocks,
    plan_from_entry,
    set_mode,
    start_recording,
)
from solo_sparse_plugins.dgnet_dual import DGNetDual
from solo_sparse_plugins.dgnet_gated import DGNetGated


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_SPARSE_LATENCY_DIR", str(tmp_path / "latency"))


def _net(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()
    convert_resnet(net)
    g = torch.Generator().manual_seed(seed)
    for _, b in gated_blocks(net):
        b.gate.b2.data = torch.where(torch.rand(b.gate.b2.shape, generator=g) < 0.5, 4.0, -4.0)
        b.gate.w2.data.normal_(0, 0.5, generator=g)
        for bn in (b.bn1, b.bn2):
            bn.running_mean.normal_(0, 0.3, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.data.normal_(1, 0.3, generator=g)
            bn.bias.data.normal_(0, 0.3, generator=g)
    return net.eval()


def test_interp_is_piecewise_linear_and_differentiable():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0], requires_grad=True)
    y = interp(x, [0.0, 0.5, 1.0], [1.0, 2.0, 4.0])
    assert torch.allclose(y, torch.tensor([1.0, 1.5, 2.0, 4.0]))
    y.sum().backward()
    # a gradient at both ends too: at start every gate is open (kept share exactly 1)
    assert torch.allclose(x.grad, torch.tensor([2.0, 2.0, 4.0, 4.0]))


def test_table_is_built_cached_under_the_machine_key_and_reused(tmp_path):
    net = _net()
    lines = []
    rep = attach_latency_table(net, 32, reps=2, progress=lines.append)
    assert rep["built"] == [rep["signature"]] and rep["signature"].startswith("dgnet-net|8blocks|32px|")
    assert any("in the network at batch 1, 32 px" in ln for ln in lines) and "saved to" in lines[-1]
    data = json.loads(open(rep["path"]).read())
    assert data["key"] == machine_key() and data["key"]["threads"] == torch.get_num_threads()
    assert data["key"]["torch"] == torch.__version__
    entry = data["entries"][rep["signature"]]
    assert entry["timing"] == "network" and entry["ungated_ms"] > 0 and rep["ungated_ms"] == entry["ungated_ms"]
    e = entry["blocks"]["layer3.0"]
    assert e["keep"][0] == 0 and e["keep"][-1] == 256
    assert len(e["gather_ms"]) == len(e["keep"]) and e["dense_ms"] > 0 and e["masked_ms"] > 0
    assert set(entry["blocks"]) == {n for n, _ in gated_blocks(net)}
    # a second network of the same shapes times nothing; another input size is another network entry
    lines.clear()
    rep2 = attach_latency_table(_net(seed=1), 32, reps=2, progress=lines.append)
    assert rep2["built"] == [] and not lines and rep2["path"] == rep["path"]
    rep3 = attach_latency_table(_net(seed=1), 64, reps=1)
    assert rep3["built"] == [rep3["signature"]] != rep["built"]
    # another thread count is another machine key, another file
    assert LatencyTable({**machine_key(), "threads": 999}).path != LatencyTable().path
    # every block carries a plan for each kept count and a latency curve; the first one the ungated time
    for i, (_, b) in enumerate(gated_blocks(net)):
        c = b.conv1.out_channels
        assert len(b.ss_plan) == c + 1 and b.ss_plan[0] == "skip"
        assert set(b.ss_plan[1:]) <= {"gather", "masked"}
        xs, ys, dense = b.ss_latency
        assert xs[0] == 0.0 and xs[-1] == 1.0 and len(ys) == len(xs) and dense > 0
        assert b.ss_fixed_ms == (rep["ungated_ms"] if i == 0 else 0.0)


def test_network_timing_restores_the_network_and_forces_every_block():
    from solo_sparse.gating.dgnet import time_network

    net = _net()
    set_mode(net, "gated")
    net.train()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: seen.append((n, m.ss_mode, m.ss_last_path)))
             for n, b in gated_blocks(net)]
    out = time_network(net, 32, reps=1, grid=(0.0, 0.5))
    for h in hooks:
        h.remove()
    assert net.training and net.ss_mode == "gated"
    assert all(b._ss_force is None and b.ss_gather for _, b in gated_blocks(net))
    paths = {p for _, mode, p in seen if mode == "gated"}
    assert paths == {"masked", "skip", "gather"}            # the masked run, the 0 share, the 0.5 share
    assert {mode for _, mode, _ in seen} == {"dense", "gated"}
    b = out["blocks"]["layer1.0"]
    assert b["keep"] == [0, 32] and len(b["gather_ms"]) == 2


def test_plan_picks_the_measured_cheaper_path():
    entry = {"channels": 8, "keep": [0, 2, 4, 8], "gather_ms": [0.1, 1.0, 2.0, 4.0], "masked_ms": 2.5,
             "dense_ms": 2.0}
    plan, (xs, ys, dense), width = plan_from_entry(entry)
    assert plan == ["skip", "gather", "gather", "gather", "gather", "masked", "masked", "masked", "masked"]  # k=5 ties
    # a gather runs at the cheapest timed width >= k (k = 1 at the timed 2, k = 3 at the timed 4)
    assert width == [0, 2, 2, 4, 4, 5, 6, 7, 8]
    # a timed width slower than a wider one: the wider one runs (gather time is not monotone in the width)
    plan2, _, width2 = plan_from_entry({**entry, "gather_ms": [0.1, 1.0, 3.0, 2.0], "masked_ms": 9.0})
    assert plan2[3] == "gather" and width2[3] == 8 and width2[1] == 2
    # the loss curve: skip at 0, then the least-squares line through the gather timings (here exact: 4 ms per
    # unit of kept share) -- rising up to 1, where min(gather, masked) would be flat
    assert xs == [0.0, 0.25, 0.5, 1.0] and dense == 2.0
    assert ys[0] == 0.1 and all(abs(a - b) < 1e-9 for a, b in zip(ys[1:], [1.0, 2.0, 4.0]))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_planned_path_gives_the_masked_outputs(arch):
    net = _net(arch)
    set_mode(net, "gated")
    xs = torch.randn(3, 1, 3, 64, 64)
    with torch.no_grad():
        ref = []
        for b in (b for _, b in gated_blocks(net)):
            b.ss_gather = False
        for x in xs:
            ref.append(net(x))
        ref = torch.cat(ref)
        for b in (b for _, b in gated_blocks(net)):
            b.ss_gather = True
        blocks = [b for _, b in gated_blocks(net)]
        blocks[1].gate.b2.data.fill_(-50.0)                    # one block fully off: skipped
        blocks[1].gate.w2.data.zero_()
        for b in blocks:
            b.ss_gather = False
        ref = torch.cat([net(x) for x in xs])
        for plan in ("gather", "masked", "padded"):
            for b in blocks:
                b.ss_gather = True
                c = b.conv1.out_channels
                b.ss_plan = ["skip"] + ["gather" if plan == "padded" else plan] * c
                # padded: every gather computes the next multiple of 16 channels (the extra ones dead)
                b.ss_plan_width = [min(c, -(-k // 16) * 16) for k in range(c + 1)] if plan == "padded" else None
            out, paths = [], set()
            for x in xs:
                out.append(net(x))
                paths |= {b.ss_last_path for b in blocks}
            out = torch.cat(out)
            assert "skip" in paths and ("gather" if plan == "padded" else plan) in paths
            tol = 1e-5 * float(ref.abs().max()) + 1e-5
            assert torch.allclose(out, ref, atol=tol, rtol=1e-4), (plan, (out - ref).abs().max())
    detach_latency_table(net)
    assert all(b.ss_plan is None and b.ss_latency is None and b.ss_fixed_ms == 0 for b in blocks)


def test_block_input_shapes_restore_the_mode():
    net = _net()
    set_mode(net, "gated")
    shapes = block_input_shapes(net, 224)
    assert shapes["layer1.0"] == (64, 56, 56) and shapes["layer4.1"] == (512, 7, 7)
    assert net.ss_mode == "gated" and not net.training


# ------------------------------------------------------------------------------ budget: latency
def _host(plugin, input_size=32):
    from solo_sparse.core.plugin import ModelView, PluginHost
    from solo_sparse.engine.sparsifier import ModuleGroup

    torch.manual_seed(0)
    online = torchvision.models.resnet18()
    online.fc = nn.Identity()
    view = ModelView({"backbone": ModuleGroup("backbone", online, None)}, "shared", method="vicreg",
                     num_large_crops=2, input_size=input_size)
    host = PluginHost([plugin])
    host.setup(view)
    host.set_schedule_info(10, 100)
    host.on_train_start()
    return host, online


@pytest.mark.parametrize("value", ["flops", "MACS", 1, None])
def test_budget_key_is_validated_before_step_0(value):
    with pytest.raises(ConfigError, match=r"^solo_sparse\.budget=.*: allowed: macs, latency$"):
        DGNetDual.from_params({"budget": value})
    with pytest.raises(ConfigError, match="latency_size"):
        DGNetGated.from_params({"budget": "latency", "latency_size": -1})


def test_default_budget_is_macs_and_builds_no_table(capsys):
    p = DGNetDual.from_params({})
    assert p.config.budget == "macs"
    _, online = _host(p)
    assert all(b.ss_latency is None and b.ss_plan is None for _, b in gated_blocks(online))
    assert "latency table" not in capsys.readouterr().err


def test_latency_budget_builds_the_missing_table_first_then_weighs_by_latency(capsys):
    p = DGNetDual.from_params({"budget": "latency", "target": 0.5})
    host, online = _host(p, input_size=32)
    err = capsys.readouterr().err
    assert "solo-sparse dgnet_dual: latency table: timing 8 gated blocks in the network" in err and "saved to" in err
    blocks = [b for _, b in gated_blocks(online)]
    assert all(b.ss_latency is not None for b in blocks)
    # the budget loss has a gradient reaching the gates, also with every gate open (kept share exactly 1)
    from solo_sparse.core.plugin import Branch

    online.train()
    x = torch.randn(4, 3, 32, 32)
    host.on_step_start()
    for crop in (0, 1):
        host.on_crop(Branch(crop=crop))
        online(x)
    loss = host.extra_loss()
    loss.backward()
    assert blocks[0].gate.b2.grad is not None and blocks[0].gate.b2.grad.abs().sum() > 0
    # the ratio of one gated forward is the latency-weighted one
    rec = start_recording(online)
    set_mode(online, "gated")
    online(x)
    ratio = flops_ratio(rec)
    num = sum(interp(torch.full((4,), b._ss_rho), *b.ss_latency[:2]) + b.ss_fixed_ms for b in blocks)
    den = sum(b.ss_latency[2] + b.ss_fixed_ms for b in blocks)
    assert blocks[0].ss_fixed_ms > 0                            # the stem and head count in the budget
    assert torch.allclose(ratio, (num / den).mean(), rtol=1e-4)
    # a second run on this machine reuses the table: one line saying where it comes from, nothing timed
    _host(DGNetGated.from_params({"budget": "latency"}), input_size=32)
    err = capsys.readouterr().err
    assert "timing" not in err and "latency budget from the measured table" in err


def test_latency_budget_needs_a_size():
    with pytest.raises(ConfigError, match="latency_size"):
        _host(DGNetDual.from_params({"budget": "latency"}), input_size=None)
    p = DGNetDual.from_params({"budget": "latency", "latency_size": 32})
    _, online = _host(p, input_size=None)
    assert all(b.ss_latency is not None for _, b in gated_blocks(online))


def test_momentum_copy_of_a_planned_net_keeps_the_plan():
    net = _net()
    attach_latency_table(net, 32, reps=1)
    twin = copy.deepcopy(net)
    assert [b.ss_plan for _, b in gated_blocks(twin)] == [b.ss_plan for _, b in gated_blocks(net)]


def test_latency_threads_times_and_keys_the_table_at_the_deployment_thread_count():
    threads = torch.get_num_threads()
    want = 1 if threads != 1 else 2
    p = DGNetDual.from_params({"budget": "latency", "latency_size": 32, "latency_threads": want})
    _, online = _host(p, input_size=64)
    assert torch.get_num_threads() == threads                      # restored
    data = json.loads(open(p.latency_table["path"]).read())
    assert data["key"]["threads"] == want
    assert all(b.ss_latency is not None for _, b in gated_blocks(online))
    with pytest.raises(ConfigError, match="latency_threads"):
        DGNetDual.from_params({"latency_threads": -2})


def test_batch_1_with_every_gate_open_runs_the_folded_dense_block():
    """k = C: neither a gather (a full weight copy) nor a mask multiply; the folded convs, the masked outputs."""
    net = _net()
    set_mode(net, "gated")
    blocks = [b for _, b in gated_blocks(net)]
    for b in blocks:
        b.gate.b2.data.fill_(50.0)                  # every channel kept
        b.gate.w2.data.zero_()
        b.ss_plan = ["skip"] + ["gather"] * b.conv1.out_channels   # the plan says gather; all kept wins
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert {b.ss_last_path for b in blocks} == {"full"}
        for b in blocks:
            b.ss_gather = False
        ref = net(x)
        assert {b.ss_last_path for b in blocks} == {"masked"}
    assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()) + 1e-5, rtol=1e-4)

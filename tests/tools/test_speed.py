"""``solo-sparse speed``: one run measures every path side by side and writes results + a docs block; gates that
were never trained are refused. No timing is asserted (timings are noisy here): the structure, the MACs limits and
the exactness figures are."""
import json

import pytest

from solo_sparse.core.config import ConfigError
from solo_sparse.tools import speed


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_SPARSE_LATENCY_DIR", str(tmp_path / "latency"))


def _zoo_names():
    from solo_sparse import zoo

    try:
        entries = zoo.list_entries()
    except zoo.ZooError as exc:
        pytest.skip(f"no zoo manifest: {exc}")
    return {e["algorithm"]: e["name"] for e in entries}


@pytest.mark.slow   # measured 40-85 s on 2 busy cores (pytest --durations)
def test_one_run_measures_every_path_with_its_limit(tmp_path):
    names = _zoo_names()
    if "imp" not in names or "dgnet_dual" not in names:
        pytest.skip("the zoo lacks the IMP or DGNet entry")
    suite = {"suite": "speed", "sizes": [32], "batches": [1, 2], "reps": 4, "table_reps": 1, "paths": [
        {"id": "compact", "zoo": names["imp"], "channel_density": 0.5},
        {"id": "dgnet", "zoo": names["dgnet_dual"]},
        {"id": "cdg", "plugin": "cdg", "params": {"cg": 8, "ramp": 0, "stages": [1, 2]}, "synthetic": True},
    ]}
    lines = []
    res = speed.run(suite, out=tmp_path / "out", progress=lines.append, note="test run")
    assert any("ETA" in ln for ln in lines) and any("latency table" in ln for ln in lines)
    assert res["threads"] >= 1 and len(res["load_before"]) == 3 and len(res["load_after"]) == 3
    assert set(res["paths"]) == {"compact", "dgnet", "cdg"}
    c = res["paths"]["compact"]
    assert c["info"]["max_rel_diff"] < 1e-5 and c["info"]["internal_channels"] == [960, 1920]
    for p in res["paths"].values():
        assert [(r["batch"], r["size"]) for r in p["rows"]] == [(1, 32), (2, 32)]
        for row in p["rows"]:
            assert row["ms"]["dense"]["n"] == 4
            for r in row["ratios"]:
                assert r["median"] > 0 and r["q1"] <= r["q3"]
                if r["reference"] == "dense":
                    # a CDG executable form runs its executed blocks' full rows: its MACs may exceed dense's
                    floor = 0.0 if r["fast"].startswith("exec-") else 1.0
                    assert r["macs_limit"] > floor, (r, p["description"])
    # the compact limit is the MACs ratio (50% internal channels: between 1.5x and 2x at 32 px)
    lim = next(r["macs_limit"] for r in c["rows"][0]["ratios"] if r["fast"] == "compact+opt" and r["reference"] == "dense")
    assert 1.5 < lim < 2.0
    # batch-1-only variants are absent at batch 2
    d = res["paths"]["dgnet"]
    assert "gated (fixed rule)" in d["rows"][0]["ms"] and "gated (fixed rule)" not in d["rows"][1]["ms"]
    assert "exec-tile" in res["paths"]["cdg"]["rows"][0]["ms"] and "exec-tile" not in res["paths"]["cdg"]["rows"][1]["ms"]
    share = res["paths"]["cdg"]["info"]["measured"][32]["executed_share"]
    assert 0 < share["position"] <= share["tile"] <= share["block"] <= 1
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["note"] == "test run" and data["reps"] == 4
    # the DGNet cost-model table is named, not located: results are committed, machine paths are not
    table = data["paths"]["dgnet"]["info"]["tables"]["32"]
    assert table["path"].startswith("<latency cache>/") and str(tmp_path) not in json.dumps(data)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "MACs limit" in md and f"**{res['threads']} threads**" in md
    # the docs block is replaced in place, the rest of the page kept
    doc = tmp_path / "speed.md"
    doc.write_text("# Speed\n\nintro\n\n<!-- speed -->\nstale block\n<!-- /speed -->\n\nafter\n")
    assert speed.update_doc(doc, res)
    text = doc.read_text()
    assert text.startswith("# Speed\n\nintro\n\n<!-- speed -->\nCPU") and text.endswith("<!-- /speed -->\n\nafter\n")
    assert "stale block" not in text and not speed.update_doc(doc, res)


def test_untrained_gates_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="refused: the gates were never trained: every DGNet gate bias is still 3"):
        speed.build_path({"id": "x", "plugin": "dgnet_dual", "params": {}})
    with pytest.raises(ConfigError, match="every CDG threshold tau is still"):
        speed.build_path({"id": "y", "plugin": "cdg", "params": {"cg": 8, "ramp": 0}})


def test_suite_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("paths: []\n")
    with pytest.raises(ConfigError, match="non-empty 'paths'"):
        speed.load_suite(p)
    p.write_text("paths: [{id: a, backbone: resnet18}, {id: a, backbone: resnet18}]\n")
    with pytest.raises(ConfigError, match="unique 'id'"):
        speed.load_suite(p)
    with pytest.raises(ConfigError, match="no path selected"):
        speed.run({"paths": [{"id": "a", "backbone": "resnet18"}]}, only=["b"])
    # an optional checkpoint path that is absent here is left out and said; a required one is an error
    lines = []
    res = speed.run({"sizes": [32], "batches": [1], "reps": 1, "paths": [
        {"id": "plain", "backbone": "resnet18"},
        {"id": "gone", "checkpoint": str(tmp_path / "nothing" / "*.ckpt"), "optional": True}]}, progress=lines.append)
    assert res["left_out"] == ["gone"] and any("left out" in ln for ln in lines) and list(res["paths"]) == ["plain"]
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        speed.build_path({"id": "gone", "checkpoint": str(tmp_path / "x.ckpt")})


@pytest.mark.parametrize("name", ["suite.yaml", "static.yaml"])
def test_the_shipped_suites_load(name):
    from pathlib import Path

    s = speed.load_suite(Path(__file__).resolve().parents[2] / "scripts" / "speed" / name)
    assert s["reps"] >= 20 and s["batches"] == [1, 64] and s["sizes"] == [32, 64, 224]


@pytest.mark.parametrize("plugin", ["dgnet_dual", "dgnet_gated"])
def test_the_static_control_is_timed_as_the_narrower_resnet_it_is(plugin):
    """DGNet's static control keeps the same channels for every input: its fast path is a plain ResNet
    (Plugin.plain_backbone), compacted and timed like any static network -- not the per-input gather."""
    import torch

    from solo_sparse.core.registry import get_plugin
    from solo_sparse.engine import compact as C
    from solo_sparse.gating.dgnet import gated_blocks, set_mode

    p = speed.build_path({"id": "s", "plugin": plugin, "params": {"control": "static", "target": 0.3}})
    assert p.kind == "compact" and p.info["plain_backbone_of"] == plugin and p.info["max_rel_diff"] < 1e-5
    small, whole = p.info["internal_channels"]
    assert whole == 1920 and small < 0.55 * whole          # ~rho 0.4 of the gated channels, rounded to the lanes
    assert {v.name for v in p.variants} == {"dense+opt", "compact", "compact+opt"}
    # the plain network computes the gated path exactly; a DGNet gate has none
    net, _, cfg = speed._load({"id": "s", "plugin": plugin, "params": {"control": "static", "target": 0.3}}, None)
    cls = get_plugin(plugin)
    g = torch.Generator().manual_seed(0)
    for m in net.modules():            # trained-like BNs: the gated branch's twins differ from the dense ones
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 1.5), (m.weight, 0.5, 1.5),
                              (m.bias, -0.2, 0.2)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    cls.route_backbone(net, cfg, "gated")
    for _, blk in gated_blocks(net):
        blk.ss_gather = False
    plain = cls.plain_backbone(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), net(x), atol=1e-5)
        assert sum(C.widths(C.compact(plain)).values()) == sum(blk.gate.kept for _, blk in gated_blocks(net))
    dyn, _, dcfg = speed._load({"id": "d", "plugin": plugin, "params": {}}, None)
    set_mode(dyn, "gated")
    assert cls.plain_backbone(dyn) is None
    for m in dyn.modules():                                  # the gated twins differ: the dense BNs must be kept
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
    set_mode(dyn, "dense")                                   # the dense path is a plain ResNet
    with torch.no_grad():
        assert torch.allclose(cls.plain_backbone(dyn)(x), dyn(x), atol=1e-5)


def test_a_plain_backbone_that_does_not_compute_its_path_is_refused(monkeypatch):
    import torch

    from solo_sparse.core.registry import get_plugin

    cls = get_plugin("dgnet_gated")
    real = cls.plain_backbone.__func__

    def broken(c, net):
        plain = real(c, net)
        with torch.no_grad():
            plain.layer1[0].conv1.weight.mul_(2)
        return plain

    monkeypatch.setattr(cls, "plain_backbone", classmethod(broken))
    with pytest.raises(ConfigError, match="plain_backbone differs from the path it stands for"):
        speed.build_path({"id": "s", "plugin": "dgnet_gated", "params": {"control": "static", "target": 0.3}})


def test_a_plugin_without_a_plain_form_is_not_copied(monkeypatch):
    import torchvision

    from solo_sparse.core.registry import get_plugin

    def no_copy(*a, **k):
        raise AssertionError("the backbone was copied for a plugin with no plain form")

    monkeypatch.setattr(speed.copy, "deepcopy", no_copy)
    assert speed.plain_fast_path(get_plugin("cdg"), torchvision.models.resnet18(), {}) is None
    assert speed.plain_fast_path(None, torchvision.models.resnet18(), {}) is None


def test_a_compact_path_says_whether_its_widths_were_rounded():
    """``round_to_vector: false`` times the widths the network has; its label must not claim lane rounding (the
    static control's results once said "rounded to 16 lanes" for 546 channels)."""
    from solo_sparse.engine import compact as C

    spec = {"plugin": "dgnet_gated", "params": {"control": "static", "target": 0.3}}
    exact = speed.build_path({"id": "a", "round_to_vector": False, **spec})
    rounded = speed.build_path({"id": "b", **spec})
    assert "not rounded" in exact.description and "lanes)" in exact.description
    assert f"rounded to {C.vector_width()} lanes" in rounded.description and "not rounded" not in rounded.description
    assert exact.info["internal_channels"][0] <= rounded.info["internal_channels"][0]


def test_the_speed_up_is_the_paired_median_inside_its_own_iqr():
    # a machine that slows down between repetitions: the repetitions' ratios are 2, 2, 0.11, 1.11, 1.11, but the
    # medians of the two columns come from different repetitions (10 ms vs 90 ms), a ratio no repetition measured
    ref, fast = [10, 10, 10, 100, 100], [5, 5, 90, 90, 90]
    r = speed._ratio_stats(ref, fast)
    assert r["median"] == pytest.approx(100 / 90) and r["q1"] <= r["median"] <= r["q3"]
    assert r["ratio_of_medians"] == pytest.approx(10 / 90)


def _old_schema_results():
    return {"machine": {"cpu": "cpu", "cores": 2}, "threads": 1, "torch": "t", "reps": 20, "warmup": 3,
            "load_before": [0, 0, 0], "load_after": [0, 0, 0], "inputs": "x", "note": "",
            "paths": {"p": {"description": "d", "variants": {"fast": "f"}, "info": {}, "rows": [
                {"batch": 1, "size": 32,
                 "ms": {"dense": {"median_ms": 10.0, "iqr_ms": 1.0}, "fast": {"median_ms": 8.0, "iqr_ms": 1.0}},
                 "ratios": [{"fast": "fast", "reference": "dense", "median": 1.25, "per_repeat_median": 1.5,
                             "q1": 1.4, "q3": 1.6, "iqr": 0.2, "macs_limit": 2.0}]}]}}}


def test_a_results_file_of_the_old_schema_renders_its_paired_median(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps(_old_schema_results()))
    doc = tmp_path / "doc.md"
    doc.write_text("# d\n\n<!-- speed -->\nold\n<!-- /speed -->\ntail\n")
    speed.main(speed_args(["--render", str(f), "--docs", str(doc)]))
    md = (tmp_path / "results.md").read_text()
    assert "| **1.50×** | 1.40–1.60 | 2.00× |" in md and "1.25" not in md
    assert "**1.50×**" in doc.read_text() and doc.read_text().endswith("tail\n")
    assert json.loads(f.read_text()) == _old_schema_results()           # the results file is left as it is


def test_render_refuses_before_writing(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps(_old_schema_results()))
    with pytest.raises(ConfigError, match="no such results file"):
        speed.render(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="missing.md: no such file"):
        speed.render(f, [str(tmp_path / "missing.md")])
    assert not (tmp_path / "results.md").exists()
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        speed.render(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="not a solo-sparse speed results file"):
        speed.render(tmp_path / "other.json")


def speed_args(argv):
    import argparse

    a = argparse.ArgumentParser()
    speed.add_arguments(a)
    return a.parse_args(argv)


def test_the_variants_take_turns_running_first():
    import torch
    import torch.nn as nn

    order = []

    class Rec(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x

    p = speed.SpeedPath(id="p", kind="k", description="d", dense=Rec("dense"),
                        variants=[speed.Variant("a", Rec("a"), "a"), speed.Variant("b", Rec("b"), "b")],
                        ratios=[("a", "dense"), ("b", "dense")], limit=lambda *_: {})
    out = speed.time_group([p], 1, 32, torch.zeros(4, 3, 32, 32), reps=6, warmup=0, progress=lambda *_: None)
    timed = order[3:]                                   # after the one untimed pass that sizes the ETA
    firsts = [timed[i] for i in range(0, 18, 3)]
    assert firsts == ["dense", "a", "b", "dense", "a", "b"]
    assert all(len(v) == 6 for v in out["p"].values())

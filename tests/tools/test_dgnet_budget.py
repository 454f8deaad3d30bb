"""scripts/dgnet_budget.py: FLOPs against the target of a dgnet suite's gated rows, derived from the whole-network
MACs ratio each row recorded; checked on a static row, whose budget ratio is known from its solved share."""
import json

import pytest
import torch
from helpers import load_script

from solo_sparse.engine.resnet import build_resnet
from solo_sparse.gating.dgnet import convert_resnet, measure, set_static_keep


def test_a_static_rows_budget_ratio_is_the_share_it_was_solved_for(tmp_path, capsys):
    net = convert_resnet(build_resnet("resnet18"), control="static")
    reached = set_static_keep(net, 0.3, size=64)
    whole = measure(net, torch.randn(2, 3, 64, 64))["network_macs_ratio"]
    rows = {f"static:gated/seed{s}": {"id": "static:gated", "seed": s, "status": "ok", "path": "gated",
                                      "inference_macs_ratio": whole, "overrides": ["++solo_sparse.target=0.3"]}
            for s in range(2)}
    rows["dense/seed0"] = {"id": "dense", "seed": 0, "status": "ok", "path": None, "inference_macs_ratio": 1.0}
    rows["late:gated/seed0"] = {"id": "late:gated", "seed": 0, "status": "failed", "path": "gated"}
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"suite": "dgnet", "image_size": 64}, "rows": rows}))
    script = load_script("dgnet_budget")
    assert script.main([str(res), "--arch", "resnet18", "--out", str(tmp_path / "b.json")]) == 0
    out = json.loads((tmp_path / "b.json").read_text())
    assert list(out["rows"]) == ["static:gated"]                # gated rows that finished only
    r = out["rows"]["static:gated"]
    assert r["target"] == 0.3 and r["arch"] == "resnet18"
    assert r["mean"] == pytest.approx(reached, abs=1e-6) and r["std"] == 0.0
    assert r["seeds"]["0"]["network_macs_ratio"] == whole
    assert f"| static:gated | 0.3 | s0: {reached:.3f}, s1: {reached:.3f} |" in capsys.readouterr().out


def test_no_gated_row_is_an_error(tmp_path, capsys):
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"image_size": 64}, "rows": {}}))
    assert load_script("dgnet_budget").main([str(res)]) == 1
    assert "no gated rows" in capsys.readouterr().err


def _static_row(whole, seed=0, **extra):
    from solo_sparse.core.registry import get_plugin

    return {"id": "static:gated", "seed": seed, "status": "ok", "path": "gated", "inference_macs_ratio": whole,
            "plugins": ["dgnet_dual"], "cost_versions": {"dgnet_dual": get_plugin("dgnet_dual").cost_version},
            "config": "scripts/configs/c.yaml", "overrides": ["++solo_sparse.target=0.3"], **extra}


def test_each_rows_backbone_and_stem_come_from_the_config_it_trained_with(tmp_path, capsys, monkeypatch):
    """A CIFAR config (its 3x3 stride-1 stem, no max-pool) gives its own budget ratio: read from the row's config
    found in the results file's repository, not assumed; the ImageNet stem would give another number."""
    net = convert_resnet(build_resnet("resnet18", cifar_stem=True), control="static")
    reached = set_static_keep(net, 0.3, size=32)
    whole = measure(net, torch.randn(2, 3, 32, 32))["network_macs_ratio"]
    repo = tmp_path / "repo"
    (repo / "scripts" / "configs").mkdir(parents=True)
    (repo / "scripts" / "configs" / "c.yaml").write_text("backbone:\n  name: resnet18\ndata:\n  dataset: cifar10\n")
    res = repo / "results" / "dgnet" / "results.json"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"meta": {"suite": "dgnet", "image_size": 32},
                               "rows": {"static:gated/seed0": _static_row(whole)}}))
    monkeypatch.chdir(tmp_path)                                   # found through the results file's repository
    script = load_script("dgnet_budget")
    assert script.main([str(res), "--out", str(tmp_path / "b.json")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())["rows"]["static:gated"]
    assert r["arch"] == "resnet18 (cifar stem)" and r["mean"] == pytest.approx(reached, abs=1e-6)
    assert script.main([str(res), "--arch", "resnet18", "--out", str(tmp_path / "w.json")]) == 0
    wrong = json.loads((tmp_path / "w.json").read_text())["rows"]["static:gated"]["mean"]
    assert abs(wrong - reached) > 0.01                            # the stem matters: assuming it is wrong
    capsys.readouterr()
    res.write_text(json.dumps({"meta": {"suite": "dgnet", "image_size": 32},
                               "rows": {"static:gated/seed0": _static_row(whole, config="scripts/configs/gone.yaml")}}))
    assert script.main([str(res)]) == 1
    assert "static:gated/seed0: its config 'scripts/configs/gone.yaml' is not under" in capsys.readouterr().err


def test_a_row_counted_with_an_older_cost_count_is_refused(tmp_path, capsys):
    from solo_sparse.core.registry import get_plugin

    now = get_plugin("dgnet_dual").cost_version
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"suite": "dgnet", "image_size": 64}, "rows": {
        "static:gated/seed0": _static_row(0.4, cost_versions={"dgnet_dual": now - 1})}}))
    assert load_script("dgnet_budget").main([str(res), "--arch", "resnet18"]) == 1
    err = capsys.readouterr().err
    assert f"static:gated/seed0: cost_versions {{'dgnet_dual': {now - 1}}}" in err
    assert f"current cost count {{'dgnet_dual': {now}}}" in err

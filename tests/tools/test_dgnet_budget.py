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
    assert script.main([str(res), "--out", str(tmp_path / "b.json")]) == 0
    out = json.loads((tmp_path / "b.json").read_text())
    assert list(out["rows"]) == ["static:gated"]                # gated rows that finished only
    r = out["rows"]["static:gated"]
    assert r["target"] == 0.3 and r["mean"] == pytest.approx(reached, abs=1e-6) and r["std"] == 0.0
    assert r["seeds"]["0"]["network_macs_ratio"] == whole
    assert f"| static:gated | 0.3 | s0: {reached:.3f}, s1: {reached:.3f} |" in capsys.readouterr().out


def test_no_gated_row_is_an_error(tmp_path, capsys):
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"image_size": 64}, "rows": {}}))
    assert load_script("dgnet_budget").main([str(res)]) == 1
    assert "no gated rows" in capsys.readouterr().err

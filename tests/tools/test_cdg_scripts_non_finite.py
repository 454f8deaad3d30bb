"""The CDG proxy scripts keep their sweep when a variant's features overflow (:class:`NonFiniteFeatures`): the row
records why it has no accuracy, and the summary leaves it out of the means and the pairs instead of scoring NaN."""
import json

import torch
from helpers import load_script

from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools.evaluate import NonFiniteFeatures


def _overflow(*a, **k):
    raise NonFiniteFeatures("5 of 8 images give non-finite features")


def test_cdg_proxy_row_without_accuracy_and_summary_without_it(monkeypatch):
    mod = load_script("cdg_proxy")
    monkeypatch.setattr(mod, "extract_features", _overflow)
    torch.manual_seed(0)
    run = {"online": build_resnet("resnet18").eval(), "plugin": None, "momentum": None, "logs": {}, "train_s": 1.0}
    x = torch.randn(4, 3, 32, 32)
    row = mod.evaluate(run, (x, torch.zeros(4)), (x, torch.zeros(4)), x)
    assert row["linear"] is None and "5 of 8 images" in row["error"]
    assert row["shift"] >= 0                                  # the other measurements still come
    rows = {f"simclr/{v}/seed{s}/steps80": {"linear": acc} for v, accs in
            (("dense", (80.0, 81.0, 82.0)), ("cdg", (81.0, 82.5, 83.0))) for s, acc in enumerate(accs)}
    rows["simclr/cdg/seed1/steps80"] = row
    md = mod.summary({"rows": rows}, "simclr", 80)
    assert "nan" not in md.lower()
    assert "| cdg | 3 | 82.00 ± 1.41 |" in md                 # the mean of seeds 0 and 2 only
    assert "| cdg − dense | +1.00, +1.00 |" in md             # seed 1 left out of the pairs
    assert "- cdg seed 1: 5 of 8 images give non-finite features" in md


def test_cdg_diagnostics_init_keeps_the_other_targets(monkeypatch, tmp_path):
    mod = load_script("cdg_diagnostics")
    calls = []

    def evaluate(net, train, test):
        calls.append(1)
        if len(calls) == 2:
            _overflow()
        return {"linear": 0.5}

    x = torch.randn(2, 3, 32, 32)
    monkeypatch.setattr(mod, "load_splits", lambda data, px: ((x, torch.zeros(2)), (x, torch.zeros(2))))
    monkeypatch.setattr(mod, "evaluate_backbone", evaluate)
    out = tmp_path / "init.json"
    assert mod.main(["init", "--data", str(tmp_path), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(calls) == 1 + len(mod.TARGETS)
    errors = [n for n, r in rows.items() if "error" in r]
    assert len(errors) == 1 and "5 of 8 images" in rows[errors[0]]["error"]

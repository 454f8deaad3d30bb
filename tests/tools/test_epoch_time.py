"""``solo-sparse epoch-time``: seconds per training epoch of a suite's rows at equal batch, the ratio to the run's
dense row paired by seed, the label that it is not a paper's batch-scaled GPU-days, the docs block; bad input."""
import json

import pytest

from solo_sparse.tools import epoch_time as ET


def _results():
    rows = {}

    def add(rid, seed, secs, epochs=12, **kw):
        rows[f"{rid}/seed{seed}"] = {"id": rid, "seed": seed, "kind": "pretrain", "status": "ok",
                                     "wall_clock_s": secs, "epochs": epochs, **kw}

    for s, (d, pb) in enumerate([(120.0, 60.0), (132.0, 72.0), (126.0, 63.0)]):
        add("simclr-dense", s, d)
        add("simclr-pbhp", s, pb)
        add("moco-dense", s, 2 * d, reused_from="cdg/moco-dense/seed0")
        add("moco-pbhp:gated", s, d, path="gated")      # an evaluation path: one training
        add("moco-pbhp:dense", s, d, path="dense")
    rows["random-init/seed0"] = {"id": "random-init", "seed": 0, "kind": "random-init", "status": "ok",
                                 "wall_clock_s": 0.0}
    rows["simclr-pbhp/seed9"] = {"id": "simclr-pbhp", "seed": 9, "kind": "pretrain", "status": "failed",
                                 "wall_clock_s": 5.0, "epochs": 12}
    return {"meta": {"suite": "toy"}, "rows": rows}


def test_seconds_per_epoch_and_paired_ratios():
    res = _results()
    per = ET.seconds_per_epoch(res)
    assert set(per) == {"simclr-dense", "simclr-pbhp", "moco-dense", "moco-pbhp"}
    assert per["simclr-dense"] == {0: 10.0, 1: 11.0, 2: 10.5} and per["moco-pbhp"][1] == 11.0
    r = ET.ratio_stats(per["simclr-pbhp"], per["simclr-dense"])
    assert r["ratios"] == pytest.approx([0.5, 72 / 132, 0.5]) and r["lo"] < r["mean"] < r["hi"]
    md = ET.to_markdown(res)
    assert "| simclr-pbhp | s0: 5.0, s1: 6.0, s2: 5.2 | 5.4 ± 0.5 | ×0.515 ± 0.026" in md
    assert "(simclr-dense) |" in md and "| moco-pbhp |" in md and "×0.500" in md and "(moco-dense)" in md
    assert "moco-dense (trained in suite `cdg`)" in md
    assert "Not comparable with a paper's GPU-days at a scaled batch size" in md and "equal batch" in md
    assert "random-init" not in md


def test_cli_prints_and_updates_docs(tmp_path, capsys):
    from solo_sparse.tools.cli import main

    p = tmp_path / "results.json"
    p.write_text(json.dumps(_results()))
    assert main(["epoch-time", str(p)]) == 0
    assert "Suite `toy`" in capsys.readouterr().out
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- epoch-time:toy -->\nold\n<!-- /epoch-time:toy -->\nb\n")
    assert main(["epoch-time", str(p), "--update-docs", str(doc)]) == 0
    text = doc.read_text()
    assert "old" not in text and "| simclr-pbhp |" in text and text.endswith("<!-- /epoch-time:toy -->\nb\n")
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["epoch-time", str(bad)]) == 2
    assert "not a benchmark results.json" in capsys.readouterr().err


def test_a_seed_trained_on_two_machines_is_left_out_of_the_ratio():
    res = _results()
    res["rows"]["simclr-dense/seed1"]["train_machine"] = "Intel(R) Xeon(R) Processor (2 cores, avx512)"
    res["rows"]["simclr-pbhp/seed1"]["train_machine"] = "AMD EPYC (2 cores, avx2)"
    res["rows"]["simclr-pbhp/seed2"]["train_machine"] = "AMD EPYC (2 cores, avx2)"   # dense seed 2: unrecorded
    per, machines = ET.seconds_per_epoch(res), ET.train_machines(res)
    r = ET.ratio_stats(per["simclr-pbhp"], per["simclr-dense"], machines["simclr-pbhp"], machines["simclr-dense"])
    assert r["seeds"] == [0, 2] and r["skipped"] == [1] and r["ratios"] == pytest.approx([0.5, 0.5])
    md = ET.to_markdown(res)
    assert "(seed 1 left out: trained on different machines)" in md
    assert "Train wall-clock measured on 3 machines" in md and "AMD EPYC (2 cores, avx2): 2" in md
    # one machine everywhere (or none recorded): no note, every seed paired
    for r in res["rows"].values():
        r.pop("train_machine", None)
    md = ET.to_markdown(res)
    assert "left out" not in md and "machines" not in md

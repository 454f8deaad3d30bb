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
    rows = res["rows"]                            # one seed from another suite, one trained here: named per seed
    rows["moco-dense/seed0"]["reused_from"] = "regime-probe/moco-q1024/seed0"
    del rows["moco-dense/seed2"]["reused_from"]
    assert "| moco-dense (trained in suite `cdg` (s1); `regime-probe` (s0); here (s2)) |" in ET.to_markdown(res)
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


def test_a_seed_whose_trainings_do_not_share_a_recorded_machine_is_left_out_of_the_ratio():
    res = _results()
    intel, amd = "Intel(R) Xeon(R) Processor (2 cores, avx512)", "AMD EPYC (2 cores, avx2)"
    res["rows"]["simclr-dense/seed1"]["train_machine"] = intel
    res["rows"]["simclr-pbhp/seed1"]["train_machine"] = amd                 # two machines
    res["rows"]["simclr-pbhp/seed2"]["train_machine"] = amd                 # dense seed 2 records none
    per, machines = ET.seconds_per_epoch(res), ET.train_machines(res)
    r = ET.ratio_stats(per["simclr-pbhp"], per["simclr-dense"], machines["simclr-pbhp"], machines["simclr-dense"])
    assert r["seeds"] == [0] and r["skipped"] == [1, 2] and r["ratios"] == pytest.approx([0.5])
    md = ET.to_markdown(res)
    assert "×0.500 (1 seed) (seed 1, 2 left out: its two trainings do not share a recorded machine)" in md
    assert "Train wall-clock from more than one machine" in md and f"{amd}: 2; {intel}: 1; not recorded" in md
    # neither side recorded (every row before 2026-12-07): paired as before, no note
    for r in res["rows"].values():
        r.pop("train_machine", None)
    md = ET.to_markdown(res)
    assert "left out" not in md and "more than one machine" not in md and "×0.515 ± 0.026" in md


def test_the_machines_note_counts_a_reused_training_and_only_the_rows_its_table_shows():
    from solo_sparse.tools.stats import machines_note

    rows = {"d/seed0": {"id": "d", "seed": 0, "status": "ok", "wall_clock_s": 9.0, "train_machine": "A",
                        "reused_from": "other/d/seed0"},
            "p:gated/seed0": {"id": "p:gated", "path": "gated", "seed": 0, "status": "ok", "wall_clock_s": 5.0,
                              "train_machine": "B"},
            "p:dense/seed0": {"id": "p:dense", "path": "dense", "seed": 0, "status": "ok", "wall_clock_s": 5.0,
                              "train_machine": "B"}}
    assert machines_note({"rows": rows})[1].startswith("Train wall-clock from more than one machine (trainings per "
                                                       "machine — A: 1; B: 1)")
    rows["d/seed0"]["train_machine"] = "B"
    assert machines_note({"rows": rows}) == []
    res = _results()             # a label re-training row on another machine is not in the epoch-time table
    res["rows"]["x/seed0"] = {"id": "x", "seed": 0, "kind": "retrain", "status": "ok", "wall_clock_s": 3.0,
                              "epochs": 1, "train_machine": "A"}
    assert "more than one machine" not in ET.to_markdown(res)

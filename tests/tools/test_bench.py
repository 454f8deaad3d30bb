"""The benchmark harness (solo_sparse.tools.bench) end to end without solo-learn: a suite file, a fake
main_pretrain.py that writes a solo-learn-shaped checkpoint (a ResNet-18 backbone, gmp-style masks and plugin
state, args.json), resumability, the one row schema, the outputs (json, markdown, PNG, doc blocks) and no
machine path in what is written."""
import json
import re
import sys
from pathlib import Path

import pytest
from helpers import FAKE_PRETRAIN as FAKE
from helpers import make_image_folder

from solo_sparse.core.config import ConfigError
from solo_sparse.tools.bench import ROW_KEYS, Bench, Suite, to_markdown, update_docs


@pytest.fixture
def setup(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts" / "suites").mkdir(parents=True)
    (repo / "cfg.yaml").write_text("method: x\n")
    suite = repo / "scripts" / "suites" / "toy.yaml"
    suite.write_text("""
suite: toy
description: "a toy suite"
data: tiny
size: 32
seeds: 2
overrides: ["++max_epochs=2"]
runs:
  - id: dense
    config: cfg.yaml
  - id: gmp
    config: cfg.yaml
    overrides: ["+solo_sparse=gmp"]
  - id: broken
    config: cfg.yaml
    overrides: ["++fail=yes"]
    seeds: 1
""")
    make_image_folder(tmp_path / "data" / "tiny", train_per_class=4, val_per_class=2)
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "main_pretrain.py").write_text(FAKE)
    return repo, suite, solo, tmp_path


@pytest.mark.slow   # measured 40-85 s on 2 busy cores (pytest --durations)
def test_suite_runs_resumes_and_writes_pathless_outputs(setup, capsys):
    repo, suite, solo, tmp = setup
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    assert [(s.id, k) for s, k in b.plan()] == [("dense", 0), ("gmp", 0), ("broken", 0), ("dense", 1), ("gmp", 1)]
    res = b.run()
    out = capsys.readouterr().out
    assert "run 1/5: dense seed 0" in out and "run 5/5: gmp seed 1" in out and "ETA" in out
    rows = res["rows"]
    assert set(rows) == {"random-init/seed0", "random-init/seed1", "dense/seed0", "dense/seed1", "gmp/seed0",
                         "gmp/seed1", "broken/seed0"}
    g = rows["gmp/seed0"]
    assert g["status"] == "ok" and g["density_online"] == pytest.approx(0.1, abs=0.05) and g["method"] == "fakemethod"
    assert g["inference_macs_ratio"] < 1.0 and g["training_macs_ratio"] < 1.0 and g["epochs"] == 2
    assert g["csi"]["steps"] == [5] and all(set(ROW_KEYS) <= set(r) for r in rows.values())   # one schema
    assert rows["broken/seed0"]["status"] == "failed" and "exit 3" in rows["broken/seed0"]["error"]
    from solo_sparse.engine.costmodel import machine_tag

    assert g["train_machine"] == rows["broken/seed0"]["train_machine"] == machine_tag()   # beside its wall-clock
    assert rows["random-init/seed0"]["train_machine"] is None
    assert g["monitor"]["pos"] == [0.8] and g["monitor"]["online_momentum_cos"] == [0.91]
    assert rows["dense/seed0"]["monitor"] is None
    assert (repo / "results" / "toy" / "monitor.png").stat().st_size > 1000
    # no machine path anywhere in the outputs
    written = "".join((repo / "results" / "toy" / f).read_text() for f in ("results.json", "results.md"))
    for path in (str(tmp), str(repo), sys.executable):
        assert path not in written
    assert "<solo-learn>/main_pretrain.py" in rows["dense/seed0"]["command"]
    assert (repo / "results" / "toy" / "toy.png").stat().st_size > 1000
    md = to_markdown(res)
    assert "| gmp | 2 |" in md and "Regime: dense − random-init" in md and "failed: broken" in md
    assert "(dense ±" in md and "over 2 seeds" in md
    # a re-run trains nothing that is done: only the failed row is tried again
    b2 = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    assert [(s.id, k) for s, k in b2.plan()] == [("broken", 0)]
    # a row written before rows carried the monitor gets it from its run's log
    del b2.results["rows"]["gmp/seed1"]["monitor"]
    b2.backfill()
    assert b2.results["rows"]["gmp/seed1"]["monitor"]["neg"] == [0.2]
    # and a CSI curve read by an older harness (one point per logger step) is re-read from the run's log
    b2.results["rows"]["gmp/seed1"]["csi"] = {"steps": [99, 99], "I": [0.5, 0.3], "r": [0.0, 0.0], "timed_out": False}
    b2.backfill()
    assert b2.results["rows"]["gmp/seed1"]["csi"]["steps"] == [5]
    # the run folder comes from the row's checkpoint: a run id may contain ':' (as 'synccp-2:4' does)
    odd = {**b2.results["rows"]["gmp/seed1"], "id": "gmp-2:4", "csi": {"steps": [9], "I": [0.1], "r": [0.1],
                                                                         "timed_out": False}}
    assert odd["checkpoint"].startswith("runs/gmp/seed1/")
    b2.results["rows"]["gmp-2:4/seed1"] = odd
    b2.backfill()
    assert b2.results["rows"]["gmp-2:4/seed1"]["csi"]["steps"] == [5]
    del b2.results["rows"]["gmp-2:4/seed1"]
    # changing a run's overrides invalidates exactly its rows
    suite.write_text(suite.read_text().replace('["+solo_sparse=gmp"]', '["+solo_sparse=gmp", "++x=1"]'))
    b3 = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    assert [(s.id, k) for s, k in b3.plan()] == [("gmp", 0), ("broken", 0), ("gmp", 1)]
    # generated doc blocks
    doc = tmp / "doc.md"
    doc.write_text("x\n<!-- bench:toy -->\nold\n<!-- /bench:toy -->\n<!-- bench-regime:toy -->\n<!-- /bench-regime:toy -->\n")
    md = repo / "results" / "toy" / "results.md"
    current = md.read_text()
    md.write_text("a results.md from an older renderer\n")
    assert update_docs([repo / "results" / "toy" / "results.json"], [doc]) == [md, doc]
    text = doc.read_text()
    assert "old" not in text and "| gmp | 2 |" in text and "over random-init features" in text
    assert md.read_text() == current                          # re-rendered: what the bench run wrote
    assert update_docs([repo / "results" / "toy" / "results.json"], [doc]) == []     # nothing left to change


def test_a_diverged_checkpoint_is_a_failed_row_and_the_bench_goes_on(setup, capsys):
    repo, _, solo, tmp = setup
    suite = repo / "scripts" / "suites" / "nan.yaml"
    suite.write_text("""
suite: nan
description: "a diverged run and a good one"
data: tiny
size: 32
seeds: 1
random_init: false
runs:
  - id: diverged
    config: cfg.yaml
    overrides: ["++nan=yes"]
  - id: dense
    config: cfg.yaml
""")
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out", log=print)
    rows = b.run()["rows"]
    bad = rows["diverged/seed0"]
    assert bad["status"] == "failed" and "backbone tensors are not finite (first: conv1.weight)" in bad["error"]
    assert rows["dense/seed0"]["status"] == "ok"
    assert "diverged/seed0: not evaluated" in capsys.readouterr().out
    assert [(s.id, k) for s, k in Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo,
                                        out=tmp / "out").plan()] == [("diverged", 0)]     # tried again next time


def test_an_evaluation_path_that_overflows_is_a_failed_row_re_evaluated_not_re_trained(setup, capsys):
    """Finite weights whose features overflow float32 (FBS's evaluation path can: docs/plugins/cdg.md) get no
    accuracy computed from inf/NaN features: the row fails naming the cause, the bench goes on, and the next run
    evaluates the same checkpoint again without training it again."""
    repo, _, solo, tmp = setup
    suite = repo / "scripts" / "suites" / "inf.yaml"
    suite.write_text("""
suite: inf
description: "an overflowing evaluation path and a good run"
data: tiny
size: 32
seeds: 1
random_init: false
runs:
  - id: overflow
    config: cfg.yaml
    overrides: ["++overflow=yes"]
  - id: dense
    config: cfg.yaml
""")
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out", log=print)
    rows = b.run()["rows"]
    bad = rows["overflow/seed0"]
    assert bad["status"] == "failed" and bad["trained"] is True and bad.get("linear") is None
    assert "non-finite features on the network's evaluation path" in bad["error"]
    assert rows["dense/seed0"]["status"] == "ok"
    assert "overflow/seed0: not evaluated" in capsys.readouterr().out
    ck = next((tmp / "out" / "runs" / "overflow" / "seed0").rglob("*.ckpt"))
    stamp = ck.stat().st_mtime_ns
    again = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out", log=print)
    assert [(s.id, k) for s, k in again.plan()] == [("overflow", 0)]
    assert again.run()["rows"]["overflow/seed0"]["status"] == "failed"
    assert ck.stat().st_mtime_ns == stamp          # evaluated again, not trained again


def test_a_multi_path_run_keeps_its_training_until_every_path_is_evaluated(setup, monkeypatch):
    """One evaluation path overflows, the other does not: the good path's row is kept, the training row stays,
    the next run evaluates again without training, and once every path is evaluated the training row goes."""
    import torch

    import solo_sparse.tools.bench.harness as harness_mod

    repo, _, solo, tmp = setup
    suite = repo / "scripts" / "suites" / "paths.yaml"
    suite.write_text("""
suite: paths
description: "two evaluation paths"
data: tiny
size: 32
seeds: 1
random_init: false
runs:
  - id: two
    config: cfg.yaml
    eval_paths: [a, b]
""")
    real = harness_mod.load_backbone

    class Inf(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * float("inf")

    def b_overflows(path, name="resnet18", gated_path=None, **k):
        net, info = real(path, name, **k)
        return (Inf(net) if gated_path == "b" else net), info

    monkeypatch.setattr(harness_mod, "load_backbone", b_overflows)
    rows = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out").run()["rows"]
    assert rows["two:a/seed0"]["status"] == "ok" and rows["two:b/seed0"]["status"] == "failed"
    assert rows["two/seed0"]["status"] == "trained"
    ck = next((tmp / "out" / "runs" / "two" / "seed0").rglob("*.ckpt"))
    stamp = ck.stat().st_mtime_ns
    again = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out")
    assert [(s.id, k) for s, k in again.plan()] == [("two", 0)]
    assert again.run()["rows"]["two:b/seed0"]["status"] == "failed"
    monkeypatch.setattr(harness_mod, "load_backbone", real)
    rows = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out").run()["rows"]
    assert rows["two:a/seed0"]["status"] == rows["two:b/seed0"]["status"] == "ok" and "two/seed0" not in rows
    assert ck.stat().st_mtime_ns == stamp          # evaluated three times, trained once
    from solo_sparse.engine.costmodel import machine_tag

    assert rows["two:a/seed0"]["train_machine"] == rows["two:b/seed0"]["train_machine"] == machine_tag()
    # evaluated again (--eval-only) once the per-path rows replaced the training row: the training's time and
    # machine come from a path row
    res_file = tmp / "out" / "results.json"
    data = json.loads(res_file.read_text())
    wall = data["rows"]["two:a/seed0"]["wall_clock_s"]
    for k in ("two:a/seed0", "two:b/seed0"):
        data["rows"][k].update(status="stale", train_machine="An earlier machine")
    res_file.write_text(json.dumps(data))
    rows = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out", eval_only=True).run()["rows"]
    assert rows["two:a/seed0"]["status"] == "ok" and rows["two:a/seed0"]["wall_clock_s"] == wall
    assert rows["two:a/seed0"]["train_machine"] == rows["two:b/seed0"]["train_machine"] == "An earlier machine"
    assert ck.stat().st_mtime_ns == stamp


def test_a_plot_that_fails_is_logged_and_the_results_are_still_saved(setup, monkeypatch):
    """A picture never stops a long suite: a plotting error is logged by name, the results were written first."""
    import solo_sparse.tools.bench.harness as harness

    repo, suite, solo, tmp = setup
    logs = []
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, out=tmp / "out", log=logs.append)

    def broken(*_a, **_k):
        raise ValueError("axis limits must be finite")

    monkeypatch.setattr(harness, "plot_claims", broken)
    b.save()
    assert (tmp / "out" / "results.json").is_file() and (tmp / "out" / "results.md").is_file()
    assert logs == ["[bench toy] plots not drawn: ValueError: axis limits must be finite"]


def test_non_finite_features_are_refused_with_how_many_and_which():
    import torch

    from solo_sparse.tools.evaluate import NonFiniteFeatures, extract_features

    class Net(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) * torch.where(x.flatten(1)[:, :1] > 0, float("inf"), 1.0)

    x = -torch.ones(6, 1, 2, 2)
    assert torch.isfinite(extract_features(Net(), x, batch_size=4)).all()
    x[4] = 1.0
    with pytest.raises(NonFiniteFeatures, match=r"1 of 6 images .* \(first: image 4; largest finite \|feature\| 1\)"):
        extract_features(Net(), x, batch_size=4)


def test_rows_of_another_configuration_are_marked_stale_whatever_only_and_seeds_select(setup):
    """A row trained under another configuration leaves the tables even when the bench is asked for other runs
    or fewer seeds: a re-trained row is never paired with it (a synccp row re-trained with --only beside an
    old granet row would be)."""
    repo, suite, solo, tmp = setup
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    specs = {s.id: s for s in b.suite.runs}
    rows = b.results["rows"]
    for rid in ("dense", "gmp"):
        for seed in (0, 1):
            rows[f"{rid}/seed{seed}"] = {"id": rid, "seed": seed, "status": "ok",
                                         "fingerprint": b.fingerprint(specs[rid], seed)}
    rows["gmp/seed1"]["fingerprint"] = "an older configuration"
    # a row with a derived id and fingerprint (as IMP's per-round rows): left to its own driver
    rows["gmp:retrain-ticket-r1/seed0"] = {"id": "gmp:retrain-ticket-r1", "seed": 0, "status": "ok",
                                           "fingerprint": "derived"}
    b.save()
    b2 = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print, seeds=1, only=["dense"])
    assert b2.plan() == []
    status = {k: r["status"] for k, r in b2.results["rows"].items()}
    assert status == {"dense/seed0": "ok", "dense/seed1": "ok", "gmp/seed0": "ok", "gmp/seed1": "stale",
                      "gmp:retrain-ticket-r1/seed0": "ok"}


@pytest.mark.parametrize("text,match", [
    ("suite: x\nruns: []\n", "non-empty 'runs'"),
    ("suite: x\nbogus: 1\nruns: [{id: a, config: nope.yaml}]\n", "unknown suite key"),
    ("suite: x\nruns: [{id: a, config: nope.yaml}]\n", "config 'nope.yaml' not found"),
    ("suite: x\nruns: [{id: a, kind: rounds}]\n", "needs 'plugin'"),
    ("suite: x\nruns: [{id: a, config: cfg.yaml, eval_paths: [null, dense]}]\n", "null, the default path, only alone"),
])
def test_bad_suites_are_refused(tmp_path, text, match):
    s = tmp_path / "s.yaml"
    s.write_text(text)
    with pytest.raises(ConfigError, match=match):
        Suite.load(s)


def test_every_shipped_suite_loads():
    root = Path(__file__).resolve().parents[2] / "scripts" / "suites"
    suites = sorted(root.glob("*.yaml"))
    assert {p.stem for p in suites} >= {"synccp", "cdg", "main", "main-quick"}
    for p in suites:
        s = Suite.load(p)
        assert s.runs and json.dumps([r.id for r in s.runs])


@pytest.mark.slow   # measured 40-85 s on 2 busy cores (pytest --durations)
def test_the_same_training_in_another_suite_is_reused_not_trained_twice(setup, capsys):
    repo, suite, solo, tmp = setup
    Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, seeds=1, only=["dense"], log=print).run()
    other = repo / "scripts" / "suites" / "toy2.yaml"
    other.write_text("""
suite: toy2
data: tiny
size: 32
seeds: 1
random_init: false
overrides: ["++max_epochs=2"]
runs:
  - id: plain-dense
    config: cfg.yaml
  - id: plain-dense-longer
    config: cfg.yaml
    overrides: ["++max_epochs=3"]
""")
    from solo_sparse.tools.cli import main

    capsys.readouterr()
    assert main(["bench", str(other), "--dry-run", "--data-root", str(tmp / "data"), "--solo-learn", str(solo)]) == 0
    plan = capsys.readouterr().out
    assert "would reuse plain-dense seed 0: the same training is toy/dense/seed0" in plan, plan
    assert "would run plain-dense-longer seed 0" in plan
    res = Bench(Suite.load(other), data_root=tmp / "data", solo_dir=solo, log=print).run()
    out = capsys.readouterr().out
    row, first = res["rows"]["plain-dense/seed0"], json.loads((repo / "results" / "toy" / "results.json").read_text())
    assert row["reused_from"] == "toy/dense/seed0" and "reused" in out
    assert row["linear"] == first["rows"]["dense/seed0"]["linear"] and row["checkpoint"].startswith("../toy/runs/")
    assert not (repo / "results" / "toy2" / "runs" / "plain-dense").exists()          # nothing trained
    assert res["rows"]["plain-dense-longer/seed0"]["reused_from"] is None               # other overrides: trained
    assert (repo / "results" / "toy2" / "runs" / "plain-dense-longer").exists()
    assert "plain-dense = toy/dense" in (repo / "results" / "toy2" / "results.md").read_text()


def _rows(rid, values):
    return {f"{rid}/seed{i}": {"id": rid, "seed": i, "status": "ok", "linear": v / 100} for i, v in enumerate(values)}


def test_versus_dense_is_paired_by_seed_and_calls_only_what_the_interval_decides():
    """Seed-to-seed spread is large (79 / 81 / 83) but each seed's difference is the same: paired, it is decided;
    a difference whose interval contains 0 is shown without the mark."""
    from solo_sparse.tools.bench import aggregate, versus_dense

    res = {"rows": {**_rows("dense", [79.0, 81.0, 83.0]), **_rows("gmp", [78.5, 80.4, 82.6]),
                    **_rows("synccp", [79.5, 80.0, 83.4]), **_rows("moco-dense", [83.0, 83.0, 83.0]),
                    **_rows("moco-cdg", [82.0, 82.1, 81.9]), **_rows("one", [70.0])}}
    by = {a["id"]: a for a in aggregate(res)}
    assert versus_dense(by["gmp"], by, res) == "-0.50 ± 0.10 [-0.75, -0.25] *"          # inside the unpaired spread
    assert versus_dense(by["synccp"], by, res).endswith("]")                           # interval contains 0: no mark
    assert versus_dense(by["moco-cdg"], by, res).startswith("-1.00 ± 0.10")           # its own prefix's dense
    assert versus_dense(by["one"], by, res) == "-9.00 (1 seed)"
    assert versus_dense(by["dense"], by, res) == "-"


def test_rounds_rows_become_curves_per_evaluation_paired_with_the_ticket(tmp_path, monkeypatch):
    """IMP rows (kind rounds): one curve per ticket / control and evaluation, points sorted by round at the
    rows' density, each control paired with the ticket of its round and evaluation; other rows, failed rows and
    ids of another shape are left out; the plot is written only where such rows exist."""
    from solo_sparse.tools.bench import update_docs
    from solo_sparse.tools.bench.results import plot_rounds, rounds_curves, rounds_plot_digest
    from solo_sparse.tools.bench.suite import parse_round_row_id, round_row_id

    def rows(what, k, vals, retrain=False, density=None, status="ok"):
        rid = round_row_id("imp", what, k, retrain)
        return {f"{rid}/seed{i}": {"id": rid, "seed": i, "kind": "rounds", "status": status, "linear": v / 100,
                                   "density_online": 0.8 ** k if density is None else density}
                for i, v in enumerate(vals)}

    res = {"meta": {"suite": "imp"}, "rows": {
        **rows("ticket", 2, [80.0, 81.0, 82.0]), **rows("ticket", 0, [84.0, 84.0, 84.0]),
        **rows("ticket", 1, [83.0, 83.0, 83.0]), **rows("global_random", 1, [82.0, 81.5, 82.5]),
        **rows("ticket", 1, [90.0, 91.0, 92.0], retrain=True), **rows("global_random", 1, [89.0, 90.0, 91.0], True),
        **rows("layer_permutation", 1, [1.0], status="failed"),
        **{k: {**v, "kind": None} for k, v in rows("dense", 0, [85.0]).items()},   # a pretrain row
        "odd/seed0": {"id": "imp:ticket", "seed": 0, "kind": "rounds", "status": "ok", "linear": 0.5}}}
    c = rounds_curves(res)
    assert set(c) == {"imp"} and set(c["imp"]) == {"linear", "retrain"}
    assert set(c["imp"]["linear"]) == {"ticket", "global_random"}            # the failed control left out
    t = c["imp"]["linear"]["ticket"]
    assert [p["round"] for p in t] == [0, 1, 2] and [p["mean"] for p in t] == pytest.approx([84.0, 83.0, 81.0])
    assert t[2]["density"] == pytest.approx(0.64) and t[2]["std"] == pytest.approx(1.0) and t[2]["n"] == 3
    assert t[0]["vs_ticket"] is None
    g = c["imp"]["linear"]["global_random"][0]
    assert g["vs_ticket"]["mean"] == pytest.approx(-1.0) and g["vs_ticket"]["diffs"] == pytest.approx([-1, -1.5, -.5])
    assert c["imp"]["retrain"]["global_random"][0]["vs_ticket"]["diffs"] == pytest.approx([-1.0] * 3)
    assert parse_round_row_id(round_row_id("imp", "global_random", 3, True)) == {
        "run": "imp", "evaluation": "retrain", "what": "global_random", "round": 3}
    assert parse_round_row_id("dense") is None and parse_round_row_id("imp:ticket") is None
    assert plot_rounds(res, tmp_path / "r.png").stat().st_size > 0
    assert plot_rounds({"rows": rows("x", 1, [50.0], status="failed")}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    # --update-docs redraws <suite>-rounds.png only when what it shows changed (the digest kept in the PNG), and
    # removes it when no rounds row is left
    from solo_sparse.tools.bench import results as results_mod
    from solo_sparse.tools.report import png_data_digest

    folder = tmp_path / "results" / "imp"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(res))
    png = folder / "imp-rounds.png"
    assert png in update_docs([folder / "results.json"], []) and png_data_digest(png) == rounds_plot_digest(res)
    stamp = png.stat().st_mtime_ns
    assert update_docs([folder / "results.json"], []) == [] and png.stat().st_mtime_ns == stamp
    pre = rounds_plot_digest(res)
    assert rounds_plot_digest({**res, "rows": {**res["rows"], **rows("ticket", 1, [93.0], retrain=True)}}) != pre
    assert rounds_plot_digest({**res, "rows": {**res["rows"], "x": {**res["rows"]["odd/seed0"], "linear": 9}}}) == pre
    (folder / "results.json").write_text(json.dumps({**res, "rows": {**res["rows"], **rows("ticket", 2, [70.0])}}))
    assert png in update_docs([folder / "results.json"], []) and png_data_digest(png) not in (None, pre)
    monkeypatch.setattr(results_mod, "ROUNDS_PLOT_VERSION", results_mod.ROUNDS_PLOT_VERSION + 1)
    assert png in update_docs([folder / "results.json"], [])              # a new way of drawing: redrawn
    (folder / "results.json").write_text(json.dumps({"meta": {"suite": "imp"}, "rows": {}}))
    assert png in update_docs([folder / "results.json"], []) and not png.exists()    # no rounds left: removed
    # the rows table: a ticket against the round-0 ticket (the dense network), a control also against its round's
    # ticket, each within its evaluation; other rows keep the prefix rule
    table = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in to_markdown(res).splitlines() if ln.startswith("| imp:")}
    assert table["imp:ticket-r1"][3].startswith("-1.00 ± 0.00") and table["imp:ticket-r1"][4] == "-"
    assert table["imp:ticket-r0"][3] == "-" and table["imp:ticket-r0"][4] == "-"
    assert table["imp:global_random-r1"][4].startswith("-1.00 ± 0.50") and "(imp:ticket-r1)" in table[
        "imp:global_random-r1"][4]
    assert table["imp:global_random-r1"][3].startswith("-2.00 ± 0.50")
    assert table["imp:retrain-global_random-r1"][4].startswith("-1.00 ± 0.00") and "(imp:retrain-ticket-r1)" in table[
        "imp:retrain-global_random-r1"][4]
    assert table["imp:retrain-ticket-r1"][3] == "-"           # no re-trained round-0 ticket among these rows


def test_claim_verdicts_follow_the_paired_interval():
    from solo_sparse.tools import stats

    a, b = {0: 80.0, 1: 81.0, 2: 82.0}, {0: 79.0, 1: 80.1, 2: 80.9}
    p = stats.paired(a, b)
    assert p["n"] == 3 and abs(p["mean"] - 1.0) < 1e-9
    assert stats.verdict(p, 0.0) == "reproduced"                      # the whole interval above 0
    assert stats.verdict(stats.paired(b, a), 0.0) == "not reproduced"
    assert stats.verdict(p, 1.0) == "not decided"                     # the interval contains the margin
    assert stats.verdict(stats.paired({0: 1.0}, {0: 0.0}), 0.0) == "one seed: not decided"
    assert stats.verdict(None) == "not measured"
    two = stats.paired({0: 82.0, 1: 82.1}, {0: 80.0, 1: 80.0})          # +2.05, interval [+1.41, +2.69] clears 0
    assert two["lo"] > 0 and stats.verdict(two, 0.0) == "2 seeds: not decided"   # the project decides at 3 seeds
    assert stats.bound_verdict(two, "at_least", 1.0) == "2 seeds: not decided"
    assert stats.fmt(two).endswith("*")                               # the interval is still shown, and marked
    res = {"meta": {"suite": "s", "claims": [{"claim": "x >= y", "source": "P", "a": "x", "b": "y", "margin": -1}]},
           "rows": {**_rows("x", [80.0, 81.0, 82.0]), **_rows("y", [80.5, 81.4, 82.6])}}
    (row,) = stats.claim_rows(res)
    assert row["verdict"] == "reproduced" and row["paired"]["n"] == 3   # within 1 pt: -0.5 ± 0.1
    md = stats.claims_markdown([res])
    assert "| x >= y | P | `s`: x − y | -1.0 |" in md and "**reproduced**" in md


def test_seeds_to_decide_is_the_smallest_n_whose_interval_would_exclude_the_margin():
    """A planning estimate beside each undecided claim: with the measured mean and std held, the fewest seeds
    whose 95% interval clears the margin; nothing for a decided claim, '> 30' where the mean sits on the margin."""
    from solo_sparse.tools import stats

    p = stats.paired({0: 82.76, 1: 82.63}, {0: 83.20, 1: 82.85})       # -0.44, -0.22: -0.33 ± 0.16 [-1.73, +1.07]
    assert stats.verdict(p, -1.0) == "2 seeds: not decided"
    assert stats.seeds_to_decide(p, -1.0) == 3                          # 4.303 * 0.156 / sqrt(3) = 0.39 < 0.67
    wide = stats.paired({0: 1.0, 1: 0.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})   # +0.5 ± 0.5 vs margin 0
    n = stats.seeds_to_decide(wide, 0.0)                                # needs t(n-1) / sqrt(n) < 1
    assert n == 7 and stats.t975(n - 1) / n ** 0.5 < 1.0 <= stats.t975(n - 2) / (n - 1) ** 0.5
    assert stats.seeds_to_decide(stats.paired({0: 1.0, 1: -1.0}, {0: 0.0, 1: 0.0}), 0.0) is None   # mean on margin
    clear2 = stats.paired({0: 2.0, 1: 2.1}, {0: 0.0, 1: 0.0})         # clears 0 at 2 seeds: 3 would decide it
    assert stats.seeds_to_decide(clear2, 0.0) == stats.MIN_SEEDS == 3
    clear3 = stats.paired({0: 2.0, 1: 2.1, 2: 2.05}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert stats.verdict(clear3, 0.0) == "reproduced" and stats.seeds_to_decide(clear3, 0.0) is None   # decided
    res = {"meta": {"suite": "s", "claims": [{"claim": "c", "a": "x", "b": "y", "margin": -1},
                                             {"claim": "d", "a": "x", "b": "y", "margin": -0.33}]},
           "rows": {**_rows("x", [82.76, 82.63]), **_rows("y", [83.20, 82.85])}}
    md = stats.claims_markdown([res])
    assert "**2 seeds: not decided** | ~3 |" in md and "**2 seeds: not decided** | > 30 |" in md
    one = {"meta": res["meta"], "rows": {**_rows("x", [82.76]), **_rows("y", [83.20])}}
    assert "**one seed: not decided** | - |" in stats.claims_markdown([one])


def test_t_quantiles_match_the_table_and_known_values():
    from solo_sparse.tools import stats

    for df in range(1, 31):                                   # the 95% table, to its 3 decimals
        assert abs(stats.t_quantile(0.975, df) - stats.t975(df)) < 6e-4
    for q, df, want in ((0.995, 2, 9.925), (0.9975, 2, 14.089), (0.995, 4, 4.604), (0.999, 10, 4.144)):
        assert abs(stats.t_quantile(q, df) - want) < 1e-3
    assert stats.t_half(2, 1) == stats.t975(2) and abs(stats.t_half(2, 5) - 9.925) < 1e-3   # 1 - 0.05/5, two-sided
    with pytest.raises(ValueError, match="allowed: 0.5 < q < 1"):
        stats.t_quantile(1.0, 3)


def test_a_claim_of_a_family_is_decided_on_its_bonferroni_interval():
    """IMP's ticket >= random at five densities is one hypothesis swept: a member whose 95% interval clears the
    margin (+0.85 [+0.09, +1.62], seed 2's first result at density 0.64) is not called from among five — its
    family-of-5 interval [-0.91, +2.61] decides. Alone (no family) the same numbers are reproduced."""
    from solo_sparse.tools import stats

    a, b = {0: 80.81, 1: 80.57, 2: 81.18}, {0: 80.0, 1: 80.0, 2: 80.0}
    alone, fam = stats.paired(a, b), stats.paired(a, b, 5)
    assert alone["lo"] > 0 and stats.verdict(alone, 0.0) == "reproduced"
    assert fam["lo"] == alone["lo"] and fam["family_lo"] < 0 < fam["family_hi"]
    assert stats.verdict(fam, 0.0) == "not decided"
    assert abs(fam["family_hi"] - fam["mean"] - stats.t_quantile(1 - 0.005, 2) * fam["std"] / 3 ** 0.5) < 1e-9
    assert stats.seeds_to_decide(fam, 0.0) == next(                  # planned on the family's t
        n for n in range(4, 31) if stats.t_half(n - 1, 5) * fam["std"] / n ** 0.5 < fam["mean"]) == 5
    strong = stats.paired({0: 82.0, 1: 82.1, 2: 82.05}, {0: 80.0, 1: 80.0, 2: 80.0}, 5)
    assert stats.verdict(strong, 0.0) == "reproduced"                  # a clear one still is
    cos, zero = {0: 0.91, 1: 0.92, 2: 0.915}, {0: 0.0, 1: 0.0, 2: 0.0}    # 95%: [0.9026, ...]; family of 2: [0.897, ...]
    assert stats.bound_verdict(stats.paired(cos, zero), "at_least", 0.90) == "reproduced"
    assert stats.bound_verdict(stats.paired(cos, zero, 2), "at_least", 0.90) == "not decided"   # bounds: family too
    claims = [{"claim": f"d{k}", "a": f"t{k}", "b": f"r{k}", "margin": 0.0, "family": "sweep"} for k in range(5)]
    rows = {}
    for k in range(5):
        rows.update(_rows(f"t{k}", list(a.values())))
        rows.update(_rows(f"r{k}", list(b.values())))
    res = {"meta": {"suite": "s", "claims": claims + [{"claim": "single", "a": "t0", "b": "r0", "margin": 0.0}]},
           "rows": rows}
    by = {c["claim"]: c for c in stats.claim_rows(res)}
    assert [by[f"d{k}"]["verdict"] for k in range(5)] == ["not decided"] * 5 and by["d0"]["paired"]["m"] == 5
    assert by["single"]["verdict"] == "reproduced" and by["single"]["paired"]["m"] == 1
    md = stats.claims_markdown([res])
    assert "[+0.09, +1.62] *; family of 5: [-0.91, +2.61] | **not decided**" in md and "*Family of m*" in md
    unfamily = {k: v for k, v in claims[0].items() if k != "family"}
    assert "family of" not in stats.claims_markdown([{"meta": {"suite": "s", "claims": [unfamily]}, "rows": rows}])
    from solo_sparse.tools.bench.suite import _is_claim

    assert _is_claim(claims[0]) and not _is_claim({**claims[0], "family": "two words"})
    assert not _is_claim({**claims[0], "family": 3})


def test_a_sweep_mean_claim_is_one_difference_per_seed_averaged_over_its_pairs():
    """One question of a whole sweep: each seed's value is the mean of its paired differences (a seed missing any row
    is left out), decided on the 95% interval with no family correction. Here every member alone is undecided (its
    per-seed differences scatter), the mean of five is reproduced (their scatter cancels in the mean); declared
    post hoc, its verdict is marked so."""
    from solo_sparse.tools import stats

    diffs = {0: [2.0, -0.5, 2.0, -0.5, 2.0], 1: [-0.5, 2.0, -0.5, 2.0, 1.0], 2: [1.0, 1.0, 1.0, 0.5, -0.5]}
    rows = {}
    for k in range(5):
        rows.update(_rows(f"t{k}", [80.0 + diffs[s][k] for s in range(3)]))
        rows.update(_rows(f"r{k}", [80.0] * 3))
    rows.update(_rows("t9", [81.0, 81.0]))                       # seed 2 lacks one row of the sweep
    rows.update(_rows("r9", [80.0, 80.0]))
    members = [{"claim": f"t{k} >= r{k}", "a": f"t{k}", "b": f"r{k}", "margin": 0.0} for k in range(5)]
    claim = {"claim": "ticket >= random on average", "a": [f"t{k}" for k in range(5)],
             "b": [f"r{k}" for k in range(5)], "margin": 0.0, "post_hoc": True}
    short = {**claim, "claim": "short", "a": claim["a"] + ["t9"], "b": claim["b"] + ["r9"]}
    res = {"meta": {"suite": "s", "claims": [*members, claim, short]}, "rows": rows}
    by = {c["claim"]: c for c in stats.claim_rows(res)}
    assert [by[m["claim"]]["verdict"] for m in members] == ["not decided"] * 5
    p = by[claim["claim"]]["paired"]
    assert p["seeds"] == [0, 1, 2] and p["m"] == 1
    assert [round(d, 6) for d in p["diffs"]] == [round(sum(diffs[s]) / 5, 6) for s in range(3)]
    assert by[claim["claim"]]["verdict"] == "reproduced"
    assert by["short"]["paired"]["seeds"] == [0, 1] and by["short"]["verdict"] == "2 seeds: not decided"
    md = stats.claims_markdown([res])
    assert "`s`: mean of 5 differences: t0 − r0; t1 − r1;" in md and "*Mean of k differences*" in md
    assert "**reproduced** (*post hoc*)" in md and "*Post hoc*:" in md
    assert md.count("(*post hoc*)") == 2                          # the declared ones only


@pytest.mark.parametrize("edit,problem", [
    ({"b": ["r0", "r1", "r2", "r3"]}, "a has 5 run ids and b 4"),
    ({"a": ["t0"], "b": ["r0"]}, "at least 2"),
    ({"metric": "wall_clock_s"}, "metric='wall_clock_s': not averaged"),
    ({"at_least": 0.5}, "at_least=0.5: a sweep mean is a difference claim"),
    ({"b": "r0"}, "a sweep mean gives both as lists"),
    ({"a": ["t0", "two words", "t2", "t3", "t4"]}, "'two words' in a / b: not a run id"),
    ({"family": "f"}, "family='f': a sweep mean is one claim"),
    ({"a": ["t0", "t0", "t2", "t3", "t4"], "b": ["r0", "r0", "r2", "r3", "r4"]}, "pair t0 − r0 appears twice"),
    ({"a": ["r0", "t1", "t2", "t3", "t4"]}, "pair r0 − r0: a run against itself"),
    ({"a": ["imp:ticket-r1", "imp:ticket-r2"], "b": ["imp:global_random-r2", "imp:global_random-r1"]},
     "rows of two rounds or two evaluations"),
    ({"a": ["imp:ticket-r1", "imp:retrain-ticket-r2"], "b": ["imp:global_random-r1", "imp:retrain-global_random-r2"]},
     r"mix the evaluations \['linear', 'retrain'\]"),
    ({"post_hoc": "yes"}, "post_hoc='yes': expected true or false"),
])
def test_a_bad_sweep_claim_is_refused_with_its_reason(edit, problem):
    from solo_sparse.tools.bench.suite import claim_problem

    claim = {"claim": "c", "a": [f"t{k}" for k in range(5)], "b": [f"r{k}" for k in range(5)], "margin": 0.0}
    assert claim_problem(claim) is None
    assert re.search(problem, claim_problem({**claim, **edit}) or "")


def test_a_bad_claim_is_refused_by_its_index_key_and_value(tmp_path):
    """The refusal names the claim (its index and text), the key and the value, then what is allowed."""
    from solo_sparse.tools.bench.suite import Suite

    root = tmp_path / "repo"
    (root / "scripts" / "suites").mkdir(parents=True)
    cfg = root / "scripts" / "configs" / "c.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("method: byol\n")
    runs = [{"id": "t", "config": "scripts/configs/c.yaml"}, {"id": "r", "config": "scripts/configs/c.yaml"}]
    good = {"claim": "t >= r", "a": "t", "b": "r", "margin": 0.0}
    f = root / "scripts" / "suites" / "toy.yaml"
    for bad, want in (({**good, "claim": "second", "margin": "one"}, r"claims\[1\] 'second': margin='one': expected a "
                                                                      r"number.*allowed: \{claim: text"),
                      ({**good, "claim": "second", "at_most": 2}, r"claims\[1\] 'second': margin=0.0 with at_most"),
                      ({"claim": "second", "a": "t"}, r"claims\[1\] 'second': b: missing"),
                      ({**good, "claim": "second", "metirc": "linear"}, r"unknown key\(s\) metirc")):
        f.write_text(json.dumps({"suite": "toy", "runs": runs, "claims": [good, bad]}))
        with pytest.raises(ConfigError, match=want):
            Suite.load(f)


def test_the_claims_forest_plot_draws_each_difference_claims_intervals_and_margin(tmp_path):
    """One line per difference claim with 2 or more paired seeds: per-seed values, mean, 95% interval, the family's
    interval where it has one, its margin and verdict; bounds (another scale) and one-seed claims are left out."""
    from solo_sparse.tools import stats
    from solo_sparse.tools.bench.results import claims_forest, claims_plot_digest, plot_claims

    rows = {**_rows("x", [81.0, 82.0, 83.0]), **_rows("y", [80.0, 80.5, 81.5]), **_rows("z", [80.0, 80.0]),
            **_rows("w", [79.0])}
    claims = [{"claim": "x >= y", "a": "x", "b": "y", "margin": -1.0},
              {"claim": "x >= z " + "long words " * 12, "a": "x", "b": "z", "margin": 0.0, "family": "f"},
              {"claim": "y >= z", "a": "y", "b": "z", "margin": 0.0, "family": "f"},
              {"claim": "one seed", "a": "w", "b": "y", "margin": 0.0},
              {"claim": "bound", "a": "x", "metric": "linear", "at_least": 50.0}]
    res = {"meta": {"suite": "s", "claims": claims}, "rows": rows}
    forest = claims_forest(res)
    assert [f["label"].split()[0:3] for f in forest] == [["x", ">=", "y"], ["x", ">=", "z"], ["y", ">=", "z"]]
    first = forest[0]
    p = stats.paired(stats.by_seed(rows.values(), "x"), stats.by_seed(rows.values(), "y"))
    assert first["diffs"] == p["diffs"] and first["ci"] == (p["lo"], p["hi"]) and first["family"] is None
    assert first["margin"] == -1.0 and first["verdict"] == stats.verdict(p, -1.0)
    fam = forest[1]
    assert fam["family"][0] < fam["ci"][0] and fam["label"].endswith("(2 seeds)") and fam["label"].count("\n") <= 2
    assert plot_claims(res, tmp_path / "c.png").stat().st_size > 0
    from solo_sparse.tools.report import png_data_digest

    assert png_data_digest(tmp_path / "c.png") == claims_plot_digest(res) != claims_plot_digest(
        {**res, "meta": {**res["meta"], "claims": claims[:1]}})
    assert png_data_digest(tmp_path / "missing.png") is None
    assert plot_claims({"meta": {"suite": "s", "claims": claims[3:]}, "rows": rows}, tmp_path / "no.png") is None


def test_update_docs_decides_with_the_claims_the_suite_file_declares_now(tmp_path, monkeypatch):
    """A claim edited in the suite YAML (its family here) reaches the docs without re-running the suite: a bench run
    saves the claims it started with, and the results file is not rewritten (the suite may be running)."""
    from solo_sparse.tools.bench import update_docs

    root = tmp_path / "repo"
    (root / "scripts" / "suites").mkdir(parents=True)
    (root / "results" / "toy").mkdir(parents=True)
    cfg = root / "scripts" / "configs" / "c.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("method: byol\n")
    claim = {"claim": "t >= r", "source": "P", "a": "t", "b": "r", "margin": 0.0}
    suite = root / "scripts" / "suites" / "toy.yaml"
    suite.write_text(json.dumps({"suite": "toy", "runs": [{"id": "t", "config": "scripts/configs/c.yaml"},
                                                          {"id": "r", "config": "scripts/configs/c.yaml"}],
                                 "claims": [claim, {**claim, "claim": "t >= r again"}]}))
    res = root / "results" / "toy" / "results.json"
    saved = {"meta": {"suite": "toy", "suite_file": "scripts/suites/toy.yaml", "claims": [claim]},
             "rows": {**_rows("t", [80.81, 80.57, 81.18]), **_rows("r", [80.0, 80.0, 80.0])}}
    res.write_text(json.dumps(saved))
    doc = root / "claims.md"
    doc.write_text("<!-- bench-claims:toy -->\n<!-- /bench-claims:toy -->\n")
    monkeypatch.chdir(tmp_path)                                       # found through the results file's repository
    update_docs([res], [doc])
    assert doc.read_text().count("**reproduced**") == 2 and "t >= r again" in doc.read_text()
    suite.write_text(suite.read_text().replace('"margin": 0.0}', '"margin": 0.0, "family": "f"}'))
    update_docs([res], [doc])
    text = doc.read_text()
    assert text.count("**not decided**") == 2 and "family of 2" in text
    assert json.loads(res.read_text()) == saved                       # the results file untouched
    png = root / "results" / "toy" / "toy-claims.png"
    assert png.stat().st_size > 0                                     # and its forest plot drawn beside it
    from solo_sparse.tools.bench.results import claims_plot_digest, with_current_claims
    from solo_sparse.tools.report import png_data_digest

    digest = png_data_digest(png)                                     # it keeps the digest of the data it shows
    assert digest and digest == claims_plot_digest(with_current_claims(saved, res))
    stamp = png.stat().st_mtime_ns
    assert update_docs([res], [doc]) == [] and png.stat().st_mtime_ns == stamp     # same data: not redrawn
    res.write_text(json.dumps({**saved, "rows": {**saved["rows"], **_rows("r", [80.0, 80.0, 80.5])}}))
    assert png in update_docs([res], [doc]) and png_data_digest(png) not in (None, digest)     # new data: redrawn
    from solo_sparse.tools.bench import results as results_mod

    monkeypatch.setattr(results_mod, "CLAIMS_PLOT_VERSION", results_mod.CLAIMS_PLOT_VERSION + 1)
    assert png in update_docs([res], [doc])                                  # a new way of drawing: redrawn
    assert update_docs([res], [doc]) == []

    def no_matplotlib(*a, **k):
        raise ImportError("matplotlib")

    monkeypatch.setattr(results_mod, "plot_claims", no_matplotlib)
    monkeypatch.setattr(results_mod, "CLAIMS_PLOT_VERSION", results_mod.CLAIMS_PLOT_VERSION + 1)
    assert png in update_docs([res], [doc])              # stale and not redrawable here: still reported
    suite.write_text(json.dumps({**json.loads(suite.read_text()), "claims": []}))
    assert png in update_docs([res], [doc]) and not png.exists()     # no claim left: no stale picture


def test_a_wall_clock_claim_pairs_only_seeds_trained_on_one_machine():
    from solo_sparse.tools import stats

    def rows(rid, secs, machines):
        return {f"{rid}/seed{i}": {"id": rid, "seed": i, "status": "ok", "wall_clock_s": v, "train_machine": m}
                for i, (v, m) in enumerate(zip(secs, machines))}

    fast, slow = "Intel(R) Xeon(R) Processor (2 cores, avx512)", "AMD EPYC (2 cores, avx2)"
    res = {"meta": {"suite": "s", "claims": [
        {"claim": "cheaper", "a": "p", "b": "d", "metric": "wall_clock_s", "at_most": 0.8}]},
        "rows": {**rows("p", [50.0, 52.0, 120.0, 51.0], [fast, fast, slow, None]),
                 **rows("d", [100.0, 101.0, 99.0, 100.0], [fast, fast, fast, fast])}}
    (c,) = stats.claim_rows(res)
    # seed 2: two machines; seed 3: only one side records its machine
    assert c["paired"]["seeds"] == [0, 1] and c["left_out"] == [2, 3] and c["verdict"] == "2 seeds: not decided"
    assert "(seed 2, 3 left out: its two trainings do not share a recorded machine)" in stats.claims_markdown([res])


def test_bound_claims_on_a_row_column_and_on_a_ratio():
    """Goals on other columns (issue 25): a value bound on one run (twin cosine >= 0.88) and a ratio bound against
    another run (shift sensitivity <= 3x dense), decided by the 95% interval like the difference claims."""
    from solo_sparse.tools import stats

    def rows(rid, key, values):
        return {f"{rid}/seed{i}": {"id": rid, "seed": i, "status": "ok", key: v} for i, v in enumerate(values)}

    res = {"meta": {"suite": "s", "claims": [
        {"claim": "twins agree", "a": "m", "metric": "online_momentum_cos", "at_least": 0.88},
        {"claim": "smooth", "a": "g", "b": "d", "metric": "shift_sensitivity", "at_most": 3.0},
        {"claim": "rough", "a": "g", "b": "d", "metric": "shift_sensitivity", "at_most": 1.5},
        {"claim": "undecided", "a": "m", "metric": "online_momentum_cos", "at_least": 0.905},
        {"claim": "undecided ratio", "a": "g", "b": "d", "metric": "shift_sensitivity", "at_most": 2.05}]},
        "rows": {**rows("m", "online_momentum_cos", [0.90, 0.91, 0.905]),
                 **rows("g", "shift_sensitivity", [0.0020, 0.0022, 0.0021]),
                 **rows("d", "shift_sensitivity", [0.0010, 0.0011, 0.0010])}}
    by = {r["claim"]: r for r in stats.claim_rows(res)}
    assert by["twins agree"]["verdict"] == "reproduced"
    assert by["smooth"]["verdict"] == "reproduced"                     # ratios 2.0, 2.0, 2.1 <= 3
    assert by["rough"]["verdict"] == "not reproduced"                  # all well above 1.5
    assert by["undecided"]["verdict"] == "not decided"                 # 0.905 inside the interval
    assert by["undecided ratio"]["verdict"] == "not decided"           # 2.05 inside [1.89, 2.18]
    assert abs(by["smooth"]["paired"]["mean"] - (2.0 + 2.0 + 2.1) / 3) < 1e-9
    md = stats.claims_markdown([res])
    assert "| `s`: g / d (shift_sensitivity) | ≤ 3 |" in md and "| `s`: m (online_momentum_cos) | ≥ 0.88 |" in md
    # a suite file is checked before anything runs: an unknown column, a margin beside a bound, two bounds, no b
    from solo_sparse.tools.bench.suite import _is_claim

    assert _is_claim({"claim": "c", "a": "x", "metric": "gate_sparsity", "at_least": 0.6})
    assert not _is_claim({"claim": "c", "a": "x", "metric": "gate_sparsty", "at_least": 0.6})
    assert not _is_claim({"claim": "c", "a": "x", "b": "y", "margin": 0, "at_most": 3})
    assert not _is_claim({"claim": "c", "a": "x", "at_least": 0.1, "at_most": 3})
    assert not _is_claim({"claim": "c", "a": "x", "margin": 0})          # a difference needs b


def test_regime_block_never_shows_a_spread_it_did_not_measure():
    from solo_sparse.tools.bench import regime_markdown

    def row(rid, seed, lin):
        return {"id": rid, "seed": seed, "status": "ok", "linear": lin, "knn20": 0.7}

    rows = {f"random-init/seed{s}": row("random-init", s, v) for s, v in enumerate((0.79, 0.78, 0.785))}
    rows["dense/seed0"] = row("dense", 0, 0.83)
    md = regime_markdown({"rows": rows})
    assert "| dense | 83.00 | 83.00 (one seed) |" in md and "one seed: spread unmeasured" in md
    assert "78.50 ± 0.50" in md
    rows["dense/seed1"] = row("dense", 1, 0.84)
    md = regime_markdown({"rows": rows})
    assert "83.50 ± 0.71" in md and "+5.00 pt over random-init features (seed-to-seed spread ±0.71 over 2 seeds)" in md


def test_committed_results_and_docs_hold_no_machine_paths():
    import re

    root = Path(__file__).resolve().parents[2]
    files = [root / "README.md", *root.glob("docs/**/*.md"), *root.glob("results/*/*.json"), *root.glob("results/*/*.md"),
             *root.glob("history/**/*.json"), *root.glob("history/**/*.md")]
    bad = {str(f.relative_to(root)): m.group(0) for f in files if "runs" not in f.parts and "local" not in f.parts
           for m in [re.search(r"(?<![\w.<])/(work|tmp|root|home)/[\w.-]+", f.read_text(errors="replace"))] if m}
    assert not bad, f"machine paths in committed files: {bad}"


@pytest.mark.parametrize("plugin", ["fbs", "dgnet_dual", "cdg"])
def test_gated_checkpoints_never_get_a_dense_training_macs_figure(plugin):
    """Which checkpoint is gated is asked of its plugin (rewrites_backbone), not guessed from parameter suffixes:
    DGNet's gate is '...gate.w1' and FBS's 'phi'/'rho', which the old suffix test missed (training MACs x1.0)."""
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.tools.bench import checkpoint_stats

    net = build_resnet("resnet18")
    sd = {f"{p}.{k}": v for p in ("backbone", "momentum_backbone") for k, v in net.state_dict().items()}
    st = checkpoint_stats({"state_dict": sd, "solo_sparse": {plugin: {"config": {}}}}, 32, None, net, None)
    assert st.get("training_macs_ratio") is None
    st = checkpoint_stats({"state_dict": sd, "solo_sparse": {}}, 32, None, net, None)
    assert st["training_macs_ratio"] == pytest.approx(1.0)


def test_update_docs_skips_files_that_are_not_bench_results_and_refuses_two_of_one_suite(tmp_path, capsys):
    """`bench --update-docs DOC -- results/*/results.json` as docs/claims.md documents it: speed / history files are
    skipped with a line; two results of one suite (e.g. a --host copy) would overwrite each other's blocks."""
    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.bench import update_docs

    other = tmp_path / "speed.json"
    other.write_text(json.dumps({"rows": [], "machine": {}}))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for p in (a, b):
        p.write_text(json.dumps({"meta": {"suite": "toy"}, "rows": {}}))
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- bench-claims:toy -->\n<!-- /bench-claims:toy -->\n")
    assert update_docs([other, a], [doc]) == [tmp_path / "a.md", doc]     # X.json's twin: X.md, no other file
    assert f"skipped {other}: not a bench results file" in capsys.readouterr().out
    assert not (tmp_path / "speed.md").exists() and not (tmp_path / "results.md").exists()
    (tmp_path / "a.md").unlink()
    with pytest.raises(ConfigError, match="are both results of suite 'toy'"):
        update_docs([a, b], [doc])
    with pytest.raises(ConfigError, match="no such document"):
        update_docs([a], [doc, tmp_path / "typo.md"])
    assert not (tmp_path / "a.md").exists()               # refused before anything was written
    with pytest.raises(ConfigError, match="no such results file"):
        update_docs([tmp_path / "missing.json"], [doc])


def test_a_row_measured_with_an_older_cost_count_is_re_measured_from_its_checkpoint(setup, capsys, monkeypatch):
    """A plugin whose cost count changed (cost_version bumped) gets its finished rows' cost columns re-measured from
    their checkpoints when the suite is run again -- accuracy kept, nothing retrained; current rows are left alone."""
    import torch

    from solo_sparse.core.plugin import ModelView, PluginHost
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.engine.sparsifier import ModuleGroup
    from solo_sparse.tools.bench.measure import stale_cost
    from solo_sparse_plugins.dgnet_dual import DGNetDual

    repo, suite, solo, tmp = setup
    online = build_resnet("resnet18")
    host = PluginHost([DGNetDual.from_params({"control": "static", "target": 0.3})])
    host.setup(ModelView({"backbone": ModuleGroup("backbone", online, None)}, "shared", method="vicreg",
                         num_large_crops=2))
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    ck = b.out / "runs" / "dense" / "seed0" / "x.ckpt"
    ck.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in online.state_dict().items()},
                "solo_sparse": host.state_dict()}, ck)
    row = {"id": "dense:gated", "seed": 0, "kind": "pretrain", "status": "ok", "path": "gated", "linear": 0.5,
           "plugins": ["dgnet_dual"], "inference_macs_ratio": 0.123, "checkpoint": "runs/dense/seed0/x.ckpt"}
    b.results["rows"]["dense:gated/seed0"] = dict(row)
    assert stale_cost(row)                                    # no cost_versions: measured with version 1
    b.backfill()
    new = b.results["rows"]["dense:gated/seed0"]
    assert new["cost_versions"] == {"dgnet_dual": DGNetDual.cost_version} and not stale_cost(new)
    assert 0.3 < new["inference_macs_ratio"] < 0.4 and new["linear"] == 0.5
    assert "cost re-measured with the current count: MACs x0.1230 -> x0.3" in capsys.readouterr().out
    new["inference_macs_ratio"] = 0.123                       # current rows are not measured again
    b.backfill()
    assert b.results["rows"]["dense:gated/seed0"]["inference_macs_ratio"] == 0.123
    monkeypatch.setattr(DGNetDual, "cost_version", DGNetDual.cost_version + 1)
    assert stale_cost(new)
    assert not stale_cost({**new, "cost_versions": {"dgnet_dual": 99}})   # a newer count is never downgraded


def test_re_measuring_gives_what_the_run_measured_on_each_path(setup, capsys):
    """A dynamic DGNet checkpoint: the gated-path row re-measures to what checkpoint_stats gives on that path (the
    run's own measurement, gates' cost included), the dense-path row to 1.0; a missing or unreadable checkpoint is said, not fatal."""
    import torch

    from solo_sparse.core.plugin import ModelView, PluginHost
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.engine.sparsifier import ModuleGroup
    from solo_sparse.tools.bench.measure import checkpoint_stats
    from solo_sparse.tools.evaluate import load_backbone
    from solo_sparse_plugins.dgnet_dual import DGNetDual

    repo, suite, solo, tmp = setup
    torch.manual_seed(0)
    online = build_resnet("resnet18")
    host = PluginHost([DGNetDual.from_params({"target": 0.3})])
    host.setup(ModelView({"backbone": ModuleGroup("backbone", online, None)}, "shared", method="vicreg",
                         num_large_crops=2))
    with torch.no_grad():                                      # input-dependent gates
        for n, p in online.named_parameters():
            if ".gate." in n:
                p.normal_(0, 0.5)
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    ck = b.out / "runs" / "dense" / "seed0" / "x.ckpt"
    ck.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in online.state_dict().items()},
                "solo_sparse": host.state_dict()}, ck)
    base = {"seed": 0, "kind": "pretrain", "status": "ok", "plugins": ["dgnet_dual"], "inference_macs_ratio": 0.5,
            "checkpoint": "runs/dense/seed0/x.ckpt"}
    b.results["rows"]["dense:gated/seed0"] = {**base, "id": "dense:gated", "path": "gated"}
    b.results["rows"]["dense:dense/seed0"] = {**base, "id": "dense:dense", "path": "dense"}
    b.results["rows"]["gmp:gated/seed0"] = {**base, "id": "gmp:gated", "path": "gated",
                                            "checkpoint": "runs/gmp/seed0/none.ckpt"}
    (b.out / "runs" / "dense" / "seed0" / "bad.ckpt").write_bytes(b"not a checkpoint")
    b.results["rows"]["broken:gated/seed0"] = {**base, "id": "broken:gated", "path": "gated",
                                               "checkpoint": "runs/dense/seed0/bad.ckpt"}
    b.backfill()
    net, _ = load_backbone(str(ck), "resnet18", gated_path="gated")
    want = checkpoint_stats(torch.load(ck, weights_only=True), 32, b.eval_data()[1][0][:2000], net, "gated")
    rows = b.results["rows"]
    assert rows["dense:gated/seed0"]["inference_macs_ratio"] == pytest.approx(want["inference_macs_ratio"])
    assert 0.0 < rows["dense:gated/seed0"]["gate_sparsity"] < 1.0
    assert rows["dense:dense/seed0"]["inference_macs_ratio"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert rows["gmp:gated/seed0"]["inference_macs_ratio"] == 0.5 and "not here to re-measure" in out
    assert rows["broken:gated/seed0"]["inference_macs_ratio"] == 0.5 and "broken:gated/seed0: cost not re-measured" in out
    assert "broken:gated/seed0: probes not backfilled" in out


def test_a_reused_row_takes_its_siblings_re_measured_cost_columns(setup, capsys):
    """Rows reused from a sibling suite copied its cost columns when they were reused; once the sibling's own row
    is re-measured with a newer cost count, the next run of this suite copies them again (accuracy kept). A sibling
    still on the old count, or one whose results are gone, leaves the row as it is."""
    from solo_sparse.tools.bench.measure import cost_versions

    repo, suite, solo, tmp = setup
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    current = cost_versions(["dgnet_dual"])
    src = {"id": "dual", "seed": 0, "kind": "pretrain", "status": "ok", "linear": 0.7, "plugins": ["dgnet_dual"],
           "inference_macs_ratio": 0.35, "gate_sparsity": 0.6, "cost_versions": current,
           "checkpoint": "runs/dual/seed0/x.ckpt"}
    sib = b.out.parent / "sib" / "results.json"
    sib.parent.mkdir(parents=True)
    sib.write_text(json.dumps({"rows": {"dual/seed0": src}}))
    row = {**src, "inference_macs_ratio": 0.34, "cost_versions": None, "reused_from": "sib/dual/seed0",
           "linear": 0.7}
    b.results["rows"]["mine/seed0"] = row
    b.backfill()
    assert row["inference_macs_ratio"] == 0.35 and row["cost_versions"] == current and row["linear"] == 0.7
    assert "cost columns taken again from sib/dual/seed0" in capsys.readouterr().out
    row["inference_macs_ratio"] = 0.2                       # same count as the sibling: left alone
    b.backfill()
    assert row["inference_macs_ratio"] == 0.2
    sib.write_text(json.dumps({"rows": {"dual/seed0": {**src, "linear": 0.71}}}))   # retrained since: not this one
    row["cost_versions"] = {"dgnet_dual": 0}
    b.backfill()
    assert row["inference_macs_ratio"] == 0.2
    sib.write_text(json.dumps({"rows": {"dual/seed0": {**src, "cost_versions": None, "inference_macs_ratio": 0.9}}}))
    row["cost_versions"] = {"dgnet_dual": 0}
    b.backfill()                                            # the sibling is stale itself: nothing to take
    assert row["inference_macs_ratio"] == 0.2
    sib.unlink()
    b.backfill()
    assert row["inference_macs_ratio"] == 0.2


def test_a_sibling_row_trained_with_other_plugin_defaults_is_not_reused(setup):
    """Same config, overrides, seed and size, but the sibling's plugin digest differs (a plugin default changed
    since it trained, or a run_seed_key resolves differently): trained again, not reused."""
    repo, suite, solo, tmp = setup
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=print)
    spec = next(r for r in b.suite.runs if r.id == "gmp")
    fp = json.loads(b.fingerprint(spec, 0))
    row = {"id": "gmp", "seed": 0, "kind": "pretrain", "status": "ok", "linear": 0.5, "image_size": 32,
           "overrides": list(fp[1]) + list(fp[2]), "fingerprint": json.dumps(fp), "checkpoint": "runs/g/x.ckpt"}
    sib = b.out.parent / "sib" / "results.json"
    sib.parent.mkdir(parents=True)
    sib.write_text(json.dumps({"rows": {"gmp/seed0": row}}))
    assert b.sibling_row(spec, 0)[0] == "sib/gmp/seed0"
    old = [x if not str(x).startswith("plugins=") else "plugins=000000000000" for x in fp]
    sib.write_text(json.dumps({"rows": {"gmp/seed0": {**row, "fingerprint": json.dumps(old)}}}))
    assert b.sibling_row(spec, 0) is None


def test_the_eta_is_timed_only_on_runs_trained_from_their_start(setup, monkeypatch):
    """A rounds run is planned at every seed and resumes inside: a seed whose rows were all done returns in 0 s
    (the imp suite once printed "ETA 0 min 10 s" for two 6-hour seeds). Only a run that trained from its start
    times the ETA: not a run resumed inside its first row from a training checkpoint."""
    from solo_sparse.tools.bench import harness

    repo, suite, solo, tmp = setup
    lines = []
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lines.append)
    dense = next(s for s in b.suite.runs if s.id == "dense")
    b.suite.random_init = False
    now = [1000.0]

    def train(spec, seed):
        if f"{spec.id}/seed{seed}" in b.results["rows"]:
            return                                           # every row done: nothing trained
        now[0] += 600.0
        b.results["rows"][f"{spec.id}/seed{seed}"] = {"id": spec.id, "seed": seed, "status": "ok"}

    b.results["rows"]["dense/seed0"] = {"id": "dense", "seed": 0, "status": "ok"}
    monkeypatch.setattr(harness.time, "time", lambda: now[0])
    for name, fn in (("plan", lambda: [(dense, 0), (dense, 1), (dense, 2), (dense, 3)]), ("backfill", lambda: None),
                     ("save", lambda: None), ("run_pretrain", train)):
        monkeypatch.setattr(b, name, fn)
    b.run()
    runs = [ln for ln in lines if "] run " in ln]
    assert len(runs) == 4 and not any("ETA" in ln for ln in runs[:2])      # seed 0's 0 s times nothing
    assert runs[2].endswith("ETA 20 min 00 s") and runs[3].endswith("ETA 10 min 00 s")

    # seed 4 resumes inside its first row from a training checkpoint (its 600 s here are the rest of it): untimed
    ck = b.out / "runs" / "dense" / "seed4" / "x" / "last.ckpt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"")
    lines.clear()
    monkeypatch.setattr(b, "plan", lambda: [(dense, 4), (dense, 5), (dense, 6)])
    b.run()
    runs = [ln for ln in lines if "] run " in ln]
    assert "ETA" not in runs[1] and runs[2].endswith("ETA 10 min 00 s")


def test_update_docs_without_a_document_re_renders_the_results_md_only(tmp_path, capsys):
    """`solo-sparse bench RESULTS.json --update-docs` (no document) re-renders RESULTS.md and runs no bench."""
    from solo_sparse.tools.cli import main

    res = tmp_path / "results.json"
    res.write_text(json.dumps({"meta": {"suite": "toy"}, "rows": {}}))
    assert main(["bench", str(res), "--update-docs"]) == 0
    assert (tmp_path / "results.md").read_text() == to_markdown(json.loads(res.read_text()))
    assert f"updated: {tmp_path / 'results.md'}" in capsys.readouterr().out

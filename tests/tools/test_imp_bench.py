"""The benchmark's ``kind: rounds`` run (``Bench.run_imp``) end to end without solo-learn, over a fake
``main_pretrain.py`` that writes ResNet-18 checkpoints under the masks / init / rewind point it is given:

- the ticket of every round and both controls at each listed density, each evaluated twice — the linear probe of
  its self-supervised training and label re-training of its mask (rows ``<id>:retrain-...``);
- the controls: global random (per-layer densities not kept) and the layer-wise permutation (kept), both trained
  and re-trained from the ticket's own init (the rewind point), so they differ from it in the mask only;
- a re-run trains and re-trains nothing that is done;
- the suite file: claims may name these rows; control rounds beyond the last round are refused.
"""
import json
from pathlib import Path

import pytest
from helpers import make_image_folder

from solo_sparse.core.config import ConfigError
from solo_sparse.tools.bench import Bench, Suite

FAKE = r'''
import json, os, pathlib, sys
import torch
from solo_sparse.engine.imp import load_state, save_state
from solo_sparse.engine.maskio import load_masks
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.engine.sparsifier import select_layers

args = {}
for a in sys.argv[1:]:
    if a.startswith("+") and "=" in a:
        k, v = a.lstrip("+").split("=", 1)
        args[k] = v.strip("'")
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"name": args["name"], "argv": sys.argv[1:]}) + "\n")
if not os.path.isdir(args.get("data.train_path", ".")):     # as solo-learn's loader fails, from the run's cwd
    sys.exit("FileNotFoundError: " + args["data.train_path"])
torch.manual_seed(int(args.get("seed", 0)))
net = build_resnet("resnet18")
layers = {f"backbone.{n}": m for n, m in select_layers(net, exclude_stem=False)}
masks = load_masks(args["solo_sparse.masks"])[0] if "solo_sparse.masks" in args else {
    k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in layers.items()}
if "solo_sparse.init" in args:
    st = load_state(args["solo_sparse.init"])[0]
    net.load_state_dict({k[len("backbone."):]: v for k, v in st.items() if k.startswith("backbone.")})
if "solo_sparse.rewind_out" in args:
    st = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    if os.environ.get("FAKE_REWIND_NOISE"):             # another machine's replay: not bit-identical
        st["backbone.conv1.weight"] = st["backbone.conv1.weight"] * (1 + float(os.environ["FAKE_REWIND_NOISE"]))
    save_state(args["solo_sparse.rewind_out"], st, step=1)
g = torch.Generator().manual_seed(len(args["name"]))
with torch.no_grad():
    for k, m in layers.items():           # "training": weights move, pruned ones stay 0
        m.weight.add_(0.01 * torch.randn(m.weight.shape, generator=g)).mul_(masks[k])
sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
sd.update({f"{k}.weight_mask": masks[k] for k in layers})
out = pathlib.Path(args["checkpoint.dir"]) / "v0"
out.mkdir(parents=True, exist_ok=True)
torch.save({"state_dict": sd, "epoch": 1, "solo_sparse": {}}, out / f"{args['name']}-v0-ep=1.ckpt")
'''

SUITE = """
suite: impt
description: "IMP toy"
data: tiny
size: 32
seeds: 1
random_init: false
overrides: ["++max_epochs=2"]
runs:
  - id: imp
    kind: rounds
    plugin: imp
    config: cfg.yaml
    rounds: 1
    rate: 0.5
    controls: [global_random, layer_permutation]
    control_rounds: [1]
    retrain_epochs: 1
claims:
  - {claim: "tickets >= global random (linear probe)", a: "imp:ticket-r1", b: "imp:global_random-r1"}
  - {claim: "tickets >= global random (re-trained)", a: "imp:retrain-ticket-r1", b: "imp:retrain-global_random-r1"}
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "scripts" / "suites").mkdir(parents=True)
    (repo / "cfg.yaml").write_text("defaults:\n  - _self_\nmethod: byol\nmax_epochs: 2\n")
    suite = repo / "scripts" / "suites" / "impt.yaml"
    suite.write_text(SUITE)
    make_image_folder(tmp_path / "data" / "tiny", train_per_class=4, val_per_class=2)
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "main_pretrain.py").write_text(FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return repo, suite, solo, tmp_path


def _no_retrain(text):
    return "\n".join(line for line in text.replace("retrain_epochs: 1", "retrain_epochs: 0").splitlines()
                     if "re-trained" not in line)


def _cut_at(monkeypatch, suite, solo, data_root, n: int) -> None:
    """Run the suite until its ``n``-th evaluation (a linear probe) starts and stop it there, as the end of a
    session does; later runs evaluate normally."""
    import solo_sparse.tools.bench.rounds as rounds_mod  # where run_rounds looks the name up

    real = rounds_mod.evaluate_backbone
    seen = {"n": 0}

    def cut(*a, **k):
        seen["n"] += 1
        if seen["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rounds_mod, "evaluate_backbone", cut)
    try:
        with pytest.raises(KeyboardInterrupt):
            Bench(Suite.load(suite), data_root=data_root, solo_dir=solo, log=lambda *_: None).run()
    finally:
        monkeypatch.setattr(rounds_mod, "evaluate_backbone", real)


def _calls(tmp):
    return [json.loads(line) for line in (tmp / "calls.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rounds_run_gives_tickets_and_both_controls_two_evaluations_each(setup, monkeypatch):
    import solo_sparse.tools.retrain as retrain_mod
    from solo_sparse.engine.imp import load_state
    from solo_sparse.engine.maskio import layer_densities, load_masks

    repo, suite, solo, tmp = setup
    seen = []
    real = retrain_mod.retrain_supervised

    def spy(masks, init, *a, **k):
        seen.append((masks, init))
        return real(masks, init, *a, **k)

    monkeypatch.setattr(retrain_mod, "retrain_supervised", spy)
    b = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None)
    res = b.run()
    rows = res["rows"]
    probes = ["imp:ticket-r0", "imp:ticket-r1", "imp:global_random-r1", "imp:layer_permutation-r1"]
    retrains = ["imp:retrain-ticket-r0", "imp:retrain-ticket-r1", "imp:retrain-global_random-r1",
                "imp:retrain-layer_permutation-r1"]
    assert set(rows) == {f"{r}/seed0" for r in probes + retrains}
    assert all(rows[f"{r}/seed0"]["status"] == "ok" for r in probes + retrains)
    for r in probes:      # linear probe of the self-supervised training
        row = rows[f"{r}/seed0"]
        assert row["linear"] is not None and row["knn20"] is not None and row["path"] is None
    for r in retrains:    # label re-training: its top-1 in the linear column, no kNN
        row = rows[f"{r}/seed0"]
        assert row["path"] == "label-retrain" and 0.0 <= row["linear"] <= 1.0 and row["knn20"] is None
        assert row["epochs"] == 1
    assert rows["imp:ticket-r0/seed0"]["density_online"] == 1.0
    for r in probes[1:] + retrains[1:]:
        assert rows[f"{r}/seed0"]["density_online"] == pytest.approx(0.5, abs=1e-3), r
    assert rows["imp:ticket-r1/seed0"]["wall_clock_s"] > 0
    from solo_sparse.engine.costmodel import machine_tag

    assert {rows[f"{r}/seed0"]["train_machine"] for r in probes + retrains} == {machine_tag()}   # every timed row
    # the rounds rows get their own plot (top-1 vs density, both evaluations), not the MACs scatter
    out = repo / "results" / "impt"
    assert (out / "impt-rounds.png").stat().st_size > 0 and not (out / "impt.png").exists()
    # the controls' masks: global random keeps the total count only, the layer-wise permutation every layer's
    d = repo / "results" / "impt" / "runs" / "imp" / "seed0"
    ticket = load_masks(d / "rounds" / "round_1" / "masks.safetensors")[0]
    glob = load_masks(d / "controls" / "global_random_1" / "masks.safetensors")[0]
    perm = load_masks(d / "controls" / "layer_permutation_1" / "masks.safetensors")[0]
    lt, lg, lp = layer_densities(ticket), layer_densities(glob), layer_densities(perm)
    assert all(lp[k] == pytest.approx(lt[k]) for k in lt)
    assert max(abs(lg[k] - lt[k]) for k in lt) > 0.05
    # both controls train from the ticket's own init (the rewind point) under their own masks
    rewind = d / "rounds" / "rewind.safetensors"
    calls = {c["name"]: c["argv"] for c in _calls(tmp)}
    for control in ("global_random", "layer_permutation"):
        argv = calls[f"imp:{control}-r1-s0"]
        assert f"++solo_sparse.init='{rewind}'" in argv
        assert f"++solo_sparse.masks='{d / 'controls' / f'{control}_1' / 'masks.safetensors'}'" in argv
        assert "+solo_sparse=imp" in argv        # the config has no '- solo_sparse:' line
    # label re-training: every mask from the same rewind init; the ticket of round 0 dense
    want = load_state(rewind)[0]
    assert len(seen) == 4 and seen[0][0] is None
    for _masks, init in seen:
        assert init is not None and all(init[k].equal(want[k]) for k in want)
    assert [set(m) for m, _ in seen[1:]] == [set(ticket)] * 3
    assert all(seen[2][0][k].equal(glob[k]) for k in glob) and all(seen[3][0][k].equal(perm[k]) for k in perm)
    # claims naming these rows are decided from them
    assert [c["a"] for c in res["meta"]["claims"]] == ["imp:ticket-r1", "imp:retrain-ticket-r1"]
    # a re-run trains and re-trains nothing
    n, m = len(_calls(tmp)), len(seen)
    Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()
    assert len(_calls(tmp)) == n and len(seen) == m


@pytest.mark.slow
def test_a_control_trained_but_not_evaluated_is_only_evaluated(setup, monkeypatch):
    repo, suite, solo, tmp = setup
    suite.write_text(_no_retrain(SUITE))
    _cut_at(monkeypatch, suite, solo, tmp / "data", 3)     # the first control's evaluation dies after its training
    n = len(_calls(tmp))
    res = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()
    assert [c["name"] for c in _calls(tmp)[n:]] == ["imp:layer_permutation-r1-s0"]     # global_random not retrained
    assert res["rows"]["imp:global_random-r1/seed0"]["status"] == "ok"
    assert not any("retrain" in k for k in res["rows"])


def test_a_round_row_whose_features_overflow_fails_and_is_evaluated_again_not_trained(setup, monkeypatch):
    """A control whose features are not finite is a failed row; the suite goes on (the other control, the
    tickets), and the next run evaluates its checkpoint again without training it again."""
    import solo_sparse.tools.bench.rounds as rounds_mod
    from solo_sparse.tools.evaluate import NonFiniteFeatures

    repo, suite, solo, tmp = setup
    suite.write_text(_no_retrain(SUITE))
    real = rounds_mod.evaluate_backbone
    seen = {"n": 0}

    def third_overflows(*a, **k):
        seen["n"] += 1
        if seen["n"] == 3:                       # the first control's linear probe
            raise NonFiniteFeatures("7 of 10 images give non-finite features")
        return real(*a, **k)

    monkeypatch.setattr(rounds_mod, "evaluate_backbone", third_overflows)
    rows = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()["rows"]
    bad = rows["imp:global_random-r1/seed0"]
    assert bad["status"] == "failed" and bad["trained"] and "7 of 10 images" in bad["error"]
    assert rows["imp:layer_permutation-r1/seed0"]["status"] == "ok" and rows["imp:ticket-r1/seed0"]["status"] == "ok"
    n = len(_calls(tmp))
    monkeypatch.setattr(rounds_mod, "evaluate_backbone", real)
    rows = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()["rows"]
    assert rows["imp:global_random-r1/seed0"]["status"] == "ok" and len(_calls(tmp)) == n     # nothing trained


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.replace("imp:retrain-ticket-r1", "imp:ticket-r9"), r"claims\[1\] '.*': a='imp:ticket-r9': not a run of the suite; allowed: "),
    (lambda s: s.replace('b: "imp:retrain-global_random-r1"', 'b: ["imp:retrain-global_random-r1", "imp:x"]'),
     r"claims\[1\] 'tickets >= global random \(re-trained\)': a='imp:retrain-ticket-r1', b=\["),
    (lambda s: s.replace('a: "imp:ticket-r1", b: "imp:global_random-r1"',
                         'a: ["imp:ticket-r1", "imp:ticket-r7"], b: ["imp:global_random-r1", "imp:global_random-r7"]'),
     r"claims\[0\] '.*': a='imp:ticket-r7': not a run of the suite"),
    (lambda s: s.replace("control_rounds: [1]", "control_rounds: [2]"), r"control_rounds=\[2\].*allowed: 1..1"),
    (lambda s: s.replace("[global_random, layer_permutation]", "[layer]"), "controls=.*global_random, "
                                                                            "layer_permutation, random_reinit"),
    (lambda s: s.replace("retrain_epochs: 1", "retrain_epochs: -1"), "retrain_epochs=-1"),
    (lambda s: s.replace("rate: 0.5", "rate: 0.5\n    rewind_tolerance: 1.5"), r"rewind_tolerance=1.5: expected a "
                                                                              r"number in \[0, 1\)"),
])
def test_suite_refusals_for_rounds_runs(setup, edit, match):
    repo, suite, solo, tmp = setup
    suite.write_text(edit(SUITE))
    with pytest.raises(ConfigError, match=match):
        Suite.load(suite)


def test_retrain_rows_without_retrain_epochs_are_not_claimable(setup):
    repo, suite, solo, tmp = setup
    suite.write_text(SUITE.replace("retrain_epochs: 1", "retrain_epochs: 0"))
    with pytest.raises(ConfigError, match="imp:retrain-ticket-r1.*not a run of the suite"):
        Suite.load(suite)


@pytest.mark.slow
def test_a_suite_cut_by_the_end_of_a_session_continues_on_a_fresh_machine(setup, monkeypatch):
    """The runs folder stays on the machine that trained; the chain's small state goes with the results
    (``chains/<id>/seed<k>``). A ticket is evaluated as soon as its round trains, so rows are kept; on a fresh
    machine the chain is restored, the rewind point replayed (round 0 up to it, checked by sha256) and only the rows
    left are trained — the controls from the carried masks."""
    import shutil

    from solo_sparse.engine.maskio import load_masks, load_packed_masks

    repo, suite, solo, tmp = setup
    suite.write_text(_no_retrain(SUITE))
    monkeypatch.chdir(tmp)                       # a relative data root, as `solo-sparse bench` gets by default
    _cut_at(monkeypatch, suite, solo, Path("data"), 3)       # the session ends during the first control's evaluation
    out = repo / "results" / "impt"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {k for k, v in rows.items() if v["status"] == "ok"} == {"imp:ticket-r0/seed0", "imp:ticket-r1/seed0"}
    keep = out / "chains" / "imp" / "seed0"
    man = json.loads((keep / "chain.json").read_text())
    assert sorted(man["rounds"]) == ["0", "1"] and list(man["round_masks"]) == ["1"] and man["rewind_sha256"]
    ticket = load_masks(out / "runs" / "imp" / "seed0" / "rounds" / "round_1" / "masks.safetensors")[0]
    from solo_sparse.engine.costmodel import machine_tag

    first = machine_tag()
    assert {r["train_machine"] for r in man["rounds"].values()} == {first}     # carried with the round's time
    shutil.rmtree(out / "runs")                                  # the next session's machine
    import solo_sparse.tools.bench.harness as harness_mod
    import solo_sparse.tools.bench.rounds as rounds_mod
    import solo_sparse.tools.imp.driver as driver_mod

    other = "Other CPU (2 cores, avx512)"
    for mod in (harness_mod, rounds_mod, driver_mod):
        monkeypatch.setattr(mod, "machine_tag", lambda: other)
    n = len(_calls(tmp))
    lines = []
    res = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lines.append).run()
    names = [c["name"] for c in _calls(tmp)[n:]]
    assert names == ["imp-r0", "imp:global_random-r1-s0", "imp:layer_permutation-r1-s0"], names
    assert "++solo_sparse.stop_after_rewind=true" in _calls(tmp)[n]["argv"]
    assert all(v["status"] == "ok" for v in res["rows"].values()) and len(res["rows"]) == 4
    assert any("identical to round 0's" in line for line in lines), lines
    assert not any("rewind_replay" in v for v in res["rows"].values())          # an exact replay: no label
    # each row keeps the machine that trained it: the tickets the first, the controls this one; the table says so
    assert [res["rows"][f"imp:{r}/seed0"]["train_machine"] for r in
            ("ticket-r1", "global_random-r1", "layer_permutation-r1")] == [first, other, other]
    assert "Train wall-clock from more than one machine" in (out / "results.md").read_text()
    man = json.loads((keep / "chain.json").read_text())         # carried again: still the machine that trained it
    assert man["rounds"]["1"]["train_machine"] == first
    restored = load_masks(out / "runs" / "imp" / "seed0" / "rounds" / "round_1" / "masks.safetensors")[0]
    assert all(restored[k].equal(ticket[k]) for k in ticket)
    assert all(load_packed_masks(keep / "round_1.masks.safetensors")[0][k].equal(ticket[k]) for k in ticket)
    for f in keep.iterdir():                                     # committed: no machine path
        assert str(tmp) not in f.read_bytes().decode("latin-1"), f
    shutil.rmtree(out / "runs")                                  # every row done: nothing trained, nothing replayed
    n = len(_calls(tmp))
    Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()
    assert len(_calls(tmp)) == n


@pytest.mark.slow
def test_a_round_cut_before_its_rows_and_an_inexact_replay_within_the_tolerance(setup, monkeypatch):
    """A session ends after round 1 trained but before its ticket's probe: the next machine trains round 1 again,
    which needs the rewind point replayed first. A replay that is not bit-identical is refused (with the measured
    difference) unless the suite's ``rewind_tolerance`` is above it; every row computed from the replayed point then
    records ``rewind_replay``; the dense round 0's row, from the first machine, does not."""
    import shutil

    repo, suite, solo, tmp = setup
    text = SUITE.replace("[global_random, layer_permutation]", "[global_random]")
    suite.write_text(text)
    _cut_at(monkeypatch, suite, solo, tmp / "data", 2)       # the session ends during round 1's ticket probe
    out = repo / "results" / "impt"
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert set(rows) == {"imp:ticket-r0/seed0", "imp:retrain-ticket-r0/seed0"}
    man = json.loads((out / "chains" / "imp" / "seed0" / "chain.json").read_text())
    assert sorted(man["rounds"]) == ["0", "1"] and man["rewind_norms"]["backbone.conv1.weight"] > 0
    shutil.rmtree(out / "runs")                                  # the next session's machine, another CPU
    monkeypatch.setenv("FAKE_REWIND_NOISE", "1e-5")
    n = len(_calls(tmp))
    with pytest.raises(RuntimeError, match=r"not bit-identical.*1e-05 \(backbone.conv1.weight\)|"
                                           r"1e-05 \(backbone.conv1.weight\).*not bit-identical"):
        Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()
    assert [c["name"] for c in _calls(tmp)[n:]] == ["imp-r0"]                 # the replay only: nothing trained on it
    suite.write_text(text.replace("rate: 0.5", "rate: 0.5\n    rewind_tolerance: 0.001"))
    shutil.rmtree(out / "runs")
    n = len(_calls(tmp))
    lines = []
    res = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lines.append).run()
    assert [c["name"] for c in _calls(tmp)[n:]] == ["imp-r0", "imp-r1", "imp:global_random-r1-s0"]
    rows = res["rows"]
    assert all(v["status"] == "ok" for v in rows.values()) and len(rows) == 6
    for rid in ("imp:ticket-r0/seed0", "imp:retrain-ticket-r0/seed0"):      # from the first machine
        assert "rewind_replay" not in rows[rid], rid
    for rid in ("imp:ticket-r1/seed0", "imp:global_random-r1/seed0", "imp:retrain-ticket-r1/seed0",
                "imp:retrain-global_random-r1/seed0"):
        rep = rows[rid]["rewind_replay"]
        assert rep["max_rel_norm_diff"] == pytest.approx(1e-5, rel=1e-2) and rep["tolerance"] == 0.001, rep
        assert rep["tensor"] == "backbone.conv1.weight"
    assert any("NOT bit-identical" in line for line in lines), lines
    # and the table says so: which rows, at which seed, how far the replay was
    md = (out / "results.md").read_text()
    note = next(line for line in md.splitlines() if line.startswith("Computed from a rewind point replayed not"))
    assert "1e-05" in note and ("seed 0: imp:global_random-r1, imp:retrain-global_random-r1, imp:retrain-ticket-r1, "
                                "imp:ticket-r1.") in note, note
    assert "imp:ticket-r0" not in note, note


@pytest.mark.slow
def test_round_0_trained_again_on_a_fresh_machine_leaves_the_rewind_point_alone(setup, monkeypatch):
    """A session ends after round 0 trained but before its rows: round 0 is carried as done; the next machine trains
    it again for its rows, and that run writes no rewind point (the point the chain was recorded with is only ever
    re-created by the checked replay)."""
    import shutil

    from solo_sparse.engine.imp import state_digest

    repo, suite, solo, tmp = setup
    suite.write_text(_no_retrain(SUITE).replace("[global_random, layer_permutation]", "[global_random]"))
    _cut_at(monkeypatch, suite, solo, tmp / "data", 1)       # the session ends during round 0's ticket probe
    out = repo / "results" / "impt"
    man = json.loads((out / "chains" / "imp" / "seed0" / "chain.json").read_text())
    assert sorted(man["rounds"]) == ["0"] and not (out / "results.json").exists()       # no row written
    shutil.rmtree(out / "runs")
    n = len(_calls(tmp))
    res = Bench(Suite.load(suite), data_root=tmp / "data", solo_dir=solo, log=lambda *_: None).run()
    calls = _calls(tmp)[n:]
    assert [c["name"] for c in calls] == ["imp-r0", "imp-r1", "imp-r0", "imp:global_random-r1-s0"]
    assert "++solo_sparse.stop_after_rewind=true" in calls[0]["argv"]            # the checked replay
    assert not any("rewind_out" in a for a in calls[2]["argv"]), calls[2]["argv"]  # round 0 again: no capture
    assert all(v["status"] == "ok" for v in res["rows"].values()) and len(res["rows"]) == 3
    point = out / "runs" / "imp" / "seed0" / "rounds" / "rewind.safetensors"
    assert state_digest(point) == man["rewind_sha256"]

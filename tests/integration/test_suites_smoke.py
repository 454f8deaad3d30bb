"""The imp, dgnet and interloss suite files: they load (claims name rows the suites write), every run composes
with its plugin keys validated, and a tiny smoke run of the rows this issue added goes through solo-learn's
unchanged main_pretrain.py and the harness (tiny data, one epoch of batch 4): the IMP rounds with both controls
and both evaluations, the gated-only DGNet control and its static equal-MACs control, interloss +PB+HP on MoCo
v2+ (pairs against the key encoder and queue)."""
from pathlib import Path

import pytest
from conftest import needs_solo

from solo_sparse.tools.bench import Bench, Suite, plugin_digest

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "scripts" / "suites"


@pytest.mark.parametrize("name", ["imp", "dgnet", "interloss"])
def test_suite_files_load_and_every_run_composes(name):
    suite = Suite.load(SUITES / f"{name}.yaml")
    assert suite.seeds == 3 and suite.size == 64
    assert suite.overrides == ["augmentations=grey64.yaml", "++max_epochs=12", "++scheduler.warmup_epochs=1"]
    assert suite.claims
    for spec in suite.runs:
        if spec.kind == "pretrain":      # Hydra composes it; the plugin configs are built (keys validated)
            plugin_digest(suite.root / spec.config, [*suite.overrides, *spec.overrides])


@pytest.mark.parametrize("name", ["interloss-diag", "cdg-diag"])
def test_diagnosis_suites_load_and_every_run_composes(name):
    suite = Suite.load(SUITES / f"{name}.yaml")
    assert suite.seeds == 1 and suite.overrides[0] == "augmentations=grey64.yaml"
    for spec in suite.runs:
        plugin_digest(suite.root / spec.config, [*suite.overrides, *spec.overrides])


def test_the_imp_suite_follows_the_paper_protocol():
    suite = Suite.load(SUITES / "imp.yaml")
    (imp,) = suite.runs
    assert (imp.kind, imp.rate, imp.rounds, imp.rewind) == ("rounds", 0.2, 5, "1ep")
    assert 0.8 ** imp.rounds == pytest.approx(0.328, abs=1e-3)
    assert imp.controls == ["global_random", "layer_permutation"] and imp.control_rounds == [1, 2, 3, 4, 5]
    assert imp.retrain_epochs == 12
    pairs = {(c["a"], c["b"]) for c in suite.claims if isinstance(c["a"], str)}
    for k in range(1, 6):   # tickets >= global random at each density, both evaluations
        assert (f"imp:ticket-r{k}", f"imp:global_random-r{k}") in pairs
        assert (f"imp:retrain-ticket-r{k}", f"imp:retrain-global_random-r{k}") in pairs
    sweeps = [c for c in suite.claims if isinstance(c["a"], list)]   # the mean over the densities: post hoc, marked
    assert len(sweeps) == 2 and all(c.get("post_hoc") and "family" not in c for c in sweeps)
    assert {tuple(c["b"]) for c in sweeps} == {tuple(f"imp:{r}global_random-r{k}" for k in range(1, 6))
                                               for r in ("", "retrain-")}


def test_the_dgnet_suite_keeps_its_dense_row():
    suite = Suite.load(SUITES / "dgnet.yaml")
    dense = next(r for r in suite.runs if r.id == "dense")
    assert dense.config == "scripts/configs/fmnist/vicreg.yaml" and dense.overrides == [] and dense.eval_paths == [None]
    ids = {r.id: r for r in suite.runs}
    for t in ("30", "50"):
        assert ids[f"dgnet_dual-t{t}"].eval_paths == ["gated", "dense"]
        assert ids[f"dgnet_gated-t{t}"].eval_paths == ["gated"]
        assert ids[f"static-t{t}"].eval_paths == ["gated"] and "++solo_sparse.control=static" in ids[f"static-t{t}"].overrides
    pairs = {(c["a"], c.get("b")) for c in suite.claims if isinstance(c["a"], str)}   # the dynamic gate is measured against the static network
    assert {("dgnet_dual-t30:gated", "static-t30:gated"), ("dgnet_dual-t50:gated", "static-t50:gated")} <= pairs


@needs_solo
@pytest.mark.slow
@pytest.mark.parametrize("name,only", [("imp", "imp"), ("interloss", "moco-pbhp"), ("dgnet", "dgnet_gated-t30"),
                                       ("dgnet", "static-t30")])
def test_tiny_smoke_run_through_main_pretrain(tmp_path, name, only):
    from helpers import TINY_RUN, make_image_folder

    suite = Suite.load(SUITES / f"{name}.yaml")
    suite.claims = []
    suite.random_init = False
    for spec in suite.runs:               # IMP: one round, both controls, one epoch of label re-training
        if spec.kind == "rounds":
            spec.rounds, spec.control_rounds, spec.retrain_epochs = 1, [1], 1
    make_image_folder(tmp_path / "data" / suite.data, train_per_class=4, val_per_class=2)
    b = Bench(suite, data_root=tmp_path / "data", out=tmp_path / "out" / name, seeds=1, only=[only],
              extra_overrides=[*TINY_RUN, "++method_kwargs.queue_size=16"], log=lambda *_: None)
    rows = b.run()["rows"]
    bad = {k: r.get("error") for k, r in rows.items() if r.get("status") != "ok"}
    assert not bad, bad
    if name == "imp":
        want = {f"imp:{w}-r1" for w in ("ticket", "global_random", "layer_permutation")} | {"imp:ticket-r0"}
        want |= {x.replace("imp:", "imp:retrain-") for x in want}
        assert {r["id"] for r in rows.values()} == want
        assert rows["imp:global_random-r1/seed0"]["density_online"] == pytest.approx(0.8, abs=1e-3)   # rate 0.2
    elif name == "dgnet":
        row = rows[f"{only}:gated/seed0"]
        assert set(rows) == {f"{only}:gated/seed0"} and row["inference_macs_ratio"] is not None
        if only.startswith("static"):     # the fixed narrowing: 0.3 of the gated blocks' MACs, whatever the data
            assert 0.6 < row["gate_sparsity"] < 0.8 and row["inference_macs_ratio"] < 0.45
    else:
        assert set(rows) == {"moco-pbhp/seed0"} and rows["moco-pbhp/seed0"]["linear"] is not None

"""The IMP driver without solo-learn (``solo_sparse.tools.imp.driver.IMPDriver``), over a fake
``main_pretrain.py`` (as tests/tools/test_runner.py fakes it) that reads the overrides the driver passes and writes
solo-learn-like checkpoints (``<name>-<version>-ep=<E>.ckpt`` in a new version folder per invocation, with
``backbone.`` and ``momentum_backbone.`` weights and ``weight_mask`` buffers).

- rounds: densities (1 - rate)^k, each round trained under the previous round's global-magnitude masks (nested),
  the group added when the config lacks it, masks / rewind point / init passed as the driver documents;
- a crash in a round after a checkpoint: the re-run resumes that round from its newest checkpoint and prunes
  the next round's masks from the resumed run's last checkpoint — also when the file-system clock ties or
  reorders the two runs' checkpoints (the fake writes the resumed run's checkpoint one second "earlier").
"""
import json
import re
import sys
import time

import pytest
import torch

from solo_sparse.engine.imp import global_magnitude_prune
from solo_sparse.engine.maskio import load_masks
from solo_sparse.tools.imp.driver import IMPDriver, IMPRun

FAKE = r'''
import json, os, pathlib, sys
import torch
from solo_sparse.engine.maskio import load_masks

args = {}
for a in sys.argv[1:]:
    if a.startswith("+") and "=" in a:
        k, v = a.lstrip("+").split("=", 1)
        args[k] = v.strip("'")
out = pathlib.Path(args["checkpoint.dir"])
name = args["name"]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"name": name, "argv": sys.argv[1:]}) + "\n")
LAYERS = {"layer1.0.conv1": (8, 4, 3, 3), "layer2.0.conv1": (16, 8, 3, 3)}
masks = load_masks(args["solo_sparse.masks"])[0] if "solo_sparse.masks" in args else {
    f"backbone.{k}": torch.ones(s, dtype=torch.bool) for k, s in LAYERS.items()}
if "solo_sparse.rewind_out" in args:
    from solo_sparse.engine.imp import save_state
    save_state(args["solo_sparse.rewind_out"], {"backbone.w": torch.tensor([float(len(os.environ.get("FAKE_REWIND",
                                                                                                 "rewind")))])},
               step=int(os.environ.get("FAKE_REWIND_STEP", 1)))
    if args.get("solo_sparse.stop_after_rewind") == "true":
        sys.exit(0)                        # the run stops once the rewind point is written
start, prev = 0, None
if "resume_from_checkpoint" in args:
    prev = pathlib.Path(args["resume_from_checkpoint"])
    start = torch.load(prev, weights_only=True)["epoch"] + 1
version = f"v{len(list(out.glob('v*')))}"
(out / version).mkdir(parents=True, exist_ok=True)
for ep in range(start, int(args.get("max_epochs", 2))):
    g = torch.Generator().manual_seed(1000 * ep + len(name))      # weights differ per epoch and round
    sd = {}
    for k, s in LAYERS.items():
        m = masks[f"backbone.{k}"]
        w = torch.randn(s, generator=g) * (1 + torch.arange(s[0]).view(-1, 1, 1, 1)) * m
        for enc in ("backbone", "momentum_backbone"):
            sd[f"{enc}.{k}.weight"], sd[f"{enc}.{k}.weight_mask"] = w.clone(), m.clone()
    ck = out / version / f"{name}-{version}-ep={ep}.ckpt"
    torch.save({"state_dict": sd, "epoch": ep, "solo_sparse": {}}, ck)
    if prev is not None:                   # a coarse / skewed clock: the resumed run's file looks older
        t = prev.stat().st_mtime - 1.0
        os.utime(ck, (t, t))
    if os.environ.get("FAKE_CRASH") == name and prev is None:
        sys.exit(3)                        # crashed after its first checkpoint
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "main_pretrain.py").write_text(FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("defaults:\n  - _self_\nmethod: byol\nmax_epochs: 2\n")
    return solo, cfg, tmp_path / "calls.jsonl"


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def _last_ckpt_weights(round_dir):
    from solo_sparse.tools.imp.driver import checkpoint_masks

    cks = sorted(round_dir.rglob("*.ckpt"), key=lambda p: int(p.stem.rsplit("ep=", 1)[1]))
    return checkpoint_masks(cks[-1])


def test_rounds_prune_globally_and_pass_what_the_driver_documents(fake, tmp_path):
    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=2, rate=0.5, rewind="1ep")
    st = IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    assert [st["rounds"][k]["status"] for k in "012"] == ["done"] * 3
    assert [round(st["rounds"][k]["density"], 4) for k in "012"] == [1.0, 0.5, 0.25]
    calls = _calls(log)
    assert [c["name"] for c in calls] == ["imp-r0", "imp-r1", "imp-r2"]
    out = tmp_path / "imp"
    a0, a1 = calls[0]["argv"], calls[1]["argv"]
    assert "+solo_sparse=imp" in a0 and f"++solo_sparse.rewind_out='{out / 'rewind.safetensors'}'" in a0
    assert not any("solo_sparse.masks" in a or "solo_sparse.init" in a for a in a0)
    assert f"++solo_sparse.masks='{out / 'round_1' / 'masks.safetensors'}'" in a1
    assert f"++solo_sparse.init='{out / 'rewind.safetensors'}'" in a1
    assert not any("resume_from_checkpoint" in a for c in calls for a in c["argv"])
    for k in (1, 2):    # round k's masks: round k-1's last checkpoint pruned by global magnitude
        weights, masks = _last_ckpt_weights(out / f"round_{k - 1}")
        want = global_magnitude_prune(weights, masks, 0.5)
        got = load_masks(out / f"round_{k}" / "masks.safetensors")[0]
        assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
        assert all(not (got[n] & ~masks[n]).any() for n in got)                    # nested


def test_a_crashed_round_resumes_from_its_newest_checkpoint(fake, tmp_path, monkeypatch):
    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=2, rate=0.5, rewind="1ep")
    monkeypatch.setenv("FAKE_CRASH", "imp-r1")
    with pytest.raises(RuntimeError, match="round 1: main_pretrain.py: exit 3"):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    out = tmp_path / "imp"
    crashed = next((out / "round_1").rglob("*-ep=0.ckpt"))
    assert json.loads((out / "imp.json").read_text())["rounds"]["1"]["status"] == "training"
    monkeypatch.delenv("FAKE_CRASH")
    st = IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    assert [st["rounds"][k]["status"] for k in "012"] == ["done"] * 3
    calls = _calls(log)
    assert [c["name"] for c in calls] == ["imp-r0", "imp-r1", "imp-r1", "imp-r2"]     # round 0 is not re-run
    assert f"++resume_from_checkpoint='{crashed}'" in calls[2]["argv"]
    resumed = next((out / "round_1").rglob("*-ep=1.ckpt"))
    assert resumed.stat().st_mtime < crashed.stat().st_mtime                         # the clock reordered them
    assert st["rounds"]["1"]["checkpoint"] == str(resumed.relative_to(out))
    weights, masks = _last_ckpt_weights(out / "round_1")
    want = global_magnitude_prune(weights, masks, 0.5)
    got = load_masks(out / "round_2" / "masks.safetensors")[0]
    assert all(torch.equal(got[n], want[n]) for n in want)     # pruned from the resumed run's last checkpoint


def test_a_resumed_round_times_the_cut_run_up_to_its_checkpoint_and_names_both_machines(fake, tmp_path,
                                                                                          monkeypatch):
    """A round cut after a checkpoint (a crash, or the session's end killing it) never recorded its time: the round
    resumed from that checkpoint adds the cut run's time up to it (the work after it is redone) — only its last run
    was counted before — and a time summed over two machines says so (it compares with neither)."""
    from solo_sparse.engine.costmodel import machine_tag

    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=1, rate=0.5, rewind="1ep")
    monkeypatch.setenv("FAKE_CRASH", "imp-r1")
    with pytest.raises(RuntimeError):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    out = tmp_path / "imp"
    crashed = next((out / "round_1").rglob("*-ep=0.ckpt"))
    st = json.loads((out / "imp.json").read_text())
    r1 = st["rounds"]["1"]
    assert r1.get("train_seconds") is None and r1["segment_started"] <= crashed.stat().st_mtime
    r1["segment_started"] = crashed.stat().st_mtime - 500.0        # the cut run had trained 500 s to its checkpoint
    r1["train_machine"] = "another machine"
    (out / "imp.json").write_text(json.dumps(st))
    monkeypatch.delenv("FAKE_CRASH")
    t0 = time.time()
    st = IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    r1 = st["rounds"]["1"]
    assert 500.0 <= r1["train_seconds"] <= 500.0 + (time.time() - t0)
    assert r1["train_machine"] == f"another machine + {machine_tag()}"
    assert "segment_started" not in r1 and "segment_started" not in st["rounds"]["0"]
    assert st["rounds"]["0"]["train_machine"] == machine_tag()       # a round run once: its own machine


def test_a_half_written_checkpoint_is_set_aside_not_resumed_from(fake, tmp_path, monkeypatch):
    """A round killed while Lightning wrote its checkpoint: every rerun resumed from the truncated file and failed.
    The driver resumes only from a checkpoint that reads; the broken one is set aside with a line."""
    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=1, rate=0.5, rewind="1ep")
    monkeypatch.setenv("FAKE_CRASH", "imp-r1")
    with pytest.raises(RuntimeError, match="round 1: main_pretrain.py: exit 3"):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    monkeypatch.delenv("FAKE_CRASH")
    crashed = next((tmp_path / "imp" / "round_1").rglob("*-ep=0.ckpt"))
    crashed.write_bytes(crashed.read_bytes()[: crashed.stat().st_size // 2])          # killed mid-write
    lines = []
    st = IMPDriver(run, solo, "imp", python=sys.executable, log=lines.append).run_all()
    assert [st["rounds"][k]["status"] for k in "01"] == ["done"] * 2
    rerun = _calls(log)[-1]
    assert rerun["name"] == "imp-r1" and not any("resume_from_checkpoint" in a for a in rerun["argv"])
    assert crashed.with_name(crashed.name + ".unreadable").exists() and not crashed.exists()
    said = [line for line in lines if "does not read" in line]
    assert len(said) == 1 and crashed.name in said[0] and "set aside" in said[0], lines


def test_an_all_false_mask_is_refused_before_training(fake, tmp_path, monkeypatch):
    from solo_sparse.core.config import ConfigError
    from solo_sparse.engine.maskio import save_masks

    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=1, rate=0.5, rewind="1ep")
    monkeypatch.setenv("FAKE_CRASH", "imp-r1")
    with pytest.raises(RuntimeError):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    monkeypatch.delenv("FAKE_CRASH")
    masks_file = tmp_path / "imp" / "round_1" / "masks.safetensors"
    dead = {k: torch.zeros_like(m) for k, m in load_masks(masks_file)[0].items()}
    save_masks(masks_file, dead)
    n = len(_calls(log))
    with pytest.raises(ConfigError, match=r"keeps no weight \(2 layer\(s\), all False\): a dead backbone"):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    assert len(_calls(log)) == n                                                     # nothing trained


# ----------------------------------------------------------------------------- refusals before round 0
def test_more_rounds_than_the_smallest_layer_allows_are_refused_before_round_0(fake, tmp_path):
    """(1 - rate)^R of ResNet-18's smallest pruned layer (layer2.0.downsample.0, 8192 weights) must keep one
    weight: R <= 40 at rate 0.2; a backbone override is read (ResNet-50's smallest: 4096 weights, R <= 37)."""
    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.imp.driver import max_rounds

    solo, cfg, log = fake
    assert max_rounds(0.2, 8192) == 40 and 0.8 ** 40 * 8192 >= 1 > 0.8 ** 41 * 8192
    IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "ok"), rounds=40), solo, "imp", log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"imp --rounds=41: at --rate=0.2 .* keeps less than one weight per layer "
                                          r"\(resnet18's smallest pruned layer 'layer2.0.downsample.0' has 8192 "
                                          r"weights\); allowed: --rounds 0..40 at this rate"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "a"), rounds=41), solo, "imp", log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"--rounds=38: .*resnet50's smallest pruned layer 'layer1.0.conv1' has "
                                          r"4096 weights\); allowed: --rounds 0..37"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "b"), rounds=38, overrides=["++backbone.name=resnet50"]),
                  solo, "imp", log=lambda *_: None)
    assert not log.exists() and not (tmp_path / "a").exists()          # nothing trained, no run folder
    said = []                                   # a backbone solo-sparse does not build: not checked, and said so
    IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "v"), rounds=99, overrides=["++backbone.name=vit_tiny"]),
              solo, "imp", log=said.append)
    assert any("--rounds=99 not checked before round 0" in x and "'vit_tiny'" in x for x in said), said


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_a_rate_outside_0_1_is_refused_with_the_allowed_range(fake, tmp_path, rate):
    from solo_sparse.core.config import ConfigError

    solo, cfg, log = fake
    with pytest.raises(ConfigError, match=re.escape(f"imp --rate={rate!r}: allowed: a number in (0, 1)")):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o"), rate=rate), solo, "imp", log=lambda *_: None)
    assert not log.exists()


@pytest.mark.parametrize("tol", [-0.1, 1.0, float("nan"), True, "0.1"])
def test_a_rewind_tolerance_outside_0_1_is_refused_with_the_allowed_range(fake, tmp_path, tol):
    from solo_sparse.core.config import ConfigError

    solo, cfg, log = fake
    with pytest.raises(ConfigError, match=r"imp --rewind-tolerance=.*: allowed: a number in \[0, 1\)"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o"), rewind_tolerance=tol), solo, "imp",
                  log=lambda *_: None)
    assert not log.exists()


def test_a_global_prune_that_empties_a_layer_stops_before_the_next_round(fake, tmp_path):
    """Global magnitude pruning may strip a layer of small weights faster than the average (the fake's
    layer1 weights are smaller than layer2's): the run stops naming the layer; round 1 never trains."""
    from solo_sparse.core.config import ConfigError

    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=1, rate=0.99, rewind="1ep")
    with pytest.raises(ConfigError, match=r"imp round 0: the global prune at --rate=0.99 removes every weight of "
                                          r"layer 'backbone.layer1.0.conv1' \(288 weights\): a dead backbone"):
        IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None).run_all()
    assert [c["name"] for c in _calls(log)] == ["imp-r0"]
    assert not (tmp_path / "imp" / "round_1" / "masks.safetensors").exists()


def test_permute_masks_default_control_is_global_and_names_are_checked(tmp_path, capsys):
    from solo_sparse.engine.maskio import layer_densities, save_masks
    from solo_sparse.tools.cli import main

    g = torch.Generator().manual_seed(0)
    masks = {"backbone.a": torch.rand(64, 64, generator=g) < 0.9, "backbone.b": torch.rand(64, 64, generator=g) < 0.1}
    src = save_masks(tmp_path / "ticket.safetensors", masks)
    assert main(["permute-masks", str(src), str(tmp_path / "g.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "global random" in out
    got = load_masks(tmp_path / "g.safetensors")[0]
    assert sum(int(m.sum()) for m in got.values()) == sum(int(m.sum()) for m in masks.values())
    assert abs(layer_densities(got)["backbone.a"] - layer_densities(masks)["backbone.a"]) > 0.2   # not per layer
    assert main(["permute-masks", str(src), str(tmp_path / "p.safetensors"), "--control", "layer-permutation"]) == 0
    assert "layer-wise permutation" in capsys.readouterr().out
    assert layer_densities(load_masks(tmp_path / "p.safetensors")[0]) == layer_densities(masks)
    with pytest.raises(SystemExit) as exc:
        main(["permute-masks", str(src), str(tmp_path / "x.safetensors"), "--control", "layer"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "--control" in err and "'layer'" in err and "'global', 'layer-permutation'" in err, err


# ----------------------------------------------------------------------------- a chain carried to another machine
def test_a_chain_carried_to_another_machine_continues_with_a_replayed_rewind_point(fake, tmp_path, monkeypatch):
    """The runs folder does not survive the session: the driver writes the chain's small state (densities, masks
    bit-packed, the rewind point's sha256) to a kept folder; a fresh driver on another machine restores it, replays
    round 0 only up to the rewind point (stop_after_rewind), checks the file against the recorded sha256 and trains
    the rounds left. Masks are the same bits; a replay that differs is refused."""
    import shutil

    from solo_sparse.core.config import ConfigError
    from solo_sparse.engine.imp import load_state
    from solo_sparse.engine.maskio import load_packed_masks

    solo, cfg, log = fake
    keep = tmp_path / "keep"
    run = IMPRun(config=str(cfg), out=str(tmp_path / "a"), rounds=2, rate=0.5, rewind="1ep")
    monkeypatch.setenv("FAKE_CRASH", "imp-r2")            # machine A stops during round 2
    a = IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None)
    seen = []
    with pytest.raises(RuntimeError):
        a.run_all(on_round=lambda k, ck: (seen.append((k, ck.exists())), a.carry(keep, "fp-1")))
    assert seen == [(0, True), (1, True)]                  # each finished round reported with its checkpoint
    monkeypatch.delenv("FAKE_CRASH")
    man = json.loads((keep / "chain.json").read_text())
    assert sorted(man["rounds"]) == ["0", "1"] and sorted(man["round_masks"]) == ["1", "2"] and man["rewind_sha256"]
    assert man["rewind_norms"] == {"backbone.w": 6.0}                          # what a replay is measured against
    assert man["rewind_machine"]["torch"] == torch.__version__ and man["rewind_machine"]["threads"] >= 1
    assert "/" not in json.dumps(man)                                          # no machine path
    for k in (1, 2):
        packed, _ = load_packed_masks(keep / f"round_{k}.masks.safetensors")
        full = load_masks(tmp_path / "a" / f"round_{k}" / "masks.safetensors")[0]
        assert all(torch.equal(packed[n], full[n]) for n in full)
    shutil.rmtree(tmp_path / "a")                          # machine B: nothing of A but the kept folder

    run_b = IMPRun(config=str(cfg), out=str(tmp_path / "b"), rounds=2, rate=0.5, rewind="1ep")
    with pytest.raises(ConfigError, match="belongs to another run"):
        IMPDriver(run_b, solo, "imp", python=sys.executable, log=lambda *_: None).restore(keep, "fp-2")
    n = len(_calls(log))
    lines = []
    b = IMPDriver(run_b, solo, "imp", python=sys.executable, log=lines.append)
    assert b.restore(keep, "fp-1")
    st = b.run_all()
    calls = _calls(log)[n:]
    assert [c["name"] for c in calls] == ["imp-r0", "imp-r2"]                 # a replay of round 0, then round 2
    assert "++solo_sparse.stop_after_rewind=true" in calls[0]["argv"]
    assert any("rewind_replay" in a and "rewind_out" in a for a in calls[0]["argv"])
    assert [st["rounds"][k]["status"] for k in "012"] == ["done"] * 3
    assert st["rounds"]["1"].get("restored") and "checkpoint" not in st["rounds"]["1"]
    assert load_state(tmp_path / "b" / "rewind.safetensors")[0]["backbone.w"].item() == 6.0
    assert any("identical to round 0's" in line for line in lines), lines
    got = load_masks(tmp_path / "b" / "round_2" / "masks.safetensors")[0]
    assert all(torch.equal(got[n], packed[n]) for n in got)                   # the carried bits, unchanged
    assert not b.restore(keep, "fp-1")                                        # B has trained: nothing to restore

    # a replay that is not bit-identical: refused, nothing trained on it
    shutil.rmtree(tmp_path / "b")
    monkeypatch.setenv("FAKE_REWIND", "another")
    c = IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "c"), rounds=2, rate=0.5, rewind="1ep"), solo, "imp",
                  python=sys.executable, log=lambda *_: None)
    c.restore(keep, "fp-1")
    n = len(_calls(log))
    with pytest.raises(RuntimeError, match="differs from the one the masks were pruned from") as exc:
        c.run_all()
    assert [x["name"] for x in _calls(log)[n:]] == ["imp-r0"] and not (tmp_path / "c" / "rewind.safetensors").exists()
    msg = str(exc.value)            # how far (6 -> 7: 1/6), where, the tolerance, both machines, and the way on
    assert "0.167 (backbone.w)" in msg and f"round 0's: torch {torch.__version__}" in msg, msg
    assert "rewind_tolerance=0.0" in msg and "tolerance above 0.167 (--rewind-tolerance" in msg, msg
    assert "rewind_replay" not in c.state

    # ... accepted within a tolerance above the measured difference, and recorded; refused below it
    def driver(tol, lines=None):
        shutil.rmtree(tmp_path / "c", ignore_errors=True)
        d = IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "c"), rounds=2, rate=0.5, rewind="1ep",
                             rewind_tolerance=tol), solo, "imp", python=sys.executable,
                      log=(lines.append if lines is not None else lambda *_: None))
        d.restore(keep, "fp-1")
        return d

    with pytest.raises(RuntimeError, match="0.167"):
        driver(0.16).run_all()
    lines = []
    d = driver(0.17, lines)
    st = d.run_all()
    assert [st["rounds"][k]["status"] for k in "012"] == ["done"] * 3
    rep = st["rewind_replay"]
    assert rep["exact"] is False and rep["max_rel_norm_diff"] == pytest.approx(1 / 6) and rep["tensor"] == "backbone.w"
    assert rep["tolerance"] == 0.17 and rep["machine"]["torch"] == torch.__version__
    assert load_state(tmp_path / "c" / "rewind.safetensors")[0]["backbone.w"].item() == 7.0
    assert any("NOT bit-identical" in line and "0.167" in line for line in lines), lines
    assert json.loads((tmp_path / "c" / "imp.json").read_text())["rewind_replay"]["exact"] is False   # persisted
    assert d.state["fingerprint"] == b.state["fingerprint"]       # a policy for continuing, not part of the run
    d.carry(keep, "fp-1")                                          # the chain remembers it for the next machines
    assert json.loads((keep / "chain.json").read_text())["inexact_replay"] == {
        "max_rel_norm_diff": pytest.approx(1 / 6), "tensor": "backbone.w", "tolerance": 0.17}

    # equal values taken at another step (or another dtype, shape, counter): no tolerance applies, 0 included
    monkeypatch.setenv("FAKE_REWIND", "rewind")
    monkeypatch.setenv("FAKE_REWIND_STEP", "2")
    (keep / "chain.json").write_text(json.dumps({**man, "inexact_replay": None}))
    for tol in (0.0, 0.5):
        with pytest.raises(RuntimeError, match=r"differs in more than float values .*rewind_tolerance=" + str(tol)
                                               + ".*no rewind tolerance applies to such a difference"):
            driver(tol).run_all()


def test_a_chain_from_before_norms_were_recorded_gets_them_where_its_rewind_point_is(fake, tmp_path, monkeypatch):
    """A chain whose round 0 ran before the rewind point's norms and structure were recorded: carry() fills them in
    from the point on this machine when its content is the recorded one (round 0's machine named only where round 0
    ran, not where the point was replayed); a replay against a chain without them is refused, no tolerance applying."""
    solo, cfg, log = fake
    keep = tmp_path / "keep"
    run = IMPRun(config=str(cfg), out=str(tmp_path / "a"), rounds=1, rate=0.5, rewind="1ep")
    a = IMPDriver(run, solo, "imp", python=sys.executable, log=lambda *_: None)
    a.run_all()
    full = {k: a.state[k] for k in ("rewind_norms", "rewind_structure", "rewind_machine")}
    for k in full:
        a.state.pop(k)
    a.carry(keep, "fp")
    man = json.loads((keep / "chain.json").read_text())
    assert {k: man[k] for k in full} == full
    for k in full:
        a.state.pop(k)
    a.state["rewind_replay"] = {"exact": True}                    # the point here was replayed, not trained
    a.carry(keep, "fp")
    man = json.loads((keep / "chain.json").read_text())
    assert man["rewind_norms"] == full["rewind_norms"] and man["rewind_machine"] is None
    (tmp_path / "a" / "rewind.safetensors").unlink()               # another machine, another value, no norms
    a.state.update({"rewind_norms": None, "rewind_structure": None})
    a.run.rewind_tolerance = 0.5
    monkeypatch.setenv("FAKE_REWIND", "another")
    with pytest.raises(RuntimeError, match="no tensor norms or structure were recorded.*no rewind tolerance applies "
                                           "to this chain"):
        a.ensure_rewind()


def test_a_round_whose_features_overflow_is_not_evaluated_and_the_chain_goes_on(fake, tmp_path, monkeypatch):
    """--eval-data: the pruning needs no evaluation, so a round whose features overflow float32 records why it
    has none and the next round is trained."""
    from solo_sparse.tools.evaluate import NonFiniteFeatures

    solo, cfg, log = fake
    run = IMPRun(config=str(cfg), out=str(tmp_path / "imp"), rounds=1, rate=0.5, rewind="1ep",
                 eval_data=str(tmp_path / "nowhere"))

    def overflow(self, ck):
        raise NonFiniteFeatures("3 of 4 images give non-finite features")

    monkeypatch.setattr(IMPDriver, "evaluate", overflow)
    lines = []
    st = IMPDriver(run, solo, "imp", python=sys.executable, log=lines.append).run_all()
    assert [st["rounds"][k]["status"] for k in ("0", "1")] == ["done", "done"]
    assert "3 of 4 images" in st["rounds"]["0"]["eval_error"] and "eval" not in st["rounds"]["0"]
    assert any("round 0: not evaluated" in x for x in lines)

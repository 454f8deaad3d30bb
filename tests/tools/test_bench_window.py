"""One window for every sparse row of a suite: the harness asks each run's plugin which of its own keys set it
(``Plugin.window_overrides``), leaves dense rows (and their fingerprints) alone, and refuses a run whose own
overrides contradict the window, in one line, before anything trains."""
import json

import pytest
from helpers import ROOT

from solo_sparse.core.config import ConfigError
from solo_sparse.tools.bench import Bench, Suite

MOCO = "scripts/configs/fmnist/mocov2plus.yaml"


def _suite(tmp_path, runs, window='{start: "10%", end: "75%"}'):
    """A suite file under tmp/scripts/suites (its config paths are relative to tmp, which links the repo's
    configs) and an empty data folder."""
    (tmp_path / "scripts" / "suites").mkdir(parents=True, exist_ok=True)
    if not (tmp_path / "scripts" / "configs").exists():
        (tmp_path / "scripts" / "configs").symlink_to(ROOT / "scripts" / "configs")
    for split in ("train", "val"):
        (tmp_path / "data" / "d" / split).mkdir(parents=True, exist_ok=True)
    lines = ["suite: w", "data: d", "size: 32", 'overrides: ["++max_epochs=2"]']
    if window:
        lines.append(f"window: {window}")
    lines.append("runs:")
    for rid, ov in runs:
        lines += [f"  - id: {rid}", f"    config: {MOCO}", f"    overrides: {json.dumps(ov)}"]
    p = tmp_path / "scripts" / "suites" / "w.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def _bench(path, tmp_path):
    return Bench(Suite.load(path), data_root=tmp_path / "data", out=tmp_path / "out", log=lambda *a: None)


def test_the_suite_window_becomes_each_plugins_own_keys_and_leaves_dense_rows_alone(tmp_path):
    runs = [("dense", []), ("gmp", ["+solo_sparse=gmp", "++solo_sparse.start=10%"]),
            ("synccp", ["+solo_sparse=synccp"]), ("sdclr", ["+solo_sparse=sdclr"])]
    b = _bench(_suite(tmp_path, runs), tmp_path)
    spec = {r.id: r for r in b.suite.runs}
    assert b.window_overrides(spec["dense"]) == [] and b.window_overrides(spec["sdclr"]) == []
    assert b.window_overrides(spec["gmp"]) == ["++solo_sparse.start=10%", "++solo_sparse.end=75%"]
    assert b.window_overrides(spec["synccp"]) == ["++solo_sparse.csi_warmup=10%", "++solo_sparse.csi_timeout=10%",
                                                  "++solo_sparse.csi_ramp=null", "++solo_sparse.end=75%"]
    assert "++solo_sparse.csi_ramp=null" in b._overrides(spec["synccp"], 0)
    assert b.plugin_digest(spec["synccp"]) is not None       # the windowed config composes and validates
    # a dense row's fingerprint is the one it had without a window
    plain = _bench(_suite(tmp_path, runs, window=None), tmp_path)
    assert b.fingerprint(spec["dense"], 0) == plain.fingerprint({r.id: r for r in plain.suite.runs}["dense"], 0)
    assert "window" not in b.fingerprint(spec["dense"], 0) and "window" in b.fingerprint(spec["gmp"], 0)
    assert b.fingerprint(spec["gmp"], 0) != plain.fingerprint({r.id: r for r in plain.suite.runs}["gmp"], 0)


def test_a_run_contradicting_the_suite_window_is_refused_in_one_line(tmp_path):
    runs = [("dense", []), ("granet", ["+solo_sparse=granet", "++solo_sparse.end=90%"])]
    with pytest.raises(ConfigError) as e:
        _bench(_suite(tmp_path, runs), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "run 'granet' sets solo_sparse.end=90% but the suite's window (start=10%, end=75%) sets it to 75%" in msg


@pytest.mark.parametrize("window", ['{start: "75%", end: "10%"}', '{start: "10%"}', '{start: soon, end: "75%"}'])
def test_a_bad_window_is_refused_when_the_suite_loads(tmp_path, window):
    p = _suite(tmp_path, [("dense", [])], window=window)
    with pytest.raises(ConfigError, match=r"w.yaml: window=.*: expected \{start: S, end: E\}") as e:
        Suite.load(p)
    assert "\n" not in str(e.value)

"""scripts/hosts_agree.py: the hosts' mechanics compared seed by seed, their linear probes unpaired (Welch), the
verdicts inside each host paired."""
import json

from helpers import load_script


def _script():
    return load_script("hosts_agree")


def _results(path, host, probes, trigger=46):
    rows = {}
    for rid, vals in probes.items():
        for seed, v in enumerate(vals):
            rows[f"{rid}/seed{seed}"] = {
                "id": rid, "seed": seed, "status": "ok", "linear": v / 100, "density_online": 0.1 if rid != "dense" else 1.0,
                "density_momentum": 0.4 if rid == "synccp" else None, "inference_macs_ratio": 0.296,
                "training_macs_ratio": 0.586, "trigger_step": trigger if rid == "synccp" else None}
    rows["gmp/seed9"] = {"id": "gmp", "seed": 9, "status": "stale", "linear": 0.10}
    path.write_text(json.dumps({"meta": {"suite": "s", "host": host}, "rows": rows}))
    return path


def test_hosts_compared_unpaired_with_their_own_spread_and_mechanics_seed_by_seed(tmp_path, capsys):
    solo = _results(tmp_path / "s.json", "solo-learn", {"dense": [83.2, 83.0, 82.8], "gmp": [83.7, 83.3, 83.5],
                                                        "synccp": [82.7, 82.5, 82.9]})
    light = _results(tmp_path / "l.json", "lightning", {"dense": [83.6, 83.0, 83.1], "gmp": [82.8, 82.0, 82.4],
                                                        "synccp": [82.8, 82.4, 82.6]}, trigger=47)
    assert _script().main([str(solo), str(light)]) == 0
    out = capsys.readouterr().out
    # synccp's trigger step differs at every seed: the mechanics are not called identical
    assert "| synccp | 0 |" in out and "no: trigger_step" in out and "identical on every common seed: **no**" in out
    # dense: Lightning 83.23 ± 0.32 vs solo 83.00 ± 0.20 -> +0.23, inside the larger spread (0.32)
    dense = next(line for line in out.splitlines() if line.startswith("| dense | 3:"))
    assert "+0.23 [" in dense and dense.endswith("| yes |")
    # gmp: -1.10, outside either host's spread (0.20 / 0.40); the stale row (10.0) is not averaged in
    gmp = next(line for line in out.splitlines() if line.startswith("| gmp | 3:"))
    assert "3: 83.50 ± 0.20" in gmp and "-1.10 [" in gmp and gmp.endswith("| no |")
    assert "Within the seed spread: 2 of 3 runs." in out
    # gmp - dense: solo +0.50 (seeds paired inside the host), Lightning -0.83: the verdicts differ
    row = next(line for line in out.splitlines() if line.startswith("| gmp − dense |"))
    assert row.endswith("| no |") and "not reproduced" in row


def test_a_one_seed_side_has_no_verdict_to_compare(tmp_path, capsys):
    solo = _results(tmp_path / "s.json", "solo-learn", {"dense": [83.2, 83.0, 82.8], "gmp": [83.7]})
    light = _results(tmp_path / "l.json", "lightning", {"dense": [83.6, 82.8], "gmp": [82.8, 82.4]})
    assert _script().main([str(solo), str(light)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| gmp − dense |"))
    assert "one seed: not decided" in row and row.endswith("| n/a (one seed) |")

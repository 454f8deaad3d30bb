"""scripts/gpu_check.py in its tiny CPU mode: the same path the GPU check takes (main_pretrain.py per plugin,
mask invariants on the device, step-time ratios, the N:M export's honest skip without CUDA)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.solo
@pytest.mark.slow
def test_gpu_check_cpu_tiny(tmp_path):
    """The GPU check runs main_pretrain.py: it needs solo-learn."""
    out = tmp_path / "gc"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-tiny", "--out", str(out),
                        "--only", "mocov2plus", "gmp", "synccp-2:4", "speed"], capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads((out / "gpu_check.json").read_text())
    assert set(res["runs"]) == {"mocov2plus", "gmp", "synccp-2:4"} and res["precision"] == "32"
    for rid in ("gmp", "synccp-2:4"):
        row = res["runs"][rid]
        assert row["ok"] and row["masks"]["online"]["leaked"] == 0 and row["masks"]["momentum"]["leaked"] == 0
        assert row["step_s"] > 0 and row["step_ratio"] > 0
    assert res["runs"]["synccp-2:4"]["nm_export"]["status"].startswith("skipped: semi-structured sparse kernels need "
                                                                      "CUDA")
    assert "| gmp | yes |" in (out / "gpu_check.md").read_text()
    # the speed step: every exported fast path timed against dense, with its MACs limit
    sp = res["speed"]
    assert sp["ok"], sp.get("error")
    assert {r["path"] for r in sp["rows"]} >= {"compact-imp-d50", "dgnet-dual-t30", "cdg-cg8"}
    dense_ref = [r for r in sp["rows"] if r["reference"] == "dense"]
    assert dense_ref and all(r["speedup"] > 0 and r["macs_limit"] > (0 if r["fast"].startswith("exec-") else 1)
                             for r in dense_ref)
    assert any(r["reference"] == "dense+opt" for r in sp["rows"])      # compact+opt's fair reference is reported
    assert (out / "speed" / "results.json").exists()
    assert "Speed (`solo-sparse speed` suite on cpu, run alone before the trainings): ok" in (out / "gpu_check.md").read_text()


@pytest.mark.solo
@pytest.mark.slow
def test_gpu_check_cpu_bf16(tmp_path):
    """``--precision bf16-mixed`` reaches solo-learn's run (its saved args) and the masks still hold."""
    out = tmp_path / "gc"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu-tiny", "--precision",
                        "bf16-mixed", "--out", str(out), "--only", "gmp"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["precision"] == "bf16-mixed"
    row = res["runs"]["gmp"]
    assert row["ok"] and row["masks"]["online"]["leaked"] == 0 and row["masks"]["momentum"]["leaked"] == 0
    saved = [json.loads(p.read_text()) for p in (out / "runs" / "gmp").rglob("args.json")]
    assert saved and all(a["precision"] == "bf16-mixed" for a in saved)


def test_the_gpu_check_covers_every_installed_plugin():
    """Its runs are data (each plugin's overrides); which plugins exist is the registry's answer."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gpu_check.missing_plugins() == []
    refs = gpu_check.reference_runs()
    assert refs["gmp"] == "mocov2plus" and refs["cdg"] == "simclr" and refs["dgnet_gated"] == "vicreg"
    assert set(refs.values()) <= {rid for rid, _, ov in gpu_check.RUNS if not ov}


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_the_gpu_check_report_names_the_precision_the_runs_used(tmp_path, precision):
    """Its markdown once said "fp32" for every CPU run, also for a ``--cpu-tiny --precision bf16-mixed`` check."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    res = {"device": "cpu", "torch": "x", "precision": precision, "steps": 4, "batch_size": 8, "lanes": 1,
           "runs": {"gmp": {"ok": True, "step_s": 0.3, "masks": {}}}}
    gpu_check.write_results(tmp_path, res)
    head = (tmp_path / "gpu_check.md").read_text().splitlines()[0]
    assert f"precision {precision}," in head and ("fp32" in head) == (precision == "fp32")

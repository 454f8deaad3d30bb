#!/usr/bin/env python
"""The GPU check: every plugin for a few hundred steps through solo-learn's unchanged main_pretrain.py on CUDA
with ``precision: bf16-mixed`` and channels-last inputs (solo-learn's default), the mask invariants checked on
the GPU, step-time ratios plugin / plain, and an N:M export through ``torch.sparse.to_sparse_semi_structured``.

    python scripts/gpu_check.py --data data/fmnist5k --out results/gpu_check            # on a CUDA machine (<= 8 min)
    python scripts/gpu_check.py --cpu-tiny --out /tmp/gpu_check                           # the same path, tiny, on CPU

Nothing is downloaded: the data folder comes from ``scripts/prepare_fashion_mnist.py`` (``--cpu-tiny`` makes a
tiny random image folder). Per plugin it records the steady-state seconds per step (the median of the step
times Lightning's progress bar reports, after warm-up), the ratio to the plain method, the checkpoint's masked
weights checked on the device (no pruned weight non-zero in either encoder, masks at their density), and for
gated plugins the gate statistics. Semi-structured (2:4) sparse kernels exist for matrix products only, not
convolutions: the N:M export reshapes each 2:4-masked conv weight to its GEMM form (out, kh·kw·in — the groups
of 4 input channels at one position are consecutive there, as solo-sparse groups them) and times
``x @ W.T`` dense vs semi-structured on im2col-shaped inputs; CPU runs and GPUs older than sm80 record why not.
The ``speed`` step runs ``solo-sparse speed``'s suite (``scripts/speed/suite.yaml``: compact export, DGNet's
batch-1 plan from a cost-model table timed on the device, CDG's executable forms, each against dense with its
MACs limit) on the device, synchronised around every call (``--cpu-tiny``: 32 px, batches 1 and 2, 3 repeats).
Results: ``<out>/gpu_check.json`` and ``gpu_check.md`` (and ``<out>/speed/results.json|md``).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "scripts" / "configs" / "fmnist"
#: (id, config, overrides): the plain methods first (the ratios' references), then every plugin
RUNS = [
    ("mocov2plus", "mocov2plus.yaml", []),
    ("simclr", "simclr.yaml", []),
    ("vicreg", "vicreg.yaml", []),
    ("gmp", "mocov2plus.yaml", ["+solo_sparse=gmp", "++solo_sparse.final_density=0.1", "++solo_sparse.start=10%",
                                "++solo_sparse.end=60%", "++solo_sparse.every=10"]),
    ("synccp", "mocov2plus.yaml", ["+solo_sparse=synccp", "++solo_sparse.final_density=0.1", "++solo_sparse.every=10",
                                   "++solo_sparse.csi_warmup=0", "++solo_sparse.csi_ramp=50%",
                                   "++solo_sparse.csi_timeout=10%"]),
    ("synccp-2:4", "mocov2plus.yaml", ["+solo_sparse=synccp", "++solo_sparse.granularity=nm",
                                       "++solo_sparse.init_density=0.85", "++solo_sparse.every=10",
                                       "++solo_sparse.csi_warmup=0", "++solo_sparse.csi_ramp=50%",
                                       "++solo_sparse.csi_timeout=10%"]),
    ("granet", "mocov2plus.yaml", ["+solo_sparse=granet", "++solo_sparse.final_density=0.1", "++solo_sparse.start=10%",
                                   "++solo_sparse.end=60%", "++solo_sparse.every=10"]),
    ("sdclr", "mocov2plus.yaml", ["+solo_sparse=sdclr", "++solo_sparse.density=0.1"]),
    ("imp", "mocov2plus.yaml", ["+solo_sparse=imp"]),
    ("cdg", "simclr.yaml", ["+solo_sparse=cdg", "++solo_sparse.stages=[1,2,3]"]),
    ("cgnet", "simclr.yaml", ["+solo_sparse=cgnet", "++solo_sparse.stages=[1,2,3]"]),
    ("fbs", "simclr.yaml", ["+solo_sparse=fbs"]),
    ("dgnet_dual", "vicreg.yaml", ["+solo_sparse=dgnet_dual", "++solo_sparse.target=0.5"]),
    ("dgnet_gated", "vicreg.yaml", ["+solo_sparse=dgnet_gated", "++solo_sparse.target=0.5"]),
    ("interloss", "simclr.yaml", ["+solo_sparse=interloss"]),
]


def run_plugin(overrides) -> str:
    """The plugin a run's overrides add (``+solo_sparse=<name>``), or '' for a plain method."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("+solo_sparse=")), "")


def reference_runs() -> dict:
    """{plugin run id: the plain method run it is timed against (its config's own run)}."""
    return {rid: Path(cfg).stem for rid, cfg, ov in RUNS if run_plugin(ov)}


def missing_plugins() -> list:
    """Installed plugins (the registry) that no run of RUNS trains: the check must cover every one."""
    from solo_sparse.core.registry import available_plugins

    return sorted(set(available_plugins()) - {run_plugin(ov) for _, _, ov in RUNS})


_RATE = re.compile(r"(\d+(?:\.\d+)?)(it/s|s/it)")


def step_seconds(log: Path) -> float:
    """Median seconds per optimizer step over the second half of the progress-bar readings of a run."""
    rates = []
    for m in _RATE.finditer(log.read_text(errors="replace").replace("\r", "\n")):
        v = float(m.group(1))
        if v > 0:
            rates.append(1.0 / v if m.group(2) == "it/s" else v)
    if not rates:
        return float("nan")
    return statistics.median(rates[len(rates) // 2:])


@torch.no_grad()
def check_masks(ckpt: Path, device: str) -> dict:
    """Mask invariants of a checkpoint, on ``device``: pruned weights zero in both encoders, densities. An encoder
    its plugin soft-masks (stored weights dense by design, the plugin contract's ``stored_dense_encoders``) is
    reported ``soft``, its weights outside the mask not counted as leaked."""
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.engine.maskio import encoder_masks

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    soft = {e for name, saved in (ck.get("solo_sparse") or {}).items()
            for e in get_plugin(name).stored_dense_encoders(saved.get("extra") or {})}
    sd = {k: v.to(device) for k, v in ck["state_dict"].items()}
    out = {}
    for enc, masks in encoder_masks(sd).items():
        prefix = "" if enc == "online" else "momentum_"
        leaked = kept = total = 0
        for layer, m in masks.items():
            w = sd[f"{prefix}{layer}.weight"]
            if enc not in soft:
                leaked += int(((w != 0) & ~m).sum())
            kept += int(m.sum())
            total += m.numel()
        out[enc] = {"leaked": "soft" if enc in soft else leaked, "density": kept / max(total, 1)}
    return out


def nm_export(ckpt: Path, device: str, reps: int = 50) -> dict:
    """2:4 conv weights of a checkpoint through ``to_sparse_semi_structured``: exactness and GEMM time."""
    if device != "cuda":
        return {"status": "skipped: semi-structured sparse kernels need CUDA (sm80 or newer); none here"}
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return {"status": f"skipped: semi-structured sparse kernels need sm80+, this GPU is sm{major}{minor}"}
    from torch.sparse import to_sparse_semi_structured

    from solo_sparse.engine.maskio import encoder_masks
    from solo_sparse.engine.masks import nm_group_mask_is_valid

    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    rows = []
    for layer, m in encoder_masks(sd).get("online", {}).items():
        if m.dim() != 4 or not bool(nm_group_mask_is_valid(m, 2, 4).all()) or float(m.float().mean()) > 0.51:
            continue
        w = (sd[f"{layer}.weight"] * m).permute(0, 2, 3, 1).reshape(m.shape[0], -1)   # (out, kh*kw*in)
        if w.shape[0] % 64 or w.shape[1] % 64:
            rows.append({"layer": layer, "status": f"skipped: GEMM shape {tuple(w.shape)} not a multiple of 64"})
            continue
        wd = w.to(device, torch.bfloat16)
        x = torch.randn(4096, wd.shape[1], device=device, dtype=torch.bfloat16)
        ws = to_sparse_semi_structured(wd)
        diff = float((torch.nn.functional.linear(x, ws) - torch.nn.functional.linear(x, wd)).abs().max())
        times = {}
        for name, ww in (("dense", wd), ("semi_structured", ws)):
            for _ in range(5):
                torch.nn.functional.linear(x, ww)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.nn.functional.linear(x, ww)
            torch.cuda.synchronize()
            times[name] = (time.perf_counter() - t0) / reps * 1e3
        rows.append({"layer": layer, "gemm": list(wd.shape), "max_abs_diff": diff, "dense_ms": times["dense"],
                     "sparse_ms": times["semi_structured"], "speedup": times["dense"] / times["semi_structured"]})
    return {"status": "ok" if rows else "no 2:4 layer found", "layers": rows}


def speed_step(out: Path, device: str, tiny: bool) -> dict:
    """The speed suite on ``device`` (every exported fast path vs dense, MACs limits): a summary row per ratio."""
    from solo_sparse.tools import speed

    suite = speed.load_suite(REPO / "scripts" / "speed" / "suite.yaml")
    kw = {"sizes": [32], "batches": [1, 2], "reps": 3} if tiny else {}
    if tiny:
        suite["table_reps"] = 1
        for p in suite["paths"]:          # 32 px: layer4's maps are 1x1, refused by channel-normalised CDG gates
            if "params" in p:
                p["params"] = {**p["params"], "stages": [1, 2]}
    try:
        res = speed.run(suite, out=out / "speed", device=device, note=f"gpu_check on {device}", **kw)
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "rows": speed_rows(res), "results": "speed/results.json"}


def speed_rows(res: dict) -> list:
    """One row per measured ratio of a speed result (every reference: ``dense`` and, where the suite times it,
    ``dense+opt`` — the same inference optimisations without the sparsity, the fair reference of ``compact+opt``)."""
    from solo_sparse.tools.speed import upgrade

    rows = []
    for pid, p in upgrade(res)["paths"].items():      # a results file of the old schema: its paired median
        for row in p["rows"]:
            for r in row["ratios"]:
                rows.append({"path": pid, "fast": r["fast"], "reference": r["reference"], "batch": row["batch"],
                             "size": row["size"], "speedup": r["median"], "q1": r.get("q1"), "q3": r.get("q3"),
                             "macs_limit": r.get("macs_limit")})
    return rows


def tiny_data(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("val", 4)):
        for c in "abcde":
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.rand(28, 28, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def main(argv=None) -> int:
    from solo_sparse.tools.runner import newest_checkpoint, pretrain_command, run_command, solo_learn_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data" / "fmnist5k"))
    ap.add_argument("--out", default=str(REPO / "results" / "gpu_check"))
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run (GPU)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--cpu-tiny", action="store_true", help="CPU, 4 steps of batch 8 on a tiny random image folder")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--lanes", type=int, default=1,
                    help="trainings run side by side on the device (their step times are then indicative only)")
    ap.add_argument("--precision", default=None,
                    help="Lightning precision of the trainings (default: bf16-mixed on CUDA, 32 with --cpu-tiny; "
                         "`--cpu-tiny --precision bf16-mixed` trains every plugin under CPU bf16 autocast)")
    ap.add_argument("--workers", type=int, default=8, help="data workers in all, shared between the lanes (GPU)")
    args = ap.parse_args(argv)
    missing = missing_plugins()
    if missing:
        print(f"gpu_check: no run trains installed plugin(s) {', '.join(missing)}: add each to RUNS",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    precision = args.precision or ("32" if args.cpu_tiny else "bf16-mixed")
    if args.cpu_tiny:
        device, steps, bs, data = "cpu", 4, 8, tiny_data(out / "data")
        hw = ["accelerator=cpu", "++devices=\"1\"", f"++precision={precision}", "++data.num_workers=0"]
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --cpu-tiny for the CPU path", file=sys.stderr)
            return 2
        device, steps, bs, data = "cuda", args.steps, args.batch_size, Path(args.data).resolve()
        hw = ["accelerator=gpu", "++devices=[0]", f"++precision={precision}", f"++data.num_workers={args.workers}"]
    solo = solo_learn_dir()
    res = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
           "precision": precision,
           "steps": steps, "batch_size": bs, "lanes": args.lanes, "runs": {}}
    epoch_steps = max(1, len(list((data / "train").rglob("*.png"))) // bs)
    epochs = max(1, -(-steps // epoch_steps))
    if not args.only or "speed" in args.only:
        print(f"[gpu_check] speed: exported fast paths vs dense on {device} ...", flush=True)
        res["speed"] = speed_step(out, device, args.cpu_tiny)
        print(f"[gpu_check] speed: {'ok' if res['speed']['ok'] else 'FAILED ' + res['speed']['error']}", flush=True)
        write_results(out, res)
    if device == "cuda" and args.lanes > 1:        # the data workers shared between the trainings side by side
        hw[-1] = f"++data.num_workers={max(2, args.workers // args.lanes)}"
    lock = threading.Lock()

    def one(rid, cfg, over):
        run_dir = out / "runs" / rid
        cmd = pretrain_command(CFG / cfg, solo_dir=solo, name=f"gpucheck-{rid}", run_dir=run_dir,
                               train_path=data / "train",
                               overrides=[*hw, f"++optimizer.batch_size={bs}", f"++max_epochs={epochs}",
                                          f"++limit_train_batches={min(steps, epoch_steps)}",
                                          "++scheduler.warmup_epochs=0", "++checkpoint.frequency=1",
                                          "augmentations=grey64.yaml", *over])
        print(f"[gpu_check] {rid}: {steps} steps on {device} ...", flush=True)
        r = run_command(cmd, run_dir, log=run_dir / "train.log", cwd=run_dir)
        row = {"ok": r.ok, "seconds": r.seconds, "step_s": step_seconds(run_dir / "train.log")}
        if not r.ok:
            row["error"] = r.error
            tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-3:]
            row["log_tail"] = tail
        else:
            ck = newest_checkpoint(run_dir)
            row["masks"] = check_masks(ck, device)
            if rid == "synccp-2:4":
                row["nm_export"] = nm_export(ck, device)
        with lock:                     # every finished run is on disk at once: a check cut short keeps its rows
            res["runs"][rid] = row
            write_results(out, res)
        print(f"[gpu_check] {rid}: {'ok' if r.ok else 'FAILED ' + r.error} {row['step_s']:.3f} s/step", flush=True)

    todo = [r for r in RUNS if not args.only or r[0] in args.only]
    with ThreadPoolExecutor(max_workers=max(1, args.lanes)) as pool:
        for f in [pool.submit(one, *r) for r in todo]:
            f.result()
    lines = write_results(out, res)
    print("\n".join(lines))
    failed = [rid for rid, row in res["runs"].items() if not row["ok"] or any(
        v.get("leaked") not in (0, "soft") for v in row.get("masks", {}).values())]
    sp = res.get("speed")
    if sp and not sp["ok"]:
        failed.append("speed")
    return 1 if failed else 0


def write_results(out: Path, res: dict) -> list:
    """``gpu_check.json`` and ``gpu_check.md`` from what has run so far (ratios to the plain runs present)."""
    base = reference_runs()
    for rid, row in res["runs"].items():
        ref = res["runs"].get(base.get(rid, ""), {})
        if ref.get("step_s") and row.get("step_s"):
            row["step_ratio"] = row["step_s"] / ref["step_s"]
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    steps, bs, lanes = res["steps"], res["batch_size"], res.get("lanes", 1)
    side = ("" if lanes <= 1 else
            f" {lanes} trainings ran side by side on the one device (the check's time limit): the step times and "
            "ratios are indicative, not a benchmark.")
    lines = [f"GPU check on {res['device']} (torch {res['torch']}), {steps} steps of batch {bs} per run, "
             f"precision {res.get('precision', 'bf16-mixed' if res['device'] != 'cpu' else '32')}, "
             f"channels-last.{side}", "",
             "| run | ok | s/step | vs plain | leaked (online/momentum) | density online |", "|---|---|---:|---:|---:|---:|"]
    if res.get("note"):
        lines[1:1] = ["", res["note"]]
    order = [r[0] for r in RUNS]
    for rid, row in sorted(res["runs"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        mk = row.get("masks", {})
        leak = "/".join(str(mk.get(e, {}).get("leaked", "-")) for e in ("online", "momentum"))
        dens = mk.get("online", {}).get("density")
        lines.append(f"| {rid} | {'yes' if row['ok'] else 'no: ' + row.get('error', '')} | {row['step_s']:.3f} | "
                     f"{row.get('step_ratio', float('nan')):.2f} | {leak} | "
                     f"{'-' if dens is None else format(dens, '.3f')} |")
    nm = res["runs"].get("synccp-2:4", {}).get("nm_export")
    if nm:
        lines += ["", f"N:M export: {nm['status']}"]
        for r in nm.get("layers", []):
            if "speedup" in r:
                lines.append(f"- {r['layer']}: GEMM {r['gemm']}, max |diff| {r['max_abs_diff']:.2e}, dense "
                             f"{r['dense_ms']:.3f} ms, 2:4 {r['sparse_ms']:.3f} ms ({r['speedup']:.2f}x)")
    sp = res.get("speed")
    if sp:
        lines += ["", f"Speed (`solo-sparse speed` suite on {res['device']}, run alone before the trainings): "
                  + ("ok" if sp["ok"] else f"FAILED: {sp['error']}")]
        if sp.get("rows"):
            lines += ["", "| path | fast | vs | batch | size | speed-up | MACs limit |",
                      "|---|---|---|---:|---:|---:|---:|"]
            for r in sp["rows"]:
                lim = "-" if r.get("macs_limit") is None else f"{r['macs_limit']:.2f}x"
                lines.append(f"| {r['path']} | {r['fast']} | {r.get('reference', 'dense')} | {r['batch']} | "
                             f"{r['size']} | {r['speedup']:.2f}x | {lim} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return lines

if __name__ == "__main__":
    sys.exit(main())

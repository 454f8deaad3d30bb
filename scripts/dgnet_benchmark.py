#!/usr/bin/env python
"""DGNet-dual benchmark: VICReg dense vs dgnet_dual (several t_d) vs dgnet_gated on an image folder.

For every config: solo-learn's unchanged main_pretrain.py trains it (skipped when results.json
already holds it with the same config content); the final checkpoint's backbone is rebuilt (gated
ResNet with the run's plugin settings, strict load) and both paths are evaluated on the val split —
kNN k=1 (the seed's ablation metric), k=20 and a linear probe on frozen features; the gated path's
FLOPs ratio is measured on the val images (gated blocks, exact per-sample count with the gates'
own cost = the budget loss's quantity; and whole-network MACs); with --latency, batch-1 CPU latency
of the dense and the gated path (median of --reps real val images in one process, the two paths
interleaved image by image, at each --latency-sizes resolution; with the share of gated blocks that
took the gather path). A random-init row is always added.

    python scripts/dgnet_benchmark.py --data data/fmnist5k --out results/fmnist_dgnet \\
        --configs scripts/configs/fmnist/vicreg.yaml scripts/configs/fmnist/vicreg_dgnet_dual_t10.yaml ...
    python scripts/dgnet_benchmark.py ... --latency      # after training, on an otherwise idle machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from solo_sparse.gating.dgnet import gated_blocks, measure, set_mode
from solo_sparse.tools.evaluate import build_resnet, evaluate_backbone, load_backbone, load_images
from solo_sparse.tools.runner import SuiteResults, add_suite_arguments, config_digest, run_pretrain, solo_learn_dir


@torch.no_grad()
def latency(net, X, size, reps, gated: bool):
    """Median batch-1 ms of the dense path and (``gated``) the gated path: the two are interleaved
    image by image (order alternating), so machine drift hits both alike; also the share of gated
    block forwards that took the gather path (solo_sparse.gating.dgnet.GATHER_MAX_KEEP)."""
    xs = [F.interpolate(X[i: i + 1], size=size, mode="bilinear", align_corners=False) if size != X.shape[-1]
          else X[i: i + 1] for i in range(reps)]
    modes = ("dense", "gated") if gated else ("dense",)
    ts = {m: [] for m in modes}
    paths = []
    with torch.inference_mode():
        for x in xs[:5]:
            for m in modes:
                set_mode(net, m) if gated else None
                net(x)
        for i, x in enumerate(xs):
            for m in (modes if i % 2 == 0 else modes[::-1]):
                set_mode(net, m) if gated else None
                t0 = time.perf_counter()
                net(x)
                ts[m].append(time.perf_counter() - t0)
                if m == "gated":
                    paths += [b.ss_last_path for _, b in gated_blocks(net)]
    out = {f"{m}_ms": 1e3 * statistics.median(v) for m, v in ts.items()}
    if gated:
        out["speedup"] = out["dense_ms"] / out["gated_ms"]
        out["gather_share"] = paths.count("gather") / len(paths)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_arguments(ap)
    ap.add_argument("--latency", action="store_true", help="measure batch-1 latency (no training)")
    ap.add_argument("--latency-sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args(argv)

    suite = SuiteResults(args.out, args.data, writers=[lambda r, o: (o / "results.md").write_text(to_markdown(r))])
    res, out, save = suite.data, suite.out, suite.save
    data = Path(args.data).resolve()

    train = load_images(str(data / "train"), args.size)
    test = load_images(str(data / "val"), args.size)
    if args.latency:
        for stem, row in res["rows"].items():
            if stem == "random-init":
                continue
            net, info = load_backbone(str(out / row["checkpoint"]))
            plugin = info["gating"]
            lat = {}
            for s in args.latency_sizes:
                lat[str(s)] = latency(net, test[0], s, args.reps, gated=bool(plugin))
                print(f"[{stem}] {s}px batch 1: {lat[str(s)]}", flush=True)
            row["latency"] = lat
            save()
        return 0

    if "random-init" not in res["rows"]:
        torch.manual_seed(0)
        acc = evaluate_backbone(build_resnet("resnet18").eval(), train, test)
        res["rows"]["random-init"] = {"dense": acc}
        save()
    solo_dir = solo_learn_dir(args.solo_learn)
    for cfg in args.configs:
        stem, digest = Path(cfg).stem, config_digest(cfg)
        row = res["rows"].get(stem)
        if row and row.get("config_sha") == digest and "dense" in row:
            print(f"[{stem}] done already", flush=True)
            continue
        run = run_pretrain(cfg, out / "runs" / stem, train_path=data / "train", overrides=args.overrides,
                           solo_dir=solo_dir)
        if not run.ok:
            res["rows"][stem] = {"config": str(cfg), "config_sha": digest, "error": run.error}
            save()
            continue
        net, info = load_backbone(str(run.checkpoint))      # rebuilt gated, strict
        plugin, pcfg = info["gating"], info["gating_config"]
        row = {"config": str(cfg), "config_sha": digest, "checkpoint": str(run.checkpoint.relative_to(out)),
               "plugin": plugin, "target": pcfg.get("target"), "train_seconds": run.seconds,
               "command": run.command_line}
        if plugin:
            set_mode(net, "dense")
        row["dense"] = evaluate_backbone(net, train, test)
        if plugin:
            set_mode(net, "gated")
            row["gated"] = evaluate_backbone(net, train, test)
            m = measure(net, test[0][:2000])
            row.update({"flops_ratio": m["gated_blocks_flops_ratio"], "network_macs_ratio": m["network_macs_ratio"],
                        "kept_channels": m["kept_channels"]})
        res["rows"][stem] = row
        print(f"[{stem}] {json.dumps({k: v for k, v in row.items() if k != 'kept_channels'})}", flush=True)
        save()
    save()
    print((out / "results.md").read_text())
    return 0


def _fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def to_markdown(res) -> str:
    lines = [f"Data `{res['meta'].get('data')}`, torch {res['meta'].get('torch')}.", "",
             "| run | t_d | dense kNN k=1 | dense kNN k=20 | dense linear | gated kNN k=1 | gated kNN k=20 | gated linear "
             "| FLOPs ratio (gated blocks) | network MACs ratio | train wall-clock |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |||||||||| ")
            continue
        d, g = r["dense"], r.get("gated")
        gcells = (f"{100 * g['knn1']:.2f} | {100 * g['knn20']:.2f} | {100 * g['linear']:.2f}" if g else "- | - | -")
        lines.append(f"| {name} | {r.get('target') or '-'} | {100 * d['knn1']:.2f} | {100 * d['knn20']:.2f} | "
                     f"{100 * d['linear']:.2f} | {gcells} | "
                     f"{'-' if r.get('flops_ratio') is None else format(r['flops_ratio'], '.3f')} | "
                     f"{'-' if r.get('network_macs_ratio') is None else format(r['network_macs_ratio'], '.3f')} | "
                     f"{(r.get('train_seconds') or 0) / 60:.1f} min |")
    lat = [(n, r["latency"]) for n, r in res["rows"].items() if r.get("latency")]
    if lat:
        lines += ["", "Batch-1 CPU latency (median ms, dense and gated interleaved in one process; gather share = "
                  "gated block forwards that took the gather path):", "",
                  "| run | network MACs ratio | size | dense | gated | speed-up | gather share |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n, L in lat:
            r = res["rows"][n]
            for s, v in L.items():
                lines.append(f"| {n} | {_fmt(r.get('network_macs_ratio'), '.3f')} | {s} px | {v['dense_ms']:.2f} | "
                             f"{_fmt(v.get('gated_ms'), '.2f')} | {_fmt(v.get('speedup'), '.2f', 'x')} | "
                             f"{_fmt(v.get('gather_share'), '.2f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

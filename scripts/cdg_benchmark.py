#!/usr/bin/env python
"""CDG benchmark: dense SimCLR / MoCo v2+ vs ``cdg`` (unstructured, structured) vs ``cgnet`` vs ``fbs``.

For every config: solo-learn's unchanged main_pretrain.py trains it (skipped when results.json
already holds it with the same config content); the final checkpoint's backbone is rebuilt gated
with the run's plugin settings (strict load) and evaluated on the val split through its inference
path (branch a1): weighted kNN k=20 and k=1 and a linear probe on frozen features; then the gated
statistics on val images: conditional (or channel) sparsity, FLOPs reduction by the seed's eq. 13
and by exact per-sample count over the gated convs (gates' own cost included) and over the whole
network. A random-init row is always added; ``--plot`` writes accuracy vs FLOPs.

    python scripts/cdg_benchmark.py --data data/fmnist5k --out results/fmnist_cdg \\
        --configs scripts/configs/fmnist/simclr.yaml scripts/configs/fmnist/simclr_cdg.yaml ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from solo_sparse.gating.channel import measure
from solo_sparse.tools.evaluate import build_resnet, evaluate_backbone, load_backbone, load_images
from solo_sparse.tools.runner import SuiteResults, add_suite_arguments, config_digest, run_pretrain, solo_learn_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_arguments(ap)
    ap.add_argument("--plot", action="store_true", help="only (re)write the accuracy-vs-FLOPs PNG")
    args = ap.parse_args(argv)

    suite = SuiteResults(args.out, args.data, writers=[
        lambda r, o: (o / "results.md").write_text(to_markdown(r)),
        lambda r, o: plot(r, o / "cdg_accuracy_flops.png")])
    res, out, save = suite.data, suite.out, suite.save
    data = Path(args.data).resolve()

    if args.plot:
        save()
        return 0
    train = load_images(str(data / "train"), args.size)
    test = load_images(str(data / "val"), args.size)
    if "random-init" not in res["rows"]:
        torch.manual_seed(0)
        res["rows"]["random-init"] = {"acc": evaluate_backbone(build_resnet("resnet18").eval(), train, test)}
        save()
    solo_dir = solo_learn_dir(args.solo_learn)
    for cfg in args.configs:
        stem, digest = Path(cfg).stem, config_digest(cfg)
        row = res["rows"].get(stem)
        if row and row.get("config_sha") == digest and ("acc" in row or str(row.get("error", "")).startswith("diverged")):
            print(f"[{stem}] done already", flush=True)
            continue
        run = run_pretrain(cfg, out / "runs" / stem, train_path=data / "train", overrides=args.overrides,
                           solo_dir=solo_dir)
        if not run.ok:
            res["rows"][stem] = {"config": str(cfg), "config_sha": digest, "error": run.error}
            save()
            continue
        net, info = load_backbone(str(run.checkpoint))      # rebuilt gated, strict, branch a1
        plugin, pcfg = info["gating"], info["gating_config"]
        row = {"config": str(cfg), "config_sha": digest, "checkpoint": str(run.checkpoint.relative_to(out)),
               "plugin": plugin, "plugin_config": pcfg, "train_seconds": run.seconds, "command": run.command_line}
        bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:   # a diverged run is a result: recorded, not a crash of the whole suite
            res["rows"][stem] = {**row, "error": f"diverged: {len(bad)} non-finite backbone tensors (first {bad[0]})"}
            print(f"[{stem}] {res['rows'][stem]['error']}", flush=True)
            save()
            continue
        row["acc"] = evaluate_backbone(net, train, test)
        if plugin:
            m = measure(net, test[0][:2000])
            row.update({k: m[k] for k in ("mean_sparsity", "exact_gated_reduction", "network_reduction")})
            row["eq13_reduction"] = m.get("eq13_reduction")
            row["layer_sparsity"] = m["sparsity"]
        res["rows"][stem] = row
        print(f"[{stem}] {json.dumps({k: v for k, v in row.items() if k != 'layer_sparsity'})}", flush=True)
        save()
    save()
    print((out / "results.md").read_text())
    return 0


def _f(v, fmt=".2f", scale=1.0):
    return "-" if v is None else format(v * scale, fmt)


def to_markdown(res) -> str:
    lines = [f"Data `{res['meta'].get('data')}`, torch {res['meta'].get('torch')}.", "",
             "| run | kNN k=20 | kNN k=1 | linear probe | conditional / channel sparsity | FLOPs reduction eq. 13 "
             "| exact, gated convs | exact, whole network | train wall-clock |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |||||||| ")
            continue
        a = r["acc"]
        lines.append(f"| {name} | {100 * a['knn20']:.2f} | {100 * a['knn1']:.2f} | {100 * a['linear']:.2f} | "
                     f"{_f(r.get('mean_sparsity'), '.3f')} | {_f(r.get('eq13_reduction'))}{'x' if r.get('eq13_reduction') else ''} | "
                     f"{_f(r.get('exact_gated_reduction'))}{'x' if r.get('exact_gated_reduction') else ''} | "
                     f"{_f(r.get('network_reduction'))}{'x' if r.get('network_reduction') else ''} | "
                     f"{(r.get('train_seconds') or 0) / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def plot(res, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [(n, r) for n, r in res["rows"].items() if "acc" in r]
    if len(rows) < 2:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in rows:
        x = r.get("network_reduction") or 1.0
        ax.scatter(x, 100 * r["acc"]["linear"], marker="x" if n == "random-init" else "o")
        ax.annotate(n, (x, 100 * r["acc"]["linear"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs reduction, whole network (exact count, x)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("Channel gating on Fashion-MNIST (ResNet-18)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

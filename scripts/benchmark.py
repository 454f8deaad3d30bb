#!/usr/bin/env python
"""Benchmark harness: solo-learn's unchanged main_pretrain.py on a list of configs, then evaluation.

For every config (a plain solo-learn YAML, optionally with '- solo_sparse: <plugin>' in defaults):
1. run ``python <solo-learn>/main_pretrain.py --config-path DIR --config-name NAME`` with the run's
   checkpoint dir, name and data path overridden (wall-clock measured, log kept);
2. load the final checkpoint's online backbone (weights_only; masks applied) and evaluate it on the
   val split: weighted cosine kNN (k = 20 and k = 1) and a linear probe on frozen features
   (``solo_sparse.tools.evaluate``); densities of both encoders and MACs vs dense (``solo_sparse.engine.flops``).
A random-init backbone row is always added. Results: ``<out>/results.json`` and ``<out>/results.md``.
Runs already in results.json with the same config file content are not trained again.

    python scripts/benchmark.py --data data/fmnist5k --out results/gmp \
        --configs scripts/configs/fmnist/byol.yaml scripts/configs/fmnist/byol_gmp50.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from solo_sparse.engine.flops import count_macs, training_macs_ratio
from solo_sparse.tools.evaluate import build_resnet, evaluate_backbone, load_backbone, load_images
from solo_sparse.tools.runner import config_digest, newest_checkpoint, pretrain_command, run_command, solo_learn_dir


def solo_commit(d: Path) -> str:
    if os.environ.get("SOLO_LEARN_COMMIT"):
        return os.environ["SOLO_LEARN_COMMIT"]
    try:
        return subprocess.check_output(["git", "-C", str(d), "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def final_checkpoint(run_dir: Path) -> Path:
    ck = newest_checkpoint(run_dir)
    if ck is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir}")
    return ck


def densities(ckpt: Path):
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    out = {}
    for enc in ("backbone.", "momentum_backbone."):
        ms = [v for k, v in sd.items() if k.startswith(enc) and k.endswith(".weight_mask")]
        out[enc[:-1]] = (sum(int(m.sum()) for m in ms) / sum(m.numel() for m in ms)) if ms else 1.0
    return out


def dense_weight_grad_share(cfg_path: Path) -> tuple:
    """(plugin name, share of steps needing the dense weight gradient) from the composed config."""
    from solo_sparse.tools.cli import compose_config

    cfg = compose_config(cfg_path)
    ss = cfg.get("solo_sparse", None)
    if not ss:
        return None, 0.0, cfg.get("method")
    plugin = str(ss.get("plugin"))
    if plugin == "synccp":
        return plugin, 1.0, cfg.get("method")
    if plugin == "granet":
        every = ss.get("every", 100)
        return plugin, (1.0 / every if isinstance(every, int) else 0.0), cfg.get("method")
    return plugin, 0.0, cfg.get("method")


def training_ratio(ckpt: Path, size: int, g: float) -> float:
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    reports = []
    for prefix in ("backbone.", "momentum_backbone."):
        st = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not st:
            reports.append(None)
            continue
        net = build_resnet("resnet18")
        masks = {k[:-len(".weight_mask")]: v for k, v in st.items() if k.endswith(".weight_mask")}
        net.load_state_dict({k: v for k, v in st.items() if not k.endswith(".weight_mask")}, strict=False)
        for layer, m in masks.items():
            net.get_submodule(layer).register_buffer("weight_mask", m)
        reports.append(count_macs(net, (1, 3, size, size)))
    return training_macs_ratio(reports[0], reports[1], g)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True, help="solo-learn YAML files")
    ap.add_argument("--data", required=True, help="custom image-folder root with train/ and val/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--solo-learn", default=None, help="solo-learn checkout (default: next to the solo package)")
    ap.add_argument("--size", type=int, default=32, help="evaluation image size")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--eval-only", action="store_true",
                    help="do not train; (re-)evaluate the existing runs of the listed configs")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    res_p = out / "results.json"
    results = json.loads(res_p.read_text()) if res_p.exists() else {"rows": {}}
    solo_dir = solo_learn_dir(args.solo_learn)
    data = Path(args.data).resolve()
    meta = {"solo_learn_commit": solo_commit(solo_dir), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "data": str(args.data)}
    if (data / "meta.json").exists():
        meta["data_meta"] = json.loads((data / "meta.json").read_text())
    results["meta"] = meta

    print("loading evaluation data ...", flush=True)
    train = load_images(str(data / "train"), args.size)
    test = load_images(str(data / "val"), args.size)

    def save():
        res_p.write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(to_markdown(results))

    if "random-init" not in results["rows"]:
        torch.manual_seed(0)
        net = build_resnet("resnet18").eval()
        acc = evaluate_backbone(net, train, test, progress=True)
        macs = count_macs(net, (1, 3, args.size, args.size))
        results["rows"]["random-init"] = {"config": None, **acc, "density_online": 1.0, "density_momentum": None,
                                          "macs_ratio": macs.ratio, "train_macs_ratio": None, "train_seconds": 0.0}
        save()

    for cfg in args.configs:
        cfg_p = Path(cfg).resolve()
        stem = cfg_p.stem
        digest = config_digest(cfg_p)
        row = results["rows"].get(stem)
        if row and row.get("config_sha") == digest and "knn20" in row and not args.eval_only:
            print(f"[{stem}] done already, skipping", flush=True)
            continue
        run_dir = out / "runs" / stem
        cmd = pretrain_command(cfg_p, solo_dir=solo_dir, name=stem, run_dir=run_dir, train_path=data / "train",
                               overrides=args.overrides)
        seconds = row.get("train_seconds") if row else None
        if not args.eval_only:
            print(f"[{stem}] training: {' '.join(cmd)}", flush=True)
            run = run_command(cmd, run_dir, log=out / "logs" / f"{stem}.log", cwd=out)
            seconds = run.seconds
            if not run.ok:
                print(f"[{stem}] main_pretrain.py failed ({run.error}); see {run.log}", flush=True)
                results["rows"][stem] = {"config": str(cfg), "config_sha": digest, "error": run.error}
                save()
                continue
        ck = final_checkpoint(run_dir)
        net, info = load_backbone(str(ck), "resnet18")
        dens = densities(ck)
        print(f"[{stem}] evaluating {ck.name} (online density {dens['backbone']:.3f})", flush=True)
        if args.eval_only and row and row.get("config_sha") == digest and "knn20" in row:
            acc = {k: row[k] for k in ("knn20", "knn1", "linear")}  # deterministic in the checkpoint: reuse
        else:
            acc = evaluate_backbone(net, train, test, progress=True)
        macs = count_macs(net, (1, 3, args.size, args.size), from_weights=True)
        plugin, g, method = dense_weight_grad_share(cfg_p)
        extra = {}
        if plugin in ("synccp", "granet"):
            st = torch.load(ck, map_location="cpu", weights_only=True).get("solo_sparse", {}).get(plugin, {})
            extra["trigger_step"] = st.get("extra", {}).get("trigger_step")
        results["rows"][stem] = {"config": str(cfg), "config_sha": digest, "checkpoint": str(ck.relative_to(out)),
                                 "plugin": plugin, "method": method,
                                 **acc, "density_online": dens["backbone"], "density_momentum": dens["momentum_backbone"],
                                 "macs_ratio": macs.ratio, "train_macs_ratio": training_ratio(ck, args.size, g),
                                 "train_seconds": seconds, "command": " ".join(cmd), **extra}
        save()
        print(f"[{stem}] kNN20 {acc['knn20']:.4f} kNN1 {acc['knn1']:.4f} linear {acc['linear']:.4f}", flush=True)
    save()
    print((out / "results.md").read_text())
    return 0


def to_markdown(results) -> str:
    m = results.get("meta", {})
    lines = [
        f"solo-learn commit `{m.get('solo_learn_commit')}`, torch {m.get('torch')}, {m.get('cpus')} CPUs; "
        f"data `{m.get('data')}` {json.dumps(m.get('data_meta', {}))}",
        "",
        "| run | kNN k=20 | kNN k=1 | linear probe | online density | momentum density | inference MACs vs dense "
        "| training MACs vs dense (final masks) | CSI/start step | train wall-clock |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | | |")
            continue
        md = r.get("density_momentum")
        lines.append(
            f"| {name} | {100 * r['knn20']:.2f} | {100 * r['knn1']:.2f} | {100 * r['linear']:.2f} | "
            f"{r['density_online']:.3f} | {'-' if md is None else format(md, '.3f')} | {r['macs_ratio']:.3f} | "
            f"{'-' if r.get('train_macs_ratio') is None else format(r['train_macs_ratio'], '.3f')} | "
            f"{'-' if r.get('trigger_step') is None else r['trigger_step']} | "
            f"{(r['train_seconds'] or 0) / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Intermediate contrastive loss benchmark: plain vs +PB vs +HP vs +PB+HP (SimCLR, MoCo v2+).

1. trains and evaluates every config with ``scripts/benchmark.py`` (solo-learn's unchanged
   main_pretrain.py; kNN k=20/k=1 and a linear probe of the final backbone; random-init row);
2. wall-clock per epoch: the median over epochs of the per-epoch elapsed time in the run's log
   (tqdm's "Epoch k: 100% ... [mm:ss<"), i.e. without process start-up and evaluation;
3. expected MACs per step of the part that back-propagates (both views: forward MACs of the blocks
   reached, with the hard-pair crops, + the aux/final head; backward ≈ 2 × that);
4. linear probes on the intermediate features (pooled stage 1, 2, 3 outputs; seed Table 8) of each
   run's backbone.

    python scripts/interloss_benchmark.py --data data/fmnist5k --out results/fmnist_interloss \\
        --configs scripts/configs/fmnist/simclr.yaml scripts/configs/fmnist/simclr_il_pb.yaml ...
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from solo_sparse.engine.interloss import STAGES, backward_macs, stem
from solo_sparse.tools.evaluate import build_resnet, extract_features, linear_probe, load_backbone, load_images

HERE = Path(__file__).resolve().parent


def epoch_seconds(log: Path):
    """Per-epoch elapsed seconds parsed from a main_pretrain.py log (tqdm progress bar)."""
    if not log.exists():
        return []
    text = log.read_text(errors="replace").replace("\r", "\n")
    last = {}
    for m in re.finditer(r"Epoch (\d+): 100%\|[^|]*\| (\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", text):
        e = int(m.group(1))
        h, mi, s = int(m.group(4) or 0), int(m.group(5)), int(m.group(6))
        last[e] = 3600 * h + 60 * mi + s
    return [last[e] for e in sorted(last)]


def interloss_section(cfg_path: Path) -> dict:
    cfg = yaml.safe_load(cfg_path.read_text())
    if not any(isinstance(d, dict) and d.get("solo_sparse") == "interloss" for d in cfg.get("defaults", [])):
        return {}
    import dataclasses

    from solo_sparse_plugins.interloss import InterLossConfig
    c = InterLossConfig(**(cfg.get("solo_sparse") or {}))
    return {**dataclasses.asdict(c), "depths": c.depths, "probs": c.probs}


def macs_per_step(il: dict, size: int) -> float:
    """Expected MACs per step of what back-propagates (2 views), forward-equivalent units."""
    net = build_resnet("resnet18").eval()
    if not il:
        return 2 * backward_macs(net, {}, size, 4)
    hard = il["hard_blocks"] if il["hard_pairs"] else []
    if il["partial_backprop"]:
        return sum(p * 2 * backward_macs(net, {}, size, d, [b for b in hard if b <= d], il["crop_fraction"])
                   for d, p in zip(il["depths"], il["probs"]))
    return 2 * backward_macs(net, {}, size, 4, hard, il["crop_fraction"])


class _Stage(torch.nn.Module):
    def __init__(self, net, j):
        super().__init__()
        self.net, self.j = net, j

    def forward(self, x):
        x = stem(self.net, x)
        for k in range(self.j):
            x = getattr(self.net, STAGES[k])(x)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)


def intermediate_probes(ck: Path, train, test) -> dict:
    net, _ = load_backbone(str(ck)) if ck is not None else (build_resnet("resnet18"), None)
    net.eval()
    out = {}
    for j in (1, 2, 3, 4):
        m = _Stage(net, j)
        ftr, fte = extract_features(m, train[0]), extract_features(m, test[0])
        out[f"stage{j}"] = linear_probe(ftr, train[1], fte, test[1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--skip-train", action="store_true", help="only analyse existing runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        rc = subprocess.call([sys.executable, str(HERE / "benchmark.py"), "--data", args.data, "--out", str(out),
                              "--size", str(args.size), "--configs", *args.configs])
        if rc:
            return rc
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"] if isinstance(res.get("rows"), dict) else {r["name"]: r for r in res.get("rows", [])}
    train = load_images(str(Path(args.data) / "train"), args.size)
    test = load_images(str(Path(args.data) / "val"), args.size)
    table = []
    for cfg in args.configs:
        cfg = Path(cfg)
        stem_ = cfg.stem
        row = rows.get(stem_)
        if row is None:
            print(f"[{stem_}] not in results.json; skipped", flush=True)
            continue
        il = interloss_section(cfg)
        ep = epoch_seconds(out / "logs" / f"{stem_}.log")
        ck = out / row["checkpoint"] if row.get("checkpoint") else None
        probes = intermediate_probes(ck, train, test)
        table.append({"run": stem_, "interloss": il, "knn20": row.get("knn20"), "knn1": row.get("knn1"),
                      "linear": row.get("linear"), "epoch_seconds": ep,
                      "epoch_seconds_median": statistics.median(ep) if ep else None,
                      "train_seconds": row.get("train_seconds"), "macs_per_step": macs_per_step(il, args.size),
                      "probes": probes})
        print(json.dumps({k: v for k, v in table[-1].items() if k != "interloss"}), flush=True)
    rnd = intermediate_probes(None, train, test)
    json.dump({"rows": table, "random_init_probes": rnd, "data": args.data,
               "command": " ".join([sys.executable, *sys.argv])}, open(out / "interloss.json", "w"), indent=2)
    lines = ["| run | kNN k=20 | kNN k=1 | linear | s / epoch (median) | vs plain | back-prop MACs / step (M) | "
             "vs plain | probe stage 1 | stage 2 | stage 3 | stage 4 |", "|---|" + "---:|" * 11]
    rr = rows.get("random-init") or {}
    lines.append(f"| random-init | {100 * rr.get('knn20', float('nan')):.2f} | {100 * rr.get('knn1', float('nan')):.2f} | "
                 f"{100 * rr.get('linear', float('nan')):.2f} | - | - | - | - | "
                 + " | ".join(f"{100 * rnd[f'stage{j}']:.2f}" for j in (1, 2, 3, 4)) + " |")
    base = {}
    for t in table:
        px = re.search(r"_\d+px$", t["run"])              # simclr_il_pbhp_64px is compared with simclr_64px
        stem_run = t["run"][: px.start()] if px else t["run"]
        fam = stem_run.split("_il_")[0].replace("10", "") + (px.group(0) if px else "")
        if not t["interloss"]:
            base[fam] = t
        b = base.get(fam, t)
        sp = (f"{t['epoch_seconds_median']:.1f}" if t["epoch_seconds_median"] else "-")
        rel = (f"{t['epoch_seconds_median'] / b['epoch_seconds_median']:.2f}×"
               if t["epoch_seconds_median"] and b["epoch_seconds_median"] else "-")
        lines.append(f"| {t['run']} | {100 * t['knn20']:.2f} | {100 * t['knn1']:.2f} | {100 * t['linear']:.2f} | {sp} | "
                     f"{rel} | {t['macs_per_step'] / 1e6:.1f} | {t['macs_per_step'] / b['macs_per_step']:.2f}× | "
                     + " | ".join(f"{100 * t['probes'][f'stage{j}']:.2f}" for j in (1, 2, 3, 4)) + " |")
    (out / "interloss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

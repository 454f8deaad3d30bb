#!/usr/bin/env python
"""Per-block batch-1 latency of a DGNet-gated checkpoint: where the gated path's time goes.

For every gated block (and the ungated stem conv and max-pool) the median time of the dense path and
of the gated path on the same images, interleaved image by image, with the block's kept share and
which path it took (skip, gather or masked): with ``--plan`` chosen per block by the measured cost model
(solo_sparse.gating.dgnet.attach_latency_table, the table cached per machine), else by the fixed rule
GATHER_MAX_KEEP. Forward hooks time each module; the sum is close to, not equal to, the whole forward.

    python scripts/dgnet_block_latency.py --checkpoint results/.../ep=9.ckpt --data data/fmnist5k \\
        --size 224 --reps 30 --out history/results/fmnist_dgnet10/block_latency_t50_b50.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from solo_sparse.engine.costmodel import time_modules
from solo_sparse.gating.dgnet import attach_latency_table, gated_blocks, set_mode
from solo_sparse.tools.evaluate import load_backbone, load_images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="image folder root; val/ images are used")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the table")
    ap.add_argument("--plan", action="store_true", help="per-block paths from the measured cost model")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    net, info = load_backbone(args.checkpoint)
    if info["gating"] not in ("dgnet_dual", "dgnet_gated"):
        raise SystemExit(f"{args.checkpoint}: not a DGNet-gated checkpoint (plugin {info['gating']!r})")
    if args.plan:
        attach_latency_table(net, args.size, progress=print)
    X = load_images(str(Path(args.data) / "val"), 32)[0][: args.reps + 3]
    mods = [("stem conv", net.conv1), ("max-pool", net.maxpool)] + gated_blocks(net)
    times = {m: {n: [] for n, _ in mods} for m in ("dense", "gated")}
    keep = {n: [] for n, _ in mods}
    path = {n: [] for n, _ in mods}
    counts = {n: {} for n, _ in mods}
    mode = ["dense"]
    hooks = time_modules(mods, lambda name, ms: times[mode[0]][name].append(ms))
    with torch.inference_mode():
        for i in range(X.shape[0]):
            x = F.interpolate(X[i: i + 1], size=args.size, mode="bilinear", align_corners=False)
            for m in (("dense", "gated") if i % 2 == 0 else ("gated", "dense")):
                mode[0] = m
                set_mode(net, m)
                net(x)
                if m == "gated" and i >= 3:
                    for n, b in gated_blocks(net):
                        keep[n].append(b._ss_rho)
                        path[n].append(b.ss_last_path)
                        counts[n][b.ss_last_path] = counts[n].get(b.ss_last_path, 0) + 1
    for h in hooks:
        h.remove()
    rows = []
    for n, _ in mods:
        d = statistics.median(times["dense"][n][3:])
        g = statistics.median(times["gated"][n][3:])
        rows.append({"module": n, "dense_ms": d, "gated_ms": g, "ratio": g / d,
                     "kept": statistics.mean(keep[n]) if keep[n] else 1.0,
                     "gather_share": (path[n].count("gather") / len(path[n])) if path[n] else None,
                     "paths": counts[n]})
    print(f"{'module':10s} {'dense ms':>9s} {'gated ms':>9s} {'ratio':>6s} {'kept':>5s} {'gather':>6s}")
    for r in rows:
        gs = "-" if r["gather_share"] is None else f"{r['gather_share']:.2f}"
        print(f"{r['module']:10s} {r['dense_ms']:9.3f} {r['gated_ms']:9.3f} {r['ratio']:6.2f} {r['kept']:5.2f} {gs:>6s}")
    tot_d, tot_g = sum(r["dense_ms"] for r in rows), sum(r["gated_ms"] for r in rows)
    print(f"{'sum':10s} {tot_d:9.3f} {tot_g:9.3f} {tot_g / tot_d:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "size": args.size, "reps": args.reps,
                                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                                              "command": " ".join(sys.argv), "plan": args.plan, "rows": rows},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

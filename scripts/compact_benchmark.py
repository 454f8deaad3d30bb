#!/usr/bin/env python
"""CPU latency of compact exports (physically removed block-internal channels, in their inference form: BN
folded, channels-last) vs the uncompacted network, and of DGNet's batch-1 gated path (per-block plan from the
measured cost model) vs its dense path, for zoo entries. Every path with spreads and MACs limits in one run:
``solo-sparse speed`` (scripts/speed/suite.yaml).

    python scripts/compact_benchmark.py --out results/zoo_bench \\
        --compact resnet18-fmnist5k-mocov2plus-imp-ticket-d09 --channel-density 0.5 \\
        --gated resnet18-fmnist5k-vicreg-dgnet-dual-t30 --sizes 32 224 --batches 1 64 --reps 15

Medians over --reps interleaved repetitions in one process (dense and fast nets alternate, so
background load affects both alike); torch's default thread count. Writes results.json/results.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from solo_sparse.tools.zoo_bench import bench_entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--compact", nargs="*", default=[], help="weight-sparse entries to compact")
    ap.add_argument("--channel-density", type=float, default=0.5)
    ap.add_argument("--gated", nargs="*", default=[], help="DGNet entries (gated vs dense path, batch 1)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": " ".join([sys.executable, *sys.argv]), "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "results": []}
    for name in args.compact:
        r = bench_entry(name, args.channel_density, tuple(args.sizes), tuple(args.batches), args.reps)
        res["results"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}), flush=True)
    for name in args.gated:
        r = bench_entry(name, None, tuple(args.sizes), (1,), args.reps)
        res["results"].append(r)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    lines = ["| entry | what | channel density | batch | size | dense ms | fast ms | speed-up | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        for row in r["rows"]:
            cd = "-" if r.get("channel_density") is None else f"{r['channel_density']}"
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
            lines.append(f"| {r['entry']} | {r['kind']} | {cd} | {row['batch']} | {row['size']} | "
                         f"{row['dense_ms']:.2f} | {row['fast_ms']:.2f} | {row['speedup']:.2f}× | {diff} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

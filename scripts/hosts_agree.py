#!/usr/bin/env python
"""The two hosts side by side: rows of a solo-learn suite and of the same suite trained through the Lightning host.

    solo-sparse bench scripts/suites/synccp.yaml --host lightning --only dense gmp synccp --seeds 1 \
        --out results/hosts                     # the suite's own rows (same YAML, window, seed) through Lightning
    python scripts/hosts_agree.py results/synccp/results.json results/hosts/results.json

For every run id in both (seed 0 each): online / momentum density, inference and training MACs, the schedule's
trigger step, linear probe and kNN, and whether the linear-probe difference lies inside the solo-learn suite's
seed-to-seed spread of that run (or of its dense row when the run has one seed). Markdown on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def rows(path: Path):
    res = json.loads(Path(path).read_text())
    out = {}
    for r in res["rows"].values():
        if r.get("status") == "ok":
            out.setdefault(r["id"], []).append(r)
    return res.get("meta", {}), out


def spread(runs):
    vals = [100 * r["linear"] for r in runs if r.get("linear") is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("solo", help="results.json of the suite trained through solo-learn")
    ap.add_argument("lightning", help="results.json of the same runs trained through the Lightning host")
    args = ap.parse_args(argv)
    meta_s, solo = rows(Path(args.solo))
    meta_l, light = rows(Path(args.lightning))
    print(f"solo-learn: `{meta_s.get('suite')}`; Lightning host: `{meta_l.get('suite')}` ({meta_l.get('host')}); "
          "seed 0 of each; spread = std of the solo-learn suite's linear probe over its seeds.\n")
    cols = ("density_online", "density_momentum", "inference_macs_ratio", "training_macs_ratio")
    print("| run | host | online density | momentum density | inference MACs | training MACs | trigger step "
          "| linear probe | kNN k=20 | Δ linear | within spread |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    fmt = lambda v, f=".3f": "-" if v is None else format(v, f)  # noqa: E731
    for rid in [r for r in solo if r in light and r != "random-init"]:
        s = next((r for r in solo[rid] if r.get("seed") == 0), solo[rid][0])
        lt = next((r for r in light[rid] if r.get("seed") == 0), light[rid][0])
        sd = spread(solo[rid]) or spread(solo.get("dense", []))
        diff = 100 * (lt["linear"] - s["linear"])
        inside = "n/a (no spread)" if sd is None else ("yes" if abs(diff) <= sd else "no") + f" (±{sd:.2f})"
        for host, r in (("solo-learn", s), ("lightning", lt)):
            print(f"| {rid} | {host} | " + " | ".join(fmt(r.get(c)) for c in cols)
                  + f" | {r.get('trigger_step') if r.get('trigger_step') is not None else '-'} | "
                  f"{100 * r['linear']:.2f} | {100 * r['knn20']:.2f} | "
                  + (f"{diff:+.2f} | {inside} |" if host == "lightning" else " | |"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

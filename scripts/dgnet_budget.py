#!/usr/bin/env python
"""FLOPs against the target of the dgnet suite's gated rows: the gated blocks' budget ratio Σ F^R / Σ F^O (what
t_d constrains) of every gated row of a results file, from the whole-network MACs ratio the row recorded
(``inference_macs_ratio``, measured on the suite's validation images) through the exact identity of
:func:`solo_sparse.gating.dgnet.budget_ratio_from_network` (the two differ only by the stem, dense on every input).
The finished rows' checkpoints are not kept, so the ratio is derived, not re-measured; the static rows, whose share
is solved for a target, check it.

    python scripts/dgnet_budget.py results/dgnet/results.json --out results/dgnet/budget.json

Prints a markdown table (per run: target, budget ratio per seed and mean ± std, whole-network MACs); ``--out``
writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path


def target_of(row: dict) -> float | None:
    """The row's ``solo_sparse.target`` override (t_d, or the static control's solved share), None without one."""
    for o in reversed(row.get("overrides") or []):          # Hydra: the last override wins
        m = re.fullmatch(r"\+*solo_sparse\.target=([0-9.]+)", o)
        if m:
            return float(m.group(1))
    return None


def budget_rows(results: dict, arch: str = "resnet18", size: int | None = None) -> dict:
    """{run id: {"target", "seeds": {seed: (network ratio, budget ratio)}, "mean", "std"}} of the gated rows."""
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.gating.dgnet import budget_ratio_from_network, convert_resnet

    size = size or int(results["meta"]["image_size"])
    net = convert_resnet(build_resnet(arch))
    out: dict = {}
    for row in results["rows"].values():
        if row.get("status") != "ok" or row.get("path") != "gated" or row.get("inference_macs_ratio") is None:
            continue
        r = out.setdefault(row["id"], {"target": target_of(row), "seeds": {}})
        net_ratio = float(row["inference_macs_ratio"])
        r["seeds"][int(row["seed"])] = (net_ratio, budget_ratio_from_network(net, net_ratio, size))
    for r in out.values():
        b = [v[1] for v in r["seeds"].values()]
        r["mean"], r["std"] = statistics.fmean(b), (statistics.stdev(b) if len(b) > 1 else 0.0)
    return dict(sorted(out.items()))


def markdown(rows: dict) -> str:
    lines = ["| run | target | budget ratio Σ F^R / Σ F^O per seed | mean ± std | − target | whole-network MACs (mean) |",
             "|---|---:|---|---|---:|---:|"]
    for rid, r in rows.items():
        seeds = ", ".join(f"s{s}: {b:.3f}" for s, (_, b) in sorted(r["seeds"].items()))
        net = statistics.fmean(v[0] for v in r["seeds"].values())
        t = r["target"]
        lines.append(f"| {rid} | {t if t is not None else '-'} | {seeds} | {r['mean']:.3f} ± {r['std']:.3f} | "
                     f"{(r['mean'] - t) if t is not None else float('nan'):+.3f} | {net:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a dgnet suite's results.json")
    ap.add_argument("--arch", default="resnet18", help="the suite's backbone (default resnet18)")
    ap.add_argument("--out", type=Path, help="write the numbers as JSON here")
    a = ap.parse_args(argv)
    rows = budget_rows(json.loads(a.results.read_text()), a.arch)
    if not rows:
        print(f"{a.results}: no gated rows with a whole-network MACs ratio", file=sys.stderr)
        return 1
    print(markdown(rows), end="")
    if a.out:
        a.out.write_text(json.dumps({"source": Path(os.path.relpath(a.results)).as_posix(), "arch": a.arch,
                                     "rows": {k: {**v, "seeds": {str(s): {"network_macs_ratio": n, "budget_ratio": b}
                                                                 for s, (n, b) in v["seeds"].items()}}
                                              for k, v in rows.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

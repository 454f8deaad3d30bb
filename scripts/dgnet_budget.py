#!/usr/bin/env python
"""FLOPs against the target of the dgnet suite's gated rows: the gated blocks' budget ratio Σ F^R / Σ F^O (what
t_d constrains) of every gated row of a results file, from the whole-network MACs ratio the row recorded
(``inference_macs_ratio``, measured on the suite's validation images) through the exact identity of
:func:`solo_sparse.gating.dgnet.budget_ratio_from_network` (the two differ only by the stem, dense on every input).
The finished rows' checkpoints are not kept, so the ratio is derived, not re-measured; the static rows, whose share
is solved for a target, check it.

    python scripts/dgnet_budget.py results/dgnet/results.json --out results/dgnet/budget.json

Each row's backbone (``backbone.name``) and stem (solo-learn's CIFAR stem for cifar10/100) are read from the config
it trained with, composed with its overrides (the config path is repository-relative: looked up from the results
file's repository, then the current directory); ``--arch`` / ``--cifar-stem`` set them for every row instead. A row
whose MACs were counted with an older cost count of one of its plugins than the current code's is refused (its
ratio is not the one this identity inverts): re-measure it with ``solo-sparse bench`` first.

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


def backbone_of(row: dict, roots: list) -> tuple:
    """(backbone name, CIFAR stem) of the config ``row`` trained with, composed with its overrides: the config path
    is looked up under each of ``roots`` in turn."""
    from omegaconf import OmegaConf

    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.inputs import compose_config

    rel = row.get("config")
    found = next((Path(r) / rel for r in roots if rel and (Path(r) / rel).is_file()), None)
    if found is None:
        raise ConfigError(f"row {row.get('id')}/seed{row.get('seed')}: its config {rel!r} is not under "
                          f"{', '.join(map(str, roots))}; run from the repository or give --arch (and --cifar-stem)")
    cfg = compose_config(found, row.get("overrides") or [])
    name = str(OmegaConf.select(cfg, "backbone.name", default="resnet18"))
    return name, OmegaConf.select(cfg, "data.dataset", default="") in ("cifar10", "cifar100")


def budget_rows(results: dict, arch: str | None = None, size: int | None = None, cifar_stem: bool = False,
                roots: list | None = None) -> dict:
    """{run id: {"target", "arch", "seeds": {seed: (network ratio, budget ratio)}, "mean", "std"}} of the gated rows.
    ``arch``: every row's backbone (with ``cifar_stem``); None: each row's own, from its config under ``roots``."""
    from solo_sparse.core.config import ConfigError
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.gating.dgnet import budget_ratio_from_network, convert_resnet
    from solo_sparse.tools.bench.measure import cost_versions, stale_cost

    size = size or int(results["meta"]["image_size"])
    nets: dict = {}
    out: dict = {}
    for row in results["rows"].values():
        if row.get("status") != "ok" or row.get("path") != "gated" or row.get("inference_macs_ratio") is None:
            continue
        if stale_cost(row):
            raise ConfigError(f"row {row['id']}/seed{row['seed']}: cost_versions {row.get('cost_versions') or {}} "
                              f"is older than the current cost count {cost_versions(row.get('plugins') or ())}: "
                              "its MACs ratio is not the one this identity inverts; re-measure it with `solo-sparse "
                              "bench` (it re-measures stale rows from their checkpoints) first")
        key = (arch, cifar_stem) if arch else backbone_of(row, roots or [Path.cwd()])
        if key not in nets:
            nets[key] = convert_resnet(build_resnet(*key))
        r = out.setdefault(row["id"], {"target": target_of(row), "arch": key[0] + (" (cifar stem)" if key[1] else ""),
                                       "seeds": {}})
        net_ratio = float(row["inference_macs_ratio"])
        r["seeds"][int(row["seed"])] = (net_ratio, budget_ratio_from_network(nets[key], net_ratio, size))
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
    ap.add_argument("--arch", help="every row's backbone (default: each row's own, from the config it trained with)")
    ap.add_argument("--cifar-stem", action="store_true", help="with --arch: solo-learn's cifar10/100 stem")
    ap.add_argument("--out", type=Path, help="write the numbers as JSON here")
    a = ap.parse_args(argv)
    from solo_sparse.core.config import ConfigError

    if a.cifar_stem and not a.arch:
        ap.error("--cifar-stem sets the stem of --arch; without --arch each row's stem comes from its config")
    repo = a.results.resolve().parent.parent.parent          # <repo>/results/<suite>/results.json
    try:
        rows = budget_rows(json.loads(a.results.read_text()), a.arch, cifar_stem=a.cifar_stem,
                           roots=[repo, Path.cwd()])
    except ConfigError as exc:
        print(f"{a.results}: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(f"{a.results}: no gated rows with a whole-network MACs ratio", file=sys.stderr)
        return 1
    print(markdown(rows), end="")
    if a.out:
        a.out.write_text(json.dumps({"source": Path(os.path.relpath(a.results)).as_posix(),
                                     "rows": {k: {**v, "seeds": {str(s): {"network_macs_ratio": n, "budget_ratio": b}
                                                                 for s, (n, b) in v["seeds"].items()}}
                                              for k, v in rows.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

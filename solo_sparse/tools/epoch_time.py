"""Training seconds per epoch of a benchmark suite's rows: ``solo-sparse epoch-time RESULTS.json [--update-docs DOC]``.

Per run and seed: the row's training wall-clock (``wall_clock_s``: the whole ``main_pretrain.py`` process, start-up and
data loading included — the same for every row) divided by its epochs; per run the mean ± std over seeds and the
ratio to its dense row (``dense``, or ``<prefix>-dense`` for ``<prefix>-...``, as the results tables pair them), per
seed, then mean ± std and a 95% t-interval of the per-seed ratios. Rows of one training (evaluation paths ``id:path``)
count once; a row reused from another suite keeps the time of its own training, and says so.

**What the figure is.** Time per epoch at **equal batch** (every run of a suite trains its config's batch) on the
machine that trained the suite. Runs train one after another on a shared machine: the seeds pair data and
initialisation, not background load, so a ratio near 1 is within the load's noise. A paper's GPU-days at a scaled
batch (the intermediate-loss paper's SimCLR 4.3 → 2.8 days changes the batch size with the method) mix the algorithm
with the batch scaling and are **not comparable** with this figure.

The table goes to stdout, or into ``<!-- epoch-time:<suite> -->`` … ``<!-- /epoch-time:<suite> -->`` blocks of the
documents named by ``--update-docs``.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from solo_sparse.core.files import write_atomic
from solo_sparse.tools.stats import LEFT_OUT, machines_note, same_machine, t975

LABEL = ("Seconds per training epoch at equal batch on the machine that trained the suite (wall-clock of the "
         "whole training process / epochs; start-up and data loading included, alike for every row). Rows trained "
         "one after another on a shared machine: seeds pair data and initialisation, not background load. **Not "
         "comparable with a paper's GPU-days at a scaled batch size** (the intermediate-loss paper's 4.3 → 2.8 "
         "GPU-days for SimCLR mixes the algorithm with batch-size scaling).")


def _timed_rows(results: Mapping[str, Any]):
    for r in results.get("rows", {}).values():
        if r.get("status") != "ok" or r.get("kind") not in (None, "pretrain"):
            continue
        secs, ep = r.get("wall_clock_s"), r.get("epochs")
        if not secs or not ep or int(ep) <= 0:
            continue
        yield _run_key(r), int(r.get("seed") or 0), float(secs) / int(ep), r.get("train_machine")


def _run_key(r: Mapping[str, Any]) -> str:
    """The run a row's training belongs to: an evaluation path's row (``id:path``) is its run's training."""
    return str(r["id"]).split(":")[0] if r.get("path") else str(r["id"])


def seconds_per_epoch(results: Mapping[str, Any]) -> Dict[str, Dict[int, float]]:
    """``{run id: {seed: seconds per epoch}}`` of the finished rows with a wall-clock and an epoch count (a run's
    evaluation-path rows ``id:path`` are one training: counted once under ``id``)."""
    out: Dict[str, Dict[int, float]] = {}
    for rid, seed, spe, _ in _timed_rows(results):
        out.setdefault(rid, {})[seed] = spe
    return out


def train_machines(results: Mapping[str, Any]) -> Dict[str, Dict[int, Optional[str]]]:
    """``{run id: {seed: the machine that trained it}}`` (``train_machine``; None where the row does not record it)."""
    out: Dict[str, Dict[int, Optional[str]]] = {}
    for rid, seed, _, machine in _timed_rows(results):
        out.setdefault(rid, {})[seed] = machine
    return out


def _dense_of(rid: str, ids: Sequence[str]) -> Optional[str]:
    if rid == "dense" or rid.endswith("-dense") or rid == "random-init":
        return None
    pre = f"{rid.split('-')[0]}-dense"
    return pre if pre in ids else ("dense" if "dense" in ids else None)


def ratio_stats(a: Mapping[int, float], b: Mapping[int, float], machine_a: Optional[Mapping[int, Any]] = None,
                machine_b: Optional[Mapping[int, Any]] = None) -> Optional[Dict[str, Any]]:
    """Per-seed ratios a / b over the seeds both have: n, ratios, mean, std, 95% interval (None for n < 2). A seed
    whose two trainings do not share a recorded machine (``machine_a`` / ``machine_b``;
    :func:`~solo_sparse.tools.stats.same_machine`) is left out, under ``skipped``: a time ratio across machines
    measures the machines."""
    ma, mb = machine_a or {}, machine_b or {}
    both = sorted(set(a) & set(b))
    skipped = [s for s in both if not same_machine(ma.get(s), mb.get(s))]
    seeds = [s for s in both if s not in skipped]
    if not seeds:
        return {"n": 0, "seeds": [], "skipped": skipped} if skipped else None
    r = [a[s] / b[s] for s in seeds]
    out: Dict[str, Any] = {"n": len(r), "seeds": seeds, "ratios": r, "mean": statistics.mean(r), "std": None,
                           "lo": None, "hi": None, "skipped": skipped}
    if len(r) > 1:
        sd = statistics.stdev(r)
        half = t975(len(r) - 1) * sd / math.sqrt(len(r))
        out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def _fmt_ratio(p: Optional[Dict[str, Any]]) -> str:
    if p is None:
        return "-"
    skip = f" (seed {', '.join(str(s) for s in p['skipped'])} left out: {LEFT_OUT})" if p.get("skipped") else ""
    if p["n"] == 0:
        return "-" + skip
    if p["n"] < 2:
        return f"×{p['mean']:.3f} (1 seed)" + skip
    return f"×{p['mean']:.3f} ± {p['std']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]" + skip


def _trained_in(suites: Mapping[str, List[int]], seeds: set) -> str:
    """Where a reused run's trainings come from, per seed when they are not all from one suite's rows."""
    if len(suites) == 1 and set(next(iter(suites.values()))) >= seeds:
        return f" (trained in suite `{next(iter(suites))}`)"
    parts = [f"`{k}` ({', '.join(f's{x}' for x in sorted(v))})" for k, v in sorted(suites.items())]
    own = sorted(seeds - {x for v in suites.values() for x in v})
    here = f"; here ({', '.join(f's{x}' for x in own)})" if own else ""
    return f" (trained in suite {'; '.join(parts)}{here})"


def to_markdown(results: Mapping[str, Any]) -> str:
    per, machines = seconds_per_epoch(results), train_machines(results)
    ids = list(per)
    reused: Dict[str, Dict[str, List[int]]] = {}     # run id -> {the suite that trained it: its seeds}
    for r in results.get("rows", {}).values():
        if r.get("reused_from") and r.get("status") == "ok" and r.get("kind") in (None, "pretrain"):
            src = reused.setdefault(_run_key(r), {}).setdefault(str(r["reused_from"]).split("/")[0], [])
            seed = int(r.get("seed") or 0)
            if seed not in src:
                src.append(seed)
    lines = ["| run | s/epoch per seed | mean ± std | vs its dense row (per-seed ratio) |", "|---|---|---:|---|"]
    for rid in ids:
        s = per[rid]
        vals = [s[k] for k in sorted(s)]
        ms = f"{statistics.mean(vals):.1f}" + (f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else " (one seed)")
        dense = _dense_of(rid, ids)
        vs = (_fmt_ratio(ratio_stats(s, per[dense], machines[rid], machines[dense])) + f" ({dense})"
              if dense else "-")
        name = rid + (_trained_in(reused[rid], set(s)) if rid in reused else "")
        lines.append(f"| {name} | {', '.join(f's{k}: {s[k]:.1f}' for k in sorted(s))} | {ms} | {vs} |")
    shown = {"rows": {k: r for k, r in results.get("rows", {}).items() if r.get("kind") in (None, "pretrain")}}
    return "\n".join(lines + machines_note(shown)) + "\n\n" + LABEL + "\n"


def update_docs(results_paths: Sequence[Path], docs: Sequence[Path]) -> List[Path]:
    """Rewrite the ``<!-- epoch-time:<suite> -->`` blocks of ``docs`` with the tables of the suites' results."""
    tables = {}
    for p in results_paths:
        res = json.loads(Path(p).read_text())
        tables[f"epoch-time:{res['meta']['suite']}"] = to_markdown(res)
    changed = []
    for d in docs:
        text = Path(d).read_text()
        new = text
        for name, table in tables.items():
            start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
            i, j = new.find(start), new.find(end)
            if i >= 0 and j > i:
                new = new[:i + len(start)] + "\n" + table + new[j:]
        if new != text:
            write_atomic(d, new)
            changed.append(Path(d))
    return changed


def add_arguments(a) -> None:
    a.add_argument("results", nargs="+", help="a suite's results.json (solo-sparse bench)")
    a.add_argument("--update-docs", nargs="+", default=None, metavar="DOC",
                   help="write the tables into these documents' <!-- epoch-time:SUITE --> blocks")


def main(args) -> int:
    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.inputs import existing_file

    paths = [existing_file(p, "a suite's results.json") for p in args.results]
    for p in paths:
        try:
            json.loads(p.read_text())["meta"]["suite"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{p}: not a benchmark results.json (no meta.suite)") from None
    if args.update_docs:
        changed = update_docs(paths, [existing_file(d, "a Markdown document") for d in args.update_docs])
        print("updated: " + (", ".join(map(str, changed)) or "nothing (no <!-- epoch-time:SUITE --> block changed)"))
        return 0
    for p in paths:
        res = json.loads(p.read_text())
        print(f"Suite `{res['meta']['suite']}`:\n\n{to_markdown(res)}")
    return 0

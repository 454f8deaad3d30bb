"""Paired statistics of benchmark rows, and the verdict on a paper's claim.

Runs of one seed share the initialisation and the data order (``++seed=k``: solo-learn seeds every generator
before building the model and the loaders, and the plugins draw no random numbers before step 0 that a dense run
does not), so two rows are compared **per seed**: the difference a − b of each seed both have, then the mean,
the std and a 95% t-interval of the mean difference (n − 1 degrees of freedom). A difference is *called* only
when that interval excludes the margin; otherwise it is "not decided".

A claim is ``a − b ≥ margin`` (in linear-probe points): e.g. "SyncCP ≥ GraNet" is margin 0, "within 1 pt of dense"
is margin −1. Verdict: *reproduced* when the interval's lower end is ≥ the margin, *not reproduced* when its upper
end is below it, *not decided* otherwise; one seed gives no interval ("one seed: not decided").
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional

#: two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30), then the normal quantile
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.960


def by_seed(rows: Iterable[Mapping[str, Any]], rid: str, key: str = "linear") -> Dict[int, float]:
    """{seed: value} of the finished rows of run ``rid`` (values in points where the key is an accuracy)."""
    out = {}
    for r in rows:
        if r.get("id") == rid and r.get("status") == "ok" and r.get(key) is not None:
            v = float(r[key])
            out[int(r.get("seed") or 0)] = 100 * v if key in ("linear", "knn20", "knn1") else v
    return out


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Optional[Dict[str, Any]]:
    """The per-seed differences a − b over the seeds both have: n, mean, std, 95% interval (None for n < 2)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    out: Dict[str, Any] = {"n": len(d), "seeds": seeds, "diffs": d, "mean": statistics.mean(d),
                           "std": None, "lo": None, "hi": None}
    if len(d) > 1:
        sd = statistics.stdev(d)
        half = t975(len(d) - 1) * sd / math.sqrt(len(d))
        out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def verdict(p: Optional[Dict[str, Any]], margin: float = 0.0) -> str:
    if p is None:
        return "not measured"
    if p["n"] < 2:
        return "one seed: not decided"
    if p["lo"] >= margin:
        return "reproduced"
    if p["hi"] < margin:
        return "not reproduced"
    return "not decided"


def fmt(p: Optional[Dict[str, Any]], margin: float = 0.0) -> str:
    """``-0.41 ± 0.30 [-1.15, +0.33]`` (mean ± std of the per-seed differences, 95% interval); a mark when the
    interval excludes ``margin`` (``*``); ``+0.31 (1 seed)`` without an interval."""
    if p is None:
        return "-"
    if p["n"] < 2:
        return f"{p['mean']:+.2f} (1 seed)"
    mark = " *" if (p["lo"] > margin or p["hi"] < margin) else ""
    return f"{p['mean']:+.2f} ± {p['std']:.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]{mark}"


def claim_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The claims a suite declares (``claims:`` in its YAML, saved in the results' meta) with their paired
    numbers and verdicts."""
    rows = list(results.get("rows", {}).values())
    out = []
    for c in results.get("meta", {}).get("claims") or []:
        margin = float(c.get("margin", 0.0))
        p = paired(by_seed(rows, c["a"]), by_seed(rows, c["b"]))
        out.append({**c, "margin": margin, "paired": p, "verdict": verdict(p, margin)})
    return out


def claims_markdown(results_list: Iterable[Mapping[str, Any]]) -> str:
    lines = ["| claim | source | compared | margin | per-seed a − b (pt) | mean ± std [95% interval] | verdict |",
             "|---|---|---|---:|---|---|---|"]
    for res in results_list:
        suite = res.get("meta", {}).get("suite")
        for c in claim_rows(res):
            p = c["paired"]
            per = "-" if p is None else ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(p["seeds"], p["diffs"]))
            lines.append(f"| {c['claim']} | {c.get('source', '-')} | `{suite}`: {c['a']} − {c['b']} | "
                         f"{c['margin']:+.1f} | {per} | {fmt(p, c['margin'])} | **{c['verdict']}** |")
    lines += ["", "A claim is a − b ≥ margin (linear-probe points, paired by seed: runs of one seed share the "
                  "initialisation and the data order). Reproduced: the 95% t-interval of the mean per-seed "
                  "difference lies at or above the margin; not reproduced: it lies below; not decided: it contains "
                  "the margin. `*`: the interval excludes the margin."]
    return "\n".join(lines) + "\n"

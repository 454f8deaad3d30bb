"""Paired statistics of benchmark rows, and the verdict on a paper's claim.

Runs of one seed share the initialisation and the data order (``++seed=k``: solo-learn seeds every generator
before building the model and the loaders, and the plugins draw no random numbers before step 0 that a dense run
does not), so two rows are compared **per seed**: the difference a − b of each seed both have, then the mean,
the std and a 95% t-interval of the mean difference (n − 1 degrees of freedom). A difference is *called* only
when that interval excludes the margin; otherwise it is "not decided".

A claim is ``a − b ≥ margin`` (in linear-probe points): e.g. "SyncCP ≥ GraNet" is margin 0, "within 1 pt of dense"
is margin −1. Verdict: *reproduced* when the interval's lower end is ≥ the margin, *not reproduced* when its upper
end is below it, *not decided* otherwise; one seed gives no interval ("one seed: not decided"), and fewer than
:data:`MIN_SEEDS` paired seeds decide nothing ("2 seeds: not decided"; the interval is still shown): a t-interval
from two differences is exact only if they are normal, which two values cannot show, and one lucky pair with a small
spread would otherwise settle a claim. Beside an undecided claim, :func:`seeds_to_decide` estimates how many seeds
would decide it if the measured mean and spread held — a plan for the next runs, never a verdict.

A claim may name another row column (``metric``, e.g. ``shift_sensitivity``, ``online_momentum_cos``,
``gate_sparsity``) and a bound instead of a margin: on run ``a``'s per-seed values (no ``b``), or on the per-seed
ratio a / b (``b`` given): ``at_least: X`` (reproduced when the interval's lower end is ≥ X) or ``at_most: X``
(reproduced when its upper end is ≤ X); e.g. "online/momentum cosine ≥ 0.88", "shift sensitivity ≤ 3× dense".

**Families.** Claims that test one hypothesis over a sweep of a parameter (IMP's ticket ≥ random at each of five
densities; DGNet's at two budgets) name one ``family``. Each of them is then decided on its **Bonferroni interval**:
the t-interval at level 1 − 0.05 / m for a family of m claims, so that the chance of calling any claim of the family
wrongly stays ≤ 5% — picking the one density of five whose 95% interval cleared the margin would otherwise call a
null result up to about one time in five (1 − 0.95⁵ = 23% for independent sweep points). The 95% interval is still
shown beside it. (A claim "at *every* density" needs no correction — each member at 95% — and is read from the
per-member 95% intervals, not decided by the table.)

**Sweep means.** A difference claim may name lists of runs, ``a: [a1, …, ak]`` and ``b: [b1, …, bk]``: its per-seed
value is the mean over the k pairs of ``ai − bi`` (equal weight per pair; a seed counts only where it has all 2k
rows), decided like one difference on its 95% interval, seeds being the independent unit. It asks whether a beats b
*on average over the sweep* — not at every point (the mean can be carried by a few points). It is one claim, but
asking a sweep both member-wise (a family) and as a mean is two ways to call one hypothesis: a suite names one of
them its test and marks the other ``post_hoc`` or says so. Averaging narrows the per-seed spread only where the
members' differences are not strongly correlated (the points of one IMP chain share a seed's chain, so they may be).

**Post hoc.** A claim declared after its rows were seen (``post_hoc: true``) is decided by the same rule, but its
verdict is marked *post hoc* in the table and plot: the data that suggested it also decide it, so its error rate is
not the stated 5% — a reading to confirm on new seeds, not a result.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

#: two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30), then the normal quantile
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.960


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom, to 1e-9 (bisection on
    :func:`t_cdf`; no SciPy). ``t_quantile(0.975, df)`` is :func:`t975`'s table value to its 3 decimals."""
    if not 0.5 < q < 1.0 or df < 1:
        raise ValueError(f"t_quantile(q={q}, df={df}): allowed: 0.5 < q < 1, df >= 1")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


def t_half(df: int, m: int = 1) -> float:
    """The t quantile of a two-sided interval at level 1 − 0.05 / m (m = 1: the 95% interval, :func:`t975`)."""
    return t975(df) if m <= 1 else t_quantile(1.0 - 0.025 / m, df)


def by_seed(rows: Iterable[Mapping[str, Any]], rid: str, key: str = "linear") -> Dict[int, float]:
    """{seed: value} of the finished rows of run ``rid`` (values in points where the key is an accuracy)."""
    out = {}
    for r in rows:
        if r.get("id") == rid and r.get("status") == "ok" and r.get(key) is not None:
            v = float(r[key])
            out[int(r.get("seed") or 0)] = 100 * v if key in ("linear", "knn20", "knn1") else v
    return out


def same_machine(a: Optional[str], b: Optional[str]) -> bool:
    """Whether the times of two trainings compare: both record the same machine (``train_machine``), or neither
    does (rows written before 2026-12-07, the suite's only record). One recorded and one not is a later session's
    machine against an unknown earlier one: not compared."""
    return a == b


#: why a seed is missing from a paired time comparison
LEFT_OUT = "its two trainings do not share a recorded machine"


def machines_note(results: Mapping[str, Any]) -> List[str]:
    """A line under the table when its train wall-clock column comes from more than one machine (``train_machine``
    of each timed training; rows written before 2026-12-07 do not record theirs): times compare within one only."""
    trainings: Dict[Any, str] = {}
    for r in results.get("rows", {}).values():
        if r.get("status") == "ok" and r.get("wall_clock_s"):     # reused rows too: the table shows their time
            rid, path = str(r.get("id")), r.get("path")
            rid = rid[:-len(path) - 1] if path and rid.endswith(f":{path}") else rid     # a training's eval paths
            trainings[(rid, r.get("seed"))] = r.get("train_machine")
    known = Counter(m for m in trainings.values() if m)
    unknown = sum(1 for m in trainings.values() if not m)
    if len(known) + bool(unknown) < 2:
        return []
    parts = [f"{m}: {n}" for m, n in sorted(known.items())]
    parts += [f"not recorded (rows written before 2026-12-07): {unknown}"] if unknown else []
    return ["", f"Train wall-clock from more than one machine (trainings per machine — {'; '.join(parts)}): compare "
                "times of one machine only; a paired time comparison leaves out a seed whose two trainings do not "
                "share a recorded machine."]


def _machines(rows: Iterable[Mapping[str, Any]], rid: str) -> Dict[int, str]:
    """{seed: the machine that trained it} of run ``rid``'s finished rows that record one (``train_machine``)."""
    return {int(r.get("seed") or 0): r["train_machine"] for r in rows
            if r.get("id") == rid and r.get("status") == "ok" and r.get("train_machine")}


def sweep_mean(rows: Iterable[Mapping[str, Any]], a: List[str], b: List[str], key: str = "linear"
               ) -> Dict[int, float]:
    """{seed: mean over the pairs of a[i] − b[i]} for the seeds that have every row of both lists (a sweep mean
    claim's per-seed value)."""
    rows = list(rows)
    pairs = [(by_seed(rows, x, key), by_seed(rows, y, key)) for x, y in zip(a, b, strict=True)]
    seeds = set.intersection(*(set(va) & set(vb) for va, vb in pairs)) if pairs else set()
    return {s: statistics.mean(va[s] - vb[s] for va, vb in pairs) for s in sorted(seeds)}


def paired(a: Mapping[int, float], b: Mapping[int, float], m: int = 1) -> Optional[Dict[str, Any]]:
    """The per-seed differences a − b over the seeds both have: n, mean, std, 95% interval (None for n < 2); for a
    claim of a family of ``m`` claims also its Bonferroni interval (``family_lo``, ``family_hi``: level 1 − 0.05 / m),
    the one its verdict reads."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    out: Dict[str, Any] = {"n": len(d), "seeds": seeds, "diffs": d, "mean": statistics.mean(d),
                           "std": None, "lo": None, "hi": None, "m": m}
    if len(d) > 1:
        sd = statistics.stdev(d)
        half = t975(len(d) - 1) * sd / math.sqrt(len(d))
        out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
        if m > 1:
            fhalf = t_half(len(d) - 1, m) * sd / math.sqrt(len(d))
            out.update(family_lo=out["mean"] - fhalf, family_hi=out["mean"] + fhalf)
    return out


def _bounds(p: Dict[str, Any]) -> Tuple[float, float]:
    """The interval a verdict reads: the Bonferroni one in a family, else the 95% one."""
    return (p["family_lo"], p["family_hi"]) if p.get("m", 1) > 1 else (p["lo"], p["hi"])


#: the fewest paired seeds that decide a claim (the project's rule: every claim is decided at 3 seeds)
MIN_SEEDS = 3


def _too_few(p: Dict[str, Any]) -> Optional[str]:
    """The verdict of a comparison with fewer than :data:`MIN_SEEDS` paired seeds, None when it has enough."""
    if p["n"] >= MIN_SEEDS:
        return None
    return "one seed: not decided" if p["n"] < 2 else f"{p['n']} seeds: not decided"


def verdict(p: Optional[Dict[str, Any]], margin: float = 0.0) -> str:
    if p is None:
        return "not measured"
    if few := _too_few(p):
        return few
    lo, hi = _bounds(p)
    if lo >= margin:
        return "reproduced"
    if hi < margin:
        return "not reproduced"
    return "not decided"


#: the most seeds :func:`seeds_to_decide` looks ahead to (past it: "> 30")
MAX_SEEDS = 30


def seeds_to_decide(p: Optional[Dict[str, Any]], threshold: float) -> Optional[int]:
    """A planning estimate for an undecided comparison: the fewest seeds whose 95% interval would exclude
    ``threshold`` (a claim's margin or bound) **if** the per-seed mean and std stayed as measured —
    ``t(n − 1) · std / √n < |mean − threshold|``. None where it cannot say: fewer than 2 seeds, no spread, the
    interval already excludes the threshold with at least :data:`MIN_SEEDS` seeds, or more than :data:`MAX_SEEDS`
    seeds needed (``> 30``). Never fewer than :data:`MIN_SEEDS`: below it nothing is decided."""
    if p is None or p["n"] < 2 or not p["std"]:
        return None
    lo, hi = _bounds(p)
    if lo >= threshold or hi < threshold:
        return MIN_SEEDS if p["n"] < MIN_SEEDS else None
    gap, m = abs(p["mean"] - threshold), p.get("m", 1)
    for n in range(max(p["n"] + 1, MIN_SEEDS), MAX_SEEDS + 1):
        if t_half(n - 1, m) * p["std"] / math.sqrt(n) < gap:
            return n
    return None


def _seeds_cell(p: Optional[Dict[str, Any]], threshold: float, verdict_: str) -> str:
    if not verdict_.endswith("not decided") or p is None or p["n"] < 2:
        return "-"
    n = seeds_to_decide(p, threshold)
    return f"> {MAX_SEEDS}" if n is None else f"~{n}"


def fmt(p: Optional[Dict[str, Any]], margin: float = 0.0) -> str:
    """``-0.41 ± 0.30 [-1.15, +0.33]`` (mean ± std of the per-seed differences, 95% interval); a mark when the
    interval excludes ``margin`` (``*``); ``+0.31 (1 seed)`` without an interval."""
    if p is None:
        return "-"
    if p["n"] < 2:
        return f"{p['mean']:+.2f} (1 seed)"
    mark = " *" if (p["lo"] > margin or p["hi"] < margin) else ""
    out = f"{p['mean']:+.2f} ± {p['std']:.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]{mark}"
    if p.get("m", 1) > 1:
        fmark = " *" if (p["family_lo"] > margin or p["family_hi"] < margin) else ""
        out += f"; family of {p['m']}: [{p['family_lo']:+.2f}, {p['family_hi']:+.2f}]{fmark}"
    return out


def bounded(c: Mapping[str, Any]) -> Optional[Tuple[str, float]]:
    """``("at_least" | "at_most", bound)`` of a claim on a value or a ratio, None for a difference claim."""
    for k in ("at_least", "at_most"):
        if c.get(k) is not None:
            return k, float(c[k])
    return None


def bound_verdict(p: Optional[Dict[str, Any]], kind: str, bound: float) -> str:
    """The verdict of ``value ≥ bound`` (``at_least``) or ``value ≤ bound`` (``at_most``) on the per-seed values."""
    if p is None:
        return "not measured"
    if few := _too_few(p):
        return few
    lo, hi = _bounds(p)
    good, bad = (lo >= bound, hi < bound) if kind == "at_least" else (hi <= bound, lo > bound)
    return "reproduced" if good else "not reproduced" if bad else "not decided"


def claim_rows(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The claims a suite declares (``claims:`` in its YAML, saved in the results' meta) with their paired
    numbers and verdicts."""
    rows = list(results.get("rows", {}).values())
    out = []
    claims = results.get("meta", {}).get("claims") or []
    sizes = Counter(c["family"] for c in claims if c.get("family"))
    for c in claims:
        m = sizes[c["family"]] if c.get("family") else 1
        key = c.get("metric") or "linear"
        if isinstance(c["a"], list):                   # a sweep mean: one difference per seed, averaged over pairs
            margin = float(c.get("margin", 0.0))
            per = sweep_mean(rows, c["a"], c["b"], key)
            p = paired(per, {s: 0.0 for s in per}, m)
            out.append({**c, "margin": margin, "paired": p, "verdict": verdict(p, margin)})
            continue
        a = by_seed(rows, c["a"], key)
        b = by_seed(rows, c["b"], key) if c.get("b") else None
        if key == "wall_clock_s" and b is not None:      # a time compared across machines measures the machines
            ma, mb = _machines(rows, c["a"]), _machines(rows, c["b"])
            left = sorted(s for s in set(a) & set(b) if not same_machine(ma.get(s), mb.get(s)))
            a = {s: v for s, v in a.items() if s not in left}
            c = {**c, "left_out": left} if left else c
        bd = bounded(c)
        if bd is None:
            margin = float(c.get("margin", 0.0))
            p = paired(a, b or {}, m)
            out.append({**c, "margin": margin, "paired": p, "verdict": verdict(p, margin)})
            continue
        vals = a if b is None else {s: a[s] / b[s] for s in set(a) & set(b) if b[s]}
        p = paired(vals, {s: 0.0 for s in vals}, m)
        out.append({**c, "paired": p, "verdict": bound_verdict(p, *bd)})
    return out


def _claim_cells(c: Mapping[str, Any], suite: Any) -> Tuple[str, str, str]:
    """(compared, bound, per-seed values) cells of a claim's table row."""
    p, key = c["paired"], c.get("metric") or "linear"
    bd = bounded(c)
    left = (f" (seed {', '.join(str(x) for x in c['left_out'])} left out: {LEFT_OUT})" if c.get("left_out") else "")
    if bd is None:
        per = "-" if p is None else ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(p["seeds"], p["diffs"]))
        what = "" if key == "linear" else f" ({key})"
        if isinstance(c["a"], list):
            pairs = "; ".join(f"{x} − {y}" for x, y in zip(c["a"], c["b"], strict=True))
            return f"`{suite}`: mean of {len(c['a'])} differences: {pairs}{what}", f"{c['margin']:+.1f}", per
        return f"`{suite}`: {c['a']} − {c['b']}{what}", f"{c['margin']:+.1f}", per + left
    per = "-" if p is None else ", ".join(f"s{s}: {d:.4g}" for s, d in zip(p["seeds"], p["diffs"]))
    per += left
    what = f"{c['a']} / {c['b']}" if c.get("b") else c["a"]
    return f"`{suite}`: {what} ({key})", f"{'≥' if bd[0] == 'at_least' else '≤'} {bd[1]:g}", per


def _value_fmt(p: Optional[Dict[str, Any]]) -> str:
    if p is None:
        return "-"
    if p["n"] < 2:
        return f"{p['mean']:.4g} (1 seed)"
    out = f"{p['mean']:.4g} ± {p['std']:.2g} [{p['lo']:.4g}, {p['hi']:.4g}]"
    if p.get("m", 1) > 1:
        out += f"; family of {p['m']}: [{p['family_lo']:.4g}, {p['family_hi']:.4g}]"
    return out


def claims_markdown(results_list: Iterable[Mapping[str, Any]]) -> str:
    lines = ["| claim | source | compared | margin / bound | per-seed a − b (pt) or value | mean ± std [95% interval] "
             "| verdict | seeds to decide (est.) |", "|---|---|---|---:|---|---|---|---:|"]
    any_bound = any_family = any_sweep = any_post = False
    for res in results_list:
        suite = res.get("meta", {}).get("suite")
        for c in claim_rows(res):
            compared, bound, per = _claim_cells(c, suite)
            bd = bounded(c)
            any_bound |= bd is not None
            any_family |= bool(c.get("family"))
            any_sweep |= isinstance(c["a"], list)
            summary = fmt(c["paired"], c["margin"]) if bd is None else _value_fmt(c["paired"])
            seeds = _seeds_cell(c["paired"], c["margin"] if bd is None else bd[1], c["verdict"])
            post = " (*post hoc*)" if c.get("post_hoc") else ""
            any_post |= bool(post)
            lines.append(f"| {c['claim']} | {c.get('source', '-')} | {compared} | {bound} | {per} | {summary} | "
                         f"**{c['verdict']}**{post} | {seeds} |")
    lines += ["", "A claim is a − b ≥ margin (linear-probe points, paired by seed: runs of one seed share the "
                  "initialisation and the data order). Reproduced: the 95% t-interval of the mean per-seed "
                  "difference lies at or above the margin; not reproduced: it lies below; not decided: it contains "
                  f"the margin, or fewer than {MIN_SEEDS} paired seeds (the interval is shown, nothing is decided). "
                  "`*`: the interval excludes the margin. Seeds to decide (est.): for a claim not "
                  "decided, the fewest seeds whose interval would exclude the margin or bound if the per-seed mean "
                  "and std stayed as measured (t(n − 1) · std / √n < |mean − margin|) — a planning estimate for the "
                  "next runs, not a result; `> 30` where the mean sits too close to the margin for its spread."
              + (" A bound (≥ / ≤ X) is on the named column's per-seed values of a (or the per-seed ratio a / b): "
                 "reproduced when the 95% interval of their mean lies on the bound's side." if any_bound else "")
              + (" *Family of m*: the claim is one of m claims testing one hypothesis over a sweep (e.g. densities); "
                 "its verdict and seeds-to-decide read the Bonferroni interval shown after it (level 1 − 0.05 / m), "
                 "so that a family's chance of calling any member wrongly stays ≤ 5% — the 95% interval alone, "
                 "picked from m, would call a null result far more often." if any_family else "")
              + (" *Mean of k differences*: one claim on a whole sweep — each seed's value is the mean of its k "
                 "paired differences (equal weight), decided like one difference: a beats b on average over the "
                 "sweep, not at every point." if any_sweep else "")
              + (" *Post hoc*: declared after its rows were seen — decided by the same rule, but the data that "
                 "suggested it also decide it: a reading to confirm on new seeds, not a result." if any_post else "")]
    return "\n".join(lines) + "\n"

"""What a suite's rows become: the one row schema (:data:`ROW_KEYS`), mean ± std per run over seeds
(:func:`aggregate`), the paired comparisons with the dense row and the named baseline (:mod:`solo_sparse.tools.stats`),
the markdown table (:func:`to_markdown`), the regime table (:func:`regime_markdown`), the plots (:func:`plot`,
:func:`plot_rounds`, :func:`plot_monitors`, :func:`plot_claims`) and the generated doc blocks (:func:`update_docs`)."""
from __future__ import annotations

import json
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from solo_sparse.core.config import ConfigError
from solo_sparse.core.files import write_atomic
from solo_sparse.tools import stats
from solo_sparse.tools.bench.suite import RETRAIN, parse_round_row_id, round_row_id
from solo_sparse.tools.report import png_data_digest

#: the columns of every row (absent values are None)
ROW_KEYS = ("id", "seed", "kind", "config", "overrides", "method", "plugins", "epochs", "image_size", "path",
            "density_online", "density_momentum", "inference_macs_ratio", "training_macs_ratio", "gate_sparsity",
            "cost_versions", "trigger_step", "wall_clock_s", "train_machine", "knn20", "knn1", "linear",
            "shift_sensitivity", "online_momentum_cos", "status", "error", "command", "reused_from")


def _mean_std(vals: Sequence[float]):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def aggregate(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per id (in first-seen order): n, mean ± std of the accuracies, mean of the rest."""
    groups: Dict[str, List[Dict]] = {}
    for r in results["rows"].values():
        if r.get("status") == "ok":
            groups.setdefault(r["id"], []).append(r)
    out = []
    for rid, rows in groups.items():
        agg = {"id": rid, "n": len(rows), "seeds": sorted(r.get("seed") for r in rows)}
        for k in ("linear", "knn20", "knn1"):
            m, s, _ = _mean_std([r.get(k) for r in rows])
            agg[k] = None if m is None else 100 * m
            agg[k + "_std"] = None if s is None else 100 * s
        for k in ("density_online", "density_momentum", "inference_macs_ratio", "training_macs_ratio",
                  "gate_sparsity", "wall_clock_s", "shift_sensitivity", "online_momentum_cos"):
            m, _, _ = _mean_std([r.get(k) for r in rows])
            agg[k] = m
        trig = [r.get("trigger_step") for r in rows if r.get("trigger_step") is not None]
        agg["trigger_step"] = trig or None
        out.append(agg)
    return out


def dense_of(rid: str, by: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The dense row a run is compared with: ``<prefix>-dense`` for ``<prefix>-...``, else ``dense``."""
    if rid == "dense" or rid.endswith("-dense") or rid == "random-init":
        return None
    prefix = rid.split("-")[0]
    return by.get(f"{prefix}-dense") or by.get("dense")


def versus(a: Dict[str, Any], other: Optional[Dict[str, Any]], results: Dict[str, Any]) -> str:
    """The linear-probe difference to ``other``, paired by seed: ``mean ± std [95% interval]`` of the per-seed
    differences, ``*`` where the interval excludes 0 (:mod:`solo_sparse.tools.stats`)."""
    if other is None or a["linear"] is None or other["linear"] is None:
        return "-"
    rows = list(results.get("rows", {}).values())
    return stats.fmt(stats.paired(stats.by_seed(rows, a["id"]), stats.by_seed(rows, other["id"])))


def versus_dense(a: Dict[str, Any], by: Dict[str, Dict[str, Any]], results: Dict[str, Any]) -> str:
    return versus(a, dense_of(a["id"], by), results)


def round_references(results: Dict[str, Any]) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """For each ``kind: rounds`` row id: (its dense row, its baseline) — the run's round-0 ticket (the dense network)
    and, for a control, the ticket of the same round; both of the same evaluation (linear probe or label
    re-training). The ticket at round 0 has neither, a ticket at round k > 0 no baseline."""
    out: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
    for r in results.get("rows", {}).values():
        key = parse_round_row_id(r.get("id", "")) if r.get("kind") == "rounds" else None
        if key is None:
            continue
        retrain = key["evaluation"] == RETRAIN
        is_ticket = key["what"] == "ticket"
        dense = None if is_ticket and key["round"] == 0 else round_row_id(key["run"], "ticket", 0, retrain)
        out[r["id"]] = (dense, None if is_ticket else round_row_id(key["run"], "ticket", key["round"], retrain))
    return out


def _f(v, fmt=".3f", dash="-"):
    return dash if v is None else format(v, fmt)


def to_markdown(results: Dict[str, Any]) -> str:
    meta = results.get("meta", {})
    agg = aggregate(results)
    by = {a["id"]: a for a in agg}
    lines = [f"Suite `{meta.get('suite')}` ({meta.get('suite_file')}): {meta.get('description', '')}",
             f"Data `{meta.get('data')}` {json.dumps(meta.get('data_meta', {}))}, {meta.get('image_size')} px; "
             f"torch {meta.get('torch')}, {meta.get('threads')} threads. Mean ± std over seeds."
             + (f" Trained through the {meta['host']} host." if meta.get("host") not in (None, "solo-learn") else ""),
             "",
             "| run | seeds | linear probe | vs dense | vs baseline | kNN k=20 | kNN k=1 | online density "
             "| momentum density | inference MACs | training MACs | gate sparsity | shift 1−cos | online/momentum cos "
             "| trigger step | train wall-clock |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    baselines = meta.get("baselines") or {}
    rounds = round_references(results)
    for a in agg:
        acc = [("-" if a[k] is None else f"{a[k]:.2f}" if a["n"] == 1 else f"{a[k]:.2f} ± {a[k + '_std']:.2f}")
               for k in ("linear", "knn20", "knn1")]
        trig = "-" if not a["trigger_step"] else ", ".join(str(t) for t in a["trigger_step"])
        if a["id"] in rounds:
            dense_id, base_id = rounds[a["id"]]
            vd = versus(a, by.get(dense_id), results) if dense_id else "-"
        else:
            base_id = baselines.get(a["id"].split(":")[0])
            vd = versus_dense(a, by, results)
        vb = versus(a, by.get(base_id), results) if base_id else "-"
        lines.append(f"| {a['id']} | {a['n']} | {acc[0]} | {vd} | "
                     f"{vb + f' ({base_id})' if base_id and vb != '-' else vb} | {acc[1]} | {acc[2]} | "
                     f"{_f(a['density_online'])} | "
                     f"{_f(a['density_momentum'])} | {_f(a['inference_macs_ratio'])} | "
                     f"{_f(a['training_macs_ratio'])} | "
                     f"{_f(a['gate_sparsity'])} | {_f(a.get('shift_sensitivity'), '.4f')} | "
                     f"{_f(a.get('online_momentum_cos'), '.3f')} | {trig} | "
                     f"{'-' if not a['wall_clock_s'] else format(a['wall_clock_s'] / 60, '.1f') + ' min'} |")
    ri = by.get("random-init")
    for dense in (a for a in agg if a["id"] == "dense" or a["id"].endswith("-dense")):
        if ri and ri["linear"] is not None and dense["linear"] is not None:
            gap = dense["linear"] - ri["linear"]
            spread = [f"±{a['linear_std']:.2f} over {a['n']} seeds" if a["n"] > 1 else "one seed: spread unmeasured"
                      for a in (dense, ri)]
            lines += ["", f"Regime: {dense['id']} − random-init linear probe = {gap:+.2f} pt "
                          f"({dense['id']} {spread[0]}; random-init {spread[1]})."]
    reused = sorted({(r["id"], r["reused_from"].rsplit("/", 1)[0]) for r in results["rows"].values()
                     if r.get("reused_from")})
    if reused:
        lines += ["", "Same training as another suite's row, reused (not trained twice): "
                  + "; ".join(f"{i} = {w}" for i, w in reused) + "."]
    replays: Dict[Any, List[str]] = {}
    diffs: List[float] = []
    for r in results["rows"].values():
        if r.get("rewind_replay"):
            replays.setdefault(r.get("seed"), []).append(r["id"])
            d = r["rewind_replay"].get("max_rel_norm_diff")
            if isinstance(d, (int, float)) and math.isfinite(d):
                diffs.append(float(d))
    if replays:
        worst = f"; largest relative difference of a tensor's L2 norm {max(diffs):.3g}" if diffs else ""
        lines += ["", "Computed from a rewind point replayed not bit-identically (on another machine or build: the "
                  f"same tensors and metadata, float values within the run's `rewind_tolerance`{worst}): "
                  + "; ".join(f"seed {sd}: " + ", ".join(sorted(ids))
                              for sd, ids in sorted(replays.items(), key=lambda kv: str(kv[0]))) + "."]
    lines += stats.machines_note(results)
    imp_dense = "; for IMP rounds rows the round-0 ticket of the same evaluation" if rounds else ""
    imp_base = " (for an IMP control: the ticket of its round and evaluation)" if rounds else ""
    lines += ["", "vs dense / vs baseline: linear-probe difference to the run's dense row (`dense`, or "
                  f"`<prefix>-dense` for `<prefix>-...`{imp_dense}) / to the baseline the suite names{imp_base}, "
                  "paired by seed (runs of "
                  "one seed share initialisation and data order): mean ± std of the per-seed differences [95% "
                  "t-interval]; `*` where the interval excludes 0 — only those differences are called. Shift "
                  "1−cos: 1 − cosine of the pooled features under a 1-px shift (256 val images, evaluation path); "
                  "online/momentum cos: the two encoders' feature cosine on the same images."]
    claims = stats.claim_rows(results)
    if claims:
        lines += ["", "Claims decided by this suite:", "", stats.claims_markdown([results]).rstrip()]
    failed = [r for r in results["rows"].values() if r.get("status") == "failed"]
    for r in failed:
        lines.append(f"- failed: {r['id']} seed {r.get('seed')}: {r.get('error')}")
    return "\n".join(lines) + "\n"


def regime_markdown(results: Dict[str, Any]) -> str:
    """The random-init and dense rows of a suite (every id starting with ``dense`` or ending in ``-dense``), per seed
    and mean ± std, with the margin: what docs/regime.md shows."""
    rows = [r for r in results["rows"].values() if r.get("status") == "ok" and (
        r["id"] == "random-init" or r["id"] == "dense" or r["id"].endswith("-dense"))]
    ids = list(dict.fromkeys(r["id"] for r in rows))
    lines = ["| run | linear probe per seed | mean ± std | kNN k=20 mean |", "|---|---|---:|---:|"]
    stats = {}
    for rid in ids:
        rs = sorted((r for r in rows if r["id"] == rid), key=lambda r: r.get("seed", 0))
        lin = [100 * r["linear"] for r in rs]
        m, sd, _ = _mean_std(lin)
        k, _, _ = _mean_std([100 * r["knn20"] for r in rs])
        stats[rid] = (m, sd, len(lin))
        ms = f"{m:.2f} ± {sd:.2f}" if len(lin) > 1 else f"{m:.2f} (one seed)"
        lines.append(f"| {rid} | {', '.join(f'{v:.2f}' for v in lin)} | {ms} | {k:.2f} |")
    if "random-init" in stats:
        for rid, (m, sd, n) in stats.items():
            if rid != "random-init":
                spread = f"seed-to-seed spread ±{sd:.2f} over {n} seeds" if n > 1 else "one seed: spread unmeasured"
                lines.append(f"\n{rid}: {m - stats['random-init'][0]:+.2f} pt over random-init features ({spread}).")
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """Linear probe vs inference MACs (error bars: std over seeds), random-init and dense lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rounds rows (IMP tickets and controls, two evaluations) have their own plot: plot_rounds
    own = {k: r for k, r in results.get("rows", {}).items() if r.get("kind") != "rounds"}
    agg = [a for a in aggregate({**results, "rows": own}) if a["linear"] is not None]
    if not agg:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for a in agg:
        if a["id"] in ("random-init", "dense"):
            continue
        x = a["inference_macs_ratio"] if a["inference_macs_ratio"] is not None else a.get("density_online") or 1.0
        ax.errorbar([x], [a["linear"]], yerr=[a["linear_std"] or 0], fmt="o", capsize=3, label=a["id"])
    for rid, style in (("dense", "-"), ("random-init", "--")):
        a = next((b for b in agg if b["id"] == rid), None)
        if a:
            ax.axhline(a["linear"], ls=style, color="k" if rid == "dense" else "gray", lw=1,
                       label=f"{rid} ({a['linear']:.1f})")
            if a["linear_std"]:
                ax.axhspan(a["linear"] - a["linear_std"], a["linear"] + a["linear_std"],
                           color="k" if rid == "dense" else "gray", alpha=0.08)
    meta = results.get("meta", {})
    ax.set_xlim(0.0, 1.05)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel("inference MACs vs dense")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(f"{meta.get('suite')}: {meta.get('data')} at {meta.get('image_size')} px, mean ± std over seeds",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    from solo_sparse.tools.report import _save

    return _save(fig, path)


def rounds_curves(results: Dict[str, Any]) -> Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]]:
    """The curves of the ``kind: rounds`` rows: run -> evaluation (``linear``: linear probe of the self-supervised
    features; ``retrain``: top-1 after label re-training) -> ticket / control -> one point per round (sorted by
    round): ``round``, ``density`` (mean over seeds), ``mean`` and ``std`` of the top-1 in % over seeds, ``n``
    seeds, and ``vs_ticket`` — the paired difference to the ticket of the same round and evaluation
    (:func:`solo_sparse.tools.stats.paired`; None for the ticket itself). Only finished rows count."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in results.get("rows", {}).values():
        key = parse_round_row_id(r.get("id", "")) if r.get("kind") == "rounds" else None
        if key is None or r.get("status") != "ok" or r.get("linear") is None:
            continue
        groups.setdefault((key["run"], key["evaluation"], key["what"], key["round"]), []).append(r)
    rows = list(results.get("rows", {}).values())
    refs = round_references(results)
    out: Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]] = {}
    for (run, ev, what, k), rs in sorted(groups.items()):
        m, sd, n = _mean_std([100 * r["linear"] for r in rs])
        dens, _, _ = _mean_std([r.get("density_online") for r in rs])
        rid = rs[0]["id"]
        tid = refs[rid][1]
        vs = None if tid is None else stats.paired(stats.by_seed(rows, rid), stats.by_seed(rows, tid))
        out.setdefault(run, {}).setdefault(ev, {}).setdefault(what, []).append(
            {"round": k, "density": dens, "mean": m, "std": sd, "n": n, "vs_ticket": vs})
    return out


def plot_rounds(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """Top-1 vs density of the IMP tickets and their controls (:func:`rounds_curves`): one panel per evaluation
    (linear probe of the self-supervised features; re-trained on labels), density on a log axis decreasing to the
    right (the lottery-ticket plots' convention), error bars = std over seeds. None when the suite has no rounds
    rows."""
    curves = rounds_curves(results)
    if not curves:
        return None
    digest = _rounds_digest(results, curves)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [ev for ev in ("linear", RETRAIN) if any(ev in c for c in curves.values())]
    titles = {"linear": "linear probe of the self-supervised features", RETRAIN: "re-trained on labels"}
    fig, axes = plt.subplots(1, len(evals), figsize=(5.2 * len(evals), 4.2), squeeze=False)
    dens_ticks = set()
    for ax, ev in zip(axes[0], evals):
        series = [(run, what, pts) for run, by_ev in curves.items()
                  for what, pts in sorted(by_ev.get(ev, {}).items(), key=lambda kv: kv[0] != "ticket")]
        for i, (run, what, pts) in enumerate(series):
            dens_ticks.update(round(p["density"], 3) for p in pts)
            dodge = 1.012 ** (i - (len(series) - 1) / 2)     # error bars at one density side by side
            xs = [p["density"] * dodge for p in pts]
            label = what if len(curves) == 1 else f"{run}: {what}"
            ax.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] or 0 for p in pts], marker="o",
                        ms=4, capsize=3, lw=1.6 if what == "ticket" else 1.1, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("density (share of prunable weights kept)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(titles[ev], fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    for ax in axes[0]:
        ticks = sorted(dens_ticks, reverse=True)
        ax.set_xticks(ticks)
        ax.set_xticks([], minor=True)
        ax.set_xticklabels([f"{t:.2f}" for t in ticks], fontsize=7)
        ax.set_xlim(max(ticks) * 1.08, min(ticks) / 1.08)
    meta = results.get("meta", {})
    fig.suptitle(f"{meta.get('suite')}: tickets vs controls, {meta.get('data')} at {meta.get('image_size')} px, "
                 "mean ± std over seeds", fontsize=9)
    from solo_sparse.tools.report import _save

    return _save(fig, path, digest)


#: enters the rounds plot's digest (:func:`rounds_plot_digest`): bump it with any change to how :func:`plot_rounds`
#: draws, so that --update-docs redraws every rounds plot and the docs-current test fails until they are
ROUNDS_PLOT_VERSION = 1


def rounds_plot_digest(results: Dict[str, Any]) -> Optional[str]:
    """The data digest :func:`plot_rounds` saves in its PNG for ``results``, None when it draws nothing."""
    curves = rounds_curves(results)
    return _rounds_digest(results, curves) if curves else None


def _rounds_digest(results: Dict[str, Any], curves: Dict[str, Any]) -> str:
    """What the rounds plot shows: its title's fields and each curve's points (density, mean, std), not the paired
    statistics the curves also carry (not drawn)."""
    from solo_sparse.tools.report import data_digest

    meta = results.get("meta", {})
    shown = {run: {ev: {what: [[p["density"], p["mean"], p["std"]] for p in pts] for what, pts in by_what.items()}
                   for ev, by_what in by_ev.items()} for run, by_ev in curves.items()}
    return data_digest([ROUNDS_PLOT_VERSION, meta.get("suite"), meta.get("data"), meta.get("image_size"), shown])


#: enters the claims plot's digest (:func:`claims_plot_digest`): bump it with any change to how :func:`plot_claims`
#: draws, so that --update-docs redraws every suite's plot and the docs-current test fails until they are
CLAIMS_PLOT_VERSION = 1


def claims_forest(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The suite's difference claims with at least 2 paired seeds, as a forest plot draws them: ``label`` (the
    claim, shortened, with the seed count below :data:`~solo_sparse.tools.stats.MIN_SEEDS`), ``diffs`` (per seed),
    ``mean``, ``ci`` (95%), ``family`` (the Bonferroni interval, None outside a family), ``margin``, ``verdict``.
    Bound claims (on a value or a ratio, another scale) are left out."""
    out = []
    for c in stats.claim_rows(results):
        p = c["paired"]
        if stats.bounded(c) is not None or p is None or p["n"] < 2:
            continue
        tags = " [post hoc]" if c.get("post_hoc") else ""
        tags += f" ({p['n']} seeds)" if p["n"] < stats.MIN_SEEDS else ""
        label = "\n".join(textwrap.wrap(c["claim"], 64, max_lines=3, placeholder=" …")) + tags
        out.append({"label": label, "n": p["n"], "metric": c.get("metric") or "linear", "diffs": p["diffs"],
                    "mean": p["mean"], "ci": (p["lo"], p["hi"]),
                    "family": (p["family_lo"], p["family_hi"]) if p.get("m", 1) > 1 else None,
                    "margin": c["margin"], "verdict": c["verdict"]})
    return out


def plot_claims(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """A forest plot of the suite's difference claims (:func:`claims_forest`), one line each, top to bottom in the
    suite's order: per-seed differences (circles), the mean (diamond), its 95% interval (thick), the family's
    Bonferroni interval (thin, clipped at the axes), the claim's margin (red tick); coloured by verdict. None when no
    claim has 2 paired seeds."""
    rows = claims_forest(results)
    if not rows:
        return None
    digest = _claims_digest(results, rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"reproduced": "tab:green", "not reproduced": "tab:red"}
    fig, ax = plt.subplots(figsize=(9.5, 0.62 * len(rows) + 1.4))
    xs = []
    for i, r in enumerate(rows):
        y, col = len(rows) - 1 - i, colour.get(r["verdict"], "0.45")
        if r["family"]:
            ax.plot(r["family"], [y, y], color=col, lw=1.0, alpha=0.7)
        ax.plot(r["ci"], [y, y], color=col, lw=4.5, solid_capstyle="butt")
        ax.plot(r["diffs"], [y] * len(r["diffs"]), "o", ms=3.5, mfc="none", mec="k", mew=0.8)
        ax.plot([r["mean"]], [y], "D", ms=5, color=col, mec="k", mew=0.5)
        ax.plot([r["margin"]] * 2, [y - 0.38, y + 0.38], color="tab:red", lw=1.6)
        if r["n"] >= stats.MIN_SEEDS or all(q["n"] < stats.MIN_SEEDS for q in rows):   # 2-seed bars are clipped
            xs += [*r["ci"], *r["diffs"], r["margin"]]
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["label"] for r in reversed(rows)], fontsize=7)
    ax.axvline(0.0, color="0.75", lw=0.8, zorder=0)
    ax.grid(axis="x", alpha=0.3)
    units = "points" if all(r["metric"] in ("linear", "knn20", "knn1") for r in rows) else "each claim's metric"
    ax.set_xlabel(f"a − b ({units}), paired by seed: ○ per seed, ◆ mean, thick: 95% interval, thin: family interval, "
                  "red tick: the margin\ngreen reproduced, red not reproduced, grey not decided; bars of claims "
                  "below 3 seeds may be clipped", fontsize=7)
    ax.set_title(f"{results.get('meta', {}).get('suite')}: its claims' paired differences (difference claims; bounds "
                 "are in the table)", fontsize=9)
    from solo_sparse.tools.report import _save

    return _save(fig, path, digest)


def claims_plot_digest(results: Dict[str, Any]) -> Optional[str]:
    """The data digest :func:`plot_claims` saves in its PNG for ``results``, None when it draws nothing."""
    rows = claims_forest(results)
    return _claims_digest(results, rows) if rows else None


def _claims_digest(results: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    from solo_sparse.tools.report import data_digest

    return data_digest([CLAIMS_PLOT_VERSION, results.get("meta", {}).get("suite"), rows])


def plot_monitors(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """The collapse/momentum monitor of every run that has one (seed 0, else the lowest seed)."""
    from solo_sparse.tools.report import plot_monitor

    best: Dict[str, Dict[str, Any]] = {}
    for row in results.get("rows", {}).values():
        if row.get("monitor") and (row["id"] not in best or row["seed"] < best[row["id"]]["seed"]):
            best[row["id"]] = row
    meta = results.get("meta", {})
    return plot_monitor({f"{k} (seed {r['seed']})": r["monitor"] for k, r in sorted(best.items())}, path,
                        f"{meta.get('suite')}: collapse / momentum monitor")


def with_current_claims(res: Dict[str, Any], results_path: Path) -> Dict[str, Any]:
    """``res`` with the claims its suite file declares now (``meta.suite_file``, looked up under the current
    directory, then under the repository the results file sits in: ``<repo>/results/<suite>/results.json``), so that
    a claim edited in the YAML — its wording, its margin, its family — reaches the docs without re-running the suite
    (a bench run saves the claims it was started with). The results file is not rewritten: a suite may be running.
    Unchanged when the suite file is not found."""
    from solo_sparse.tools.bench.suite import Suite

    rel = (res.get("meta") or {}).get("suite_file")
    if not rel:
        return res
    here = Path(results_path).resolve()
    for root in (Path.cwd(), *here.parents[2:3]):
        f = root / rel
        if f.is_file():
            return {**res, "meta": {**res["meta"], "claims": Suite.load(f).claims}}
    return res


def update_docs(results_paths: Sequence[Path], docs: Sequence[Path]) -> List[Path]:
    """Rewrite ``<!-- bench:<suite> -->`` ... ``<!-- /bench:<suite> -->`` blocks of ``docs`` with the tables of
    the suites' results.json (the README's result tables are generated, never typed), and re-render each given
    results file's markdown twin (``results.json`` -> ``results.md``, what a suite's own bench run writes; another
    name ``X.json`` -> ``X.md``), so that a renderer change reaches every suite, not only the one that ran last.
    Each results file's claims forest plot (``<suite>-claims.png`` beside it, :func:`plot_claims`) and IMP rounds
    plot (``<suite>-rounds.png``, :func:`plot_rounds`) is redrawn when the data it shows changed (the digest kept in
    the PNG, :func:`~solo_sparse.tools.report.png_data_digest`; a PNG drawn from the same data is left as it is,
    whatever matplotlib built its bytes), and removed when nothing is left to draw. Returns the files that changed:
    the results.md first, in the order of ``results_paths``, then the plots, then the docs."""
    tables: Dict[str, str] = {}
    pages: Dict[Path, str] = {}
    seen: Dict[str, Path] = {}
    plots: List[Tuple[Dict[str, Any], str, Path]] = []
    changed: List[Path] = []
    for p in results_paths:
        if not Path(p).is_file():
            raise ConfigError(f"{p}: no such results file")
        res = json.loads(Path(p).read_text())
        suite = (res.get("meta") or {}).get("suite") if isinstance(res, dict) else None
        if not suite or "rows" not in res:
            print(f"skipped {p}: not a bench results file (no meta.suite / rows)", flush=True)
            continue
        if suite in seen:
            raise ConfigError(f"{seen[suite]} and {p} are both results of suite {suite!r}: their doc blocks would "
                              "overwrite each other; give one (e.g. the suite's own folder, not a --host copy)")
        seen[suite] = Path(p)
        res = with_current_claims(res, Path(p))
        plots += [(res, kind, Path(p).parent / f"{suite}-{kind}.png") for kind in ("claims", "rounds")]
        rendered = to_markdown(res)
        pages[Path(p).with_suffix(".md")] = rendered     # results.json -> results.md, as a bench run writes it
        tables[f"bench:{suite}"] = rendered
        tables[f"bench-regime:{suite}"] = regime_markdown(res)
        tables[f"bench-claims:{suite}"] = stats.claims_markdown([res])
    for d in docs:
        if not Path(d).is_file():
            raise ConfigError(f"{d}: no such document to update (--update-docs takes existing markdown files)")
    # every input is checked before anything is written
    for md, rendered in pages.items():
        if not md.is_file() or md.read_text() != rendered:
            write_atomic(md, rendered)
            changed.append(md)
    # the claims' forest plot follows the claims the suite file declares now; each plot, the data it shows
    kinds = {"claims": (claims_plot_digest, plot_claims), "rounds": (rounds_plot_digest, plot_rounds)}
    for res, kind, png in plots:
        digest, draw = kinds[kind]
        want = digest(res)
        if want is None:
            if png.is_file():
                png.unlink()                # nothing to draw any more: no stale picture left for the docs to show
                changed.append(png)
            continue
        if png_data_digest(png) == want:    # drawn from these data already: not redrawn (the bytes depend on the
            continue                        # matplotlib build, a redraw elsewhere would only churn the file)
        try:
            draw(res, png)
        except ImportError:                 # matplotlib is an extra: the stale plot is still reported
            pass
        changed.append(png)
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

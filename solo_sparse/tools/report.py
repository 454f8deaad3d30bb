"""``solo-sparse report``: PNG plots of a training run, a zoo entry or the whole zoo.

* run directory (a solo-learn checkpoint dir or anything holding Lightning's ``metrics.csv``):
  ``density_schedule.png`` (online/momentum density and the schedule's target over steps, CSI
  indicator on a second axis when logged), ``layer_density.png`` (per-layer density of the newest
  checkpoint's masks), ``gate_sparsity.png`` (per-layer gate / conditional sparsity logged at epoch
  ends by the gating plugins).
  ``csi.png`` (the CSI indicator over steps with the Δs line and the trigger step, from ``metrics.csv`` or
  the plugin's stderr lines in ``train.log``).
* zoo entry: ``<entry>_layer_density.png`` (masks) — gated entries have no static masks.
* ``zoo``: ``zoo_accuracy_flops.png``, linear-probe accuracy vs FLOPs ratio of every entry.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from solo_sparse.core import events
from solo_sparse.core.files import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run: Path) -> Dict[str, List[tuple]]:
    """{metric: [(step, value), ...]} sorted by step, merged over every ``metrics.csv`` under ``run``
    (a resumed or restarted run has one per Lightning version): where two files log the same metric at
    the same step, the newest file wins, so a killed attempt's rows do not double the curve."""
    merged: Dict[str, Dict[int, float]] = {}
    files = sorted(Path(run).rglob("metrics.csv"), key=lambda f: (f.stat().st_mtime, str(f)))
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                if not step:
                    continue
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    try:
                        merged.setdefault(k, {})[int(float(step))] = float(v)
                    except ValueError:
                        continue
    return {k: sorted(v.items()) for k, v in merged.items()}


def read_csi(run: Path) -> Dict[str, object]:
    """The CSI curve of a run: ``{"steps", "I", "r", "gap", "trigger_step", "timed_out"}`` from Lightning's
    ``metrics.csv`` or from the one-line CSI reports the plugin prints on stderr (:mod:`solo_sparse.tools.runner`
    keeps that output in ``train.log``), whichever has more checks (the CSV logger samples every
    ``log_every_n_steps``-th step; runs without a logger have only the reports). Empty when the run has no CSI."""
    run = Path(run)
    if not run.exists():
        return {}
    m = read_metrics(run)
    from_csv: Dict[str, object] = {}
    if "solo_sparse/csi/I" in m:
        pts = m["solo_sparse/csi/I"]
        r = dict(m.get("solo_sparse/csi/r", []))
        gap = [v for _, v in m.get("solo_sparse/csi/gap", [])]
        trig = m.get("solo_sparse/csi/trigger_step")
        from_csv = {"steps": [s for s, _ in pts], "I": [v for _, v in pts], "r": [r.get(s) for s, _ in pts],
                    "gap": gap[-1] if gap else None, "trigger_step": int(trig[-1][1]) if trig else None,
                    "timed_out": bool(m.get("solo_sparse/csi/timed_out", [(0, 0.0)])[-1][1])}
    from_log = _read_csi_log(run)
    # Lightning's CSV logger keeps only every log_every_n_steps-th step; the plugin's one-line reports have
    # every check: the source with more checks wins, the other fills the trigger it lacks
    best, other = (from_log, from_csv) if len(from_log.get("steps", [])) > len(from_csv.get("steps", [])) \
        else (from_csv, from_log)
    if not best:
        return other
    if best.get("trigger_step") is None and other.get("trigger_step") is not None:
        best = {**best, "trigger_step": other["trigger_step"], "timed_out": other["timed_out"]}
    return best


def _read_csi_log(run: Path) -> Dict[str, object]:
    """The CSI curve from the plugin's ``csi`` / ``schedule_start`` events in the run's ``*.log`` files
    (:mod:`solo_sparse.core.events`; the last attempt's value wins at a repeated step)."""
    out: Dict[str, object] = {"steps": [], "I": [], "r": [], "gap": None, "trigger_step": None, "timed_out": False}
    checks: Dict[int, tuple] = {}
    for ev in events.read(events.log_files(run)):
        if ev.kind == "csi":
            checks[ev.at] = (ev.values["I"], ev.values["r"])
            if ev.values["gap"] is not None:
                out["gap"] = ev.values["gap"]
        elif ev.kind == "schedule_start":
            out["trigger_step"] = ev.at
            out["timed_out"] = ev.values["cause"] != "CSI fired"
    for step in sorted(checks):
        out["steps"].append(step)
        out["I"].append(checks[step][0])
        out["r"].append(checks[step][1])
    return out if out["steps"] or out["trigger_step"] is not None else {}


def read_monitor(run: Path) -> Dict[str, object]:
    """The collapse/momentum monitor of a gated run (:class:`solo_sparse.families.gating.PairMonitor`):
    ``{"epochs", "pos", "neg"}`` (mean cosine of positive and of random pairs per epoch) and
    ``{"probe_steps", "online_momentum_cos", "key_drift_cos"}`` (the fixed-batch probe), read from the one-line
    reports in the run's logs (every run has them; a metrics.csv only when a logger ran). Empty when the run
    has no monitor."""
    run = Path(run)
    out: Dict[str, list] = {"epochs": [], "pos": [], "neg": [], "shift": [], "probe_steps": [],
                            "online_momentum_cos": [], "key_drift_cos": []}
    if not run.exists():
        return {}
    for ev in events.read(events.log_files(run, by="name")):
        if ev.kind == "pairs":
            out["epochs"].append(ev.at)
            out["pos"].append(ev.values["positives"])
            out["neg"].append(ev.values["random"])
            out["shift"].append(ev.values["shift"])
        elif ev.kind == "probe":
            out["probe_steps"].append(ev.at)
            out["online_momentum_cos"].append(ev.values["online_momentum_cos"])
            out["key_drift_cos"].append(ev.values["key_drift_cos"])
    return out if out["epochs"] or out["probe_steps"] else {}


#: the PNG text key holding the digest of the data a plot was drawn from (:func:`data_digest`)
DATA_KEY = "solo-sparse data"


def data_digest(data) -> str:
    """A short sha256 of ``data`` as canonical JSON (floats rounded to 9 significant digits): what a plot shows,
    independent of the matplotlib build and its fonts that make the PNG's bytes differ from one machine to another."""
    import hashlib

    def canon(x):
        if isinstance(x, float):
            return float(f"{x:.9g}")
        if isinstance(x, dict):
            return {str(k): canon(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [canon(v) for v in x]
        return x

    return hashlib.sha256(json.dumps(canon(data), sort_keys=True).encode()).hexdigest()[:16]


def png_data_digest(path: Path) -> Optional[str]:
    """The :data:`DATA_KEY` text a plot was saved with (:func:`_save`'s ``digest``), None when the file is missing,
    not a PNG or has none. Read from the PNG's ``tEXt`` chunks with the standard library."""
    import struct

    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(raw):
        n, kind = struct.unpack(">I4s", raw[i:i + 8])
        if kind == b"tEXt":
            key, _, value = raw[i + 8:i + 8 + n].partition(b"\0")
            if key.decode("latin-1") == DATA_KEY:
                return value.decode("latin-1")
        if kind == b"IEND":
            break
        i += 12 + n
    return None


def _save(fig, path: Path, digest: Optional[str] = None) -> Path:
    """Lay out, write (120 dpi, parent folders made) and close a figure; its path. ``digest``: the
    :func:`data_digest` of what it shows, kept in the PNG (:func:`png_data_digest`) so that a check can tell a stale
    picture from a current one without comparing bytes."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, **({"metadata": {DATA_KEY: digest}} if digest else {}))
    _plt().close(fig)
    return path


def plot_monitor(rows: Mapping[str, Mapping[str, object]], path: Path, title: str) -> Optional[Path]:
    """Per run: the positive-minus-random pair cosine per epoch (left; near 0 = collapse) and the agreement of
    the online and momentum encoders on a fixed batch (right). ``rows``: label -> :func:`read_monitor` dict."""
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return None
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    for label, m in rows.items():
        if m.get("epochs"):
            a.plot(m["epochs"], [p - n for p, n in zip(m["pos"], m["neg"])], marker=".", label=label)
            sh = [(e, v) for e, v in zip(m["epochs"], m.get("shift") or []) if v is not None]
            if sh:
                c.plot([e for e, _ in sh], [v for _, v in sh], marker=".", label=label)
        if m.get("probe_steps"):
            b.plot(m["probe_steps"], m["online_momentum_cos"], marker=".", label=label)
    a.axhline(0.05, color="r", ls=":", lw=1, label="collapse warning (0.05)")
    a.set_xlabel("epoch")
    a.set_ylabel("cos(positive pair) - cos(random pair)")
    a.set_title("pair margin of the online features", fontsize=9)
    b.set_xlabel("optimizer step")
    b.set_ylabel("cos(online, momentum) on a fixed batch")
    b.set_title("do the two encoders compute the same function?", fontsize=9)
    c.set_xlabel("epoch")
    c.set_ylabel("1 - cos(f(x), f(x shifted 1 px))")
    c.set_yscale("log")
    c.set_title("shift sensitivity of the eval path (dense ~0.001)", fontsize=9)
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_csi(curve: Mapping[str, object], path: Path, title: str, gap: Optional[float] = None) -> Optional[Path]:
    """CSI indicator I (and r) over optimizer steps, the Δs line I would reach when the pseudo masks are
    nested, and the trigger step."""
    if not curve or not curve.get("steps"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(curve["steps"], curve["I"], "k.-", label="I = mean(M_online xor M_momentum)")
    g = gap if gap is not None else curve.get("gap")
    if g is not None:
        ax.axhline(g, color="tab:blue", ls="--", lw=1, label=f"Δs = {g:.3f} (nested pseudo masks)")
    if curve.get("trigger_step") is not None:
        ax.axvline(curve["trigger_step"], color="tab:red", lw=1,
                   label=f"schedule starts, step {curve['trigger_step']}"
                   + (" (timeout)" if curve.get("timed_out") else " (CSI)"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("CSI indicator I")
    if any(v is not None for v in curve.get("r", [])):
        ax2 = ax.twinx()
        ax2.plot(curve["steps"], [v if v is not None else float("nan") for v in curve["r"]], color="tab:orange",
                 lw=1, alpha=0.8, label="r = share of the online pseudo mask outside the momentum one")
        ax2.set_ylabel("r", color="tab:orange")
        ax2.legend(loc="lower right", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_layer_density(masks: Mapping[str, torch.Tensor], path: Path, title: str) -> Optional[Path]:
    if not masks:
        return None
    plt = _plt()
    names = list(masks)
    dens = [float(masks[n].float().mean()) for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.6))
    ax.bar(range(len(names)), dens, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(".weight", "").replace("backbone.", "") for n in names], rotation=70, fontsize=7)
    ax.set_ylabel("kept weights")
    ax.set_ylim(0, 1.05)
    kept = sum(int(m.sum()) for m in masks.values())
    tot = sum(m.numel() for m in masks.values())
    ax.set_title(f"{title} — overall density {kept / tot:.3f}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_run(run: Path, out: Path) -> List[Path]:
    from solo_sparse.engine.maskio import split_state
    from solo_sparse.tools.evaluate import backbone_state
    from solo_sparse.tools.inputs import read_checkpoint
    from solo_sparse.tools.runner import newest_checkpoint

    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    m = read_metrics(run)
    dens = {k: v for k, v in m.items() if k in ("solo_sparse/density/online", "solo_sparse/density/momentum",
                                                 "solo_sparse/target_density")}
    if dens:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, pts in dens.items():
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("/", 1)[1],
                    ls="--" if "target" in k else "-")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("density")
        ax.grid(alpha=0.3)
        if "solo_sparse/csi/I" in m:
            ax2 = ax.twinx()
            pts = sorted(m["solo_sparse/csi/I"])
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "k:", marker=".", label="CSI I")
            ax2.set_ylabel("CSI indicator I")
            ax2.legend(loc="lower left", fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"density schedule — {run.name}")
        written.append(_save(fig, out / "density_schedule.png"))
    p = plot_csi(read_csi(run), out / "csi.png", f"contrastive sparsification indicator — {run.name}")
    if p:
        written.append(p)
    p = plot_monitor({run.name: read_monitor(run)}, out / "monitor.png", f"collapse / momentum monitor — {run.name}")
    if p:
        written.append(p)
    gate = {k: v for k, v in m.items() if k.startswith(("solo_sparse/gate_density/", "solo_sparse/sparsity/a1/",
                                                        "solo_sparse/sparsity/a2/"))}
    if gate:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(gate)), 3.8))
        names = sorted(gate)
        last = [sorted(gate[k])[-1][1] for k in names]
        ax.bar(range(len(names)), last)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([k.split("/", 2)[-1] for k in names], rotation=70, fontsize=6)
        ax.set_ylabel("last epoch value")
        ax.set_title(f"per-layer gate density / conditional sparsity — {run.name}")
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(fig, out / "gate_sparsity.png"))
    try:
        ck = newest_checkpoint(run)
    except (FileNotFoundError, RuntimeError, ValueError):
        ck = None
    if ck is not None:
        masks = split_state(backbone_state(read_checkpoint(ck)))[1]
        p = plot_layer_density(masks, out / "layer_density.png", f"{run.name} (online encoder)")
        if p:
            written.append(p)
    if not written:
        raise FileNotFoundError(f"{run}: no metrics.csv with solo_sparse metrics and no checkpoint with masks found")
    return written


def plot_evaluation(path: Path, out: Path) -> Path:
    """Linear probe vs MACs ratio of the backbones one ``solo-sparse evaluate --out`` run measured (gated
    backbones at the MACs their gates executed): checkpoints as labelled points, random-init references as grey
    crosses, the dense random-init accuracy as a dashed line (the floor SSL features must clear)."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: not an evaluation file (a JSON list of rows written by solo-sparse evaluate --out)")
    missing = [i for i, r in enumerate(rows) if r.get("linear") is None or r.get("macs_ratio") is None]
    if missing:
        raise ValueError(f"{path}: row {missing[0]} lacks 'linear' or 'macs_ratio' (written by an older "
                         f"solo-sparse evaluate? run it again)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in rows:
        x, y = float(r["macs_ratio"]), 100 * float(r["linear"])
        name = r.get("name") or str(r.get("backbone", "?"))[:40]
        if r.get("kind") == "random-init":
            ax.scatter(x, y, marker="x", c="grey")
            if float(r.get("density", 0.0)) >= 1.0:
                ax.axhline(y, ls="--", c="grey", lw=1, label=f"random init ({y:.2f})")
        else:
            ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.35, y=0.15)
    ax.set_xlabel("MACs vs dense (measured: gated backbones on their gates)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(f"solo-sparse evaluate: {Path(path).name}")
    ax.grid(alpha=0.3)
    return _save(fig, Path(out) / f"{Path(path).stem}.png")


def plot_zoo(out: Path, root: Optional[Path] = None, reference: Optional[float] = None) -> Path:
    """Linear accuracy vs FLOPs ratio of the zoo's entries; ``reference``: a random-init linear accuracy
    drawn as a dashed line (the floor SSL features must clear)."""
    from solo_sparse import zoo

    entries = zoo.list_entries(root)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if reference is not None:
        ax.axhline(reference, ls="--", c="grey", lw=1, label=f"random init ({reference:.2f})")
        ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.35, y=0.15)
    for e in entries:
        x, y = e.get("flops_ratio"), (e.get("accuracy") or {}).get("linear")
        if x is None or y is None:
            continue
        ax.scatter(x, y)
        ax.annotate(e["name"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs vs dense (evaluated path, whole network)")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title("solo-sparse zoo")
    ax.grid(alpha=0.3)
    return _save(fig, Path(out) / "zoo_accuracy_flops.png")

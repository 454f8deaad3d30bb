"""``solo-sparse report``: PNG plots of a training run, a zoo entry or the whole zoo.

* run directory (a solo-learn checkpoint dir or anything holding Lightning's ``metrics.csv``):
  ``density_schedule.png`` (online/momentum density and the schedule's target over steps, CSI
  indicator on a second axis when logged), ``layer_density.png`` (per-layer density of the newest
  checkpoint's masks), ``gate_sparsity.png`` (per-layer gate / conditional sparsity logged at epoch
  ends by the gating plugins).
* zoo entry: ``<entry>_layer_density.png`` (masks) — gated entries have no static masks.
* ``zoo``: ``zoo_accuracy_flops.png``, linear-probe accuracy vs FLOPs ratio of every entry.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run: Path) -> Dict[str, List[tuple]]:
    """{metric: [(step, value), ...]} merged over every ``metrics.csv`` under ``run``."""
    out: Dict[str, List[tuple]] = {}
    for f in sorted(Path(run).rglob("metrics.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                if not step:
                    continue
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None):
                        continue
                    try:
                        out.setdefault(k, []).append((int(float(step)), float(v)))
                    except ValueError:
                        continue
    return out


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        fig.tight_layout()
        p = out / "density_schedule.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
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
        fig.tight_layout()
        p = out / "gate_sparsity.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
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
    fig.tight_layout()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = out / "zoo_accuracy_flops.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p

#!/usr/bin/env python
"""IMP with self-supervision on Fashion-MNIST: winning tickets vs random re-init vs random masks.

1. ``solo-sparse imp`` (reset=rewind) over solo-learn's unchanged main_pretrain.py: R + 1 rounds,
   each evaluated (kNN k=20/1, linear probe on frozen features) — the *winning ticket* curve;
2. for every pruned round k: the same masks trained from a fresh random init (*random re-init*)
   and layer-wise permuted masks from a fresh init (*random masks*), each one main_pretrain.py run
   with the ``imp`` plugin, evaluated the same way;
3. label re-training (``solo_sparse.tools.retrain``): SSL masks with their rewind init vs random masks
   with a fresh init, at every density;
4. a random-init row; results.json, results.md and imp_curves.png in --out.
Finished parts are skipped when re-run (the IMP driver resumes its own rounds).

    python scripts/imp_benchmark.py --data data/fmnist5k --out results/fmnist_imp \\
        --config scripts/configs/fmnist/mocov2plus_imp.yaml --rounds 3 --rate 0.55
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from solo_sparse.engine.imp import load_state
from solo_sparse.engine.maskio import load_masks, permuted_masks, save_masks
from solo_sparse.tools.evaluate import build_resnet, evaluate_backbone, load_backbone, load_images
from solo_sparse.tools.imp_driver import IMPDriver, IMPRun
from solo_sparse.tools.retrain import retrain_supervised
from solo_sparse.tools.runner import run_pretrain, solo_learn_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--rewind", default="1ep")
    ap.add_argument("--retrain-epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--solo-learn", default=None)
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    res_p = out / "results.json"
    res = json.loads(res_p.read_text()) if res_p.exists() else {}
    res.setdefault("meta", {})
    res["meta"].update({"config": args.config, "rounds": args.rounds, "rate": args.rate, "rewind": args.rewind,
                        "retrain_epochs": args.retrain_epochs, "data": str(args.data), "torch": torch.__version__,
                        "command": " ".join(sys.argv)})
    for k in ("winning_ticket", "random_reinit", "random_masks", "retrain_ssl_masks", "retrain_random_masks"):
        res.setdefault(k, {})

    def save():
        res_p.write_text(json.dumps(res, indent=2))
        (out / "results.md").write_text(to_markdown(res))

    train = load_images(str(data / "train"), args.size)
    test = load_images(str(data / "val"), args.size)
    if "random_init" not in res:
        torch.manual_seed(0)
        res["random_init"] = evaluate_backbone(build_resnet("resnet18").eval(), train, test)
        save()

    # 1. IMP (winning tickets)
    solo_dir = solo_learn_dir(args.solo_learn)
    imp_out = out / "imp"
    run = IMPRun(config=args.config, out=str(imp_out), rounds=args.rounds, rate=args.rate, rewind=args.rewind,
                 overrides=[f"++data.train_path={data / 'train'}", *args.overrides], eval_data=str(data), eval_size=args.size)
    drv = IMPDriver(run, solo_dir, "imp")
    drv.evaluate = lambda ck: evaluate_backbone(load_backbone(str(ck))[0], train, test)  # reuse loaded data
    st = drv.run_all()
    for k, r in st["rounds"].items():
        res["winning_ticket"][k] = {"density": r["density"], **r["eval"], "train_seconds": r.get("train_seconds")}
    save()

    # 2. controls: same masks from a fresh init; permuted masks from a fresh init
    for k in range(1, args.rounds + 1):
        masks_k = drv.masks_path(k)
        rnd = out / "controls" / f"random_masks_{k}.safetensors"
        if not rnd.exists():
            save_masks(rnd, permuted_masks(load_masks(masks_k)[0], seed=k), control="layer-wise permutation",
                       source=str(masks_k))
        for kind, mfile in (("random_reinit", masks_k), ("random_masks", rnd)):
            if str(k) in res[kind]:
                continue
            d = out / "controls" / f"{kind}_{k}"
            d.mkdir(parents=True, exist_ok=True)
            run = run_pretrain(args.config, d, name=f"{kind}-{k}", train_path=data / "train", solo_dir=solo_dir,
                               overrides=[f"++solo_sparse.masks='{mfile}'", f"++seed={100 + k}", *args.overrides])
            if not run.ok:
                raise SystemExit(f"{kind} {k}: main_pretrain.py failed ({run.error}); see {run.log}")
            net, info = load_backbone(str(run.checkpoint))
            res[kind][str(k)] = {"density": info["density"], **evaluate_backbone(net, train, test),
                                 "train_seconds": run.seconds, "command": run.command_line}
            print(f"[{kind} {k}] {res[kind][str(k)]}", flush=True)
            save()

    # 3. label re-training: SSL masks + rewind init vs random masks + fresh init
    rewind = load_state(drv.rewind_path)[0]
    for k in range(0, args.rounds + 1):
        if str(k) not in res["retrain_ssl_masks"]:
            m = load_masks(drv.masks_path(k))[0] if k else None
            res["retrain_ssl_masks"][str(k)] = retrain_supervised(m, rewind, train, test, epochs=args.retrain_epochs,
                                                                  seed=k, progress=True)
            print(f"[retrain ssl {k}] {res['retrain_ssl_masks'][str(k)]}", flush=True)
            save()
        if k and str(k) not in res["retrain_random_masks"]:
            m = load_masks(out / "controls" / f"random_masks_{k}.safetensors")[0]
            res["retrain_random_masks"][str(k)] = retrain_supervised(m, None, train, test, epochs=args.retrain_epochs,
                                                                     seed=k, progress=True)
            print(f"[retrain random {k}] {res['retrain_random_masks'][str(k)]}", flush=True)
            save()
    save()
    plot(res, out / "imp_curves.png")
    print((out / "results.md").read_text())
    return 0


def to_markdown(res) -> str:
    m = res.get("meta", {})
    lines = [f"IMP with self-supervision: `{m.get('config')}`, {m.get('rounds')} rounds at rate {m.get('rate')}, "
             f"rewind {m.get('rewind')}; label re-training {m.get('retrain_epochs')} epochs. Data `{m.get('data')}`.", ""]
    ri = res.get("random_init")
    lines += ["| backbone | density | kNN k=20 | kNN k=1 | linear probe |", "|---|---:|---:|---:|---:|"]
    if ri:
        lines.append(f"| random init (untrained) | 1.000 | {100 * ri['knn20']:.2f} | {100 * ri['knn1']:.2f} | {100 * ri['linear']:.2f} |")
    names = {"winning_ticket": "SSL-pruned, winning ticket (rewind)", "random_reinit": "SSL masks, random re-init",
             "random_masks": "random masks (permuted), random init"}
    for key, label in names.items():
        for k, r in sorted(res.get(key, {}).items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {label}, round {k} | {r['density']:.3f} | {100 * r['knn20']:.2f} | {100 * r['knn1']:.2f} | "
                         f"{100 * r['linear']:.2f} |")
    lines += ["", "| label re-training | density | top-1 |", "|---|---:|---:|"]
    for key, label in (("retrain_ssl_masks", "SSL mask + rewind init"), ("retrain_random_masks", "random mask + random init")):
        for k, r in sorted(res.get(key, {}).items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {label}, round {k} | {r['density']:.3f} | {100 * r['accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(res, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install solo-sparse[plots])")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, mk in (("winning_ticket", "SSL-pruned, winning ticket", "o-"),
                           ("random_reinit", "SSL masks, random re-init", "s--"),
                           ("random_masks", "random masks", "x:")):
        rows = sorted(res.get(key, {}).values(), key=lambda r: -r["density"])
        if rows:
            axes[0].plot([100 * r["density"] for r in rows], [100 * r["linear"] for r in rows], mk, label=label)
    if res.get("random_init"):
        axes[0].axhline(100 * res["random_init"]["linear"], color="grey", lw=1, label="random init, dense")
    axes[0].set(xscale="log", xlabel="remaining weights (%)", ylabel="linear probe top-1 (%)",
                title="pruned representation (frozen)")
    for key, label, mk in (("retrain_ssl_masks", "SSL mask + rewind init", "o-"),
                           ("retrain_random_masks", "random mask + random init", "x:")):
        rows = sorted(res.get(key, {}).values(), key=lambda r: -r["density"])
        if rows:
            axes[1].plot([100 * r["density"] for r in rows], [100 * r["accuracy"] for r in rows], mk, label=label)
    axes[1].set(xscale="log", xlabel="remaining weights (%)", ylabel="test top-1 (%)", title="label re-training")
    for ax in axes:
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Per-step training time of a solo-learn method with and without a solo-sparse plugin (CPU).

Builds the method from a plain solo-learn YAML and the wrapped method from the same YAML with the
plugin line (both composed by Hydra and parsed by solo-learn's ``parse_cfg``), then times
optimizer steps on fixed synthetic batches with Lightning, alternating the two models in blocks.
Steps where the plugin changed masks or evaluated CSI are excluded ("non-update steps").

    python scripts/step_time.py --dense scripts/configs/fmnist/byol.yaml \
        --sparse scripts/configs/fmnist/byol_synccp10.yaml --steps 60 --out results/step_time_synccp.json
    python scripts/step_time.py --dense scripts/configs/fmnist/simclr.yaml --sparse scripts/configs/fmnist/simclr.yaml \
        --overrides augmentations=grey64.yaml --sparse-overrides +solo_sparse=cdg --all-steps
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch


def build(cfg_path: Path, wrap: bool, overrides=()):
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS

    from solo_sparse.tools.cli import compose_config

    cfg = compose_config(cfg_path, overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.data.train_path = str(Path(__file__).resolve().parent)  # parse_cfg counts class folders; any dir works
    cfg = parse_cfg(cfg)
    cfg.data.num_classes = 10  # synthetic labels below
    cls = METHODS[cfg.method]
    if wrap:
        import solo_sparse

        cls = solo_sparse.wrap(cls)
    torch.manual_seed(0)
    return cls(cfg), cfg


class Timer:
    def __init__(self, model):
        import lightning.pytorch as pl

        outer = self
        self.times, self.flags = [], []

        class CB(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                outer._t = time.perf_counter()
                outer._state = getattr(pl_module, "solo_sparse_events", 0)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                outer.times.append(time.perf_counter() - outer._t)
                # a step that logged plugin metrics changed masks or evaluated CSI: not a steady-state step
                outer.flags.append(getattr(pl_module, "solo_sparse_events", 0) != outer._state)

        self.cb = CB()


def run(model, cfg, steps: int):
    import lightning.pytorch as pl

    n = cfg.optimizer.batch_size
    g = torch.Generator().manual_seed(0)
    size = cfg.augmentations[0].crop_size
    batches = [(torch.arange(n), [torch.randn(n, 3, size, size, generator=g) for _ in range(2)],
                torch.randint(0, 10, (n,), generator=g)) for _ in range(4)]
    data = [b for _ in range(steps // 4 + 1) for b in batches][:steps]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    loader = torch.utils.data.DataLoader(DS(), batch_size=None)
    t = Timer(model)
    # the config's precision (e.g. `precision=bf16-mixed`: CPU autocast to bfloat16, AMX where the CPU has it)
    tr = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[t.cb],
                    precision=str(cfg.get("precision", "32")))
    tr.fit(model, loader)
    return t.times, t.flags


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", required=True)
    ap.add_argument("--sparse", required=True)
    ap.add_argument("--steps", type=int, default=60, help="steps per block")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per model")
    ap.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of every block")
    ap.add_argument("--all-steps", action="store_true",
                    help="keep steps that logged plugin metrics (gating plugins log every step)")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of both configs")
    ap.add_argument("--sparse-overrides", nargs="*", default=[], help="Hydra overrides of the sparse config only")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                    help="a further wrapped model: its name and its overrides of the sparse config (repeatable; "
                         "every model is timed in each block, in turn)")
    ap.add_argument("--plain-variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                    help="a further plain (unwrapped) model: its name and its overrides of the dense config, e.g. "
                         "`--plain-variant dense-bf16 precision=bf16-mixed` (repeatable)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    names = [v[0] for v in args.variant + args.plain_variant]
    if len(set(names)) != len(names) or {"dense", "sparse"} & set(names):
        ap.error(f"--variant names {names}: each once, and not 'dense' or 'sparse' (the two built-in models)")
    models = [("dense", args.dense, False, []), ("sparse", args.sparse, True, args.sparse_overrides)]
    models += [(v[0], args.sparse, True, v[1:]) for v in args.variant]
    models += [(v[0], args.dense, False, v[1:]) for v in args.plain_variant]
    res = {m[0]: [] for m in models}
    raw = {m[0]: [] for m in models}
    update_steps = {m[0]: 0 for m in models}
    for b in range(args.blocks):
        for name, path, wrap, extra in models:
            model, cfg = build(Path(path), wrap, [*args.overrides, *extra])
            times, flags = run(model, cfg, args.steps)
            kept = [(i, t) for i, (t, f) in enumerate(zip(times, flags)) if i >= args.warmup and (args.all_steps or not f)]
            keep = [t for _, t in kept]
            res[name] += keep
            raw[name] += [[b, i, t] for i, t in kept]
            if wrap and not args.all_steps:
                update_steps[name] += sum(flags[args.warmup:])
            print(f"block {b} {name}: median {statistics.median(keep) * 1e3:.1f} ms, mean "
                  f"{statistics.fmean(keep) * 1e3:.1f} ms over {len(keep)} steps", flush=True)
    out = {
        "dense_median_s": statistics.median(res["dense"]), "sparse_median_s": statistics.median(res["sparse"]),
        # the mean is what an epoch costs where step costs vary by design (interloss's partial back-propagation
        # draws one depth per step); the median is robust to the odd slow step where they do not
        "dense_mean_s": statistics.fmean(res["dense"]), "sparse_mean_s": statistics.fmean(res["sparse"]),
        "n_dense": len(res["dense"]), "n_sparse": len(res["sparse"]),
        "excluded_update_steps": update_steps["sparse"],
        "dense": args.dense, "sparse": args.sparse, "threads": torch.get_num_threads(),
        "overrides": args.overrides, "sparse_overrides": args.sparse_overrides,
    }
    out["overhead"] = out["sparse_median_s"] / out["dense_median_s"]
    out["overhead_mean"] = out["sparse_mean_s"] / out["dense_mean_s"]
    if len(models) > 2:
        out["variants"] = {name: {"overrides": extra, "wrapped": wrap, "median_s": statistics.median(res[name]),
                                  "mean_s": statistics.fmean(res[name]), "n": len(res[name]),
                                  "excluded_update_steps": update_steps[name],
                                  "overhead": statistics.median(res[name]) / out["dense_median_s"],
                                  "overhead_mean": statistics.fmean(res[name]) / out["dense_mean_s"]}
                           for name, _, wrap, extra in models[2:]}
    out["steps"] = {"per_block": args.steps, "blocks": args.blocks, "warmup": args.warmup,
                    "times_s": raw}                    # [block, step index in its block, seconds] per model
    out["command"] = "python scripts/step_time.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(json.dumps({k: v for k, v in out.items() if k != "steps"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

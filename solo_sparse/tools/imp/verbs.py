"""The IMP plugin's command-line verbs (``solo-sparse imp``, ``permute-masks``, ``retrain``), contributed to
the CLI through :meth:`solo_sparse_plugins.imp.IMP.commands`."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

from solo_sparse.tools.inputs import IMAGE_SIZE, SEED, number

#: ``permute-masks --control``: global random (default) and the layer-wise permutation (ours)
CONTROLS = ("global", "layer-permutation")


def _args_imp(a: argparse.ArgumentParser) -> None:
    a.add_argument("--config", required=True, help="a solo-learn pre-training YAML (any method is the pretext)")
    a.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    a.add_argument("--rounds", type=number(int, 0, 100), default=5,
                   help="pruning rounds R (R + 1 trainings; final density (1-rate)^R)")
    a.add_argument("--rate", type=float, default=0.2, help="share of the remaining weights pruned per round")
    a.add_argument("--rewind", default="1ep", help="rewind point in round 0: steps or 'Nep' (reset=rewind)")
    a.add_argument("--reset", choices=("rewind", "random"), default="rewind")
    a.add_argument("--seed", type=SEED, default=None)
    a.add_argument("--eval-data", default=None, help="image folder (train/ val/): kNN + linear probe per round")
    a.add_argument("--input-size", type=IMAGE_SIZE, default=32)
    a.add_argument("--solo-learn", default=None, help="solo-learn checkout (default: next to the solo package)")
    a.add_argument("--keep", default=None,
                   help="folder for the chain's small state (masks bit-packed, densities, the rewind point's "
                        "sha256), written after every round: with it a chain continues on another machine, the "
                        "rewind point replayed there and checked bit for bit")
    a.add_argument("--rewind-tolerance", type=float, default=0.0,
                   help="accept a replayed rewind point that is not bit-identical when no tensor's L2 norm differs "
                        "by more than this relative amount (default 0: bit-identical only); the state records it")
    a.add_argument("overrides", nargs="*", help="extra Hydra overrides for every round (after --)")


def _args_permute(a: argparse.ArgumentParser) -> None:
    a.add_argument("source")
    a.add_argument("dest")
    a.add_argument("--seed", type=SEED, default=0)
    a.add_argument("--control", choices=CONTROLS, default="global",
                   help="global (default): the same total count of kept weights drawn uniformly over all layers "
                        "(global random pruning at the ticket's density; per-layer densities not kept); "
                        "layer-permutation: each layer's mask shuffled within the layer (per-layer densities kept; "
                        "our control, not the paper's)")


def _args_retrain(a: argparse.ArgumentParser) -> None:
    a.add_argument("--data", required=True)
    a.add_argument("--masks", default=None, help="mask file (none = dense)")
    a.add_argument("--init", default=None, help="state file (e.g. an IMP rewind point); none = random init")
    a.add_argument("--epochs", type=number(int, 1, 10000), default=5)
    a.add_argument("--lr", type=number(float, 0.0, 100.0, lo_open=True), default=0.05)
    a.add_argument("--seed", type=SEED, default=0)
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--input-size", type=IMAGE_SIZE, default=32)
    a.add_argument("--out", default=None)


def _cmd_imp(args) -> int:
    from solo_sparse.tools.imp.driver import IMPDriver, IMPRun
    from solo_sparse.tools.runner import solo_learn_dir

    run = IMPRun(config=args.config, out=args.out, rounds=args.rounds, rate=args.rate, rewind=args.rewind,
                 reset=args.reset, overrides=list(args.overrides or []), seed=args.seed, eval_data=args.eval_data,
                 eval_size=args.input_size, rewind_tolerance=args.rewind_tolerance)
    drv = IMPDriver(run, solo_learn_dir(args.solo_learn), args.plugin)
    t0 = time.time()
    keep, fp = None, None
    if args.keep:
        from pathlib import Path

        keep, fp = Path(args.keep), drv.state["fingerprint"]
        drv.restore(keep, fp)
    st = drv.run_all(on_round=None if keep is None else lambda k, ck: drv.carry(keep, fp))
    print(f"[imp] {args.rounds + 1} round(s) done in {(time.time() - t0) / 60:.1f} min; "
          f"state in {drv.out / 'imp.json'}")
    for k, r in sorted(st["rounds"].items(), key=lambda kv: int(kv[0])):
        acc = r.get("eval", {})
        print(f"  round {k}: density {r['density']:.4f}"
              + "".join(f"  {a} {100 * v:.2f}" for a, v in acc.items()))
    return 0


def _cmd_permute(args) -> int:
    from solo_sparse.core.config import ConfigError
    from solo_sparse.engine.maskio import density as total_density
    from solo_sparse.engine.maskio import global_random_masks, load_masks, permuted_masks, save_masks

    src, dest = Path(args.source), Path(args.dest)
    if dest.resolve() == src.resolve() or (dest.exists() and src.exists() and dest.samefile(src)):
        raise ConfigError(f"permute-masks: DEST {args.dest!r} is the SOURCE mask file; the control would overwrite "
                          "the masks it is a control of — give another file name")
    masks, meta = load_masks(args.source)
    if args.control == "global":
        out = global_random_masks(masks, seed=args.seed)
        what, same = "global random", "same total density as"
    elif args.control == "layer-permutation":
        out = permuted_masks(masks, seed=args.seed)
        what, same = "layer-wise permutation", "same per-layer densities as"
    else:                       # argparse refuses other names; a caller building args by hand gets the same line
        raise ConfigError(f"permute-masks --control={args.control!r}: allowed: {', '.join(CONTROLS)}")
    save_masks(args.dest, out, source=str(args.source), control=what, seed=args.seed)
    print(f"{args.dest}: {len(out)} layers, density {total_density(out):.4f} ({what}; {same} {args.source})")
    return 0


def _cmd_retrain(args) -> int:
    from solo_sparse.engine.imp import load_state
    from solo_sparse.engine.maskio import load_masks
    from solo_sparse.tools.evaluate import load_splits
    from solo_sparse.tools.retrain import retrain_supervised

    train, test = load_splits(args.data, args.input_size)
    masks = load_masks(args.masks)[0] if args.masks else None
    init = load_state(args.init)[0] if args.init else None
    res = retrain_supervised(masks, init, train, test, epochs=args.epochs, lr=args.lr, seed=args.seed,
                             name=args.backbone, progress=True)
    print(f"label re-training: top-1 {100 * res['accuracy']:.2f} at density {res['density']:.4f} "
          f"({args.epochs} epochs, init {'from ' + args.init if args.init else 'random'})")
    if args.out:
        from solo_sparse.core.files import write_atomic

        write_atomic(args.out, json.dumps(res, indent=2))
    return 0


def commands(plugin: str) -> Dict[str, Tuple[Callable, Callable, str]]:
    """The verbs for the fixed-mask plugin called ``plugin``: ``{verb: (add_arguments, run, help)}``; the
    round driver's verb is the plugin's name (``solo-sparse imp``)."""
    def add_imp(a):
        _args_imp(a)
        a.set_defaults(plugin=plugin)

    return {
        plugin: (add_imp, _cmd_imp, "iterative magnitude pruning with self-supervision over main_pretrain.py rounds"),
        "permute-masks": (_args_permute, _cmd_permute,
                          "mask controls of a ticket: global random (default) or the layer-wise permutation "
                          "(--control layer-permutation)"),
        "retrain": (_args_retrain, _cmd_retrain, "train a mask (+ init) on labels and report test accuracy"),
    }

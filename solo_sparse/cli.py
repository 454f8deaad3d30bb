"""``solo-sparse`` command line.

    solo-sparse plugins [--json]                 plugins, families, config keys with defaults
    solo-sparse flops CONFIG.yaml|CKPT [...]     dense vs effective MACs of a backbone
    solo-sparse sparsity CKPT                    per-layer densities of both encoders
    solo-sparse evaluate --data DIR [CKPT ...]   kNN + linear probe of backbones (no solo-learn needed)
    solo-sparse imp --config YAML --out DIR      iterative magnitude pruning over main_pretrain.py rounds
    solo-sparse permute-masks IN OUT             the random-mask control (layer-wise shuffled masks)
    solo-sparse retrain --data DIR --masks F     label re-training of a mask (+ init) on an image folder
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .config import ConfigError


def _cmd_plugins(args) -> int:
    from .registry import describe_plugins

    info = describe_plugins()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for p in info:
        print(f"{p['name']}: {p['description']}")
        print(f"  method families: {', '.join(p['families'])}"
              + (f" (refused: {', '.join(p['refused_methods'])})" if p["refused_methods"] else ""))
        print("  keys (solo_sparse.<key>, default):")
        for k, v in p["keys"].items():
            print(f"    {k}: {v!r}")
    return 0


def compose_config(path: Path):
    """Compose a solo-learn YAML the way its scripts do (Hydra, with the solo_sparse group visible)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(path.resolve().parent), version_base="1.2"):
            return compose(path.stem)
    finally:
        GlobalHydra.instance().clear()


def _backbone_from_config(path: Path):
    from omegaconf import OmegaConf

    from .evaluate import build_resnet

    cfg = compose_config(path)
    name = OmegaConf.select(cfg, "backbone.name", default="resnet18")
    if not str(name).startswith("resnet"):
        raise ConfigError(f"backbone.name={name!r}: solo-sparse flops builds torchvision ResNets only")
    cifar = OmegaConf.select(cfg, "data.dataset", default="") in ("cifar10", "cifar100")
    return cfg, build_resnet(str(name), cifar_stem=cifar)


def _cmd_flops(args) -> int:
    from .flops import count_macs

    path = Path(args.source)
    size = (1, 3, args.input_size, args.input_size)
    if path.suffix in (".yaml", ".yml"):
        from .density import allocate_masks
        from .plugin import ModelView
        from .registry import get_plugin
        from .sparsifier import ModuleGroup
        from omegaconf import OmegaConf

        cfg, net = _backbone_from_config(path)
        section = OmegaConf.to_container(cfg.get("solo_sparse", {}) or {}, resolve=True)
        what = "dense (no solo_sparse section)"
        if section:
            plugin = get_plugin(section.get("plugin", "gmp")).from_params(section)
            c = plugin.config
            final = getattr(c, "final_density", getattr(c, "density", None))
            if final is not None:
                plugin.setup(ModelView({"backbone": ModuleGroup("backbone", net)}, "shared"))
                sp = plugin.sparsifier
                sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, final, c.distribution,
                                            c.granularity, n=c.n, m=c.m, block=c.block))
                what = (f"{plugin.name} at final density {final} ({c.distribution}, {c.granularity}; "
                        "masks from random-init magnitudes)")
        rep = count_macs(net, size)
    else:
        from .evaluate import load_backbone

        net, info = load_backbone(str(path), args.backbone, cifar_stem=args.cifar_stem)
        rep = count_macs(net, size, from_weights=True)
        what = f"checkpoint, masked layers at density {info['density']:.4f}"
    if args.per_layer:
        print(rep.to_markdown())
    print(f"{path.name}: {what}")
    print(f"input {tuple(size)}: dense {rep.dense / 1e6:.2f} MMACs, effective {rep.effective / 1e6:.2f} MMACs, "
          f"ratio {rep.ratio:.4f} ({1 / max(rep.ratio, 1e-12):.2f}x fewer)")
    return 0


def _cmd_sparsity(args) -> int:
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    sd = ck.get("state_dict", ck)
    rows = {}
    for k, v in sd.items():
        if k.endswith(".weight_mask"):
            enc = "momentum" if k.startswith("momentum_") else "online"
            layer = k[len("momentum_"):] if enc == "momentum" else k
            rows.setdefault(layer[: -len(".weight_mask")], {})[enc] = (int(v.sum()), v.numel())
    if not rows:
        print(f"{args.checkpoint}: no weight masks (dense checkpoint)")
        return 0
    print("| layer | params | online density | momentum density |\n|---|---:|---:|---:|")
    tot = {"online": [0, 0], "momentum": [0, 0]}
    for layer, r in rows.items():
        cells = []
        for enc in ("online", "momentum"):
            if enc in r:
                kept, n = r[enc]
                tot[enc][0] += kept
                tot[enc][1] += n
                cells.append(f"{kept / n:.4f}")
            else:
                cells.append("-")
        print(f"| {layer} | {next(iter(r.values()))[1]} | {cells[0]} | {cells[1]} |")
    cells = [f"{t[0] / t[1]:.4f}" if t[1] else "-" for t in tot.values()]
    print(f"| **total** | {tot['online'][1]} | {cells[0]} | {cells[1]} |")
    if "solo_sparse" in ck:
        for name, st in ck["solo_sparse"].items():
            print(f"plugin {name}: step {st['step']}, epoch {st['epoch']}, config {st['config']}")
    return 0


def _cmd_evaluate(args) -> int:
    from .density import allocate_masks
    from .evaluate import build_resnet, evaluate_backbone, load_backbone, load_images
    from .flops import count_macs
    from .sparsifier import select_layers

    data = Path(args.data)
    print(f"loading {data}/train and {data}/val ...", flush=True)
    train = load_images(str(data / "train"), args.input_size)
    test = load_images(str(data / "val"), args.input_size)
    rows = []
    for d in args.random_init_densities or []:
        torch.manual_seed(args.seed)
        net = build_resnet(args.backbone).eval()
        if d < 1.0:  # one-shot magnitude pruning of a random-init backbone (a reference, not a method)
            layers = dict(select_layers(net))
            masks = allocate_masks({k: m.weight.detach().abs() for k, m in layers.items()}, d, "uniform")
            with torch.no_grad():
                for k, m in layers.items():
                    m.weight.mul_(masks[k])
        rows.append((f"random-init, magnitude-pruned to {d}", net))
    for ck in args.checkpoints:
        net, info = load_backbone(ck, args.backbone, cifar_stem=args.cifar_stem)
        rows.append((f"{ck} (density {info['density']:.3f})", net))
    results = []
    for name, net in rows:
        acc = evaluate_backbone(net, train, test, progress=True)
        macs = count_macs(net, (1, 3, args.input_size, args.input_size), from_weights=True)
        results.append({"backbone": name, **acc, "macs_ratio": macs.ratio})
        print(f"{name}: kNN20 {100 * acc['knn20']:.2f}  kNN1 {100 * acc['knn1']:.2f}  "
              f"linear {100 * acc['linear']:.2f}  MACs x{macs.ratio:.3f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def _cmd_imp(args) -> int:
    from .imp_driver import IMPDriver, IMPRun
    from .runner import solo_learn_dir

    run = IMPRun(config=args.config, out=args.out, rounds=args.rounds, rate=args.rate, rewind=args.rewind,
                 reset=args.reset, overrides=list(args.overrides or []), seed=args.seed, eval_data=args.eval_data,
                 eval_size=args.input_size)
    drv = IMPDriver(run, solo_learn_dir(args.solo_learn))
    t0 = time.time()
    st = drv.run_all()
    print(f"[imp] {args.rounds + 1} round(s) done in {(time.time() - t0) / 60:.1f} min; state in {drv.out / 'imp.json'}")
    for k, r in sorted(st["rounds"].items(), key=lambda kv: int(kv[0])):
        acc = r.get("eval", {})
        print(f"  round {k}: density {r['density']:.4f}"
              + "".join(f"  {a} {100 * v:.2f}" for a, v in acc.items()))
    return 0


def _cmd_permute(args) -> int:
    from .imp import load_masks, permuted_masks, save_masks, total_density

    masks, meta = load_masks(args.source)
    out = permuted_masks(masks, seed=args.seed)
    save_masks(args.dest, out, source=str(args.source), control="layer-wise permutation", seed=args.seed)
    print(f"{args.dest}: {len(out)} layers, density {total_density(out):.4f} (same per layer as {args.source})")
    return 0


def _cmd_retrain(args) -> int:
    from .evaluate import load_images
    from .imp import load_masks, load_state
    from .retrain import retrain_supervised

    data = Path(args.data)
    train = load_images(str(data / "train"), args.input_size)
    test = load_images(str(data / "val"), args.input_size)
    masks = load_masks(args.masks)[0] if args.masks else None
    init = load_state(args.init)[0] if args.init else None
    res = retrain_supervised(masks, init, train, test, epochs=args.epochs, lr=args.lr, seed=args.seed,
                             name=args.backbone, progress=True)
    print(f"label re-training: top-1 {100 * res['accuracy']:.2f} at density {res['density']:.4f} "
          f"({args.epochs} epochs, init {'from ' + args.init if args.init else 'random'})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


def _cmd_zoo(args) -> int:
    from . import zoo

    root = Path(args.zoo) if args.zoo else None
    if args.zoo_cmd == "list":
        rows = zoo.list_entries(root)
        if args.names:
            print("\n".join(e["name"] for e in rows))
            return 0
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'name':44s} {'algorithm':12s} {'method':11s} {'density':>8s} {'FLOPs':>6s} {'kNN20':>6s} "
              f"{'linear':>6s} {'MB':>6s}")
        for e in rows:
            acc = e.get("accuracy") or {}
            dens = "-" if e.get("density") is None else f"{e['density']:.3f}"
            print(f"{e['name']:44s} {e['algorithm']:12s} {str(e.get('method')):11s} {dens:>8s} "
                  f"{e.get('flops_ratio', 1.0):6.3f} {acc.get('knn20', float('nan')):6.2f} "
                  f"{acc.get('linear', float('nan')):6.2f} {e['size_bytes'] / 1e6:6.1f}")
        return 0
    if args.zoo_cmd == "show":
        print(json.dumps(zoo.entry(args.name, root), indent=2))
        return 0
    if args.zoo_cmd == "verify":
        res = zoo.verify(args.name, root)
        for n, r in res.items():
            print(f"{n}: {r}")
        return 0 if all(r == "ok" for r in res.values()) else 1
    if args.zoo_cmd == "export" and args.format == "compact":
        rep = zoo.export_compact(args.name, Path(args.out), args.channel_density, root, fp16=args.fp16)
        kept, full = rep["internal_channels"]
        print(f"wrote {rep['path']} (compact): internal channels {kept}/{full}, MACs at 32 px "
              f"{rep['macs'][0] / 1e6:.1f}M vs {rep['macs'][1] / 1e6:.1f}M, max |output diff| {rep['max_abs_diff']:.2e}, "
              f"{rep['size_bytes'] / 1e6:.2f} MB; load it with solo_sparse.zoo.load_file()")
        return 0
    if args.zoo_cmd == "bench":
        from .compact import bench_entry

        res = bench_entry(args.name, args.channel_density, tuple(args.sizes), tuple(args.batches), args.reps, root)
        print(res["kind"] + (f"; max |output diff| {res['max_abs_diff']:.2e}" if "max_abs_diff" in res else ""))
        for r in res["rows"]:
            print(f"batch {r['batch']:3d} {r['size']:4d} px: dense {r['dense_ms']:8.2f} ms  fast {r['fast_ms']:8.2f} ms"
                  f"  speed-up {r['speedup']:.2f}x")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=2))
        return 0
    if args.zoo_cmd == "export":
        if args.channel_density is not None:
            raise SystemExit("--channel-density applies to --format compact only")
        out = zoo.export(args.name, Path(args.out), args.format, root)
        e = zoo.entry(args.name, root)
        print(f"wrote {out} ({args.format})")
        if args.format == "solo":
            plug = sorted(e.get("plugins") or {})
            gated = [p for p in plug if p in ("cdg", "cgnet", "fbs", "dgnet_dual", "dgnet_gated")]
            line = f" with '- solo_sparse: {gated[0]}' (and its keys) in the linear YAML" if gated else ""
            print(f"main_linear.py: ++pretrained_feature_extractor='{out}'{line}")
        return 0
    raise AssertionError(args.zoo_cmd)


def _cmd_report(args) -> int:
    from . import report, zoo

    out = Path(args.out)
    src = args.source
    if src == "zoo":
        print(report.plot_zoo(out, Path(args.zoo) if args.zoo else None, args.reference))
        return 0
    if Path(src).exists():
        for p in report.plot_run(Path(src), out):
            print(p)
        return 0
    e = zoo.entry(src, Path(args.zoo) if args.zoo else None)
    _, masks, _ = zoo.read_backbone(zoo.fetch(e, Path(args.zoo) if args.zoo else None))
    p = report.plot_layer_density(masks, out / f"{src}_layer_density.png", src)
    if p is None:
        raise RuntimeError(f"zoo entry {src!r} has no weight masks (a gated backbone: its sparsity is dynamic; "
                           f"run `solo-sparse report <its training run dir>` for the logged gate sparsity)")
    print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="solo-sparse", description="Sparse and gated SSL plugins for solo-learn")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plugins", help="list plugins with families and config keys")
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=_cmd_plugins)
    a = sub.add_parser("flops", help="dense vs effective MACs of a config's or checkpoint's backbone")
    a.add_argument("source", help="a solo-learn YAML (with an optional solo_sparse section) or a .ckpt")
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--input-size", type=int, default=32)
    a.add_argument("--cifar-stem", action="store_true", help="checkpoint was trained on cifar10/100")
    a.add_argument("--per-layer", action="store_true")
    a.set_defaults(fn=_cmd_flops)
    a = sub.add_parser("sparsity", help="per-layer mask densities of a checkpoint")
    a.add_argument("checkpoint")
    a.set_defaults(fn=_cmd_sparsity)
    a = sub.add_parser("evaluate", help="kNN and linear probe of backbones on an image folder (train/ val/)")
    a.add_argument("checkpoints", nargs="*")
    a.add_argument("--data", required=True)
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--cifar-stem", action="store_true")
    a.add_argument("--input-size", type=int, default=32)
    a.add_argument("--random-init-densities", type=float, nargs="*", default=None)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default=None, help="write results JSON here")
    a.set_defaults(fn=_cmd_evaluate)
    a = sub.add_parser("imp", help="iterative magnitude pruning with self-supervision over main_pretrain.py rounds")
    a.add_argument("--config", required=True, help="a solo-learn pre-training YAML (any method is the pretext)")
    a.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    a.add_argument("--rounds", type=int, default=5, help="pruning rounds R (R + 1 trainings; final density (1-rate)^R)")
    a.add_argument("--rate", type=float, default=0.2, help="share of the remaining weights pruned per round")
    a.add_argument("--rewind", default="1ep", help="rewind point in round 0: steps or 'Nep' (reset=rewind)")
    a.add_argument("--reset", choices=("rewind", "random"), default="rewind")
    a.add_argument("--seed", type=int, default=None)
    a.add_argument("--eval-data", default=None, help="image folder (train/ val/): kNN + linear probe per round")
    a.add_argument("--input-size", type=int, default=32)
    a.add_argument("--solo-learn", default=None, help="solo-learn checkout (default: next to the solo package)")
    a.add_argument("overrides", nargs="*", help="extra Hydra overrides for every round (after --)")
    a.set_defaults(fn=_cmd_imp)
    a = sub.add_parser("permute-masks", help="random-mask control: shuffle each layer's mask (same densities)")
    a.add_argument("source")
    a.add_argument("dest")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(fn=_cmd_permute)
    a = sub.add_parser("retrain", help="train a mask (+ init) on labels and report test accuracy")
    a.add_argument("--data", required=True)
    a.add_argument("--masks", default=None, help="mask file (none = dense)")
    a.add_argument("--init", default=None, help="state file (e.g. an IMP rewind point); none = random init")
    a.add_argument("--epochs", type=int, default=5)
    a.add_argument("--lr", type=float, default=0.05)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--input-size", type=int, default=32)
    a.add_argument("--out", default=None)
    a.set_defaults(fn=_cmd_retrain)
    a = sub.add_parser("zoo", help="model zoo: list | show | verify | export | bench")
    a.add_argument("--zoo", default=None, help="zoo directory (default: the package's zoo/ or $SOLO_SPARSE_ZOO)")
    zs = a.add_subparsers(dest="zoo_cmd", required=True)
    z = zs.add_parser("list", help="entries with accuracy, density, FLOPs, size")
    z.add_argument("--json", action="store_true")
    z.add_argument("--names", action="store_true", help="entry names only, one per line")
    z = zs.add_parser("show", help="one entry's full manifest record")
    z.add_argument("name")
    z = zs.add_parser("verify", help="sha256, format and a strict build of one or every entry")
    z.add_argument("name", nargs="?")
    z = zs.add_parser("export", help="write a solo-learn checkpoint (main_linear.py) or a torchvision state dict")
    z.add_argument("name")
    z.add_argument("--out", required=True)
    z.add_argument("--format", choices=("solo", "torchvision", "compact"), default="solo",
                   help="compact: a smaller dense ResNet with dead internal channels removed (zoo format)")
    z.add_argument("--channel-density", type=float, default=None,
                   help="compact: first prune the block-internal channels to this fraction")
    z.add_argument("--fp16", action="store_true", help="compact: store floats as fp16")
    z = zs.add_parser("bench", help="CPU latency: compact export vs dense (DGNet entries: gated vs dense path)")
    z.add_argument("name")
    z.add_argument("--channel-density", type=float, default=None)
    z.add_argument("--sizes", type=int, nargs="+", default=[32])
    z.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    z.add_argument("--reps", type=int, default=30)
    z.add_argument("--out", default=None, help="write the full result as JSON")
    a.set_defaults(fn=_cmd_zoo)
    a = sub.add_parser("report", help="PNG plots of a run directory, a zoo entry, or 'zoo' (accuracy vs FLOPs)")
    a.add_argument("source", help="run directory | zoo entry name | zoo")
    a.add_argument("--out", default="report")
    a.add_argument("--zoo", default=None)
    a.add_argument("--reference", type=float, default=None,
                   help="zoo plot: random-init linear accuracy (%%) drawn as a dashed line")
    a.set_defaults(fn=_cmd_report)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, RuntimeError) as e:
        print(f"solo-sparse: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

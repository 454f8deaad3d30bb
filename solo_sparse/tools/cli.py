"""``solo-sparse`` command line.

    solo-sparse plugins [--json]                 plugins, families, config keys with defaults
    solo-sparse flops CONFIG.yaml|CKPT [...]     dense vs effective MACs of a backbone
    solo-sparse sparsity CKPT                    per-layer densities of both encoders
    solo-sparse evaluate --data DIR [CKPT ...]   kNN + linear probe of backbones (no solo-learn needed)
    solo-sparse imp --config YAML --out DIR      iterative magnitude pruning over main_pretrain.py rounds
    solo-sparse permute-masks IN OUT             mask controls: global random (default) or layer-wise permutation
    solo-sparse retrain --data DIR --masks F     label re-training of a mask (+ init) on an image folder
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from solo_sparse.core.config import ConfigError
from solo_sparse.tools.inputs import FRACTION, IMAGE_SIZE, SEED, compose_config, number, read_checkpoint
from solo_sparse.zoo.format import ZooError


def _cmd_plugins(args) -> int:
    from solo_sparse.core.registry import describe_plugins

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


def _backbone_from_config(path: Path):
    from omegaconf import OmegaConf

    from solo_sparse.tools.evaluate import build_resnet

    cfg = compose_config(path)
    name = OmegaConf.select(cfg, "backbone.name", default="resnet18")
    if not str(name).startswith("resnet"):
        raise ConfigError(f"backbone.name={name!r}: solo-sparse flops builds torchvision ResNets only")
    cifar = OmegaConf.select(cfg, "data.dataset", default="") in ("cifar10", "cifar100")
    return cfg, build_resnet(str(name), cifar_stem=cifar)


def _flops_of_config(path: Path, size: tuple):
    """(MACs report, what it shows) of the backbone a YAML composes to: the static masks its plugins end with."""
    from omegaconf import OmegaConf

    from solo_sparse.core.registry import build_plugins
    from solo_sparse.engine.flops import count_macs

    cfg, net = _backbone_from_config(path)
    node = cfg.get("solo_sparse")
    section = OmegaConf.to_container(node, resolve=True) if node else {}
    what = "dense (no solo_sparse section)"
    for plugin in (build_plugins(section) if section else []):
        shown = plugin.preview_backbone(net)
        if shown is not None:
            what = shown
        elif plugin.rewrites_backbone:
            what = (f"dense: '{plugin.name}' gates per input, so its cost needs data — run "
                    "`solo-sparse flops CKPT` on a trained checkpoint, or the benchmark's gate measurement")
    return count_macs(net, size), what


def _flops_of_gated_checkpoint(args, path: Path, net, info, size: tuple) -> int:
    """A gated checkpoint's MACs from its gates: measured on the images of ``--data`` where they depend on the
    input (the plugin's ``cost_depends_on_input``), otherwise exact from any input of the size."""
    import torch

    from solo_sparse.core.registry import get_plugin
    from solo_sparse.tools.evaluate import MEASURE_IMAGES, backbone_macs, describe, load_images

    if args.data:
        folder = Path(args.data) / "val" if (Path(args.data) / "val").is_dir() else Path(args.data)
        X = load_images(folder, args.input_size)[0][:MEASURE_IMAGES]
        over = f"mean over {len(X)} images of {folder}"
    elif get_plugin(info["gating"]).cost_depends_on_input(net):
        raise ConfigError(f"{path}: a {info['gating']}-gated backbone computes per input; pass --data DIR "
                          "(an image folder) to measure its MACs on images")
    else:
        X = torch.zeros(size)
        over = "the same for every input"
    cost = backbone_macs(net, info, X)
    print(f"{path.name}: checkpoint, {describe(info)}")
    r = cost["macs_ratio"]
    print(f"input {tuple(size)}: MACs ratio {r:.4f} ({1 / max(r, 1e-12):.2f}x fewer), gate sparsity "
          f"{cost.get('gate_sparsity', 0.0):.4f}, {over}")
    return 0


def _cmd_flops(args) -> int:
    from solo_sparse.engine.flops import count_macs

    path = Path(args.source)
    size = (1, 3, args.input_size, args.input_size)
    if path.suffix in (".yaml", ".yml"):
        rep, what = _flops_of_config(path, size)
    else:
        from solo_sparse.tools.evaluate import load_backbone

        net, info = load_backbone(str(path), args.backbone, cifar_stem=args.cifar_stem)
        if info["gating"]:        # measured from the gates (on images where their cost depends on the input)
            return _flops_of_gated_checkpoint(args, path, net, info, size)
        rep = count_macs(net, size, from_weights=True)
        what = f"checkpoint, masked layers at density {info['density']:.4f}"
    if args.per_layer:
        print(rep.to_markdown())
    print(f"{path.name}: {what}")
    print(f"input {tuple(size)}: dense {rep.dense / 1e6:.2f} MMACs, effective {rep.effective / 1e6:.2f} MMACs, "
          f"ratio {rep.ratio:.4f} ({1 / max(rep.ratio, 1e-12):.2f}x fewer)")
    return 0


def _cmd_sparsity(args) -> int:
    from solo_sparse.core.registry import linear_lines
    from solo_sparse.engine.maskio import counts, encoder_masks

    ck = read_checkpoint(args.checkpoint)
    per_enc = encoder_masks(ck.get("state_dict", ck), str(args.checkpoint))
    online, momentum = per_enc.get("online", {}), per_enc.get("momentum", {})
    if not online and not momentum:
        print(f"{args.checkpoint}: no weight masks (dense checkpoint)")
    else:
        print("| layer | params | online density | momentum density |\n|---|---:|---:|---:|")
        for layer in dict.fromkeys([*online, *momentum]):
            m = online.get(layer, momentum.get(layer))
            cells = [f"{float(d[layer].sum()) / d[layer].numel():.4f}" if layer in d else "-"
                     for d in (online, momentum)]
            print(f"| {layer} | {m.numel()} | {cells[0]} | {cells[1]} |")
        tot = [counts(d) for d in (online, momentum)]
        cells = [f"{k / n:.4f}" if n else "-" for k, n in tot]
        print(f"| **total** | {max(n for _, n in tot)} | {cells[0]} | {cells[1]} |")
    state = ck.get("solo_sparse")
    if state:
        for name, st in state.items():
            print(f"plugin {name}: step {st['step']}, epoch {st['epoch']}, config {st['config']}")
        lines = linear_lines(state)
        if lines:
            print("main_linear.py: add " + " and ".join(f"'- solo_sparse: {n}'" for n in lines)
                  + " (with the same keys) to the linear YAML to load this backbone as trained")
    return 0


def _random_init_rows(args) -> list:
    """``--random-init-densities``: random-init backbones at ``--seed``, one-shot magnitude-pruned to each density
    below 1 (a reference, not a method)."""
    from solo_sparse.engine.density import allocate_masks
    from solo_sparse.engine.sparsifier import select_layers
    from solo_sparse.tools.evaluate import build_resnet

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
        rows.append((f"random-init, magnitude-pruned to {d}", net, {},
                     {"kind": "random-init", "name": f"random-init d{d:g}", "density": d}))
    return rows


def _cmd_evaluate(args) -> int:
    from solo_sparse.core.files import write_atomic
    from solo_sparse.tools.evaluate import (
        MEASURE_IMAGES,
        NonFiniteFeatures,
        backbone_macs,
        describe,
        evaluate_backbone,
        load_backbone,
        load_splits,
    )

    data = Path(args.data)
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give a file name (e.g. {Path(args.out) / 'eval.json'})")
    rows = _random_init_rows(args)
    for ck in args.checkpoints:
        net, info = load_backbone(ck, args.backbone, cifar_stem=args.cifar_stem)
        rows.append((f"{ck} ({describe(info)})", net, info, {"kind": "checkpoint", "name": Path(ck).stem}))
    print(f"loading {data}/train and {data}/val ...", flush=True)     # after the checkpoints: a bad one fails fast
    train, test = load_splits(data, args.input_size)
    results, failed = [], 0
    for name, net, info, tags in rows:
        try:
            acc = evaluate_backbone(net, train, test, progress=True)
        except NonFiniteFeatures as e:     # the other backbones go on; the exit status says one failed
            failed += 1
            results.append({"backbone": name, **tags, "error": str(e)})
            print(f"{name}: not evaluated: {e}", file=sys.stderr, flush=True)
            if args.out:
                write_atomic(args.out, json.dumps(results, indent=2))
            continue
        cost = backbone_macs(net, info, test[0][:MEASURE_IMAGES])
        results.append({"backbone": name, **tags, **acc, **cost})
        gates = f"  gate sparsity {cost['gate_sparsity']:.3f}" if "gate_sparsity" in cost else ""
        print(f"{name}: kNN20 {100 * acc['knn20']:.2f}  kNN1 {100 * acc['knn1']:.2f}  "
              f"linear {100 * acc['linear']:.2f}  MACs x{cost['macs_ratio']:.3f}{gates}", flush=True)
        if args.out:      # after every backbone: an interrupted run keeps the rows it finished
            write_atomic(args.out, json.dumps(results, indent=2))
    return 1 if failed else 0


def _zoo_list(args, root: Optional[Path]) -> int:
    from solo_sparse import zoo

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


def _zoo_show(args, root: Optional[Path]) -> int:
    from solo_sparse import zoo

    print(json.dumps(zoo.entry(args.name, root), indent=2))
    return 0


def _zoo_verify(args, root: Optional[Path]) -> int:
    from solo_sparse import zoo

    res = zoo.verify(args.name, root)
    for n, r in res.items():
        print(f"{n}: {r}")
    return 0 if all(r == "ok" for r in res.values()) else 1


def _zoo_export(args, root: Optional[Path]) -> int:
    from solo_sparse import zoo

    if args.format == "compact":
        rep = zoo.export_compact(args.name, Path(args.out), args.channel_density, root, fp16=args.fp16)
        kept, full = rep["internal_channels"]
        print(f"wrote {rep['path']} (compact): internal channels {kept}/{full}, MACs at 32 px "
              f"{rep['macs'][0] / 1e6:.1f}M vs {rep['macs'][1] / 1e6:.1f}M, "
              f"max |output diff| {rep['max_abs_diff']:.2e}, "
              f"{rep['size_bytes'] / 1e6:.2f} MB; load it with solo_sparse.zoo.load_file()")
        return 0
    if args.channel_density is not None:
        raise ConfigError("--channel-density applies to --format compact only")
    out = zoo.export(args.name, Path(args.out), args.format, root)
    e = zoo.entry(args.name, root)
    print(f"wrote {out} ({args.format})")
    if args.format == "solo":
        # the plugin that rebuilt the backbone (the file's gating record; the entry's weight-mask plugins need no
        # line and need not be installed)
        gated = (zoo.read_backbone(zoo.fetch(e, root))[2].get("gating") or {}).get("plugin")
        line = f" with '- solo_sparse: {gated}' (and its keys) in the linear YAML" if gated else ""
        print(f"main_linear.py: ++pretrained_feature_extractor='{out}'{line}")
    return 0


def _zoo_bench(args, root: Optional[Path]) -> int:
    from solo_sparse.tools.zoo_bench import bench_entry

    res = bench_entry(args.name, args.channel_density, tuple(args.sizes), tuple(args.batches), args.reps, root)
    print(res["kind"] + (f"; max |output diff| {res['max_abs_diff']:.2e}" if "max_abs_diff" in res else ""))
    for r in res["rows"]:
        print(f"batch {r['batch']:3d} {r['size']:4d} px: dense {r['dense_ms']:8.2f} ms  fast {r['fast_ms']:8.2f} ms"
              f"  speed-up {r['speedup']:.2f}x")
    if args.out:
        from solo_sparse.core.files import write_atomic

        write_atomic(args.out, json.dumps(res, indent=2))
    return 0


#: ``solo-sparse zoo <verb>``
_ZOO_VERBS = {"list": _zoo_list, "show": _zoo_show, "verify": _zoo_verify, "export": _zoo_export, "bench": _zoo_bench}


def _cmd_zoo(args) -> int:
    return _ZOO_VERBS[args.zoo_cmd](args, Path(args.zoo) if args.zoo else None)


def _report_zoo_entry(src: str, out: Path, root: Optional[Path]) -> int:
    """``solo-sparse report NAME``: the per-layer density plot of a zoo entry's weight masks."""
    from solo_sparse import zoo
    from solo_sparse.tools import report

    names = [e["name"] for e in zoo.list_entries(root)]
    if src not in names:
        raise ConfigError(f"{src}: no such run directory, and not a zoo entry (entries: {', '.join(names)})")
    e = zoo.entry(src, root)
    _, masks, _ = zoo.read_backbone(zoo.fetch(e, root))
    p = report.plot_layer_density(masks, out / f"{src}_layer_density.png", src)
    if p is None:
        raise RuntimeError(f"zoo entry {src!r} has no weight masks (a gated backbone: its sparsity is dynamic; "
                           f"run `solo-sparse report <its training run dir>` for the logged gate sparsity)")
    print(p)
    return 0


def _cmd_report(args) -> int:
    from solo_sparse.tools import report

    out = Path(args.out)
    src = args.source
    root = Path(args.zoo) if args.zoo else None
    if src == "zoo":
        print(report.plot_zoo(out, root, args.reference))
        return 0
    if Path(src).is_dir():
        for p in report.plot_run(Path(src), out):
            print(p)
        return 0
    if Path(src).is_file() and src.endswith(".json"):
        print(report.plot_evaluation(Path(src), out))
        return 0
    if Path(src).exists():
        raise ConfigError(f"{src}: is a file; report takes a run directory (holding metrics.csv / checkpoints), "
                          "an evaluation JSON (solo-sparse evaluate --out), a zoo entry name, or 'zoo'")
    return _report_zoo_entry(src, out, root)


def _cmd_bench(args) -> int:
    from solo_sparse.tools.bench import Bench, Suite, to_markdown, update_docs

    if args.update_docs is not None:       # `--update-docs` with no document: the results.md files only
        changed = update_docs([Path(p) for p in args.suite], [Path(d) for d in args.update_docs])
        print("updated: " + (", ".join(map(str, changed))
                             or "nothing (no results.md and no <!-- bench:SUITE --> block changed)"))
        return 0
    suite = Suite.load(args.suite[0])
    bench = Bench(suite, data_root=Path(args.data_root), out=Path(args.out) if args.out else None, seeds=args.seeds,
                  solo_dir=args.solo_learn, only=args.only or (), eval_only=args.eval_only,
                  extra_overrides=args.overrides or (), host=args.host)
    if args.dry_run:
        for spec, seed in bench.plan():
            sibling = bench.sibling_row(spec, seed)
            if sibling is not None:
                print(f"would reuse {spec.id} seed {seed}: the same training is {sibling[0]} (not trained twice)")
            else:
                print(f"would run {spec.id} seed {seed} ({spec.kind}, {spec.config})")
        return 0
    results = bench.run()
    print(to_markdown(results))
    print(f"results: {bench.out / 'results.json'}, {bench.out / 'results.md'}, {bench.out / (suite.suite + '.png')}")
    return 0


def _plugin_commands() -> Dict[str, Tuple]:
    """``{verb: (add_arguments, run, help)}`` of every installed plugin's :meth:`Plugin.commands`."""
    from solo_sparse.core.registry import available_plugins, get_plugin

    out: Dict[str, Tuple] = {}
    for name in available_plugins():
        for verb, spec in get_plugin(name).commands().items():
            out[verb] = spec
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error form: one line, exit code 2 (argparse's own prints the usage first)."""

    def error(self, message):
        self.exit(2, f"solo-sparse: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="solo-sparse", description="Sparse and gated SSL plugins for solo-learn")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plugins", help="list plugins with families and config keys")
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=_cmd_plugins)
    a = sub.add_parser("flops", help="dense vs effective MACs of a config's or checkpoint's backbone")
    a.add_argument("source", help="a solo-learn YAML (with an optional solo_sparse section) or a .ckpt")
    a.add_argument("--backbone", default="resnet18")
    a.add_argument("--input-size", type=IMAGE_SIZE, default=32)
    a.add_argument("--data", default=None, help="image folder (val/ or <class>/ folders): gated checkpoints' MACs "
                                                "are measured on its images (needed where their cost depends on "
                                                "the input)")
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
    a.add_argument("--input-size", type=IMAGE_SIZE, default=32)
    a.add_argument("--random-init-densities", type=FRACTION, nargs="*", default=None)
    a.add_argument("--seed", type=SEED, default=0)
    a.add_argument("--out", default=None, help="write results JSON here (after every backbone)")
    a.set_defaults(fn=_cmd_evaluate)
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
    z.add_argument("--channel-density", type=FRACTION, default=None,
                   help="compact: first prune the block-internal channels to this fraction")
    z.add_argument("--fp16", action="store_true", help="compact: store floats as fp16")
    z = zs.add_parser("bench", help="CPU latency: compact export vs dense (DGNet entries: gated vs dense path)")
    z.add_argument("name")
    z.add_argument("--channel-density", type=FRACTION, default=None)
    z.add_argument("--sizes", type=IMAGE_SIZE, nargs="+", default=[32])
    z.add_argument("--batches", type=number(int, 1, 4096), nargs="+", default=[1, 64])
    z.add_argument("--reps", type=number(int, 1, 100000), default=30)
    z.add_argument("--out", default=None, help="write the full result as JSON")
    a.set_defaults(fn=_cmd_zoo)
    a = sub.add_parser("doctor", help="check the installation: versions, solo-learn, Hydra discovery, plugins, "
                                      "device, data — each line ok or problem with the fix")
    a.add_argument("--data-root", default="data")
    a.set_defaults(fn=lambda args: __import__("solo_sparse.tools.doctor", fromlist=["report"]).report(
        Path(args.data_root)))
    a = sub.add_parser("bench", help="run a benchmark suite (scripts/suites/*.yaml) through main_pretrain.py")
    a.add_argument("suite", nargs="+", help="suite YAML (with --update-docs: results.json files)")
    a.add_argument("--data-root", default="data", help="folder holding the suite's data folder (default: data)")
    a.add_argument("--out", default=None, help="results folder (default: results/<suite>)")
    a.add_argument("--seeds", type=number(int, 1, 1000), default=None, help="number of seeds (default: the suite's)")
    a.add_argument("--only", nargs="*", default=None, help="run ids to run (default: all)")
    a.add_argument("--eval-only", action="store_true", help="evaluate existing runs, train nothing")
    a.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    a.add_argument("--solo-learn", default=None, help="solo-learn checkout (default: next to the solo package)")
    a.add_argument("--host", choices=("auto", "solo-learn", "lightning"), default="auto",
                   help="train through solo-learn's main_pretrain.py or the Lightning binding's trainer (same YAML); "
                        "auto: solo-learn where installed, else lightning")
    a.add_argument("--update-docs", nargs="*", default=None, metavar="MD",
                   help="rewrite the <!-- bench:SUITE --> blocks of these markdown files from the given results.json "
                        "(and re-render each results.json's results.md; with no file: only those)")
    a.add_argument("--override", action="append", dest="overrides", default=[], metavar="KEY=VALUE",
                   help="an extra Hydra override for every run (repeatable)")
    a.set_defaults(fn=_cmd_bench)
    a = sub.add_parser("speed", help="CPU latency of every exported fast path vs dense, MACs limit beside each")
    __import__("solo_sparse.tools.speed", fromlist=["add_arguments"]).add_arguments(a)
    a.set_defaults(fn=lambda args: __import__("solo_sparse.tools.speed", fromlist=["main"]).main(args))
    for verb, (add_args, run, helptext) in _plugin_commands().items():   # verbs contributed by plugins
        a = sub.add_parser(verb, help=helptext)
        add_args(a)
        a.set_defaults(fn=run)
    a = sub.add_parser("report", help="PNG plots of a run directory, an evaluation JSON, a zoo entry, or 'zoo' "
                                      "(accuracy vs FLOPs)")
    a.add_argument("source", help="run directory | EVAL.json (solo-sparse evaluate --out) | zoo entry name | zoo")
    a.add_argument("--out", default="report")
    a.add_argument("--zoo", default=None)
    a.add_argument("--reference", type=number(float, 0.0, 100.0), default=None,
                   help="zoo plot: random-init linear accuracy (%%) drawn as a dashed line")
    a.set_defaults(fn=_cmd_report)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command. Every failure is one line on stderr and exit code 2 (``--debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("solo-sparse: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one handler of the CLI
        if args.debug:
            raise
        expected = isinstance(e, (ConfigError, ZooError, OSError))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"solo-sparse: error: {msg}" if expected else
              f"solo-sparse: error: {type(e).__name__}: {msg} (unexpected: rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

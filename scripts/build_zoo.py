#!/usr/bin/env python
"""Build (or rebuild) a zoo entry: train it from its solo-learn config, or pack an existing checkpoint.

    # reproduce an entry from the config stored with it (trains through main_pretrain.py)
    python scripts/build_zoo.py --name resnet18-fmnist-byol-synccp10 --data data/fmnist5k
    # pack a checkpoint you already have (the config is copied next to the manifest)
    python scripts/build_zoo.py --name NAME --config scripts/configs/fmnist/byol_synccp10.yaml \\
        --checkpoint runs/.../last.ckpt --data data/fmnist5k [--fp16]

IMP entries record their driver arguments (``--imp-args``): reproducing one runs ``solo-sparse imp``
with them and packs the last round. Every entry is evaluated here, from the packed file (so the
numbers describe what users load): weighted kNN (k=20, k=1) and a linear probe on frozen 32 px
features of ``--data`` (train/ as reference, val/ as test), density of the masked convs, FLOPs of
the evaluated path (whole network; gated: the plugin's exact per-sample count on val images).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from solo_sparse import zoo
from solo_sparse.core.registry import backbone_plugin, get_plugin
from solo_sparse.engine.flops import count_macs
from solo_sparse.engine.maskio import MASK, split_state
from solo_sparse.tools.evaluate import NonFiniteFeatures, backbone_state, evaluate_backbone, load_splits
from solo_sparse.tools.runner import newest_checkpoint, pretrain_command

ROOT = Path(__file__).resolve().parents[1]


def pack_checkpoint(ck: Path, out: Path, fp16: bool, method: str = None) -> dict:
    from solo_sparse.core.checkpoint import solo_naming  # a Lightning host's run in solo-learn's names

    state_all = solo_naming(torch.load(ck, map_location="cpu", weights_only=True))
    state = backbone_state(state_all)
    weights, layer_masks = split_state(state)
    masks = {f"{layer}.weight": m for layer, m in layer_masks.items()}
    plugin_state = state_all.get("solo_sparse") or {}
    gname, gcfg = backbone_plugin(plugin_state)
    if gname:
        # training-only reparametrisations (CDG's conditional-path scale) folded into the weights: the entry
        # is the deployed network, rebuilt from the config deploy_backbone returns
        net = zoo.build_module(weights, masks, {"arch": "resnet18", "gating": {"plugin": gname, "config": gcfg}})
        gcfg = get_plugin(gname).deploy_backbone(net, gcfg)
        folded = net.state_dict()
        weights = {k: v for k, v in folded.items() if not k.endswith("." + MASK)}
        masks = {f"{k[: -len(MASK) - 1]}.weight": v for k, v in folded.items() if k.endswith("." + MASK)}
    zoo.save_backbone(out, weights, masks, arch="resnet18", fp16=fp16,
                      gating={"plugin": gname, "config": gcfg} if gname else None, method=method)
    # local file paths in a plugin config (IMP's masks/init) mean nothing to users: keep the file name
    plugins = {n: {k: (Path(v).name if isinstance(v, str) and Path(v).is_absolute() else v)
                   for k, v in st.get("config", {}).items()} for n, st in plugin_state.items()}
    return {"plugins": plugins, "epochs": state_all.get("epoch", -1) + 1, "gating": gname}


def flops_of(net, gname, X) -> dict:
    m = get_plugin(gname).measure_backbone(net, X) if gname else None
    if m is not None:
        return {"flops_ratio": m["network_macs_ratio"], "gate_sparsity": m["gate_sparsity"]}
    rep = count_macs(net, X[:1])
    return {"flops_ratio": rep.effective / rep.dense}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="image folder with train/ and val/ (evaluation; training data)")
    ap.add_argument("--config", default=None, help="solo-learn YAML (default: the entry's stored config)")
    ap.add_argument("--checkpoint", default=None, help="pack this checkpoint instead of training")
    ap.add_argument("--imp-args", default=None, help="IMP entries: arguments of `solo-sparse imp` (quoted)")
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--algorithm", default=None)
    ap.add_argument("--license", default="MIT")
    ap.add_argument("--notes", default="")
    ap.add_argument("--work", default=None, help="training directory (default: <zoo>/build/<name>)")
    args = ap.parse_args(argv)
    try:
        zoo.manifest.check_name(args.name, "--name")     # it names files: refused before anything is written
    except zoo.ZooError as exc:
        raise SystemExit(str(exc)) from None

    zroot = Path(args.zoo).resolve()
    old = {}
    try:
        old = zoo.entry(args.name, zroot)
    except zoo.ZooError:
        pass
    cfg_dst = zroot / "configs" / f"{args.name}.yaml"
    cfg_src = Path(args.config).resolve() if args.config else cfg_dst
    if not cfg_src.exists():
        raise SystemExit(f"no config for {args.name}: pass --config (looked for {cfg_src})")
    imp_args = args.imp_args if args.imp_args is not None else old.get("imp_args")
    data = Path(args.data).resolve()
    ck = Path(args.checkpoint).resolve() if args.checkpoint else None
    command = None
    if ck is None:
        work = Path(args.work or zroot / "build" / args.name).resolve()
        work.mkdir(parents=True, exist_ok=True)
        if imp_args:
            cmd = [sys.executable, "-m", "solo_sparse.tools.cli", "imp", "--config", str(cfg_src), "--out", str(work),
                   *shlex.split(imp_args), "--", f"++data.train_path={data / 'train'}"]
        else:
            cmd = pretrain_command(cfg_src, name=args.name, run_dir=work, train_path=data / "train")
        command = " ".join(cmd)
        print(f"[{args.name}] training: {command}", flush=True)
        rc = subprocess.call(cmd, cwd=str(work))
        if rc:
            raise SystemExit(f"training failed ({rc})")
        ck = newest_checkpoint(work if not imp_args else sorted(work.glob("round_*"))[-1])
        if ck is None:
            raise SystemExit(f"training wrote no checkpoint under {work}")
    rel = Path("weights") / f"{args.name}.safetensors"
    t0 = time.time()
    import yaml

    # packed (and the config copied) beside the entry's files and moved over them only once evaluated: a rebuild
    # that fails keeps the entry's weights and config as they were (its manifest row still matches them), and the
    # commit is two renames on one file system, not a copy that could fail half-way after the weights moved
    staged = zroot / rel.parent / f".{args.name}.staged.safetensors"
    cfg_staged = cfg_dst.parent / f".{args.name}.staged.yaml"
    staged.parent.mkdir(parents=True, exist_ok=True)
    cfg_dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = pack_checkpoint(ck, staged, args.fp16, method=yaml.safe_load(cfg_src.read_text()).get("method"))
        # evaluate what users load: the packed file, through the zoo loader
        state, masks, meta = zoo.read_backbone(staged)
        net = zoo.build_module(state, masks, meta)
        train, test = load_splits(data, 32)
        try:
            acc = evaluate_backbone(net, train, test)
        except NonFiniteFeatures as e:   # no zoo entry from a network whose features overflow
            raise SystemExit(f"{args.name}: not added to the zoo (the entry, if any, is unchanged): {e}") from e
        fl = flops_of(net, info["gating"], test[0][:2000])
        if cfg_src != cfg_dst:
            shutil.copyfile(cfg_src, cfg_staged)
            # augmentation group files the config names: added beside the configs, never removed
            aug = cfg_src.parent / "augmentations"
            if aug.is_dir():
                shutil.copytree(aug, cfg_dst.parent / "augmentations", dirs_exist_ok=True)
    except BaseException:
        staged.unlink(missing_ok=True)
        cfg_staged.unlink(missing_ok=True)
        raise
    staged.replace(zroot / rel)
    if cfg_src != cfg_dst:
        cfg_staged.replace(cfg_dst)
    kept = sum(int(m.sum()) for m in masks.values())
    tot = sum(m.numel() for m in masks.values())
    cfg = yaml.safe_load(cfg_dst.read_text())
    plugin_names = sorted(info["plugins"])
    record = {
        "name": args.name,
        "algorithm": args.algorithm or (plugin_names[0] if plugin_names else "dense"),
        "plugins": info["plugins"],
        "method": cfg.get("method"),
        "backbone": "resnet18",
        "dataset": f"Fashion-MNIST ({data.name}: {len(train[1])} train images, {len(test[1])} test images, 32 px)",
        "epochs": info["epochs"],
        "eval_protocol": "frozen 32 px features of the packed file: weighted cosine kNN (k=20, T=0.07; k=1) vs the "
                         "train split, logistic-regression linear probe (L-BFGS); test = val split",
        "accuracy": {k: round(100 * v, 2) for k, v in acc.items()},
        "density": (kept / tot) if tot else None,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in fl.items()},
        "file": str(rel),
        "sha256": zoo.sha256(zroot / rel),
        "size_bytes": (zroot / rel).stat().st_size,
        "fp16": bool(args.fp16),
        "config": str(cfg_dst.relative_to(zroot)),
        "imp_args": imp_args,
        "train_command": command or old.get("train_command"),
        "reproduce": f"python scripts/build_zoo.py --name {args.name} --data data/{data.name}"
                     + (" --fp16" if args.fp16 else ""),
        "source_checkpoint": ck.name,
        "date": zoo.today(),
        "license": args.license,
        "notes": args.notes or old.get("notes", ""),
    }
    zoo.add_entry(zroot, record)
    print(json.dumps({k: v for k, v in record.items() if k != "plugins"}, indent=1))
    print(f"[{args.name}] packed and evaluated in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a solo-learn pre-training YAML without solo-learn: Lightly's building blocks, Lightning and
:class:`~solo_sparse.lightning.Sparsify` — the main job's path on a machine where solo-learn is missing.

    python -m solo_sparse.lightning.train --config-path scripts/configs/fmnist --config-name mocov2plus.yaml \\
        ++data.train_path=data/fmnist1k/train ++max_epochs=2 +solo_sparse=gmp ++solo_sparse.final_density=0.1

The command line is ``main_pretrain.py``'s (Hydra overrides, the ``- solo_sparse: <plugin>`` group), so one
benchmark suite runs through either host (``solo-sparse bench --host lightning``). What is read from the config:
``method`` (mocov2plus, byol, simclr: :mod:`solo_sparse.lightning.methods`), ``method_kwargs``, ``momentum``,
``backbone.name``, ``data`` (``custom`` / ``image_folder``: an ImageFolder at ``data.train_path``),
``augmentations`` (two large views, solo-learn's pipeline keys), ``optimizer``, ``scheduler``
(``warmup_cosine``), ``max_epochs``, ``seed``, ``accelerator`` / ``devices`` / ``precision``, ``checkpoint``
(``dir``, ``frequency``, ``keep_prev``) and the ``solo_sparse:`` section. Anything this trainer cannot honour
is refused with one line naming the key. The checkpoint is written as ``<checkpoint.dir>/<version>/<name>-
<version>-ep=<E>.ckpt`` beside ``args.json`` (the composed config), as solo-learn's checkpointer does.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from solo_sparse.core.config import ConfigError, _to_plain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEANS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def compose(config_path: str, config_name: str, overrides: Sequence[str]):
    """The solo-learn YAML composed with Hydra (the ``solo_sparse/`` group visible), as ``main_pretrain.py``
    would see it."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    d = Path(config_path).resolve()
    name = config_name[:-5] if config_name.endswith(".yaml") else config_name
    if not (d / f"{name}.yaml").is_file():
        raise ConfigError(f"{d / (name + '.yaml')}: no such config")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(d), version_base="1.2"):
            return _compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def view_transform(aug: Dict[str, Any], mean, std):
    """One view's pipeline from solo-learn's augmentation keys (its ``build_transform_pipeline``, in its order)."""
    import torchvision.transforms as T
    from lightly.transforms.solarize import RandomSolarization

    size = int(aug["crop_size"])
    rrc = aug.get("rrc", {}) or {}
    out: List[Any] = []
    if rrc.get("enabled", True):
        out.append(T.RandomResizedCrop(size, scale=(rrc.get("crop_min_scale", 0.08), rrc.get("crop_max_scale", 1.0)),
                                       interpolation=T.InterpolationMode.BICUBIC))
    else:
        out.append(T.Resize(size, interpolation=T.InterpolationMode.BICUBIC))
    cj = aug.get("color_jitter", {}) or {}
    if cj.get("prob"):
        out.append(T.RandomApply([T.ColorJitter(cj.get("brightness", 0), cj.get("contrast", 0),
                                                cj.get("saturation", 0), cj.get("hue", 0))], p=cj["prob"]))
    if (aug.get("grayscale", {}) or {}).get("prob"):
        out.append(T.RandomGrayscale(p=aug["grayscale"]["prob"]))
    blur = (aug.get("gaussian_blur", {}) or {}).get("prob")
    if blur:
        # solo-learn's GaussianBlur: sigma uniform in [0.1, 2.0] on the PIL image
        out.append(T.RandomApply([T.GaussianBlur(kernel_size=23, sigma=(0.1, 2.0))], p=blur))
    sol = (aug.get("solarization", {}) or {}).get("prob")
    if sol:
        out.append(RandomSolarization(prob=sol))
    eq = (aug.get("equalization", {}) or {}).get("prob")
    if eq:
        out.append(T.RandomEqualize(p=eq))
    flip = (aug.get("horizontal_flip", {}) or {}).get("prob")
    if flip:
        out.append(T.RandomHorizontalFlip(p=flip))
    out += [T.ToTensor(), T.Normalize(mean=mean, std=std)]
    return T.Compose(out)


class Views:
    """Image -> [view 0, view 1, ...]: each augmentation entry ``num_crops`` times, in order."""

    def __init__(self, pipelines):
        self.pipelines = pipelines

    def __call__(self, img):
        return [t(img) for t in self.pipelines]


def build_data(cfg):
    import torch
    from torchvision.datasets import ImageFolder

    data = cfg.data
    if str(data.get("dataset")) not in ("custom",) or str(data.get("format", "image_folder")) != "image_folder":
        raise ConfigError(f"data.dataset={data.get('dataset')!r}, data.format={data.get('format')!r}: the Lightning "
                          "trainer reads image folders (dataset: custom, format: image_folder)")
    if data.get("num_small_crops", 0):
        raise ConfigError("data.num_small_crops: the Lightning trainer trains two large views, no multicrop")
    mean, std = MEANS.get(str(data.dataset), (IMAGENET_MEAN, IMAGENET_STD))
    pipes = []
    for aug in _to_plain(cfg.augmentations):
        m = aug.get("mean", mean)
        s = aug.get("std", std)
        pipes += [view_transform(aug, m, s)] * int(aug.get("num_crops", 1))
    if len(pipes) != 2:
        raise ConfigError(f"augmentations: {len(pipes)} large crops; the Lightning trainer trains exactly two views")
    path = Path(str(data.train_path))
    if not path.is_dir():
        raise ConfigError(f"data.train_path={str(path)!r}: no such folder")
    ds = ImageFolder(str(path), transform=Views(pipes))
    workers = int(data.get("num_workers", 2))
    return torch.utils.data.DataLoader(ds, batch_size=int(cfg.optimizer.batch_size), shuffle=True, drop_last=True,
                                       num_workers=workers, persistent_workers=workers > 0, pin_memory=False), pipes


def build_module(cfg):
    from solo_sparse.lightning.methods import METHODS

    method = str(cfg.method)
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: the Lightning trainer runs {', '.join(METHODS)} "
                          "(other methods: train with solo-learn)")
    mk = dict(_to_plain(cfg.get("method_kwargs", {})) or {})
    keys = {"mocov2plus": ("proj_hidden_dim", "proj_output_dim", "queue_size", "temperature"),
            "byol": ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"),
            "simclr": ("proj_hidden_dim", "proj_output_dim", "temperature")}[method]
    extra = sorted(set(mk) - set(keys))
    if extra:
        raise ConfigError(f"method_kwargs: {', '.join(extra)} not read by the Lightning trainer's {method} "
                          f"(it reads {', '.join(keys)})")
    opt = cfg.optimizer
    sch = cfg.get("scheduler", {}) or {}
    if str(sch.get("name", "warmup_cosine")) not in ("warmup_cosine",):
        raise ConfigError(f"scheduler.name={sch.get('name')!r}: the Lightning trainer runs warmup_cosine")
    if str(sch.get("interval", "step")) != "step":
        raise ConfigError("scheduler.interval: the Lightning trainer steps the schedule per optimizer step")
    mom = cfg.get("momentum", {}) or {}
    name = str(cfg.backbone.name)
    return METHODS[method](
        **mk, backbone=name, cifar_stem=str(cfg.data.dataset) in ("cifar10", "cifar100"), optimizer=str(opt.name),
        lr=float(opt.lr), batch_size=int(opt.batch_size), weight_decay=float(opt.get("weight_decay", 0.0)),
        optimizer_kwargs=_to_plain(opt.get("kwargs", {})) or {}, warmup_epochs=float(sch.get("warmup_epochs", 0)),
        warmup_start_lr=float(sch.get("warmup_start_lr", 3e-5)), min_lr=float(sch.get("min_lr", 0.0)),
        base_tau=float(mom.get("base_tau", 0.99)), final_tau=float(mom.get("final_tau", 1.0)), cfg=cfg)


def run(cfg) -> Path:
    """Train ``cfg``; returns the last checkpoint written."""
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf

    from solo_sparse.lightning.callback import Sparsify, plugin_section

    L.seed_everything(int(cfg.get("seed", 5)))
    section = plugin_section(cfg)
    if section is not None and not (section.get("plugin") or section.get("plugins")):
        section = None               # `plugins: []`: no plugin
    loader, pipes = build_data(cfg)
    module = build_module(cfg)
    size = int(_to_plain(cfg.augmentations)[0]["crop_size"])
    callbacks: List[Any] = []
    if section is not None:
        callbacks.append(Sparsify(section=section, method=str(cfg.method), crop_order="calls", views=2,
                                  input_size=size))
    ck = cfg.get("checkpoint", {}) or {}
    if not ck.get("enabled", True):
        raise ConfigError("checkpoint.enabled: false — the Lightning trainer always writes the final checkpoint")
    version = "lt-" + "".join(random.Random().choices(string.ascii_lowercase + string.digits, k=8))
    out = Path(str(ck.get("dir", "trained_models"))) / version
    out.mkdir(parents=True, exist_ok=True)
    name = str(cfg.get("name", cfg.method))
    (out / "args.json").write_text(json.dumps({**OmegaConf.to_container(cfg, resolve=True), "host": "lightning"},
                                              indent=2, default=str))
    callbacks.append(ModelCheckpoint(dirpath=str(out), filename=f"{name}-{version}-ep={{epoch}}",
                                     auto_insert_metric_name=False, every_n_epochs=int(ck.get("frequency", 1)),
                                     save_top_k=-1 if ck.get("keep_prev", False) else 1, save_last=False,
                                     monitor=None))
    devices = cfg.get("devices", 1)
    devices = int(devices) if str(devices).isdigit() else devices
    trainer = L.Trainer(max_epochs=int(cfg.max_epochs), accelerator=str(cfg.get("accelerator", "auto")),
                        devices=devices, precision=cfg.get("precision", 32), callbacks=callbacks,
                        strategy=str(cfg.get("strategy", "auto")), logger=None, num_sanity_val_steps=0,
                        log_every_n_steps=10, enable_model_summary=False,
                        accumulate_grad_batches=int(cfg.get("accumulate_grad_batches", 1) or 1))
    print(f"solo-sparse: host lightning (Lightly {_lightly_version()}): {cfg.method} on {cfg.data.train_path}, "
          f"{len(loader)} steps/epoch x {cfg.max_epochs} epochs" + (f", plugin section {section}" if section else ""),
          file=sys.stderr, flush=True)
    trainer.fit(module, loader)
    cks = sorted(out.glob("*.ckpt"), key=os.path.getmtime)
    if not cks:
        raise ConfigError(f"training wrote no checkpoint under {out}")
    return cks[-1]


def _lightly_version() -> str:
    try:
        import lightly

        return str(lightly.__version__)
    except ImportError:  # pragma: no cover
        return "?"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-path", "-cp", required=True)
    ap.add_argument("--config-name", "-cn", required=True)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as main_pretrain.py takes them")
    args = ap.parse_args(argv)
    try:
        cfg = compose(args.config_path, args.config_name, args.overrides)
        ck = run(cfg)
    except ConfigError as e:
        print(f"solo-sparse: {e}", file=sys.stderr)
        return 2
    print(f"solo-sparse: checkpoint {ck}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

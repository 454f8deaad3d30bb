"""Test helpers: a Lightning-free training loop calling the PluginHost hooks where the solo-learn binding does,
and the tiny image folder / config dir / script runner of the solo-learn integration tests."""
from pathlib import Path

import torch

from solo_sparse.core.plugin import Branch, ModelView, PluginHost
from solo_sparse.engine.sparsifier import ModuleGroup


def ema_like_solo(online, momentum, tau=0.9):
    # solo-learn's MomentumUpdater: pairs parameters by position and *replaces* .data
    for op, mp in zip(online.parameters(), momentum.parameters()):
        mp.data = tau * mp.data + (1 - tau) * op.data


def make_host(plugin, online, momentum=None, steps_per_epoch=4, total_steps=40, log=None):
    fam = "momentum" if momentum is not None else "shared"
    view = ModelView({"backbone": ModuleGroup("backbone", online, momentum)}, fam, method="toy", log=log)
    host = PluginHost([plugin])
    host.setup(view)
    host.set_schedule_info(steps_per_epoch, total_steps)
    host.on_train_start()
    return host


def train(host, online, momentum, opt, steps, seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, 3, 8, 8, generator=g)
        host.on_step_start()
        host.on_crop(Branch(crop=0))
        loss = online(x).pow(2).mean() - online(x.flip(3)).mean()
        loss.backward()
        host.after_backward()
        opt.step()
        host.after_optimizer_step(opt)
        opt.zero_grad(set_to_none=True)
        if momentum is not None:
            ema_like_solo(online, momentum)
            host.after_momentum_update()


# ------------------------------------------------------------------ solo-learn script runs (integration tests)
ROOT = Path(__file__).resolve().parents[1]
FMNIST_CONFIGS = ROOT / "scripts" / "configs" / "fmnist"
#: overrides that shrink any fmnist config to a seconds-long run on the tiny image folder
TINY_RUN = ("++optimizer.batch_size=4", "++max_epochs=1", "++data.num_workers=0")


def make_image_folder(root, train_per_class=4, val_per_class=1, classes="abcde"):
    """train/ and val/ image folders of random 28x28 RGB PNGs (>= 5 classes: solo-learn's linear
    model reports top-5). Returns ``root``."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.rand(28, 28, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def solo_dir():
    import solo

    return Path(solo.__file__).resolve().parents[1]


def config_dir(tmp_path, **files):
    """``tmp_path/cfgs`` with the grey augmentation group and ``name=text`` YAML files."""
    cfgs = tmp_path / "cfgs"
    (cfgs / "augmentations").mkdir(parents=True, exist_ok=True)
    (cfgs / "augmentations" / "grey.yaml").write_text((FMNIST_CONFIGS / "augmentations" / "grey.yaml").read_text())
    for name, text in files.items():
        (cfgs / f"{name}.yaml").write_text(text)
    return cfgs


def linear_config(plugin=None, extra=""):
    """The fmnist linear.yaml, with ``- solo_sparse: <plugin>`` added to its defaults when given."""
    text = (FMNIST_CONFIGS / "linear.yaml").read_text()
    if plugin:
        text = text.replace("  - _self_\n", f"  - _self_\n  - solo_sparse: {plugin}\n", 1)
    return text + extra


def run_solo(script, cfgs, name, *overrides, cwd, tiny=True):
    """solo-learn's unchanged ``script`` (main_pretrain.py / main_linear.py) on ``cfgs/name``."""
    import subprocess
    import sys

    cmd = [sys.executable, str(solo_dir() / script), "--config-path", str(cfgs), "--config-name", name,
           *(TINY_RUN if tiny else ()), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=str(cwd), timeout=900)


def linear_overrides(data, ckpt, out):
    return [f"++data.train_path={data / 'train'}", f"++data.val_path={data / 'val'}", "++data.augmentations.crop_size=32",
            f"++pretrained_feature_extractor='{ckpt}'", f"++checkpoint.dir={out}"]


def assert_backbone_kept(sd, lin_dir, keys=None):
    """Every ``backbone.*`` key of ``sd`` (or ``keys``) is in the linear run's checkpoint, equal."""
    lin_sd = torch.load(next(lin_dir.rglob("*.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    keys = [k for k in sd if k.startswith("backbone.")] if keys is None else keys
    assert keys
    for k in keys:
        assert k in lin_sd, k
        assert torch.equal(lin_sd[k], sd[k]), k

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


def snapshot(online, momentum, opt, host):
    """Deep copies of what a checkpoint holds: both encoders, the optimizer, the plugin state."""
    import copy

    return [copy.deepcopy(x) for x in (online.state_dict(), momentum.state_dict(), opt.state_dict(), host.state_dict())]


def resume(plugin, online, momentum, saved, lr=0.05):
    """A fresh host for ``plugin`` on freshly built encoders, every state of ``snapshot`` loaded (in the
    order the binding restores them): ``(host, optimizer)``, ready to continue training."""
    host = make_host(plugin, online, momentum)
    online.load_state_dict(saved[0])
    momentum.load_state_dict(saved[1])
    opt = torch.optim.SGD(online.parameters(), lr=lr, momentum=0.9)
    opt.load_state_dict(saved[2])
    host.load_state_dict(saved[3])
    return host, opt


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


def load_script(name):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    """``tmp_path/cfgs`` with the fmnist augmentation group (grey.yaml 32 px, grey64.yaml 64 px) and ``name=text`` YAML files."""
    cfgs = tmp_path / "cfgs"
    (cfgs / "augmentations").mkdir(parents=True, exist_ok=True)
    for aug in (FMNIST_CONFIGS / "augmentations").glob("*.yaml"):
        (cfgs / "augmentations" / aug.name).write_text(aug.read_text())
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


# ------------------------------------------------------------------ plain-Lightning mirror of the binding
def tiny_solo_cfg(method="byol", optimizer="sgd", base_tau=0.9, final_tau=1.0, max_epochs=2, **solo_sparse):
    """A seconds-long solo-learn config (resnet18, 32 px, batch 4) with ``solo_sparse`` as its section."""
    from omegaconf import OmegaConf

    kwargs = {"momentum": 0.9}
    if optimizer == "lars":
        kwargs.update({"eta": 0.02, "clip_lr": True, "exclude_bias_n_norm": True})
    cfg = {
        "method": method, "name": "t", "backbone": {"name": "resnet18", "kwargs": {}},
        "method_kwargs": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32,
                          "temperature": 0.2, "queue_size": 16},
        "momentum": {"base_tau": base_tau, "final_tau": final_tau, "classifier": False},
        "data": {"dataset": "custom", "num_classes": 3, "num_large_crops": 2, "num_small_crops": 0},
        "optimizer": {"name": optimizer, "batch_size": 4, "lr": 0.05, "classifier_lr": 0.1, "weight_decay": 1e-4,
                      "kwargs": kwargs},
        "scheduler": {"name": "none"}, "max_epochs": max_epochs, "accumulate_grad_batches": 1,
        "performance": {"disable_channel_last": True}, "strategy": "auto",
    }
    if solo_sparse:
        cfg["solo_sparse"] = solo_sparse
    return OmegaConf.create(cfg)


def crop_loader(n=16, crops=2, size=32, batch=4):
    """solo-learn's batch layout ``(indexes, [crops], targets)`` over fixed random images, unshuffled."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, size, size, generator=g) for _ in range(crops)]
    y = torch.arange(n) % 3
    ds = [(i, [x[i] for x in xs], y[i]) for i in range(n)]
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


def plain_loader(n=32, size=8, batch=4):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(n, 3, size, size, generator=g)),
                                       batch_size=batch, shuffle=False)


def trainer(max_epochs=2, callbacks=(), **kw):
    import lightning.pytorch as pl

    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks), **kw)


_MIRROR = {}


def mirror_class():
    """``BindingMirror``: a plain LightningModule (no solo-learn) that calls the PluginHost hooks where
    ``solo_sparse.binding.wrap`` does — ``on_before_optimizer_step`` -> after_backward, after the real
    ``optimizer_step`` -> after_optimizer_step, ``on_train_batch_end`` -> solo-learn's momentum update
    (once per optimizer step; parameters paired by position, ``.data`` replaced) then after_momentum_update,
    epoch and checkpoint hooks — on a TinyNet online/momentum pair."""
    if "cls" in _MIRROR:
        return _MIRROR["cls"]
    import lightning.pytorch as pl

    class BindingMirror(pl.LightningModule):
        def __init__(self, plugin, optimizer="sgd", lr=0.05, tau=0.9, seed=0):
            super().__init__()
            import copy

            from conftest import TinyNet

            torch.manual_seed(seed)
            self.backbone = TinyNet()
            self.momentum_backbone = copy.deepcopy(self.backbone)
            for p in self.momentum_backbone.parameters():
                p.requires_grad = False
            self.opt_name, self.lr, self.tau = optimizer, lr, tau
            self.metrics = {}
            self.host = PluginHost([plugin])
            self.host.setup(ModelView({"backbone": ModuleGroup("backbone", self.backbone, self.momentum_backbone)},
                                      "momentum", method="mirror", log=self.metrics.update))
            self.last_step = 0

        @property
        def plugin(self):
            return self.host.plugins[0]

        def training_step(self, batch, batch_idx):
            x = batch[0]
            self.host.on_step_start()
            self.host.on_crop(Branch(crop=0))
            z1 = self.backbone(x)
            self.host.on_crop(Branch(crop=1))
            z2 = self.backbone(x.flip(3))
            with torch.no_grad():
                self.host.on_crop(Branch(crop=0, encoder="momentum"))
                t1 = self.momentum_backbone(x)
                self.host.on_crop(Branch(crop=1, encoder="momentum"))
                t2 = self.momentum_backbone(x.flip(3))
            return (z1 - t2).pow(2).mean() + (z2 - t1).pow(2).mean() - 0.1 * z1.std(0).mean()

        def configure_optimizers(self):
            if self.opt_name == "adamw":
                return torch.optim.AdamW(self.parameters(), lr=self.lr * 0.1, weight_decay=0.05)
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr, momentum=0.9,
                                   weight_decay=1e-4)

        def on_before_optimizer_step(self, optimizer):
            self.host.after_backward()

        def optimizer_step(self, *args, **kwargs):
            out = super().optimizer_step(*args, **kwargs)
            self.host.after_optimizer_step(kwargs.get("optimizer", args[2] if len(args) > 2 else None))
            return out

        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.trainer.global_step > self.last_step:
                ema_like_solo(self.backbone, self.momentum_backbone, self.tau)
            self.last_step = self.trainer.global_step
            self.host.after_momentum_update()

        def on_train_start(self):
            import math

            tr = self.trainer
            acc = max(1, int(tr.accumulate_grad_batches or 1))
            self.host.set_schedule_info(max(1, math.ceil(tr.num_training_batches / acc)),
                                        int(tr.estimated_stepping_batches))
            self.host.on_train_start()
            self.last_step = 0

        def on_train_epoch_start(self):
            self.host.on_epoch_start(self.current_epoch)

        def on_train_epoch_end(self):
            self.host.on_epoch_end(self.current_epoch)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["solo_sparse"] = self.host.state_dict()

        def on_load_checkpoint(self, checkpoint):
            self.host.load_state_dict(checkpoint["solo_sparse"])

    _MIRROR["cls"] = BindingMirror
    return BindingMirror


def invariant_checker(sparsifier_of, clip_norm=None, score_check=None):
    """A Lightning callback that checks the weight-sparsity invariants at EVERY optimizer step:

    - inside ``optimizer.step``, right before the update (a torch step pre-hook, wrapping Lightning's closure
      when there is one: after backward, accumulation, AMP unscaling, the plugin hooks and gradient clipping —
      exactly what the optimizer uses): no pruned online gradient is non-zero, and with
      ``clip_norm`` the clipped gradients' total norm is ``clip_norm`` (the masked gradient was clipped, not
      a dense one masked afterwards); ``score_check(optimizer)`` runs there too when given;
    - right after the step (step post-hook; masks not yet updated): no pruned online weight is non-zero;
    - after the module's own ``on_train_batch_end`` (solo-learn's EMA update and the binding's re-mask): no
      pruned weight is non-zero in either encoder.

    ``sparsifier_of(pl_module)`` returns the plugin's WeightSparsifier. Counters: ``steps``, ``batches``.
    """
    import lightning.pytorch as pl

    class InvariantChecker(pl.Callback):
        def __init__(self):
            self.steps = self.post_steps = self.batches = 0
            self.norms = []
            self._handles = []

        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            opt = getattr(opt, "optimizer", opt)
            sp = sparsifier_of(pl_module)
            self._handles = [opt.register_step_pre_hook(lambda o, a, k: self._at_step(o, sp, a, k)),
                             opt.register_step_post_hook(lambda o, a, k: self._post(sp))]
            orig = pl_module.on_train_batch_end

            def batch_end(*args, **kwargs):
                orig(*args, **kwargs)
                self.batches += 1
                for enc in ("online", "momentum") if sp.has_momentum else ("online",):
                    n = sp.leaked(enc)
                    assert n == 0, f"batch {self.batches}: {n} pruned {enc} weights are non-zero after the EMA update"

            pl_module.on_train_batch_end = batch_end

        def _at_step(self, opt, sp, args, kwargs):
            """Lightning's default precision passes a closure (forward, backward, hooks, clipping) that
            ``step`` runs first: check after it. Under AMP the closure has already run: check now."""
            positional = len(args) > 1                   # args[0] is the optimizer itself
            closure = args[1] if positional else kwargs.get("closure")
            if closure is None:
                self._pre(opt, sp)
                return None

            def checked():
                loss = closure()
                self._pre(opt, sp)
                return loss

            if positional:
                return (args[0], checked, *args[2:]), kwargs
            return args, {**kwargs, "closure": checked}

        def _pre(self, opt, sp):
            self.steps += 1
            for L in sp:
                g = L.online.weight.grad
                if g is None:
                    continue
                bad = int((g[~L.mask("online")] != 0).sum())
                assert bad == 0, f"optimizer step {self.steps}: {bad} pruned gradient entries of {L.name} reached it"
            if clip_norm is not None:
                gs = [p.grad for grp in opt.param_groups for p in grp["params"] if p.grad is not None]
                norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in gs])))
                self.norms.append(norm)
                assert abs(norm - clip_norm) <= 1e-3 * clip_norm, \
                    f"optimizer step {self.steps}: clipped gradient norm {norm}, expected {clip_norm}"
            if score_check is not None:
                score_check(opt)

        def _post(self, sp):
            self.post_steps += 1
            n = sp.leaked("online")
            assert n == 0, f"optimizer step {self.steps}: the step itself made {n} pruned online weights non-zero"

        def on_train_end(self, trainer, pl_module):
            for h in self._handles:
                h.remove()

    return InvariantChecker()


#: a fake ``main_pretrain.py`` for the benchmark harness's tests (tools/test_bench.py, the Lightning host's bench
#: test): a ResNet-18 checkpoint in solo-learn's shape, gmp-style masks and plugin state with ``+solo_sparse=gmp``,
#: args.json, the event lines a run prints; ``++fail=yes`` exits 3
FAKE_PRETRAIN = r'''
import json, sys, pathlib, torch, torchvision
from solo_sparse.core import events
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and a.startswith("++"))
d = pathlib.Path(args["++checkpoint.dir"]) / "fake" / "0"
d.mkdir(parents=True, exist_ok=True)
seed = int(args.get("++seed", 0))
torch.manual_seed(seed)
net = torchvision.models.resnet18()
net.fc = torch.nn.Identity()
sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
state = {}
if "+solo_sparse=gmp" in sys.argv:
    for k in list(sd):
        if k.endswith("conv2.weight"):
            m = torch.rand(sd[k].shape) < 0.1
            sd[k] = sd[k] * m
            sd[k[:-len("weight")] + "weight_mask"] = m
    state = {"gmp": {"config": {"every": 20}, "step": 10, "epoch": 1, "extra": {}}}
if args.get("++nan") == "yes":          # a run that diverged without stopping (e.g. another host's)
    sd["backbone.conv1.weight"] = torch.full_like(sd["backbone.conv1.weight"], float("nan"))
if args.get("++overflow") == "yes":     # finite weights whose evaluation path overflows float32: 3e38 * (x_hat + 1)
    for p in ("weight", "bias"):
        sd[f"backbone.layer4.1.bn2.{p}"] = torch.full_like(sd[f"backbone.layer4.1.bn2.{p}"], 3e38)
(d / "args.json").write_text(json.dumps({"method": "fakemethod"}))
torch.save({"state_dict": sd, "solo_sparse": state, "epoch": 1}, d / "fake-ep=1.ckpt")
events.emit("synccp", "csi", 5, I=0.3, r=0.0, gap=0.3, note=" (rule literal: fires at r <= 0.02)")
events.emit("synccp", "schedule_start", 5, cause="CSI fired", note="; cubic ramp")
if "+solo_sparse=gmp" in sys.argv:     # what a gated run's monitor prints
    events.emit("cdg", "probe", 32, online_momentum_cos=0.91)
    events.emit("cdg", "pairs", 0, positives=0.8, random=0.2)
if args.get("++fail") == "yes":
    sys.exit(3)
'''

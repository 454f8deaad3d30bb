"""The Lightning host (``solo_sparse.lightning.Sparsify``) on Lightly modules, a few steps on tiny random data on CPU.

* the invariants at every step (tests/helpers.py ``invariant_checker``: no pruned gradient reaches the optimizer, the
  step revives no pruned weight, no pruned weight is non-zero after the batch) — and at every momentum-backbone
  forward: Lightly's modules run ``update_momentum`` at the *start* of ``training_step``, so a momentum encoder with
  its own masks (granet) would forward unmasked EMA values if the binding re-masked only after the batch;
* momentum encoders as sparse as the plugin says (gmp: the online masks; synccp: online + gap, nested; granet: its
  own density; sdclr: the damaged online encoder, its mask on the momentum copy);
* refusals before the first step, one line each: no backbone, an ambiguous one, a momentum plugin without a momentum
  encoder, a branch-dependent plugin without a crop order, two callbacks, a step-driving plugin, DDP without
  unused parameters for a plugin that leaves some;
* exact resume (train 4 epochs vs 2 + checkpoint + resume to 4: identical weights, masks, plugin state);
* a checkpoint of a Lightly-docs module (``Sequential`` of a ResNet's children) loads with ``load_backbone`` and packs
  into the zoo format;
* DDP (gloo, 2 CPU processes): the ranks hold identical masks and weights;
* the two hosts agree (solo-learn present): the same plugin and schedule give the same density trace and layer
  densities through solo-learn's wrapped method and through the Lightning trainer's module.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import needs_solo
from helpers import invariant_checker, make_image_folder, trainer

pytest.importorskip("lightly", reason="Lightly is not installed (pip install 'solo-sparse[lightly]')")
pytest.importorskip("lightning", reason="lightning is not installed")

import lightning.pytorch as L  # noqa: E402
from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402

from solo_sparse.core.config import ConfigError  # noqa: E402
from solo_sparse.core.plugin import Plugin  # noqa: E402
from solo_sparse.core.registry import _LOCAL, register_plugin  # noqa: E402
from solo_sparse.lightning import Sparsify  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ tiny Lightly modules
def tiny_backbone():
    """A ResNet-like ``Sequential`` (stem conv, two more convs, pooling), as Lightly's examples build backbones."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1))


class TinyMoCo(L.LightningModule):
    """Lightly's MoCo example: EMA at the start of training_step, query from view 0, key from view 1."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_backbone()
        self.projection_head = MoCoProjectionHead(32, 32, 16)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(memory_bank_size=(32, 16))

    def training_step(self, batch, batch_idx):
        update_momentum(self.backbone, self.backbone_momentum, m=0.5)       # a low m: visible EMA leaks
        update_momentum(self.projection_head, self.projection_head_momentum, m=0.5)
        x0, x1 = batch[0]
        query = self.projection_head(self.backbone(x0).flatten(start_dim=1))
        key = self.projection_head_momentum(self.backbone_momentum(x1).flatten(start_dim=1)).detach()
        return self.criterion(query, key)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


class TinyBYOL(L.LightningModule):
    """Lightly's BYOL example: both views through both encoders, in view order."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_backbone()
        self.projection_head = BYOLProjectionHead(32, 32, 16)
        self.prediction_head = BYOLPredictionHead(16, 32, 16)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, batch, batch_idx):
        update_momentum(self.backbone, self.backbone_momentum, m=0.5)
        update_momentum(self.projection_head, self.projection_head_momentum, m=0.5)
        x0, x1 = batch[0]
        p0, z0 = self.forward(x0), self.forward_momentum(x0)
        p1, z1 = self.forward(x1), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


class TinySimCLR(L.LightningModule):
    """Lightly's SimCLR example: one backbone call per view; ``concat`` forwards both views in one call."""

    def __init__(self, concat=False):
        super().__init__()
        self.backbone = tiny_backbone()
        self.projection_head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
        self.criterion = NTXentLoss(temperature=0.5)
        self.concat = concat

    def training_step(self, batch, batch_idx):
        x0, x1 = batch[0]
        if self.concat:
            z = self.projection_head(self.backbone(torch.cat([x0, x1])).flatten(start_dim=1))
            z0, z1 = z.chunk(2)
        else:
            z0, z1 = (self.projection_head(self.backbone(x).flatten(start_dim=1)) for x in (x0, x1))
        return self.criterion(z0, z1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


class Views(torch.utils.data.Dataset):
    """Fixed images; each view adds noise drawn from the global torch RNG (so data and augmentations depend on the
    random state, as real augmentations do)."""

    def __init__(self, n=16, size=8):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 3, size, size, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return [x + 0.1 * torch.randn_like(x), x.flip(2) + 0.1 * torch.randn_like(x)], i % 3


def loader(n=16, batch=8):
    return torch.utils.data.DataLoader(Views(n), batch_size=batch, shuffle=True, drop_last=True)


def fit(module, callbacks, epochs=3, data=None, **kw):
    tr = trainer(epochs, callbacks, **kw)
    tr.fit(module, data if data is not None else loader())
    return tr


def sparsifier_of(sp):
    return lambda m: sp.plugins[0].sparsifier


def momentum_forward_check(sp, module):
    """A forward pre-hook on the momentum backbone, after the binding's: no pruned momentum weight is non-zero when
    the momentum encoder forwards. Returns the list of forwards checked."""
    seen = []

    def hook(mod, args):
        if mod.training:
            n = sp.plugins[0].sparsifier.leaked("momentum")
            assert n == 0, f"momentum forward {len(seen)}: {n} pruned momentum weights are non-zero"
            seen.append(1)

    class Hooker(L.Callback):
        def setup(self, trainer, pl_module, stage=None):
            module.backbone_momentum.register_forward_pre_hook(hook)

    return Hooker(), seen


# ------------------------------------------------------------------------------ invariants and densities
SCHEDULES = {
    "gmp": {"final_density": 0.2, "start": 1, "end": 4, "every": 1},
    "synccp": {"final_density": 0.2, "start": 1, "end": 4, "every": 1, "distribution": "uniform",
               "regrow_fraction": 0.2, "density_gap": 0.3},
    "granet": {"final_density": 0.2, "start": 1, "end": 4, "every": 1, "distribution": "uniform",
               "regrow_fraction": 0.2, "momentum_final_density": 0.5},
    "sdclr": {"density": 0.2},
}
#: (module, plugin, momentum density the plugin gives, or None for no momentum encoder)
CASES = [(TinyMoCo, "gmp", 0.2), (TinyMoCo, "synccp", 0.5), (TinyMoCo, "granet", 0.5), (TinyBYOL, "synccp", 0.5),
         (TinyBYOL, "sdclr", None), (TinySimCLR, "gmp", None)]


@pytest.mark.parametrize("cls,plugin,mom_density", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_lightly_module_keeps_the_invariants_at_every_step(cls, plugin, mom_density):
    torch.manual_seed(0)
    module = cls()
    sp = Sparsify(plugin, **SCHEDULES[plugin])
    chk = invariant_checker(sparsifier_of(sp))
    extra = []
    seen = []
    if hasattr(module, "backbone_momentum"):
        hooker, seen = momentum_forward_check(sp, module)
        extra.append(hooker)
    fit(module, [sp, *extra, chk])
    p = sp.plugins[0]
    s = p.sparsifier
    assert chk.steps == chk.post_steps == 6 and chk.batches == 6 and p.step == 6
    assert s.density("online") == pytest.approx(0.2, abs=0.02)
    assert sp.metrics["solo_sparse/density/online"] == pytest.approx(s.density("online"))
    assert sp.metrics["solo_sparse/embedding_erank"] >= 1.0          # the collapse watch on the projection head
    if hasattr(module, "backbone_momentum"):
        assert len(seen) >= 6                       # every momentum forward was checked
        if plugin == "sdclr":                       # damage=online: the momentum copy carries the online mask
            assert all(torch.equal(m, s.masks("momentum")[k]) for k, m in s.masks("online").items())
        else:
            assert s.density("momentum") == pytest.approx(mom_density, abs=0.02)
        if plugin == "synccp":                      # nested: the online mask lies inside the momentum mask
            assert all(bool((on <= mo).all()) for on, mo in zip(s.masks("online").values(),
                                                                 s.masks("momentum").values()))
    # the layers are the backbone's convs but the stem (SDCLR prunes the stem too), named as the module names them
    assert [L.name for L in s] == (["backbone.0"] if plugin == "sdclr" else []) + ["backbone.3", "backbone.6"]


def test_accumulation_and_clipping_see_masked_gradients():
    """Gradient accumulation (2 batches per step) and clipping: the binding masks the accumulated gradient once per
    optimizer step, before Lightning clips it (the clipped norm is the masked gradient's), as under solo-learn."""
    torch.manual_seed(0)
    module = TinyMoCo()
    sp = Sparsify("granet", **SCHEDULES["granet"])
    chk = invariant_checker(sparsifier_of(sp), clip_norm=1e-3)
    fit(module, [sp, chk], epochs=6, accumulate_grad_batches=2, gradient_clip_val=1e-3)
    assert chk.steps == 6 and chk.batches == 12 and sp.plugins[0].step == 6
    assert sp.plugins[0].sparsifier.density("online") == pytest.approx(0.2, abs=0.02)


def test_steps_the_amp_grad_scaler_skips_count_as_the_trainer_counts_them():
    """fp16 AMP: GradScaler skips the optimizer step while its scale overflows the gradients (no post-hook runs);
    the plugin's step still follows the trainer's global_step (as under solo-learn), so its schedule ends where the
    trainer does."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = TinySimCLR()
    sp = Sparsify("gmp", **SCHEDULES["gmp"])
    init = 2.0 ** 28
    scaler = torch.amp.GradScaler("cpu", init_scale=init)     # overflows at first: the first steps are skipped
    tr = fit(module, [sp], epochs=6, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    skipped = round(math.log2(init / scaler.get_scale()))
    real = tr.global_step - skipped
    assert 0 < skipped < tr.global_step and real > 0, (skipped, tr.global_step)
    assert sp.plugins[0].step == tr.global_step == 12
    assert sp.plugins[0].sparsifier.density("online") == pytest.approx(0.2, abs=0.02)


def test_a_diverged_step_stops_the_fit_naming_the_plugin():
    from solo_sparse.core.plugin import TrainingDiverged

    torch.manual_seed(0)
    module = TinySimCLR()
    with torch.no_grad():
        module.projection_head[0].weight.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"not finite since step 0 \(epoch 0\), 3 steps in a row, with "
                                               r"plugin\(s\) 'gmp'"):
        fit(module, [Sparsify("gmp", **SCHEDULES["gmp"])])


def test_a_patience_of_0_lets_a_diverged_fit_go_on_with_one_warning():
    torch.manual_seed(0)
    module = TinySimCLR()
    with torch.no_grad():
        module.projection_head[0].weight.fill_(float("inf"))
    sp = Sparsify("gmp", nonfinite_patience=0, **SCHEDULES["gmp"])
    with pytest.warns(RuntimeWarning, match=r"nonfinite_patience=0: never stop"):
        tr = fit(module, [sp])
    assert tr.global_step == sp.plugins[0].step > 3 and sp.host.nonfinite_patience == 0


def test_sdclr_damages_crop_1_of_a_shared_encoder_module_in_call_order():
    torch.manual_seed(0)
    module = TinySimCLR()
    sp = Sparsify("sdclr", density=0.2, crop_order="calls")
    states = []

    class Rec(L.Callback):
        def setup(self, trainer, pl_module, stage=None):
            pl_module.backbone[3].register_forward_pre_hook(
                lambda m, a: states.append(bool(m.ss_damaged)) if m.training else None)

    fit(module, [sp, Rec()], epochs=1)
    assert states == [False, True, False, True]          # 2 steps: crop 0 dense, crop 1 damaged


def test_pytorch_lightning_trainer_as_in_lightlys_examples():
    """Lightly's examples import ``pytorch_lightning``: the same Sparsify is a callback of that Trainer too."""
    pl = pytest.importorskip("pytorch_lightning")
    torch.manual_seed(0)
    sp = Sparsify("gmp", **SCHEDULES["gmp"])
    tr = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[sp])

    class PLMoCo(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.inner = TinyMoCo()
            self.backbone, self.backbone_momentum = self.inner.backbone, self.inner.backbone_momentum

        def training_step(self, batch, batch_idx):
            return self.inner.training_step(batch, batch_idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    tr.fit(PLMoCo(), loader())
    s = sp.plugins[0].sparsifier
    assert s.density("online") == pytest.approx(0.2, abs=0.02) and s.leaked("online") == s.leaked("momentum") == 0


# ------------------------------------------------------------------------------ refusals
class NoBackbone(TinySimCLR):
    def __init__(self):
        super().__init__()
        self.trunk = self.backbone
        del self.backbone


class TwoBackbones(TinySimCLR):
    def __init__(self):
        super().__init__()
        self.encoder = tiny_backbone()


@pytest.fixture
def momentum_only_plugin():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        pass

    @register_plugin
    class MomentumOnly(Plugin):
        name = "test_momentum_only"
        families = ("momentum",)
        branch_independent = True
        Config = Cfg

    yield MomentumOnly
    _LOCAL.pop(MomentumOnly.name, None)


@pytest.fixture
def unused_params_plugin():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        pass

    @register_plugin
    class LeavesUnused(Plugin):
        name = "test_leaves_unused"
        leaves_parameters_unused = True
        branch_independent = True
        Config = Cfg

    yield LeavesUnused
    _LOCAL.pop(LeavesUnused.name, None)


def _refused(module, callbacks, match, **kw):
    with pytest.raises(ConfigError, match=match) as e:
        fit(module, callbacks, epochs=1, **kw)
    assert "\n" not in str(e.value)                 # one line
    return str(e.value)


def test_refusals_before_the_first_step(momentum_only_plugin, tmp_path):
    steps = []

    class Count(L.Callback):
        def on_train_batch_start(self, *a):
            steps.append(1)

    msg = _refused(NoBackbone(), [Sparsify("gmp"), Count()], "has no backbone attribute")
    assert "backbone='<attribute>'" in msg
    _refused(TwoBackbones(), [Sparsify("gmp"), Count()], "ambiguous")
    _refused(TinySimCLR(), [Sparsify("gmp", backbone="trunk"), Count()], "has no module 'trunk'")
    _refused(TinySimCLR(), [Sparsify("test_momentum_only"), Count()], "needs a momentum encoder")
    _refused(TinySimCLR(), [Sparsify("gmp", momentum_backbone="teacher"), Count()], "has no module 'teacher'")
    _refused(TinySimCLR(), [Sparsify("sdclr", density=0.2), Count()], "depends on which view")
    _refused(TinySimCLR(), [Sparsify("gmp"), Sparsify("synccp"), Count()], "2 Sparsify callbacks")
    _refused(TinyBYOL(), [Sparsify("sdclr", damage="momentum", density=0.2, backbone="backbone",
                                   momentum_backbone="projection_head"), Count()], "is not a copy")
    assert steps == []                                   # nothing trained
    # a module already driven by another Sparsify (a second fit with a new callback)
    m = TinySimCLR()
    fit(m, [Sparsify("gmp", final_density=0.5, start=0, end=1, every=1)], epochs=1)
    _refused(m, [Sparsify("gmp")], "already driven by another Sparsify")
    # a config error is refused when the callback is made, before any Trainer exists
    with pytest.raises(ConfigError, match="final_density"):
        Sparsify("gmp", final_density=2.0)
    with pytest.raises(ConfigError, match="crop_order"):
        Sparsify("gmp", crop_order="sometimes")


def test_gating_needs_the_crop_order_and_step_drivers_are_refused():
    import torchvision

    class ResNetSimCLR(TinySimCLR):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.resnet18()
            self.backbone.fc = nn.Identity()

    msg = _refused(ResNetSimCLR(), [Sparsify("cdg", method="simclr")], "depends on which view")
    assert "crop_order='calls'" in msg and "sparsify.crop(i)" in msg
    _refused(ResNetSimCLR(), [Sparsify("interloss", method="simclr")], "runs the whole training step")


def test_crop_order_calls_is_checked_at_every_step():
    _refused(TinySimCLR(concat=True), [Sparsify("sdclr", density=0.2, crop_order="calls")],
             "called the online backbone 1 time")
    # the same module with explicit crops: one call holding both views is not one view; a context-mode module that
    # forgets a crop is refused at its first backbone call
    _refused(TinySimCLR(), [Sparsify("sdclr", density=0.2, crop_order="context")], "outside `with sparsify.crop")


def test_crop_context_manager_routes_views():
    from solo_sparse.lightning import crop

    class Explicit(TinySimCLR):
        def training_step(self, batch, batch_idx):
            x0, x1 = batch[0]
            with crop(self, 1):               # views forwarded out of order: the context says which is which
                z1 = self.projection_head(self.backbone(x1).flatten(start_dim=1))
            with crop(self, 0):
                z0 = self.projection_head(self.backbone(x0).flatten(start_dim=1))
            return self.criterion(z0, z1)

    torch.manual_seed(0)
    module = Explicit()
    sp = Sparsify("sdclr", density=0.2, crop_order="context")
    states = []

    class Rec(L.Callback):
        def setup(self, trainer, pl_module, stage=None):
            pl_module.backbone[3].register_forward_pre_hook(
                lambda m, a: states.append(bool(m.ss_damaged)) if m.training else None)

    fit(module, [sp, Rec()], epochs=1)
    assert states == [True, False, True, False]
    with crop(TinySimCLR(), 0):               # no Sparsify drives it: a no-op
        pass


def test_ddp_without_unused_parameters_is_refused(unused_params_plugin):
    class Strategy:
        _ddp_kwargs = {}

    class Tr:
        strategy = Strategy()
        callbacks = []

    sp = Sparsify("test_leaves_unused")
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true") as e:
        sp.setup(Tr(), TinySimCLR(), "fit")
    assert "\n" not in str(e.value)
    Strategy._ddp_kwargs = {"find_unused_parameters": True}
    Sparsify("test_leaves_unused").setup(Tr(), TinySimCLR(), "fit")        # accepted


class ResNetBYOL(TinyBYOL):
    """Lightly's BYOL on a torchvision ResNet-18 (``fc`` = Identity), the backbone gating plugins convert."""

    def __init__(self):
        import torchvision

        super().__init__()
        self.backbone = torchvision.models.resnet18()
        self.backbone.fc = nn.Identity()
        self.projection_head = BYOLProjectionHead(512, 32, 16)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)


@pytest.mark.slow
@pytest.mark.parametrize("plugin,params", [("cdg", {}), ("dgnet_dual", {})])
def test_gating_plugins_with_the_view_order_of_the_calls(plugin, params):
    """A gating plugin on a Lightly module that forwards the views in order: the backbones are converted, the gates
    train in their own optimizer group, each view takes its own path (cdg: branch a1 for view 0, a2 for view 1;
    dgnet_dual: view 0 gated, view 1 dense)."""
    torch.manual_seed(0)
    module = ResNetBYOL() if plugin == "cdg" else type("ResNetSimCLR", (TinySimCLR,), {})()
    if plugin != "cdg":
        import torchvision

        module.backbone = torchvision.models.resnet18()
        module.backbone.fc = nn.Identity()
        module.projection_head = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 16))
    sp = Sparsify(plugin, **params, method="byol" if plugin == "cdg" else "simclr", crop_order="calls",
                  input_size=64)
    groups = []

    class Groups(L.Callback):
        def on_train_start(self, trainer, pl_module):
            groups.extend(g.get("name") for g in trainer.optimizers[0].param_groups)

    fit(module, [sp, Groups()], epochs=1, data=torch.utils.data.DataLoader(Views(n=4, size=64), batch_size=2))
    p = sp.plugins[0]
    assert p.step == 2
    gate_groups = [g for g in groups if g and g.startswith(f"solo_sparse_{plugin}")]
    assert gate_groups or plugin == "dgnet_dual"     # dgnet: gates share the lr unless gate_lr_scale != 1
    keys = " ".join(sp.metrics)
    if plugin == "cdg":
        assert "sparsity/a1" in keys and "sparsity/a2" in keys, keys
    else:
        assert "gate_density" in keys or "flops" in keys, keys


# ------------------------------------------------------------------------------ exact resume
def _state(module, sp):
    sd = {k: v.clone() for k, v in module.state_dict().items()}
    return sd, sp.host.state_dict()


def _equal(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("cls,plugin,params", [
    (TinyBYOL, "synccp", {"final_density": 0.2, "start": "csi", "csi_warmup": 1, "every": 1, "csi_ramp": 4,
                          "csi_timeout": 3, "end": 8, "distribution": "uniform", "regrow_fraction": 0.2}),
    (TinySimCLR, "gmp", {"final_density": 0.2, "start": 1, "end": 7, "every": 2})])
def test_resume_is_exact(tmp_path, cls, plugin, params):
    torch.manual_seed(0)
    a, spa = cls(), Sparsify(plugin, **params)
    fit(a, [spa], epochs=4)
    full = _state(a, spa)

    torch.manual_seed(0)
    b, spb = cls(), Sparsify(plugin, **params)

    class Interrupt(L.Callback):                # the same 4-epoch run, stopped after epoch 2
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    tr = fit(b, [spb, Interrupt()], epochs=4)
    assert spb.plugins[0].step == 4
    ck = tmp_path / "half.ckpt"
    tr.save_checkpoint(ck)
    saved = torch.load(ck, weights_only=True)                   # weights_only-safe
    assert {"solo_sparse", "solo_sparse_rng", "solo_sparse_host"} <= set(saved)
    torch.manual_seed(123)                                       # a fresh module: everything comes from the file
    c, spc = cls(), Sparsify(plugin, **params)
    trainer(4, [spc]).fit(c, loader(), ckpt_path=str(ck))
    assert spc.plugins[0].step == 8
    _equal(full, _state(c, spc))
    if plugin == "synccp":
        assert spc.plugins[0].trigger_step is not None


def test_resume_refuses_another_plugin_config(tmp_path):
    torch.manual_seed(0)
    sched = {"final_density": 0.5, "start": 0, "end": 1, "every": 1}
    m, sp = TinySimCLR(), Sparsify("gmp", **sched)
    tr = fit(m, [sp], epochs=1)
    tr.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(ConfigError, match="different config"):
        trainer(2, [Sparsify("gmp", **{**sched, "final_density": 0.3})]).fit(
            TinySimCLR(), loader(), ckpt_path=str(tmp_path / "a.ckpt"))


# ------------------------------------------------------------------------------ checkpoints for evaluation and the zoo
@pytest.mark.slow
def test_lightly_docs_checkpoint_loads_with_load_backbone_and_packs_into_the_zoo(tmp_path):
    import torchvision

    from solo_sparse.tools.evaluate import load_backbone
    from solo_sparse.tools.inputs import read_checkpoint

    class DocsMoCo(TinyMoCo):
        def __init__(self):
            super().__init__()
            resnet = torchvision.models.resnet18()
            self.backbone = nn.Sequential(*list(resnet.children())[:-1])
            self.projection_head = MoCoProjectionHead(512, 32, 16)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    torch.manual_seed(0)
    m = DocsMoCo()
    sp = Sparsify("gmp", init_density=0.5, final_density=0.2, start=0, end=1, every=1)
    data = torch.utils.data.DataLoader(Views(n=2, size=32), batch_size=2)
    tr = fit(m, [sp], epochs=1, data=data)
    path = tmp_path / "docs.ckpt"
    tr.save_checkpoint(path)
    ck = read_checkpoint(path)
    assert "backbone.layer1.0.conv1.weight_mask" in ck["state_dict"]
    assert "momentum_backbone.layer4.1.conv2.weight_mask" in ck["state_dict"]
    assert "projector.layer.0.weight" in ck["state_dict"] or any(k.startswith("projector.") for k in ck["state_dict"])
    net, info = load_backbone(str(path))
    assert info["density"] == pytest.approx(0.2, abs=0.01) and info["masked_layers"] == 19
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), m.backbone(x).flatten(1), atol=1e-5)
    # the zoo's packer reads it like a solo-learn checkpoint
    from helpers import load_script

    bz = load_script("build_zoo")
    from solo_sparse import zoo

    out = tmp_path / "entry.safetensors"
    bz.pack_checkpoint(path, out, fp16=False, method="moco")
    state, masks, meta = zoo.read_backbone(out)
    znet = zoo.build_module(state, masks, meta).eval()
    with torch.no_grad():
        assert torch.allclose(znet(x), net(x), atol=1e-5)


def test_the_trainers_modules_record_where_their_encoders_are_without_a_plugin():
    """A dense run of the Lightning trainer (no Sparsify) still reads under solo-learn's names: both encoders are
    found (the benchmark's momentum-density and training-MACs columns), MoCo's queues travel in the checkpoint."""
    from solo_sparse.core.checkpoint import solo_naming
    from solo_sparse.lightning.methods import BYOL, MoCoV2Plus

    for cls, kw in ((MoCoV2Plus, {"queue_size": 16}), (BYOL, {"pred_hidden_dim": 32})):
        m = cls(proj_hidden_dim=32, proj_output_dim=16, **kw)
        ck = {"state_dict": m.state_dict()}
        m.on_save_checkpoint(ck)
        groups = {k.split(".")[0] for k in solo_naming(ck)["state_dict"]}
        assert {"backbone", "momentum_backbone", "projector", "momentum_projector"} <= groups
        assert ("moco_queues" in ck) == (cls is MoCoV2Plus)


# ------------------------------------------------------------------------------ DDP
class RankDump(L.Callback):
    """Each rank writes its masks, weights and plugin step at the end of training (ddp_spawn pickles it)."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        sp = next(cb for cb in trainer.callbacks if isinstance(cb, Sparsify))
        s = sp.plugins[0].sparsifier
        torch.save({"online": s.masks("online"), "momentum": s.masks("momentum"),
                    "weights": {k: v.detach().clone() for k, v in pl_module.named_parameters()},
                    "step": sp.plugins[0].step}, os.path.join(self.out_dir, f"r{trainer.global_rank}.pt"))


@pytest.mark.slow
def test_ddp_ranks_agree(tmp_path):
    torch.manual_seed(0)
    sp = Sparsify("synccp", **SCHEDULES["synccp"])
    tr = L.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[sp, RankDump(str(tmp_path))])
    tr.fit(TinyMoCo(), loader(n=32, batch=8))
    r0, r1 = (torch.load(tmp_path / f"r{i}.pt", weights_only=True) for i in (0, 1))
    assert r0["step"] == r1["step"] == 6
    _equal(r0["online"], r1["online"])
    _equal(r0["momentum"], r1["momentum"])
    for k, v in r0["weights"].items():      # parameters of both encoders (BN statistics are per rank's data)
        assert torch.allclose(v, r1["weights"][k], atol=1e-6), k
    on = r0["online"]
    assert sum(int(m.sum()) for m in on.values()) / sum(m.numel() for m in on.values()) == pytest.approx(0.2, abs=0.02)


# ------------------------------------------------------------------------------ the two hosts agree
def traced(plugin):
    """The online density after every optimizer step of ``plugin`` (its schedule trace)."""
    trace = []
    inner = plugin.after_optimizer_step

    def after(opt):
        inner(opt)
        trace.append(round(plugin.sparsifier.density("online"), 6))

    plugin.after_optimizer_step = after
    return trace


@needs_solo
@pytest.mark.slow
def test_hosts_agree_on_densities_flops_and_schedule():
    """gmp (ERK, explicit schedule) on MoCo v2+ through solo-learn's wrapped method and through the Lightning
    trainer's module (Lightly's pieces): the same per-step density trace, per-layer densities of both encoders and
    masked MACs."""
    from helpers import crop_loader, tiny_solo_cfg
    from omegaconf import OmegaConf
    from solo.methods import MoCoV2Plus

    import solo_sparse
    from solo_sparse.engine.flops import count_macs
    from solo_sparse.lightning.methods import MoCoV2Plus as LightlyMoCo

    sched = {"final_density": 0.1, "distribution": "erk", "start": 1, "end": 5, "every": 1}
    cfg = OmegaConf.to_container(tiny_solo_cfg("mocov2plus", max_epochs=3))
    cfg["solo_sparse"] = {"plugin": "gmp", **sched}
    torch.manual_seed(0)
    solo_model = solo_sparse.wrap(MoCoV2Plus)(OmegaConf.create(cfg))
    p_solo = solo_model.solo_sparse.plugins[0]
    t_solo = traced(p_solo)
    trainer(3).fit(solo_model, crop_loader(n=8, batch=4, size=16))

    torch.manual_seed(0)
    lt = LightlyMoCo(proj_hidden_dim=32, proj_output_dim=16, queue_size=16, temperature=0.2, lr=0.05, batch_size=4)
    sp = Sparsify("gmp", **sched, method="mocov2plus", crop_order="calls")
    p_lt = sp.plugins[0]
    t_lt = traced(p_lt)
    data = torch.utils.data.DataLoader([([x, x.flip(2)], 0) for x in torch.randn(8, 3, 16, 16)], batch_size=4)
    trainer(3, [sp]).fit(lt, data)

    assert t_solo == t_lt and len(t_solo) == 6 and t_solo[-1] == pytest.approx(0.1, abs=1e-3)
    assert p_solo.sparsifier.layer_densities("online") == p_lt.sparsifier.layer_densities("online")
    assert p_solo.sparsifier.layer_densities("momentum") == p_lt.sparsifier.layer_densities("momentum")
    macs = [count_macs(net, (1, 3, 32, 32)).ratio for net in (solo_model.backbone, lt.backbone)]
    assert macs[0] == pytest.approx(macs[1], rel=1e-9) and macs[0] < 0.5


# ------------------------------------------------------------------------------ the trainer on a YAML
@pytest.mark.slow
def test_lightning_trainer_runs_a_solo_learn_yaml(tmp_path):
    """``python -m solo_sparse.lightning.train`` on the main job's MoCo v2+ YAML with the gmp line: a checkpoint in
    the common format that evaluation reads (one epoch, batch 4, 16 px)."""
    import subprocess

    from solo_sparse.tools.evaluate import load_backbone
    from solo_sparse.tools.runner import lightning_command, newest_checkpoint

    data = make_image_folder(tmp_path / "img", train_per_class=2)
    cmd = lightning_command(ROOT / "scripts" / "configs" / "fmnist" / "mocov2plus.yaml", name="t", run_dir=tmp_path / "run",
                            train_path=data / "train",
                            overrides=["++max_epochs=1", "++optimizer.batch_size=4", "++data.num_workers=0",
                                       "++method_kwargs.queue_size=16", "++scheduler.warmup_epochs=0",
                                       "augmentations.0.crop_size=16", "augmentations.1.crop_size=16",
                                       "+solo_sparse=gmp", "++solo_sparse.final_density=0.5", "++solo_sparse.start=0",
                                       "++solo_sparse.end=1", "++solo_sparse.every=1"])
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "host lightning" in r.stderr
    ck = newest_checkpoint(tmp_path / "run")
    assert (ck.parent / "args.json").exists()
    net, info = load_backbone(str(ck))
    assert info["density"] == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------ the benchmark harness on either host
@pytest.mark.slow
def test_bench_trains_through_the_lightning_host_and_keeps_hosts_apart(tmp_path, monkeypatch):
    """``solo-sparse bench --host lightning`` (the main job without solo-learn): the trainer command replaces
    main_pretrain.py (here a fake that writes a checkpoint in the common format), rows and the table say the host,
    solo-learn rows keep their fingerprints, and a row of one host is never reused for the other."""
    import json
    import sys

    from helpers import FAKE_PRETRAIN as FAKE

    import solo_sparse.tools.bench.harness as harness  # where Bench.run_pretrain looks the name up
    from solo_sparse.tools.bench import Bench, Suite
    from solo_sparse.tools.runner import lightning_command

    repo = tmp_path / "repo"
    (repo / "scripts" / "suites").mkdir(parents=True)
    (repo / "cfg.yaml").write_text("method: x\n")
    suite = repo / "scripts" / "suites" / "toy.yaml"
    suite.write_text('suite: toy\ndata: tiny\nsize: 32\nseeds: 1\nrandom_init: false\n'
                     'runs:\n  - id: gmp\n    config: cfg.yaml\n    overrides: ["+solo_sparse=gmp"]\n')
    make_image_folder(tmp_path / "data" / "tiny", train_per_class=4, val_per_class=2)
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE)
    solo = tmp_path / "solo"
    solo.mkdir()
    (solo / "main_pretrain.py").write_text(FAKE)
    seen = []

    def fake_command(config, **kw):
        cmd = lightning_command(config, **kw)
        seen.append(cmd)
        assert cmd[1:3] == ["-m", "solo_sparse.lightning.train"]
        return [sys.executable, str(fake), *cmd[3:]]

    monkeypatch.setattr(harness, "lightning_command", fake_command)
    out_solo, out_lt = tmp_path / "results" / "toy", tmp_path / "results" / "toy-lightning"
    b_solo = Bench(Suite.load(suite), data_root=tmp_path / "data", out=out_solo, solo_dir=solo, log=print)
    assert b_solo.host == "solo-learn"
    spec = b_solo.suite.runs[0]
    assert b_solo.fingerprint(spec, 0) == json.dumps(
        [json.loads(b_solo.fingerprint(spec, 0))[0], [], ["+solo_sparse=gmp"], [], 0, 32, "pretrain", None, None,
         f"plugins={b_solo.plugin_digest(spec)}"])                # no host entry: solo-learn's form
    b_solo.run()
    b_lt = Bench(Suite.load(suite), data_root=tmp_path / "data", out=out_lt, log=print, host="lightning")
    assert b_lt.fingerprint(spec, 0) != b_solo.fingerprint(spec, 0)
    res = b_lt.run()
    row = res["rows"]["gmp/seed0"]
    assert seen and row["status"] == "ok" and row["host"] == "lightning" and not row.get("reused_from")
    assert row["density_online"] == pytest.approx(0.1, abs=0.02)
    assert res["meta"]["host"] == "lightning"
    assert "Trained through the lightning host" in (out_lt / "results.md").read_text()
    assert "<solo-learn>" not in row["command"] and "main_pretrain" not in row["command"]
    # and the solo-learn suite does not reuse the Lightning row either
    (out_solo / "results.json").unlink()
    b2 = Bench(Suite.load(suite), data_root=tmp_path / "data", out=out_solo, solo_dir=solo, log=print)
    assert not b2.run()["rows"]["gmp/seed0"].get("reused_from")

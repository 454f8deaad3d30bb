"""End-to-end with real solo-learn (skipped with a reason when it is not importable).

- a wrapped BYOL/SimCLR fits with Lightning on tiny generated data, masks hold in both encoders;
- the Hydra callback patches solo-learn's registries in place and validates;
- solo-learn's unchanged main_pretrain.py with '- solo_sparse: gmp' trains a sparse model, and its
  unchanged main_linear.py (same one line) loads the backbone with no missing key and keeps the zeros;
  a dense checkpoint is refused loudly by the gmp linear path.
"""
from pathlib import Path

import pytest
import torch
from conftest import HAS_SOLO, needs_solo
from helpers import FMNIST_CONFIGS, config_dir, make_image_folder, run_solo

pytestmark = needs_solo

ROOT = Path(__file__).resolve().parents[2]


def tiny_cfg(method="byol", **solo_sparse):
    from omegaconf import OmegaConf

    cfg = {
        "method": method, "name": "t", "backbone": {"name": "resnet18", "kwargs": {}},
        "method_kwargs": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32,
                          "temperature": 0.2, "queue_size": 16},
        "momentum": {"base_tau": 0.9, "final_tau": 1.0, "classifier": False},
        "data": {"dataset": "custom", "num_classes": 3, "num_large_crops": 2, "num_small_crops": 0},
        "optimizer": {"name": "sgd", "batch_size": 4, "lr": 0.05, "classifier_lr": 0.1, "weight_decay": 1e-4,
                      "kwargs": {"momentum": 0.9}},
        "scheduler": {"name": "none"}, "max_epochs": 2, "accumulate_grad_batches": 1,
        "performance": {"disable_channel_last": True}, "strategy": "auto",
    }
    if solo_sparse:
        cfg["solo_sparse"] = solo_sparse
    return OmegaConf.create(cfg)


def loader(n=16, crops=2, size=32):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 3, size, size, generator=g) for _ in range(crops)]
    y = torch.arange(n) % 3
    ds = [(i, [x[i] for x in xs], y[i]) for i in range(n)]
    return torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)


def fit(model, epochs=2):
    import lightning.pytorch as pl

    tr = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    tr.fit(model, loader())
    return tr


def test_import_changes_nothing_in_solo():
    import solo.methods as sm
    from solo.methods.base import BaseMethod

    before = dict(sm.METHODS), dict(BaseMethod._BACKBONES)
    import solo_sparse  # noqa: F401
    import solo_sparse.binding.wrap  # noqa: F401
    assert dict(sm.METHODS) == before[0] and dict(BaseMethod._BACKBONES) == before[1]


def test_wrapped_byol_fits_and_keeps_masks():
    from solo.methods import BYOL

    import solo_sparse

    cls = solo_sparse.wrap(BYOL, "gmp", final_density=0.2, start=1, end=6, every=1)
    model = cls(tiny_cfg())
    tr = fit(model)
    sp = model.solo_sparse.plugins[0].sparsifier
    assert model.solo_sparse.plugins[0].step == 8
    assert sp.density("online") == pytest.approx(0.2, abs=2e-3)
    assert sp.density("momentum") == pytest.approx(0.2, abs=2e-3)
    assert sp.leaked("online") == 0 and sp.leaked("momentum") == 0
    assert "solo_sparse/density/online" in tr.logged_metrics
    assert any(k.startswith("solo_sparse/layer_density/momentum/") for k in tr.logged_metrics)
    assert float(tr.logged_metrics["solo_sparse/embedding_erank"]) >= 1.0      # the collapse watch, every plugin
    # crop order seen by the plugin: online crops 0,1 then momentum crops 0,1 in every step
    assert model.solo_sparse.view.branch.encoder == "momentum"


def test_wrapped_shared_encoder_method_fits():
    from solo.methods import SimCLR

    import solo_sparse

    model = solo_sparse.wrap(SimCLR, "gmp", final_density=0.5, start=0, end=4, every=2)(tiny_cfg("simclr"))
    fit(model)
    sp = model.solo_sparse.plugins[0].sparsifier
    assert not sp.has_momentum and sp.density() == pytest.approx(0.5, abs=2e-3) and sp.leaked() == 0


def test_a_diverged_step_stops_the_fit_naming_the_plugin():
    from solo.methods import SimCLR

    import solo_sparse
    from solo_sparse.core.plugin import TrainingDiverged

    model = solo_sparse.wrap(SimCLR, "gmp", final_density=0.5, start=0, end=4, every=2)(tiny_cfg("simclr"))
    with torch.no_grad():
        model.backbone.conv1.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"not finite since step 0 \(epoch 0\), 3 steps in a row, "
                                               r"with plugin\(s\) 'gmp': at step 0 the method's loss nan"):
        fit(model)


def test_a_patience_of_0_lets_a_diverged_fit_go_on():
    from solo.methods import SimCLR

    import solo_sparse

    model = solo_sparse.wrap(SimCLR, "gmp", final_density=0.5, start=0, end=4, every=2, nonfinite_patience=0)(
        tiny_cfg("simclr"))
    with torch.no_grad():
        model.backbone.conv1.weight.fill_(float("nan"))
    with pytest.warns(RuntimeWarning, match=r"nonfinite_patience=0: never stop"):
        fit(model)
    assert model.solo_sparse.nonfinite_patience == 0 and model.solo_sparse.plugins[0].step > 3


@pytest.mark.parametrize("method,plugin,params", [
    ("byol", "synccp", {"final_density": 0.2, "start": 1, "end": 6, "every": 1, "distribution": "uniform"}),
    ("mocov2plus", "synccp", {"final_density": 0.2, "every": 1, "csi_warmup": 0, "csi_timeout": 2, "csi_ramp": 4}),
    ("simclr", "synccp", {"final_density": 0.2, "every": 1, "csi_tau": 0.5, "csi_warmup": 0, "csi_ramp": 4}),
    ("byol", "granet", {"final_density": 0.2, "start": 1, "end": 6, "every": 1}),
    ("byol", "sdclr", {"density": 0.2}),
    ("simclr", "sdclr", {"density": 0.2}),
])
def test_weight_sparsity_plugins_fit_with_solo_methods(method, plugin, params):
    import solo.methods as sm

    import solo_sparse

    model = solo_sparse.wrap(sm.METHODS[method], plugin, **params)(tiny_cfg(method))
    fit(model, epochs=2)
    p = model.solo_sparse.plugins[0]
    sp = p.sparsifier
    assert sp.density("online") == pytest.approx(0.2, abs=3e-3)
    assert sp.leaked("online") == 0 and (not sp.has_momentum or sp.leaked("momentum") == 0)
    if plugin == "synccp":
        assert p.trigger_step is not None
        if sp.has_momentum:
            assert sp.density("momentum") == pytest.approx(0.5, abs=3e-3)
            for k, m in sp.masks("online").items():
                assert not (m & ~sp.masks("momentum")[k]).any()


def test_hooks_once_per_optimizer_step_under_gradient_accumulation():
    """Scores/gradient masking see the accumulated gradient once per optimizer step, never a partial one."""
    import lightning.pytorch as pl
    from solo.methods import BYOL

    import solo_sparse
    from solo_sparse import register_plugin

    gmp_cls = solo_sparse.get_plugin("gmp")
    calls = []

    class Counting(gmp_cls):
        name = "counting_test"

        def after_backward(self):
            g = self.sparsifier.layers[0].online.weight.grad
            calls.append(("backward", self.step, None if g is None else float(g.abs().sum())))
            super().after_backward()

        def after_optimizer_step(self, optimizer):
            calls.append(("step", self.step, None))
            super().after_optimizer_step(optimizer)

    register_plugin(Counting)
    model = solo_sparse.wrap(BYOL, "counting_test", final_density=0.5, start=0, end=2, every=1)(tiny_cfg())
    tr = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2)
    tr.fit(model, loader())                      # 4 batches -> 2 optimizer steps
    kinds = [c[0] for c in calls]
    assert kinds == ["backward", "step", "backward", "step"]
    assert all(c[2] for c in calls if c[0] == "backward")


def test_sdclr_damage_momentum_refused_for_shared_encoder_method():
    from solo.methods import SimCLR

    import solo_sparse
    from solo_sparse.core.config import ConfigError

    with pytest.raises(ConfigError, match="damage=momentum but method 'simclr' has no momentum encoder"):
        solo_sparse.wrap(SimCLR, "sdclr", damage="momentum")(tiny_cfg("simclr"))


def test_checkpoint_carries_plugin_state_weights_only(tmp_path):
    from solo.methods import BYOL

    import solo_sparse

    cls = solo_sparse.wrap(BYOL, "gmp", final_density=0.3, start=1, end=4, every=1)
    model = cls(tiny_cfg())
    tr = fit(model, epochs=1)
    p = tmp_path / "m.ckpt"
    tr.save_checkpoint(p)
    ck = torch.load(p, map_location="cpu", weights_only=True)
    assert ck["solo_sparse"]["gmp"]["step"] == 4
    assert "backbone.layer1.0.conv1.weight_mask" in ck["state_dict"]
    assert "momentum_backbone.layer1.0.conv1.weight_mask" in ck["state_dict"]
    # resume: masks and plugin step come back
    model2 = cls(tiny_cfg())
    import lightning.pytorch as pl

    tr2 = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
    tr2.fit(model2, loader(), ckpt_path=str(p))
    assert model2.solo_sparse.plugins[0].step == 8
    assert model2.solo_sparse.plugins[0].sparsifier.density() == pytest.approx(0.3, abs=2e-3)


def test_install_from_config_patches_in_place_and_validates():
    import solo.methods as sm
    from solo.methods.base import BaseMethod

    from solo_sparse.binding.install import install_from_config
    from solo_sparse.binding.wrap import unwrap
    from solo_sparse.core.config import ConfigError

    methods, backbones = sm.METHODS, BaseMethod._BACKBONES
    orig = methods["byol"]
    try:
        install_from_config(tiny_cfg(plugin="gmp", final_density=0.5))
        assert sm.METHODS is methods and BaseMethod._BACKBONES is backbones
        assert methods["byol"] is not orig and unwrap(methods["byol"]) is orig
        install_from_config(tiny_cfg(plugin="gmp", final_density=0.5))  # idempotent: no double wrap
        assert methods["byol"].__mro__[2] is orig
        with pytest.raises(ConfigError, match="unknown key"):
            install_from_config(tiny_cfg(plugin="gmp", bogus=1))
        with pytest.raises(ConfigError, match="not to 'linear'"):
            install_from_config(tiny_cfg("linear", plugin="gmp"))
    finally:
        methods["byol"] = orig


def test_family_refusal_and_ddp_refusal():
    from solo.methods import BYOL, SimCLR

    import solo_sparse
    from solo_sparse import register_plugin
    from solo_sparse.core.config import ConfigError

    gmp_cls = solo_sparse.get_plugin("gmp")

    class MomentumOnly(gmp_cls):
        name = "momentum_only_test"
        families = ("momentum",)

    class Unused(gmp_cls):
        name = "unused_params_test"
        leaves_parameters_unused = True

    register_plugin(MomentumOnly)
    register_plugin(Unused)
    with pytest.raises(ConfigError, match="does not support method 'simclr' .*families: momentum"):
        solo_sparse.wrap(SimCLR, "momentum_only_test")(tiny_cfg("simclr"))
    cfg = tiny_cfg()
    cfg.strategy = "ddp"
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        solo_sparse.wrap(BYOL, "unused_params_test")(cfg)


# ------------------------------------------------------------------------- unchanged solo-learn scripts
def _config(src: Path, dst: Path, plugin_line: bool, extra: str = ""):
    text = src.read_text()
    if plugin_line:
        text = text.replace("  - _self_\n", "  - _self_\n  - solo_sparse: gmp\n", 1)
    dst.write_text(text + extra)


@pytest.mark.skipif(not (HAS_SOLO and (ROOT / "scripts/configs/fmnist/byol.yaml").exists()), reason="configs")
def test_unchanged_main_pretrain_then_main_linear(tmp_path):
    image_folder = make_image_folder(tmp_path / "imgs")
    cfgs = config_dir(tmp_path)
    src = FMNIST_CONFIGS
    _config(src / "byol.yaml", cfgs / "pre.yaml", True,
            "\nsolo_sparse:\n  final_density: 0.25\n  start: 1\n  end: 3\n  every: 1\n")
    _config(src / "byol.yaml", cfgs / "dense.yaml", False)
    _config(src / "linear.yaml", cfgs / "lin.yaml", True)
    common = [f"++data.train_path={image_folder / 'train'}"]
    r = run_solo("main_pretrain.py", cfgs, "pre.yaml", *common, f"++checkpoint.dir={tmp_path / 'pre'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = next((tmp_path / "pre").rglob("*.ckpt"))
    state = torch.load(ck, map_location="cpu", weights_only=True)
    sd = state["state_dict"]
    masks = {k: v for k, v in sd.items() if k.endswith("weight_mask")}
    online = [v for k, v in masks.items() if k.startswith("backbone.")]
    assert online and sum(int(v.sum()) for v in online) / sum(v.numel() for v in online) == pytest.approx(0.25, abs=2e-3)
    for k, m in masks.items():
        w = sd[k.replace("weight_mask", "weight")]
        assert (w[~m] == 0).all(), k
    assert state["solo_sparse"]["gmp"]["step"] == 5  # 20 images / batch 4, one epoch

    lin_over = [f"++data.train_path={image_folder / 'train'}", f"++data.val_path={image_folder / 'val'}",
                "++data.augmentations.crop_size=32"]
    r = run_solo("main_linear.py", cfgs, "lin.yaml", *lin_over, f"++pretrained_feature_extractor='{ck}'",
                 f"++checkpoint.dir={tmp_path / 'lin'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "masked layers at density 0.2500" in r.stderr
    lin = torch.load(next((tmp_path / "lin").rglob("*.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    for k, m in masks.items():
        if k.startswith("backbone."):
            assert torch.equal(lin[k], m), k
            assert (lin[k.replace("weight_mask", "weight")][~m] == 0).all()

    # a dense checkpoint through the gmp linear path: missing mask keys are an error, not silence
    r = run_solo("main_pretrain.py", cfgs, "dense.yaml", *common, f"++checkpoint.dir={tmp_path / 'dense'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    dck = next((tmp_path / "dense").rglob("*.ckpt"))
    r = run_solo("main_linear.py", cfgs, "lin.yaml", *lin_over, f"++pretrained_feature_extractor='{dck}'",
                 f"++checkpoint.dir={tmp_path / 'lin2'}", cwd=tmp_path)
    assert r.returncode != 0 and "lacks" in r.stderr and "weight_mask" in r.stderr

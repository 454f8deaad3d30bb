"""IMP and RotNet with real solo-learn: the method registry, the plugin in a Lightning fit, the driver
over the unchanged main_pretrain.py (rounds, rewind, resume)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import needs_solo

from solo_sparse.core.config import ConfigError

pytestmark = needs_solo
ROOT = Path(__file__).resolve().parents[2]


def _rotnet_cfg(**solo_sparse):
    from test_solo_integration import tiny_cfg

    cfg = tiny_cfg("rotnet", **solo_sparse)
    cfg.data.num_large_crops = 1
    return cfg


def _fit1(model, epochs=1):
    import lightning.pytorch as pl
    from test_solo_integration import loader

    tr = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    tr.fit(model, loader(crops=1))
    return tr


def test_rotnet_registered_only_on_request_and_trains():
    import solo.methods as sm

    from solo_sparse.binding.install import install_from_config
    from solo_sparse.binding.methods import RotNet

    sm.METHODS.pop("rotnet", None)
    from omegaconf import OmegaConf

    assert install_from_config(OmegaConf.create({"method": "rotnet", "solo_sparse": {"plugins": []}})) == []
    assert sm.METHODS["rotnet"] is RotNet
    cfg = RotNet.add_and_assert_specific_cfg(_rotnet_cfg())
    model = RotNet(cfg)
    before = model.rotation_head.weight.detach().clone()
    tr = _fit1(model)
    assert not torch.equal(before, model.rotation_head.weight)
    assert "train_rot_loss" in tr.callback_metrics and "train_rot_acc" in tr.callback_metrics


def test_rotnet_refuses_multicrop():
    from solo_sparse.binding.methods import RotNet

    cfg = _rotnet_cfg()
    cfg.data.num_small_crops = 2
    with pytest.raises(ValueError, match="num_small_crops"):
        RotNet.add_and_assert_specific_cfg(cfg)


def test_rotnet_with_imp_masks_keeps_them(tmp_path):
    import solo_sparse
    from solo_sparse.binding.methods import RotNet
    from solo_sparse.engine.imp import global_magnitude_prune
    from solo_sparse.engine.maskio import save_masks
    from solo_sparse.engine.sparsifier import select_layers
    from solo_sparse.tools.evaluate import build_resnet

    net = build_resnet()
    layers = {f"backbone.{n}": m for n, m in select_layers(net, exclude_stem=False)}
    masks = global_magnitude_prune({k: m.weight for k, m in layers.items()},
                                   {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in layers.items()}, 0.7)
    f = save_masks(tmp_path / "m.safetensors", masks)
    cfg = RotNet.add_and_assert_specific_cfg(_rotnet_cfg())
    model = solo_sparse.wrap(RotNet, "imp", masks=str(f))(cfg)
    _fit1(model)
    sp = model.solo_sparse.plugins[0].sparsifier
    assert sp.density() == pytest.approx(0.3, abs=1e-3) and sp.leaked() == 0


def _cfg_dir(tmp_path):
    from helpers import FMNIST_CONFIGS, config_dir

    text = (FMNIST_CONFIGS / "mocov2plus_imp.yaml").read_text()
    return config_dir(tmp_path, imp=text, plain=text.replace("  - solo_sparse: imp\n", ""))   # the driver adds the group


@pytest.mark.skipif(not (ROOT / "scripts/configs/fmnist/mocov2plus_imp.yaml").exists(), reason="configs")
def test_stop_after_rewind_ends_a_real_fit_once_the_point_is_written(tmp_path):
    """What the IMP driver's replay relies on: the fit stops at the rewind step (4 steps per epoch here; rewind
    2 of a 3-epoch run), the rewind point is written, and the schedule was the 3-epoch run's."""
    import solo.methods as sm
    from test_solo_integration import fit, tiny_cfg

    import solo_sparse
    from solo_sparse.engine.imp import load_state

    out = tmp_path / "rewind.safetensors"
    model = solo_sparse.wrap(sm.METHODS["mocov2plus"], "imp", rewind=2, rewind_out=str(out),
                             stop_after_rewind=True)(tiny_cfg("mocov2plus"))
    tr = fit(model, epochs=3)
    assert out.exists() and load_state(out)[1]["step"] == "2"
    assert tr.global_step == 2 and model.solo_sparse.plugins[0].total_steps == 12


def test_imp_driver_over_unchanged_main_pretrain(tmp_path):
    from helpers import TINY_RUN, make_image_folder, run_solo, solo_dir

    from solo_sparse.engine.imp import load_state
    from solo_sparse.engine.maskio import load_masks
    from solo_sparse.tools.imp.driver import IMPDriver, IMPRun

    data = make_image_folder(tmp_path / "imgs") / "train"
    cfgs = _cfg_dir(tmp_path)
    over = [f"++data.train_path={data}", *TINY_RUN, "++method_kwargs.queue_size=16"]
    run = IMPRun(config=str(cfgs / "plain.yaml"), out=str(tmp_path / "imp"), rounds=2, rate=0.5, rewind="2",
                 overrides=over)
    st = IMPDriver(run, solo_dir(), "imp", log=lambda *_: None).run_all()
    assert [st["rounds"][k]["status"] for k in "012"] == ["done"] * 3
    assert [round(st["rounds"][k]["density"], 3) for k in "012"] == [1.0, 0.5, 0.25]
    assert "+solo_sparse=imp" in st["rounds"]["0"]["command"]
    rewind, meta = load_state(tmp_path / "imp" / "rewind.safetensors")
    assert meta["step"] == "2"
    # round 2's checkpoint: its masks are round 2's file, pruned weights zero in both encoders
    ck = torch.load(next((tmp_path / "imp" / "round_2").rglob("*.ckpt")), map_location="cpu", weights_only=True)
    m2 = load_masks(tmp_path / "imp" / "round_2" / "masks.safetensors")[0]
    sd = ck["state_dict"]
    for k, m in m2.items():
        assert torch.equal(sd[k + ".weight_mask"], m)
        assert (sd[k + ".weight"][~m] == 0).all() and (sd["momentum_" + k + ".weight"][~m] == 0).all()
    assert ck["solo_sparse"]["imp"]["config"]["init"].endswith("rewind.safetensors")
    m1 = load_masks(tmp_path / "imp" / "round_1" / "masks.safetensors")[0]
    assert all(not (m2[k] & ~m1[k]).any() for k in m2)   # nested: later rounds only remove

    # crash in round 2 after a checkpoint: the driver resumes in that round, from the checkpoint
    s = json.loads((tmp_path / "imp" / "imp.json").read_text())
    s["rounds"]["2"]["status"] = "training"
    (tmp_path / "imp" / "imp.json").write_text(json.dumps(s))
    st = IMPDriver(run, solo_dir(), "imp", log=lambda *_: None).run_all()
    assert st["rounds"]["2"]["status"] == "done" and "resume_from_checkpoint" in st["rounds"]["2"]["command"]
    assert "resume_from_checkpoint" not in st["rounds"]["1"]["command"]

    # a different config is refused; a bad mask file for the model names the layer
    with pytest.raises(ConfigError, match="different config"):
        IMPDriver(IMPRun(config=str(cfgs / "plain.yaml"), out=str(tmp_path / "imp"), rounds=3, rate=0.5,
                         rewind="2", overrides=over), solo_dir(), "imp")
    shutil.copy(tmp_path / "imp" / "round_1" / "masks.safetensors", tmp_path / "m.safetensors")
    from solo_sparse.engine.maskio import save_masks

    bad = dict(load_masks(tmp_path / "m.safetensors")[0])
    bad["backbone.layer1.0.conv1"] = torch.ones(64, 64, 1, 1, dtype=torch.bool)
    save_masks(tmp_path / "bad.safetensors", bad)
    r = run_solo("main_pretrain.py", cfgs, "imp.yaml", *over, f"++checkpoint.dir={tmp_path / 'bad'}",
                 f"++solo_sparse.masks='{tmp_path / 'bad.safetensors'}'", cwd=tmp_path, tiny=False)
    assert r.returncode != 0 and "'backbone.layer1.0.conv1' has mask shape" in r.stderr


# ------------------------------------------------------------------------------ DGNet-dual with solo-learn
def test_dgnet_dual_main_pretrain_then_main_linear(tmp_path):
    from helpers import (
        FMNIST_CONFIGS,
        assert_backbone_kept,
        config_dir,
        linear_config,
        linear_overrides,
        make_image_folder,
        run_solo,
    )

    data = make_image_folder(tmp_path / "imgs")
    cfgs = config_dir(tmp_path, pre=(FMNIST_CONFIGS / "vicreg_dgnet_dual_t30.yaml").read_text(),
                      lin=linear_config("dgnet_dual", "solo_sparse:\n  eval_path: dense\n"))

    def run(script, name, *over):
        return run_solo(script, cfgs, name, *over, cwd=tmp_path)

    r = run("main_pretrain.py", "pre.yaml", f"++data.train_path={data / 'train'}", f"++checkpoint.dir={tmp_path / 'pre'}")
    assert r.returncode == 0, r.stderr[-3000:]
    ck = next((tmp_path / "pre").rglob("*.ckpt"))
    state = torch.load(ck, map_location="cpu", weights_only=True)
    sd = state["state_dict"]
    assert "backbone.layer3.1.gate.w2" in sd and "backbone.layer3.1.bn2_g.running_var" in sd and "backbone.bn1_g.weight" in sd
    assert state["solo_sparse"]["dgnet_dual"]["config"]["target"] == 0.3
    r = run("main_linear.py", "lin.yaml", *linear_overrides(data, ck, tmp_path / "lin"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluating the dense path" in r.stderr
    assert_backbone_kept(sd, tmp_path / "lin")     # no gate or BN-branch key lost
    # a method without two-view symmetry is refused before training
    r = run("main_pretrain.py", "pre.yaml", f"++data.train_path={data / 'train'}", "method=mocov2plus",
            f"++checkpoint.dir={tmp_path / 'x'}")
    assert r.returncode != 0 and "two-view" in r.stderr

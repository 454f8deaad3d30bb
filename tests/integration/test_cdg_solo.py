"""CDG / CGNet / FBS with real solo-learn: wrapped methods fit, crops reach the right branches,
the optimizer gets the gate group, main_pretrain.py -> main_linear.py round trip loses no key."""
from pathlib import Path

import pytest
import torch
from conftest import needs_solo

pytestmark = needs_solo
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method,plugin,params", [
    ("simclr", "cdg", {"cg": 8}),
    ("byol", "cgnet", {}),
    ("mocov2plus", "fbs", {"density": 0.5}),
    ("mocov2plus", "cdg", {"ramp": "100%"}),
])
def test_wrapped_methods_fit_with_gates(method, plugin, params):
    import solo.methods as sm
    from test_solo_integration import fit, tiny_cfg

    import solo_sparse
    from solo_sparse.gating.cgnet import gated_convs

    model = solo_sparse.wrap(sm.METHODS[method], plugin, **params)(tiny_cfg(method))
    tau0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if n.endswith((".tau", ".phi"))}
    groups = model.configure_optimizers()
    opt = groups[0][0] if isinstance(groups, tuple) else groups
    opt = opt[0] if isinstance(opt, list) else opt
    names = [g.get("name") for g in opt.param_groups]
    assert f"solo_sparse_{plugin}_gates" in names
    tr = fit(model, epochs=1)
    m = tr.logged_metrics
    assert "solo_sparse/sparsity/a1" in m and "solo_sparse/mask_similarity" in m
    if "ramp" in params:     # the ramp resolved '100%' from the trainer and moved the target off 0
        assert 0.0 < float(m["solo_sparse/target_sparsity"]) <= 0.75
        plugin_obj = model.solo_sparse.plugins[0]
        assert plugin_obj._s_applied == pytest.approx(plugin_obj.s_at(plugin_obj.step))
    moved = [n for n, p in model.backbone.named_parameters() if n in tau0 and not torch.equal(p, tau0[n])]
    assert moved, "gate parameters did not train"
    if hasattr(model, "momentum_backbone"):
        assert len(gated_convs(model.momentum_backbone)) == 16


def test_cdg_main_pretrain_then_main_linear(tmp_path):
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
    cfgs = config_dir(tmp_path, pre=(FMNIST_CONFIGS / "simclr_cdg_cg8.yaml").read_text(),
                      lin=linear_config("cdg", ""))      # the one line: the layout comes from the checkpoint

    def run(script, name, *over):
        return run_solo(script, cfgs, name, *over, cwd=tmp_path)

    r = run("main_pretrain.py", "pre.yaml", f"++data.train_path={data / 'train'}", f"++checkpoint.dir={tmp_path / 'pre'}",
            "++solo_sparse.stages=[1,2,3]")
    assert r.returncode == 0, r.stderr[-3000:]
    ck = next((tmp_path / "pre").rglob("*.ckpt"))
    state = torch.load(ck, map_location="cpu", weights_only=True)
    sd = state["state_dict"]
    assert "backbone.layer3.1.conv2.tau" in sd and "backbone.layer4.1.conv2.tau" not in sd
    assert state["solo_sparse"]["cdg"]["config"]["cg"] == 8
    # main_linear.py with the line alone rebuilds stages [1, 2, 3] and cg 8 from the checkpoint
    r = run("main_linear.py", "lin.yaml", *linear_overrides(data, ck, tmp_path / "lin"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluating the branch a1 (gated) path" in r.stderr
    assert_backbone_kept(sd, tmp_path / "lin")
    # a linear override that contradicts pre-training is refused, naming both values
    r = run("main_linear.py", "lin.yaml", *linear_overrides(data, ck, tmp_path / "lin2"), "++solo_sparse.cg=4")
    assert r.returncode != 0 and "solo_sparse.cg=4 in the linear config" in r.stderr and "cg=8" in r.stderr, \
        r.stderr[-2000:]
    # bad input is refused before training: G not dividing a gated layer's channels, another method
    r = run("main_pretrain.py", "pre.yaml", f"++data.train_path={data / 'train'}", "++solo_sparse.groups=3",
            f"++checkpoint.dir={tmp_path / 'x'}")
    assert r.returncode != 0 and "groups=3" in r.stderr
    r = run("main_pretrain.py", "pre.yaml", f"++data.train_path={data / 'train'}", "method=swav",
            f"++checkpoint.dir={tmp_path / 'y'}")
    assert r.returncode != 0 and "two-view" in r.stderr

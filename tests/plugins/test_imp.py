"""IMP engine (global pruning, mask/state files, global-random and layer-permutation controls), the imp plugin, label re-training."""
import json

import pytest
import torch
from conftest import TinyNet
from helpers import make_host, train

from solo_sparse.core.config import ConfigError
from solo_sparse.engine.imp import global_magnitude_prune, load_state, save_state
from solo_sparse.engine.maskio import check_masks_match, load_masks, permuted_masks, save_masks
from solo_sparse.engine.maskio import density as total_density
from solo_sparse_plugins.imp import IMP, labelled


def _wm(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(8, 4, generator=g), "b": torch.randn(16, 4, 3, 3, generator=g) * 0.1}
    return w, {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}


def test_global_prune_removes_rate_of_remaining_smallest_globally():
    w, m = _wm()
    m1 = global_magnitude_prune(w, m, 0.2)
    total = sum(v.numel() for v in w.values())
    assert sum(int(v.sum()) for v in m1.values()) == total - round(0.2 * total)
    # global threshold: every kept weight is >= every pruned weight, across layers
    kept = torch.cat([w[k][m1[k]].abs() for k in w])
    pruned = torch.cat([w[k][~m1[k]].abs() for k in w])
    assert kept.min() >= pruned.max()
    # layer b has small weights: it loses far more than its share
    assert m1["b"].float().mean() < m1["a"].float().mean()
    # second round: 20% of the *remaining*, pruned ones stay pruned even if their weight grew back
    w2 = {k: v.clone() for k, v in w.items()}
    w2["b"][~m1["b"]] = 100.0
    m2 = global_magnitude_prune(w2, m1, 0.2)
    kept1 = sum(int(v.sum()) for v in m1.values())
    assert sum(int(v.sum()) for v in m2.values()) == kept1 - round(0.2 * kept1)
    for k in w:
        assert not (m2[k] & ~m1[k]).any()
    assert total_density(m2) == pytest.approx(0.64, abs=2 / total)


def test_global_prune_rejects_bad_rate_and_shapes():
    w, m = _wm()
    for r in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="rate"):
            global_magnitude_prune(w, m, r)
    with pytest.raises(ValueError, match="shape"):
        global_magnitude_prune({"a": w["a"], "b": w["a"]}, m, 0.2)


def test_permuted_masks_keep_per_layer_counts_and_differ():
    w, m = _wm()
    m1 = global_magnitude_prune(w, m, 0.5)
    p = permuted_masks(m1, seed=3)
    for k in m1:
        assert int(p[k].sum()) == int(m1[k].sum())
        assert p[k].shape == m1[k].shape
    assert any(not torch.equal(p[k], m1[k]) for k in m1)
    assert all(torch.equal(p[k], permuted_masks(m1, seed=3)[k]) for k in m1)  # seeded


def test_mask_file_round_trip_and_refusals(tmp_path):
    w, m = _wm()
    m1 = global_magnitude_prune(w, m, 0.3)
    f = save_masks(tmp_path / "m.safetensors", m1, round=1)
    back, meta = load_masks(f)
    assert all(torch.equal(back[k], m1[k]) for k in m1)
    assert meta["round"] == "1" and float(meta["density"]) == pytest.approx(total_density(m1))
    assert not (tmp_path / "m.safetensors.tmp").exists()
    with pytest.raises(ConfigError, match="no such file"):
        load_masks(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not safetensors")   # a pickle header is never unpickled
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_masks(tmp_path / "junk.safetensors")
    save_state(tmp_path / "s.safetensors", {"x": torch.ones(2)})
    with pytest.raises(ConfigError, match="not a solo-sparse mask file"):
        load_masks(tmp_path / "s.safetensors")


def test_check_masks_match_names_first_mismatch():
    shapes = {"backbone.l1": torch.Size([4, 3]), "backbone.l2": torch.Size([8, 4])}
    ok = {k: torch.ones(v, dtype=torch.bool) for k, v in shapes.items()}
    check_masks_match(ok, shapes)
    with pytest.raises(ConfigError, match="'backbone.l2' has mask shape"):
        check_masks_match({**ok, "backbone.l2": torch.ones(8, 5, dtype=torch.bool)}, shapes)
    with pytest.raises(ConfigError, match="no mask for layer 'backbone.l1'"):
        check_masks_match({"backbone.l2": ok["backbone.l2"]}, shapes)
    with pytest.raises(ConfigError, match="'backbone.zz' is not a masked layer"):
        check_masks_match({**ok, "backbone.zz": ok["backbone.l1"]}, shapes)


# ------------------------------------------------------------------------------ plugin
def _mask_file(tmp_path, net, density_rate=0.6, exclude_stem=False):
    from solo_sparse.engine.sparsifier import select_layers

    layers = {f"backbone.{n}": mod for n, mod in select_layers(net, exclude_stem=exclude_stem)}
    masks = global_magnitude_prune({k: m.weight for k, m in layers.items()},
                                   {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in layers.items()},
                                   density_rate)
    return save_masks(tmp_path / "masks.safetensors", masks), masks


def test_imp_plugin_fixed_masks_hold_in_both_encoders(tmp_path, tiny_pair):
    online, momentum = tiny_pair
    f, masks = _mask_file(tmp_path, online)
    p = IMP.from_params({"masks": str(f)})
    host = make_host(p, online, momentum)
    assert p.sparsifier.density("online") == pytest.approx(0.4, abs=1e-3)
    opt = torch.optim.SGD(online.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    train(host, online, momentum, opt, 12)
    for k, m in masks.items():
        assert torch.equal(p.sparsifier.masks("online")[k], m)
    assert p.sparsifier.leaked("online") == 0 and p.sparsifier.leaked("momentum") == 0
    # the stem is pruned by default (Caron et al. prune every conv)
    assert "backbone.conv1" in masks


def test_imp_plugin_refuses_mismatching_mask_file(tmp_path, tiny_pair):
    online, momentum = tiny_pair
    f, _ = _mask_file(tmp_path, TinyNet(c=8))
    with pytest.raises(ConfigError, match="layer 'backbone.conv1' has mask shape"):
        make_host(IMP.from_params({"masks": str(f)}), online, momentum)
    on2, mo2 = TinyNet(), TinyNet()
    f2, _ = _mask_file(tmp_path, on2, exclude_stem=True)
    with pytest.raises(ConfigError, match="no mask for layer 'backbone.conv1'"):
        make_host(IMP.from_params({"masks": str(f2)}), on2, mo2)


def test_imp_rewind_capture_then_reset(tmp_path, tiny_pair):
    online, momentum = tiny_pair
    out = tmp_path / "rewind.safetensors"
    p = IMP.from_params({"rewind": 3, "rewind_out": str(out)})
    host = make_host(p, online, momentum, steps_per_epoch=4, total_steps=8)
    opt = torch.optim.SGD(online.parameters(), lr=0.1)
    train(host, online, momentum, opt, 3)
    at3 = {k: v.clone() for k, v in online.state_dict().items()}
    assert out.exists() and p.captured
    train(host, online, momentum, opt, 3, seed=1)
    state, meta = load_state(out)
    assert meta["step"] == "3"
    for k, v in at3.items():
        if not k.endswith("weight_mask"):
            assert torch.equal(state[f"backbone.{k}"], v), k
    assert any(k.startswith("momentum_backbone.") for k in state)
    assert host.state_dict()["imp"]["extra"] == {"captured": True}

    # next round: fresh modules reset to the rewind point, then masked
    torch.manual_seed(9)
    on2, mo2 = TinyNet(), TinyNet()
    f, masks = _mask_file(tmp_path, on2)
    p2 = IMP.from_params({"masks": str(f), "init": str(out)})
    make_host(p2, on2, mo2)
    for k, m in masks.items():
        w = on2.get_submodule(k[len("backbone."):]).weight
        ref = at3[k[len("backbone."):] + ".weight"]
        assert torch.equal(w, ref * m)
    assert torch.equal(on2.bn1.running_mean, at3["bn1.running_mean"])


def test_stop_after_rewind_asks_the_trainer_to_stop_once_the_point_is_written(tmp_path):
    out = tmp_path / "rewind.safetensors"

    class Trainer:
        should_stop = False

    for stop in (False, True):
        online, momentum = TinyNet(), TinyNet()
        p = IMP.from_params({"rewind": 3, "rewind_out": str(out), "stop_after_rewind": stop})
        host = make_host(p, online, momentum, steps_per_epoch=4, total_steps=8)
        p.view.model = type("Module", (), {"_trainer": Trainer()})()
        train(host, online, momentum, torch.optim.SGD(online.parameters(), lr=0.1), 2)
        assert not p.view.model._trainer.should_stop and not out.exists()
        train(host, online, momentum, torch.optim.SGD(online.parameters(), lr=0.1), 1)
        assert out.exists() and p.view.model._trainer.should_stop is stop
        out.unlink()


def test_imp_rewind_beyond_run_refused(tmp_path, tiny_pair):
    online, momentum = tiny_pair
    p = IMP.from_params({"rewind": "3ep", "rewind_out": str(tmp_path / "r.safetensors")})
    with pytest.raises(ConfigError, match="beyond the end of this run"):
        make_host(p, online, momentum, steps_per_epoch=4, total_steps=8)


@pytest.mark.parametrize("params,match", [
    ({"granularity": "nm"}, "granularity"),
    ({"rewind": "10%"}, "rewind"),
    ({"rewind": -1}, "rewind"),
    ({"supervised_fraction": 1.5}, "supervised_fraction"),
    ({"masks": ""}, "masks"),
    ({"rate": 0.2}, "unknown key"),
    ({"stop_after_rewind": True}, r"stop_after_rewind=True: .*only with rewind_out set"),
    ({"stop_after_rewind": "yes", "rewind_out": "r.safetensors"}, "stop_after_rewind.*true or false"),
])
def test_imp_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        IMP.from_params(params)


def test_imp_init_file_for_another_model_refused(tmp_path, tiny_pair):
    online, momentum = tiny_pair
    save_state(tmp_path / "s.safetensors", {f"backbone.{k}": v for k, v in TinyNet(c=8).state_dict().items()})
    with pytest.raises(ConfigError, match="does not match the model"):
        make_host(IMP.from_params({"init": str(tmp_path / "s.safetensors")}), online, momentum)


def test_labelled_subset_is_fixed_and_sized():
    idx = torch.arange(20000)
    sel = labelled(idx, 0.1)
    assert abs(sel.float().mean().item() - 0.1) < 0.01
    assert torch.equal(sel, labelled(idx, 0.1))
    assert not labelled(idx, 0.0).any()


def test_semi_supervised_loss_reaches_backbone(tiny_pair):
    from solo_sparse.core.plugin import Branch, ModelView, PluginHost
    from solo_sparse.engine.sparsifier import ModuleGroup

    online, momentum = tiny_pair
    clf = torch.nn.Linear(64, 3)
    view = ModelView({"backbone": ModuleGroup("backbone", online, momentum)}, "momentum", classifier=clf)
    p = IMP.from_params({"supervised_fraction": 0.5})
    host = PluginHost([p])
    host.setup(view)
    view.batch = (torch.arange(16), torch.arange(16) % 3)
    host.on_crop(Branch(crop=0))
    online.train()
    online(torch.randn(16, 3, 8, 8))
    loss = host.extra_loss()
    assert loss is not None and loss.requires_grad
    loss.backward()
    assert online.conv1.weight.grad is not None and online.conv1.weight.grad.abs().sum() > 0
    # not the momentum branch
    host.on_crop(Branch(crop=0, encoder="momentum"))
    online(torch.randn(16, 3, 8, 8))
    assert host.extra_loss() is None


@pytest.mark.slow
def test_retrain_keeps_masks_and_learns(tmp_path):
    from solo_sparse.engine.sparsifier import select_layers
    from solo_sparse.tools.retrain import masked_resnet, retrain_supervised

    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    X = torch.randn(64, 3, 32, 32, generator=g) * 0.1 + y[:, None, None, None].float()   # separable
    net, _ = masked_resnet(None, None, 2)
    layers = {f"backbone.{n}": m for n, m in select_layers(net, exclude_stem=False)}
    masks = global_magnitude_prune({k: m.weight for k, m in layers.items()},
                                   {k: torch.ones_like(m.weight, dtype=torch.bool) for k, m in layers.items()}, 0.8)
    res = retrain_supervised(masks, None, (X, y), (X, y), epochs=4, batch_size=16, lr=0.01)
    assert res["density"] == pytest.approx(0.2, abs=1e-3)
    assert res["accuracy"] > 0.9


def test_imp_driver_refuses_changed_config_and_long_rewind(tmp_path):
    from solo_sparse.tools.imp.driver import IMPDriver, IMPRun

    cfg = tmp_path / "c.yaml"
    cfg.write_text("defaults:\n  - _self_\nmax_epochs: 2\nmethod: byol\n")
    IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o"), rounds=2), solo_dir=tmp_path, plugin="imp")
    st = json.loads((tmp_path / "o" / "imp.json").read_text())
    assert st["run"]["rate"] == 0.2
    with pytest.raises(ConfigError, match="different config.*rate: was 0.2, now 0.3"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o"), rounds=2, rate=0.3), solo_dir=tmp_path, plugin="imp")
    cfg.write_text("defaults:\n  - _self_\nmax_epochs: 3\nmethod: byol\n")
    with pytest.raises(ConfigError, match="config_sha256"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o"), rounds=2), solo_dir=tmp_path, plugin="imp")
    with pytest.raises(ConfigError, match="beyond the first round"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o2"), rewind="5ep"), solo_dir=tmp_path, plugin="imp")
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="rate"):
            IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o3"), rate=bad), solo_dir=tmp_path, plugin="imp")
    cfg.write_text("defaults:\n  - _self_\n  - solo_sparse: gmp\nmax_epochs: 3\n")
    with pytest.raises(ConfigError, match="needs the 'imp' plugin|IMP rounds need"):
        IMPDriver(IMPRun(config=str(cfg), out=str(tmp_path / "o4")), solo_dir=tmp_path, plugin="imp")


def test_state_digest_reads_the_content_not_the_bytes(tmp_path):
    """safetensors writes its metadata in hash-map order: two writes of one state may differ byte for byte; the
    digest (what a rewind replay is checked against) does not, and any changed tensor changes it."""
    from solo_sparse.engine.imp import state_digest

    st = {"backbone.a": torch.randn(3, 4), "backbone.n": torch.tensor(7), "momentum_backbone.a": torch.randn(2)}
    save_state(tmp_path / "1.safetensors", st, step=3, epoch=1, method="mocov2plus")
    save_state(tmp_path / "2.safetensors", dict(reversed(list(st.items()))), method="mocov2plus", epoch=1, step=3)
    assert state_digest(tmp_path / "1.safetensors") == state_digest(tmp_path / "2.safetensors")
    st["backbone.a"][0, 0] += 1e-6
    save_state(tmp_path / "3.safetensors", st, step=3, epoch=1, method="mocov2plus")
    assert state_digest(tmp_path / "3.safetensors") != state_digest(tmp_path / "1.safetensors")
    save_state(tmp_path / "4.safetensors", {**st, "backbone.a": st["backbone.a"].double()}, step=3, epoch=1,
               method="mocov2plus")
    assert state_digest(tmp_path / "4.safetensors") != state_digest(tmp_path / "3.safetensors")


def test_state_norms_measure_how_far_a_replayed_state_is(tmp_path):
    """What an inexact rewind replay is measured by: per-tensor L2 norms (floating tensors only) and the largest
    relative difference, with the tensor it is in; a tensor present on one side only is an infinite difference."""
    from solo_sparse.engine.imp import norms_difference, state_summary

    st = {"backbone.a": torch.full((2, 2), 3.0), "backbone.b": torch.ones(4), "backbone.n": torch.tensor(7)}
    save_state(tmp_path / "1.safetensors", st, step=3)
    want = state_summary(tmp_path / "1.safetensors")["norms"]
    assert want == {"backbone.a": 6.0, "backbone.b": 2.0}                         # the int counter is not a norm
    assert norms_difference(want, dict(want)) == (0.0, None)
    got = {**want, "backbone.b": 2.0 * (1 + 1e-4), "backbone.a": 6.0 * (1 - 1e-6)}
    diff, where = norms_difference(want, got)
    assert diff == pytest.approx(1e-4) and where == "backbone.b"
    assert norms_difference(want, {"backbone.a": 6.0}) == (float("inf"), "backbone.b")
    assert norms_difference(want, {**want, "backbone.c": 1.0}) == (float("inf"), "backbone.c")
    # the structure digest: blind to float values, not to the step, a dtype or an integer tensor
    base = state_summary(tmp_path / "1.safetensors")
    for name, st2, meta in [("floats", {**st, "backbone.b": st["backbone.b"] * 1.001}, {"step": 3}),
                            ("step", st, {"step": 4}), ("dtype", {**st, "backbone.b": st["backbone.b"].double()},
                                                       {"step": 3}),
                            ("counter", {**st, "backbone.n": torch.tensor(8)}, {"step": 3})]:
        save_state(tmp_path / f"{name}.safetensors", st2, **meta)
        other = state_summary(tmp_path / f"{name}.safetensors")
        assert other["sha256"] != base["sha256"], name
        assert (other["structure"] == base["structure"]) == (name == "floats"), name

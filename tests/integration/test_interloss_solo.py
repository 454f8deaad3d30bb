"""interloss with real solo-learn: every supported method trains; truncated steps leave deeper blocks
without gradient; the final-depth objective equals the method's own loss; stacking with synccp;
heads are checkpointed; bad input is refused at construction."""
import pytest
import torch
from conftest import needs_solo

pytestmark = needs_solo
METHODS = ["simclr", "mocov2plus", "byol", "vicreg", "barlow_twins"]


def _model(method, **params):
    import solo.methods as sm
    from test_solo_integration import tiny_cfg

    import solo_sparse

    return solo_sparse.wrap(sm.METHODS[method], "interloss", **params)(tiny_cfg(method))


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.arange(n), [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)], torch.arange(n) % 3]


def _quiet(model):
    model.log = lambda *a, **k: None
    model.log_dict = lambda *a, **k: None
    return model


@pytest.mark.parametrize("method", METHODS)
def test_methods_fit_and_heads_train(method):
    from test_solo_integration import fit

    model = _model(method)
    h0 = {n: p.detach().clone() for n, p in model.solo_sparse_modules.named_parameters()}
    tr = fit(model, epochs=1)
    moved = [n for n, p in model.solo_sparse_modules.named_parameters() if not torch.equal(p, h0[n])]
    assert any(n.startswith("interloss.heads.") for n in moved)
    if method in ("byol", "mocov2plus"):
        assert any(n.startswith("interloss.momentum_heads.") for n in moved), "momentum heads never followed"
    assert "solo_sparse/interloss/depth" in tr.logged_metrics
    # every head and queue is part of the checkpointed state
    sd = model.state_dict()
    assert "solo_sparse_modules.interloss.heads.1.2.0.weight" in sd
    if method == "mocov2plus":
        assert "solo_sparse_modules.interloss.queue_2" in sd


def test_the_draws_follow_the_runs_seed_unless_the_config_sets_one():
    import solo.methods as sm
    from test_solo_integration import tiny_cfg

    import solo_sparse

    def draws(run_seed, **params):
        cfg = tiny_cfg("simclr")
        cfg.seed = run_seed
        p = solo_sparse.wrap(sm.METHODS["simclr"], "interloss", **params)(cfg).solo_sparse.plugins[0]
        from solo_sparse.engine.interloss import draw_depth

        return p.draw_seed, [draw_depth(p.config.depths, p.config.probs, p.draw_seed, s) for s in range(40)]

    s1, d1 = draws(1)
    s2, d2 = draws(2)
    assert (s1, s2) == (1, 2) and d1 != d2                 # a suite's seeds draw differently (depth, crops)
    assert draws(0)[0] == 0 and draws(5, seed=3) == draws(9, seed=3)   # an explicit seed wins
    assert draws("2") == (2, d2) and draws(None)[0] == 0          # a command line's '2'; no seed: 0


def test_the_embedding_spread_is_logged_per_epoch_and_a_moco_collapse_warns_once(monkeypatch, capsys):
    from test_solo_integration import fit

    import solo_sparse_plugins.interloss as P

    monkeypatch.setattr(P, "COLLAPSE_COS", -1.0)             # any spread counts as collapsed: the warning path
    monkeypatch.setattr(P, "COLLAPSE_FROM_EPOCH", 1)
    model = _model("mocov2plus", hard_pairs=False)
    with pytest.warns(UserWarning, match=r"at epoch 1 the final embeddings of different images have mean cosine"):
        tr = fit(model, epochs=3)
    cos = float(tr.logged_metrics["solo_sparse/interloss/embedding_cos"])
    assert -1.0 <= cos <= 1.0
    assert capsys.readouterr().err.count("projection head is collapsing") == 1       # once, not every epoch


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_truncated_step_only_reaches_blocks_up_to_the_drawn_depth(method):
    model = _quiet(_model(method, weights=[1, 0, 0, 0], hard_pairs=False))   # always depth 1
    model.train()
    model.solo_sparse.on_step_start()
    loss = model.solo_sparse.training_step(model, _batch(), 0)
    loss.backward()
    bb = model.backbone
    assert bb.layer1[0].conv1.weight.grad is not None and bb.conv1.weight.grad is not None
    assert all(p.grad is None for s in ("layer2", "layer3", "layer4") for p in getattr(bb, s).parameters())
    assert all(p.grad is None for p in model.projector.parameters())
    heads = model.solo_sparse_modules["interloss"].heads
    assert all(p.grad is not None for p in heads["1"].parameters())
    assert all(p.grad is None for p in heads["2"].parameters())


@pytest.mark.parametrize("hard_pairs", [False, True])
def test_a_truncated_moco_step_leaves_the_host_on_the_online_branch(hard_pairs):
    model = _quiet(_model("mocov2plus", weights=[0, 1, 0, 0], hard_pairs=hard_pairs, hard_blocks=[1]))  # depth 2
    model.train()
    model.solo_sparse.on_step_start()
    seen = []
    model.solo_sparse.on_crop = (lambda f: lambda b: (seen.append(b.encoder), f(b))[1])(model.solo_sparse.on_crop)
    model.solo_sparse.training_step(model, _batch(), 0)
    assert "momentum" in seen and model.solo_sparse.view.branch.encoder == "online"


@pytest.mark.parametrize("method", METHODS)
def test_final_depth_objective_equals_the_methods_own_loss(method):
    import solo.methods as sm

    from solo_sparse.binding.objectives import classifier_loss, final_parts, objective
    from solo_sparse.engine.interloss import forward_maps, pool

    torch.manual_seed(0)
    model = _quiet(_model(method, hard_pairs=False)).train()
    batch = _batch(8)
    idx, X, y = batch
    queue = model.queue.clone() if method == "mocov2plus" else None
    solo_total = sm.METHODS[method].training_step(model, batch, 0)
    solo_total = solo_total["loss"] if isinstance(solo_total, dict) else solo_total
    if queue is not None:
        model.queue.copy_(queue)
        model.queue_ptr.zero_()
    m1, m2 = forward_maps(model.backbone, X[0], 4), forward_maps(model.backbone, X[1], 4)
    g1 = g2 = None
    if hasattr(model, "momentum_backbone"):
        with torch.no_grad():
            g1, g2 = forward_maps(model.momentum_backbone, X[0], 4), forward_maps(model.momentum_backbone, X[1], 4)
    ours, _ = objective(method, model, final_parts(model), m1[4], m2[4], g1 and g1[4], g2 and g2[4], idx)
    cls, _ = classifier_loss(model, torch.cat([pool(m1[4]), pool(m2[4])]), y.repeat(2))
    torch.testing.assert_close(ours + cls, solo_total, rtol=1e-4, atol=1e-5)


def test_stacked_with_synccp_masks_never_leak():
    import solo.methods as sm
    from test_solo_integration import fit, tiny_cfg

    import solo_sparse

    cfg = tiny_cfg("byol", plugins=["synccp", "interloss"],
                   synccp={"final_density": 0.3, "init_density": 0.6, "start": 0, "end": 6, "every": 2,
                           "density_gap": 0.2},
                   interloss={"num_crops": 2})
    model = sm.METHODS["byol"]
    model = solo_sparse.wrap(model)(cfg)
    assert [p.name for p in model.solo_sparse.plugins] == ["synccp", "interloss"]
    fit(model, epochs=2)
    sp = model.solo_sparse.plugins[0].sparsifier
    assert sp.leaked("online") == 0 and sp.leaked("momentum") == 0
    assert sp.density("online") == pytest.approx(0.3, abs=5e-3)
    assert model.solo_sparse.plugins[1].step == model.solo_sparse.plugins[0].step == 8


@pytest.mark.parametrize("method,extra,msg", [
    ("simsiam", {}, "method 'simsiam' is not supported"),
    ("simclr", {"num_small_crops": 2}, "exactly two large crops"),
])
def test_bad_input_refused_at_construction(method, extra, msg):
    import solo.methods as sm
    from test_solo_integration import tiny_cfg

    import solo_sparse
    from solo_sparse.core.config import ConfigError

    cfg = tiny_cfg(method)
    for k, v in extra.items():
        cfg.data[k] = v
    with pytest.raises((ConfigError, AssertionError, ValueError), match=msg):
        solo_sparse.wrap(sm.METHODS[method], "interloss")(cfg)


@pytest.mark.parametrize("precision,hard_pairs", [("32", True), ("bf16-mixed", False)])
def test_channels_last_and_mixed_precision(precision, hard_pairs):
    """channels_last inputs reach the stages; bf16 autocast runs the step (without hard pairs: with them,
    32 px images crop layer3's output to 1x1 and we saw rare non-finite bf16 conv outputs on CPU, see README)."""
    import lightning.pytorch as pl
    import solo.methods as sm
    from test_solo_integration import loader, tiny_cfg

    import solo_sparse

    torch.manual_seed(0)
    cfg = tiny_cfg("mocov2plus")
    cfg.performance.disable_channel_last = False
    model = solo_sparse.wrap(sm.METHODS["mocov2plus"], "interloss", partial_backprop=False,
                             hard_pairs=hard_pairs)(cfg)
    assert model.no_channel_last is False
    seen = []
    model.backbone.layer2.register_forward_hook(
        lambda m, i, o: seen.append((o.dtype, i[0].is_contiguous(memory_format=torch.channels_last))))
    losses = []
    plug = model.solo_sparse.plugins[0]
    log = plug.log
    plug.log = lambda m: (losses.extend(v for k, v in m.items() if "loss_d" in k), log(m))
    tr = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, precision=precision,
                    log_every_n_steps=1)
    tr.fit(model, loader())
    want = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    assert seen and all(dt == want for dt, _ in seen)
    assert any(cl for _, cl in seen), "stage inputs were never channels_last"
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(v)) for v in losses), losses


@pytest.mark.parametrize("method,keys,keyed", [("mocov2plus", "auto", True), ("byol", "key", True),
                                               ("mocov2plus", "online", False), ("simclr", "auto", False)])
def test_hard_pairs_are_scored_against_the_key_encoder_and_queue(monkeypatch, method, keys, keyed):
    """MoCo v2+ / BYOL (hard_pair_keys auto or key): queries from the online encoder, keys from the momentum
    encoder and head, negatives from the depth's queue (MoCo v2+: queue[1] for view-1 queries, queue[0] for
    view-2) — the paper's L_info; 'online' and methods without a key encoder score both views online."""
    from solo_sparse.engine import interloss as IL

    calls = {"keys": [], "online": 0}
    real_keys, real_online = IL.select_hard_pair_keys, IL.select_hard_pair

    def spy_keys(y1, y2, k1, k2, eq, ek, *a, **kw):
        calls["keys"].append((k1.detach().clone(), ek, a[-1] if len(a) >= 6 else kw.get("negatives")))
        return real_keys(y1, y2, k1, k2, eq, ek, *a, **kw)

    def spy_online(*a, **kw):
        calls["online"] += 1
        return real_online(*a, **kw)

    monkeypatch.setattr(IL, "select_hard_pair_keys", spy_keys)
    monkeypatch.setattr(IL, "select_hard_pair", spy_online)
    torch.manual_seed(0)
    model = _quiet(_model(method, weights=[1, 0, 0, 0], hard_pair_keys=keys)).train()   # depth 1: hard block 1
    plug = model.solo_sparse.plugins[0]
    queue = getattr(plug.mods, "queue_1", None)
    queue = None if queue is None else queue.clone()
    batch = _batch(8)
    model.solo_sparse.on_step_start()
    loss = model.solo_sparse.training_step(model, batch, 0)
    assert torch.isfinite(loss)
    if not keyed:
        assert calls["keys"] == [] and calls["online"] == 1
        return
    assert calls["online"] == 0 and len(calls["keys"]) == 1
    k1, ek, negs = calls["keys"][0]
    from solo_sparse.engine.interloss import forward_maps

    with torch.no_grad():
        torch.testing.assert_close(k1, forward_maps(model.momentum_backbone, batch[1][0], 1)[1])
    assert ek is plug.mods.momentum_heads["1"]
    if method == "mocov2plus":
        assert torch.equal(negs[0], queue[1]) and torch.equal(negs[1], queue[0])
    else:
        assert negs is None                  # BYOL keeps no queue: the other images' keys


def test_key_encoder_hard_pairs_refused_on_a_method_without_one():
    import solo.methods as sm
    from test_solo_integration import tiny_cfg

    import solo_sparse
    from solo_sparse.core.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        solo_sparse.wrap(sm.METHODS["simclr"], "interloss", hard_pair_keys="key")(tiny_cfg("simclr"))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("solo_sparse.hard_pair_keys='key': method 'simclr' has no key (momentum) encoder") and \
        msg.endswith("allowed here: auto, online"), msg

"""Every question a tool asks of a plugin goes through the contract (solo_sparse.core.plugin.Plugin): capability
values checked when a class is defined, the registry's capability query, and the answers a checkpoint's plugin state
gives the benchmark (dense-gradient share, run summary), the zoo bench (routes) and `solo-sparse flops` (preview)."""
from dataclasses import dataclass

import pytest
import torch

from solo_sparse.core import registry
from solo_sparse.core.plugin import Plugin
from solo_sparse.core.registry import available_plugins, get_plugin


@dataclass
class _Cfg:
    every: int = 10


@pytest.mark.parametrize("attrs,match", [
    ({"dense_gradients": "often"}, "dense_gradients='often'"),
    ({"dense_gradients": "updates"}, "needs dense_gradient_share"),
    ({"families": ("momentum", "solo")}, "families="),
    ({"families": "shared"}, "families="),
    ({"rewrites_backbone": 1}, "rewrites_backbone=1"),
    ({"speed_paths": ("fast",)}, "speed_paths="),
    ({"evaluation_keys": ["eval_path"]}, "evaluation_keys="),
])
def test_a_wrong_capability_fails_where_the_class_is_defined(attrs, match):
    with pytest.raises(TypeError, match=match):
        type("Bad", (Plugin,), {"name": "bad", "Config": _Cfg, **attrs})


def test_updates_with_its_share_is_a_valid_plugin():
    cls = type("Ok", (Plugin,), {"name": "ok", "Config": _Cfg, "dense_gradients": "updates",
                                 "dense_gradient_share": classmethod(lambda c, cfg: 1.0 / cfg.get("every", 10))})
    assert cls.dense_gradient_share({"every": 4}) == 0.25


def test_available_plugins_answers_capability_questions():
    every = available_plugins()
    gated = available_plugins(rewrites_backbone=True)
    masked = available_plugins(masks_weights=True)
    assert gated and masked and not set(gated) & set(masked) and set(gated) | set(masked) < set(every)
    assert all(get_plugin(n).rewrites_backbone for n in gated)
    assert available_plugins(dense_gradients="every") == [n for n in every if get_plugin(n).dense_gradients == "every"]
    assert set(available_plugins(speed_paths=True)) == {n for n in every if get_plugin(n).speed_paths}
    assert set(available_plugins(commands=True)) == {n for n in every if get_plugin(n).commands()}
    assert available_plugins(rewrites_backbone=True, masks_weights=True) == []
    with pytest.raises(TypeError, match="not a Plugin capability"):
        available_plugins(gates=True)


def test_the_dense_gradient_share_and_run_summary_come_from_the_plugin():
    for name in available_plugins(dense_gradients="every"):
        assert get_plugin(name).dense_gradient_share({}) == 1.0
    for name in available_plugins(dense_gradients="never"):
        assert get_plugin(name).dense_gradient_share({"every": 5}) == 0.0
    for name in available_plugins(dense_gradients="updates"):
        cls = get_plugin(name)
        assert cls.dense_gradient_share({"every": 20}) == pytest.approx(0.05)
        assert cls.dense_gradient_share({"every": "2ep"}) == 0.0      # as the bench has always counted it
    ran = [n for n in available_plugins(masks_weights=True) if get_plugin(n).run_summary({"trigger_step": 7})]
    assert ran and all(get_plugin(n).run_summary({"trigger_step": 7}) == {"trigger_step": 7} for n in ran)
    assert all(get_plugin(n).run_summary({}) == {} for n in available_plugins())


def test_checkpoint_stats_asks_a_third_party_plugin_and_names_none():
    """A plugin the library has never seen: its share and summary reach the bench row through the contract."""
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.tools.bench import checkpoint_stats

    cls = type("ThirdParty", (Plugin,), {
        "name": "third_party_x", "Config": _Cfg, "dense_gradients": "updates",
        "dense_gradient_share": classmethod(lambda c, cfg: 1.0 / cfg["every"]),
        "run_summary": classmethod(lambda c, extra: {"trigger_step": extra["started"]})})
    registry.register_plugin(cls)
    try:
        net = build_resnet("resnet18")
        sd = {f"{p}.{k}": v for p in ("backbone", "momentum_backbone") for k, v in net.state_dict().items()}
        ck = {"state_dict": sd, "solo_sparse": {"third_party_x": {"config": {"every": 2}, "extra": {"started": 11}}}}
        st = checkpoint_stats(ck, 32, None, net, None)
        dense = checkpoint_stats({"state_dict": sd, "solo_sparse": {}}, 32, None, net, None)
    finally:
        registry._LOCAL.pop("third_party_x", None)
    assert st["trigger_step"] == 11 and st["plugins"] == ["third_party_x"]
    # dense weights, half the steps with a dense weight gradient: the same training MACs as a dense run
    assert st["training_macs_ratio"] == pytest.approx(dense["training_macs_ratio"])


def test_routes_and_previews_are_contract_questions():
    from solo_sparse.engine.resnet import build_resnet

    assert Plugin.route_backbone(torch.nn.Identity(), {}) is None
    assert Plugin.prepare_fast_path(torch.nn.Identity(), 32) is None
    for name in available_plugins(speed_paths=True):
        cls = get_plugin(name)
        fast, dense = cls.speed_paths
        net = cls.rebuild_backbone(build_resnet("resnet18"), {})
        assert cls.route_backbone(net, {}, dense) == dense and cls.route_backbone(net, {}, fast) == fast
    for name in available_plugins(masks_weights=True):
        p = get_plugin(name).from_params({})
        net = build_resnet("resnet18")
        what = p.preview_backbone(net)
        masks = [b for n, b in net.named_buffers() if n.endswith("weight_mask")]
        assert (what is None) == (not masks), name
        if masks:
            assert name in what and sum(int(m.sum()) for m in masks) < sum(m.numel() for m in masks)
    for name in available_plugins(rewrites_backbone=True):
        assert get_plugin(name).from_params({}).preview_backbone(build_resnet("resnet18")) is None


def test_cost_questions_default_to_the_safe_answers():
    """A third-party plugin that rewrites the backbone is asked for images before its cost is reported
    (`flops CKPT` without --data refuses), has no plain form and counts cost at version 1; a plugin that does not
    rewrite the backbone needs no images."""
    net = torch.nn.Identity()
    gate = type("Gate", (Plugin,), {"name": "gate3p", "Config": _Cfg, "rewrites_backbone": True})
    mask = type("Mask", (Plugin,), {"name": "mask3p", "Config": _Cfg})
    assert gate.cost_depends_on_input(net) is True and mask.cost_depends_on_input(net) is False
    assert gate.plain_backbone(net) is None and gate.cost_version == mask.cost_version == 1

"""CDG that learns (issue 25): the conditional-path scale, structured gating as in the paper's Alg. 1, the CGNet
baseline's routing, the static controls, folding for deployment, and the refusals of bad values."""
import copy

import pytest
import torch
import torchvision

from solo_sparse.core.config import ConfigError, config_to_state
from solo_sparse.core.plugin import ModelView, ModuleGroup, PluginHost
from solo_sparse.core.registry import get_plugin
from solo_sparse.gating.cgnet import CGNetConv2d, convert_resnet, fold_cond_scale, target_threshold
from solo_sparse.gating.channel import gated_convs, measure, set_branch, set_recording


def resnet(seed=0):
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    return net


def off_share(net, x):
    """Gated-off share of the conditional path over every gated conv (eval mode, branch a1)."""
    return measure(net, x)["mean_sparsity"]


@pytest.mark.parametrize("cg", [1, 8, 32])
def test_structured_gating_off_share_at_init_matches_the_target(cg):
    """Alg. 1: pool Y_base over the cg channels, then normalise and threshold. Averaging normalised scores (the
    old code) gated off 0.969 (cg 8) and 0.999 (cg 32) of the conditional path for a 0.75 target."""
    net = resnet()
    convert_resnet(net, groups=4, cg=cg, init_tau=target_threshold(0.75), stages=(1, 2, 3))
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert off_share(net, x) == pytest.approx(0.75, abs=0.05)


def test_zero_scale_starts_from_the_base_path_and_the_scale_learns():
    net = resnet()
    convert_resnet(net, groups=4, init_tau=target_threshold(0.5), cond_scale=0.0, stages=(1, 2, 3))
    set_branch(net, "a1")
    c = net.layer1[0].conv1
    assert isinstance(c.cond_scale, torch.nn.Parameter) and c.cond_scale.shape == (64,)
    x = torch.randn(2, 64, 16, 16)
    y = c(x)
    assert torch.allclose(y, c._base(x, [0, 1, 2, 3]), atol=1e-6)        # gamma = 0: exactly the base path
    y.pow(2).sum().backward()
    assert c.cond_scale.grad.abs().sum() > 0                               # gamma gets a gradient from step 0


def test_paper_form_has_no_scale():
    net = resnet()
    convert_resnet(net, groups=4, cond_scale=None, stages=(1,))
    assert net.layer1[0].conv1.cond_scale is None
    assert not any(k.endswith("cond_scale") for k in net.state_dict())


@pytest.mark.parametrize("cg", [1, 8])
def test_folding_the_scale_keeps_the_a1_outputs(cg):
    net = resnet()
    convert_resnet(net, groups=4, cg=cg, init_tau=target_threshold(0.5), cond_scale=0.0, stages=(1, 2, 3, 4))
    with torch.no_grad():
        for _, c in gated_convs(net):
            c.cond_scale.uniform_(0.0, 2.0)
    net.eval()
    set_branch(net, "a1")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        folded = copy.deepcopy(net)
        assert fold_cond_scale(folded) == len(gated_convs(net))
        after = folded(x)
    assert all(c.cond_scale is None for _, c in gated_convs(folded))
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)
    # and the folded network rebuilt in the paper's form from the deploy config loads and gives the same
    cls = get_plugin("cdg")
    saved = config_to_state(cls.from_params({"cg": cg, "ramp": 0, "target": 0.5}).config)   # as a run saves it
    cfg = cls.deploy_backbone(copy.deepcopy(net), saved)
    assert cfg["cond_scale"] == "none"
    fresh = cls.rebuild_backbone(resnet(1), cfg)
    fresh.load_state_dict(folded.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), before, atol=1e-5, rtol=1e-4)


def test_base_only_control_is_the_grouped_conv_at_one_gth_of_the_macs():
    net = resnet()
    convert_resnet(net, groups=2, control="base_only", stages=(1, 2, 3, 4))
    c = net.layer2[0].conv2
    x = torch.randn(2, 128, 8, 8)
    set_branch(net, "a1")
    assert torch.allclose(c(x), c._base(x, [0, 1]), atol=1e-6)
    m = measure(net, torch.randn(4, 3, 64, 64))
    assert m["mean_sparsity"] == 1.0 and m["exact_gated_reduction"] == pytest.approx(2.0)


def test_random_control_mask_ignores_the_input_follows_tau_and_survives_a_reload():
    net = resnet()
    convert_resnet(net, groups=4, control="random", init_tau=target_threshold(0.75), stages=(1, 2, 3), seed=7)
    set_branch(net, "a1")
    set_recording(net, True)
    c = net.layer2[0].conv2
    net.eval()
    with torch.no_grad():
        net(torch.randn(2, 3, 64, 64))
        m1 = c._ss_last["a1"].clone()
        net(torch.randn(2, 3, 64, 64) * 5 + 1)
        m2 = c._ss_last["a1"].clone()
    assert torch.equal(m1, m2) and torch.equal(m1[0], m1[1])              # data-independent
    assert 1 - m1.float().mean() == pytest.approx(0.75, abs=0.05)           # the target sparsity through tau
    other = resnet(3)
    convert_resnet(other, groups=4, control="random", init_tau=target_threshold(0.75), stages=(1, 2, 3), seed=99)
    other.load_state_dict(net.state_dict())
    set_branch(other, "a1")
    set_recording(other, True)
    other.eval()
    with torch.no_grad():
        other(torch.randn(2, 3, 64, 64))
    assert torch.equal(other.layer2[0].conv2._ss_last["a1"], m1)            # the pattern is saved (its seed)


def _host(plugin, momentum=False):
    online = resnet()
    mom = copy.deepcopy(online) if momentum else None
    view = ModelView({"backbone": ModuleGroup("backbone", online, mom)}, "momentum" if momentum else "shared",
                     method="simclr", num_large_crops=2, input_size=64)
    host = PluginHost([plugin])
    host.setup(view)
    return host, online


def test_scale_sits_in_the_gate_group_without_weight_decay():
    p = get_plugin("cdg").from_params({})
    host, online = _host(p)
    (group,) = p.param_groups(0.1)
    names = {id(q) for q in group["params"]}
    c = online.layer1[0].conv1
    assert id(c.cond_scale) in names and id(c.tau) in names and group["weight_decay"] == 0.0
    assert all(isinstance(m, CGNetConv2d) and m.cond_scale is not None for _, m in gated_convs(online))
    assert float(c.cond_scale.abs().sum()) == 0.0                          # default: gamma starts at 0


@pytest.mark.parametrize("plugin,params,match", [
    ("cdg", {"cond_scale": "abc"}, "solo_sparse.cond_scale='abc'"),
    ("cdg", {"cond_scale": -0.5}, "solo_sparse.cond_scale=-0.5"),
    ("cdg", {"cond_scale": float("nan")}, "solo_sparse.cond_scale=nan"),
    ("cdg", {"cond_scale": True}, "solo_sparse.cond_scale=True"),
    ("cdg", {"control": "base_only"}, "solo_sparse.control='base_only'"),
    ("cgnet", {"control": "static"}, "solo_sparse.control='static'"),
    ("cgnet", {"control": "random", "unified": True}, "set unified: false"),
    ("cgnet", {"unified": "yes"}, "solo_sparse.unified='yes'"),
])
def test_bad_values_are_refused_naming_key_and_value(plugin, params, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("'", "'").replace(".", r"\.")):
        get_plugin(plugin).from_params(params)


def test_a_control_on_cdg_says_what_is_allowed_and_where_the_control_lives():
    with pytest.raises(ConfigError) as e:
        get_plugin("cdg").from_params({"control": "random"})
    assert str(e.value).startswith("solo_sparse.control='random'") and "allowed on cdg: none" in str(e.value)
    assert "- solo_sparse: cgnet" in str(e.value)


def test_cg_not_dividing_the_channels_is_refused_before_step_0():
    p = get_plugin("cdg").from_params({"cg": 48})
    with pytest.raises(ConfigError, match=r"solo_sparse\.cg=48: does not divide .*allowed: a divisor of 64 \(1, 2, 4"):
        _host(p)


def test_paper_form_and_legacy_runs_rebuild_as_they_trained():
    cls = get_plugin("cdg")
    net = cls.rebuild_backbone(resnet(), {"groups": 4, "cond_scale": "none"})
    assert all(c.cond_scale is None for _, c in gated_convs(net))
    net = cls.rebuild_backbone(resnet(), {"groups": 4})                    # saved before cond_scale existed
    assert all(c.cond_scale is None for _, c in gated_convs(net))
    cg = get_plugin("cgnet")
    assert cg.from_saved({}).unified is True                               # old cgnet runs were unified
    assert cg.from_params({}).unified is False


@pytest.mark.parametrize("assign", [[0, 1, 2, 3], [3, 2, 1, 0]])
def test_the_split_conv_gives_the_dense_conv_and_the_grouped_base_path(assign):
    """Training computes Y_full and Y_base as one conv split over the input groups (the dense MACs once)."""
    net = resnet()
    convert_resnet(net, groups=4, stages=(2,))
    c = net.layer2[0].conv2
    x = torch.randn(3, 128, 8, 8, requires_grad=True)
    full, base = c._paths(x, assign)
    assert torch.allclose(full, torch.nn.functional.conv2d(x, c.weight, None, c.stride, c.padding), atol=1e-4)
    assert torch.allclose(base, c._base(x, assign), atol=1e-4)
    (full.sum() + base.pow(2).sum()).backward()
    g = x.grad.clone()
    x.grad = None
    ref_full = torch.nn.functional.conv2d(x, c.weight, None, c.stride, c.padding)
    (ref_full.sum() + c._base(x, assign).pow(2).sum()).backward()
    assert torch.allclose(g, x.grad, atol=1e-3)


def test_base_only_control_refuses_ddp_without_find_unused_parameters():
    """The base-only control leaves tau and cond_scale without gradient: plain DDP would fail at run time."""
    from solo_sparse.binding.host import check_plugins

    cls = get_plugin("cgnet")
    p = cls.from_params({"control": "base_only"})
    with pytest.raises(ConfigError, match="plugin 'cgnet' leaves parameters without gradients"):
        check_plugins([p], "simclr", "shared", ddp_without_unused=True)
    check_plugins([p], "simclr", "shared", ddp_without_unused=False)
    check_plugins([cls.from_params({"control": "random"})], "simclr", "shared", ddp_without_unused=True)
    net = resnet()
    convert_resnet(net, control="base_only", cond_scale=0.0)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    unused = [n for n, q in net.named_parameters() if q.grad is None]
    assert unused and all(n.endswith(("tau", "cond_scale")) for n in unused)


def test_random_control_pattern_follows_a_loaded_seed():
    """The pattern is a function of the saved seed: a checkpoint loaded after a forward brings its own pattern."""
    net, other = resnet(), resnet()
    convert_resnet(net, control="random", cond_scale=0.0, seed=0)
    convert_resnet(other, control="random", cond_scale=0.0, seed=100)
    net.eval()
    other.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        net(x)                                    # caches seed-0 patterns
        conv = next(c for _, c in gated_convs(net))
        before = conv._ss_pattern.clone()
        net.load_state_dict(other.state_dict())
        assert torch.equal(net(x), other(x))
    assert not torch.equal(conv._ss_pattern, before)


def test_static_controls_gate_1x1_maps_without_the_normalisation_refusal():
    """base_only and random never normalise Y_base: layer4's 1x1 maps at 32 px are no reason to refuse them."""
    def host32(params):
        view = ModelView({"backbone": ModuleGroup("backbone", resnet(), None)}, "shared", method="simclr",
                         num_large_crops=2, input_size=32)
        PluginHost([get_plugin("cgnet").from_params(params)]).setup(view)

    with pytest.warns(UserWarning):          # the small-map warning stays
        host32({"control": "base_only"})
    with pytest.raises(ConfigError, match="1x1 maps"):
        host32({"target": 0.75})

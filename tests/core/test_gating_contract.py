"""What every backbone-rewriting (gating) plugin shares (today cdg, cgnet, fbs, dgnet_dual, dgnet_gated):
the refusals before training and the online/momentum conversion of solo_sparse.core.plugin.convert_encoders."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse.core.config import ConfigError
from solo_sparse.core.plugin import ModelView, PluginHost
from solo_sparse.core.registry import available_plugins, get_plugin
from solo_sparse.engine.sparsifier import ModuleGroup

#: every installed plugin that rewrites the backbone (the registry's answer, not a hand-kept list)
GATING = tuple(available_plugins(rewrites_backbone=True))


def view_for(backbone, momentum=None, crops=2, method="simclr"):
    return ModelView({"backbone": ModuleGroup("backbone", backbone, momentum)},
                     "momentum" if momentum is not None else "shared", method=method, num_large_crops=crops)


def resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net


@pytest.mark.parametrize("name", GATING)
def test_refused_before_training(name):
    cls = get_plugin(name)
    with pytest.raises(ConfigError, match=f"plugin '{name}' needs exactly two large crops.*has 1"):
        PluginHost([cls.from_params({})]).setup(view_for(resnet(), crops=1))
    with pytest.raises(ConfigError, match="ResNet"):
        PluginHost([cls.from_params({})]).setup(view_for(nn.Sequential(nn.Conv2d(3, 8, 3))))
    with pytest.raises(ConfigError, match="two-view"):
        cls.check_method("swav", "momentum")
    cls.check_method("byol", "momentum")


@pytest.mark.parametrize("name", GATING)
def test_supported_methods_are_the_shared_two_view_lists(name):
    """A method added to the two-view list reaches every gating plugin (DGNet's unless listed as asymmetric)."""
    from solo_sparse.families.gating import ASYMMETRIC_TWO_VIEW_METHODS, TWO_VIEW_METHODS

    supported = get_plugin(name).supported_methods
    assert set(supported) <= set(TWO_VIEW_METHODS)
    assert set(supported) >= set(TWO_VIEW_METHODS) - set(ASYMMETRIC_TWO_VIEW_METHODS)


@pytest.mark.parametrize("name", GATING)
def test_momentum_twin_converted_equal_and_frozen(name):
    online = resnet()
    mom = copy.deepcopy(online)
    with torch.no_grad():                      # the twin starts different: setup must copy the online network
        for p in mom.parameters():
            p.add_(1.0)
    PluginHost([get_plugin(name).from_params({})]).setup(view_for(online, mom, method="byol"))
    on, mo = online.state_dict(), mom.state_dict()
    assert set(on) == set(mo) and len(on) > len(resnet().state_dict())     # gates / thresholds added to both
    for k in on:
        assert torch.equal(on[k], mo[k]), k
    assert not any(p.requires_grad for p in mom.parameters())
    assert all(p.requires_grad for p in online.parameters())

import pytest
import torch
from helpers import ema_like_solo

from solo_sparse.core.config import ConfigError, MaskSpec
from solo_sparse.engine.density import allocate_masks
from solo_sparse.engine.sparsifier import MASK, ModuleGroup, WeightSparsifier, select_layers


def test_selector_skips_stem_and_classifier(tiny_pair):
    online, _ = tiny_pair
    names = [n for n, _ in select_layers(online)]
    assert names == ["layer1.0", "layer1.3", "down"]
    assert [n for n, _ in select_layers(online, exclude_stem=False)][0] == "conv1"


def test_masks_are_persistent_bool_buffers_on_both_encoders(tiny_pair):
    online, momentum = tiny_pair
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online, momentum)}, MaskSpec())
    for L in sp:
        assert L.online.weight_mask.dtype == torch.bool and L.momentum.weight_mask.dtype == torch.bool
    assert "layer1.0.weight_mask" in online.state_dict() and "layer1.0.weight_mask" in momentum.state_dict()
    # parameters untouched: same names, same order (solo-learn pairs them by position)
    assert [n for n, _ in online.named_parameters()] == [n for n, _ in momentum.named_parameters()]


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_no_pruned_weight_returns_after_steps_with_momentum_and_weight_decay(tiny_pair, opt_name):
    online, momentum = tiny_pair
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online, momentum)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.2))
    sp.copy_online_to_momentum()
    sp.apply_masks()
    if opt_name == "sgd":
        opt = torch.optim.SGD(online.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(online.parameters(), lr=0.01, weight_decay=0.1)
    for _i in range(5):
        x = torch.randn(4, 3, 8, 8)
        online(x).pow(2).mean().backward()
        sp.mask_gradients()
        opt.step()
        sp.apply_masks(("online",))
        sp.mask_optimizer_state(opt)
        opt.zero_grad()
        ema_like_solo(online, momentum)
        sp.apply_masks(("momentum",))  # the EMA replaced .data: re-mask
        assert sp.leaked("online") == 0 and sp.leaked("momentum") == 0
    for L in sp:
        st = opt.state[L.online.weight]
        for v in st.values():
            if torch.is_tensor(v) and v.shape == L.shape:
                assert (v[~L.online.weight_mask] == 0).all()


def test_without_masking_optimizer_state_weights_would_return(tiny_pair):
    """The optimizer-state invariant matters: SGD momentum alone resurrects pruned weights."""
    online, _ = tiny_pair
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online)}, MaskSpec())
    opt = torch.optim.SGD(online.parameters(), lr=0.1, momentum=0.9)
    online(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
    opt.step()  # momentum buffers now hold dense updates
    opt.zero_grad()
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.2))
    sp.apply_masks()
    online(torch.randn(4, 3, 8, 8)).pow(2).mean().backward()
    sp.mask_gradients()
    opt.step()
    assert sp.leaked("online") > 0


def test_indivisible_layers_error_or_skip(tiny_pair):
    online, _ = tiny_pair
    spec = MaskSpec(granularity="block", block=(8, 32))  # layer1.0 has 16 inputs: not divisible by 32
    with pytest.raises(ConfigError, match=r"layer 'backbone.layer1.0'.*on_indivisible=skip"):
        WeightSparsifier({"backbone": ModuleGroup("backbone", online)}, spec)
    online2 = type(online)()
    with pytest.warns(UserWarning, match="keeping it dense"):
        sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online2)},
                              MaskSpec(granularity="block", block=(8, 32), on_indivisible="skip"))
    assert sp.skipped == ["backbone.layer1.0"]
    assert not hasattr(online2.layer1[0], MASK)


def test_include_unknown_group_is_an_error(tiny_pair):
    online, _ = tiny_pair
    with pytest.raises(ConfigError, match="include contains 'predictor'"):
        WeightSparsifier({"backbone": ModuleGroup("backbone", online)}, MaskSpec(include=["backbone", "predictor"]))


def test_squash_keeps_zeros_drops_buffers(tiny_pair):
    online, momentum = tiny_pair
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online, momentum)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.5))
    sp.squash()
    assert not any(k.endswith(MASK) for k in online.state_dict())
    assert float((online.layer1[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_report_lists_both_encoders(tiny_pair):
    online, momentum = tiny_pair
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", online, momentum)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.5))
    rep = sp.report()
    assert rep.online_density == pytest.approx(0.5, abs=1e-3) and rep.momentum_density == 1.0
    assert "backbone.down" in rep.to_markdown()

"""core.checkpoint.state_mismatch: the one strict-load check (evaluate, zoo, IMP init states, label re-training)."""
import torch

from solo_sparse.core.checkpoint import name_keys, state_mismatch


def _state(**shapes):
    return {k.replace("_", "."): torch.zeros(s) for k, s in shapes.items()}


def test_a_matching_state_passes():
    own = _state(a_weight=(2, 3), b_bias=(2,))
    assert state_mismatch(own, _state(b_bias=(2,), a_weight=(2, 3))) is None


def test_missing_and_unexpected_keys_are_named_with_their_count():
    own = {f"k{i}": torch.zeros(1) for i in range(5)}
    state = {"k0": torch.zeros(1), "x": torch.zeros(1)}
    assert state_mismatch(own, state) == ("keys 'k1', 'k2', 'k3', ... (4 in all) missing from the file; "
                                          "key 'x' not in the model")
    assert state_mismatch(own, {**own, "x": torch.zeros(1)}, file="the checkpoint", model="a resnet18") == \
        "key 'x' not in a resnet18"
    assert name_keys(["a", "b"]) == "keys 'a', 'b'"


def test_keys_come_before_shapes_and_shapes_are_counted():
    own = _state(a=(2,), b=(3,), c=(4,))
    assert state_mismatch(own, _state(a=(5,), b=(6,), c=(4,))) == \
        "'a' has shape (5,) in the file, (2,) in the model (2 keys differ in shape)"
    assert state_mismatch(own, _state(a=(5,), b=(3,))) == "key 'c' missing from the file"


def test_strict_limits_the_key_check_not_the_shapes():
    own = _state(backbone_w=(2,), head_w=(3,))
    only_backbone = lambda k: k.startswith("backbone.")  # noqa: E731
    assert state_mismatch(own, _state(backbone_w=(2,), queue=(9,)), strict=only_backbone) is None
    assert state_mismatch(own, _state(head_w=(3,)), strict=only_backbone) == "key 'backbone.w' missing from the file"
    assert state_mismatch(own, _state(backbone_w=(2,), head_w=(4,)), strict=only_backbone).startswith("'head.w' has")

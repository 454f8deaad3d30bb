"""The linear-evaluation load path of weight-sparsity plugins without solo-learn
(``WeightSparsityPlugin.prepare_eval_backbone``, what ``main_linear.py`` runs with the ``- solo_sparse:`` line):

- loading is strict about missing keys although solo-learn loads with ``strict=False``: a dense checkpoint, or
  one that lacks any backbone key, fails loudly, naming the first missing key;
- the checkpoint's masks are applied after the load (pruned weights are zero even if the file's are not);
- fine-tuning: a forward pre-hook re-applies the masks, so every training forward runs the sparse network.

The backbone is a torchvision ResNet-18 with ``fc = Identity``, as solo-learn's ``main_linear.py`` builds it,
and the state dict has ``main_linear.py``'s keys (the ``backbone.`` prefix stripped).
"""
import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse import get_plugin
from solo_sparse.engine.maskio import MASK
from solo_sparse.engine.sparsifier import select_layers


def _backbone(seed=0):
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net


def _prepared(name="gmp"):
    p = get_plugin(name).from_params({})
    net = _backbone(seed=1)
    p.prepare_eval_backbone(net)
    return p, net


def _sparse_checkpoint(density=0.3, zero_pruned=False):
    """A pre-trained backbone's state dict with ``weight_mask`` buffers on the layers gmp masks."""
    net = _backbone(seed=0)
    g = torch.Generator().manual_seed(0)
    sd = dict(net.state_dict())
    masks = {}
    for name, mod in select_layers(net):
        m = torch.rand(mod.weight.shape, generator=g) < density
        masks[name] = m
        sd[f"{name}.{MASK}"] = m
        if zero_pruned:
            sd[f"{name}.weight"] = sd[f"{name}.weight"] * m
    return sd, masks


def test_a_dense_checkpoint_is_refused_naming_the_first_missing_mask():
    _, net = _prepared()
    dense = _backbone(seed=0).state_dict()
    with pytest.raises(RuntimeError, match=r"lacks \d+ backbone key\(s\), first: 'layer1\.0\.conv1\.weight_mask'.*"
                                           r"'- solo_sparse: gmp'"):
        net.load_state_dict(dense, strict=False)


def test_any_missing_backbone_key_is_refused():
    sd, _ = _sparse_checkpoint()
    for drop in ("layer4.1.conv2.weight_mask", "layer2.0.bn1.running_var", "layer3.0.downsample.0.weight"):
        _, net = _prepared()
        partial = {k: v for k, v in sd.items() if k != drop}
        with pytest.raises(RuntimeError, match=rf"lacks 1 backbone key\(s\), first: '{drop}'"):
            net.load_state_dict(partial, strict=False)


def test_masks_are_applied_after_the_load(capsys):
    sd, masks = _sparse_checkpoint(density=0.3, zero_pruned=False)    # the file's pruned weights are NOT zero
    _, net = _prepared()
    net.load_state_dict(sd, strict=False)
    kept = total = 0
    for name, mod in select_layers(net):
        m = masks[name]
        assert torch.equal(getattr(mod, MASK), m), name
        assert (mod.weight[~m] == 0).all(), name
        assert torch.equal(mod.weight[m], sd[f"{name}.weight"][m]), name          # kept weights as loaded
        kept, total = kept + int(m.sum()), total + m.numel()
    stem = net.conv1.weight
    assert torch.equal(stem, sd["conv1.weight"]) and not hasattr(net.conv1, MASK)   # the stem stays dense
    assert net._solo_sparse_density == pytest.approx(kept / total)
    assert f"masked layers at density {kept / total:.4f}" in capsys.readouterr().err


def _fine_tune(net, steps=4):
    """A few SGD steps (momentum, weight decay) of backbone + linear head; every training forward is checked:
    the masked layers' weights it uses are zero where pruned (a pre-hook registered after the plugin's)."""
    seen = []

    def check(mod, _inp):
        seen.append(int((mod.weight[~getattr(mod, MASK)] != 0).sum()))

    layers = [mod for _, mod in select_layers(net)]
    handles = [mod.register_forward_pre_hook(check) for mod in layers]
    head = nn.Linear(512, 5)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)
        nn.functional.cross_entropy(head(net(x)), y).backward()
        opt.step()
        opt.zero_grad()
    for h in handles:
        h.remove()
    return seen, layers


@pytest.mark.slow
def test_fine_tuning_runs_the_sparse_network_at_every_training_forward():
    sd, _ = _sparse_checkpoint(zero_pruned=True)
    _, net = _prepared()
    net.load_state_dict(sd, strict=False)
    before = {n: mod.weight.detach().clone() for n, mod in select_layers(net)}
    seen, layers = _fine_tune(net)
    assert len(seen) == 4 * len(layers) and not any(seen)
    assert any(not torch.equal(before[n], mod.weight) for n, mod in select_layers(net))   # it did fine-tune


@pytest.mark.slow
def test_fine_tuned_weights_stay_zero_where_pruned_for_evaluation_and_saving():
    sd, masks = _sparse_checkpoint(zero_pruned=True)
    _, net = _prepared()
    net.load_state_dict(sd, strict=False)
    _fine_tune(net)
    net.eval()
    leaked = {n: int((mod.weight[~masks[n]] != 0).sum()) for n, mod in select_layers(net)}
    assert not any(leaked.values()), {n: v for n, v in leaked.items() if v}

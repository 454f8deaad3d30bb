"""DGNet's batch-1 gather path equals the masked path with real BatchNorm statistics.

With BatchNorm at its defaults (mean 0, var 1, weight 1, bias 0) every channel normalises alike and the dense BN
equals its gated twin, so a gather path that used the wrong branch's BN or the wrong channels' statistics would
still agree with the masked path. Here every BN (dense and gated twins) gets its own random statistics and
affine parameters, and the shipped DGNet zoo entry (trained twins) is checked the same way.
"""
import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse.gating.dgnet import convert_resnet, gated_blocks, set_mode


def _randomise_bns(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)


def _gates_half_open(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _, b in gated_blocks(net):
        b.gate.b2.data = torch.where(torch.rand(b.gate.b2.shape, generator=g) < 0.5, 4.0, -4.0)
        b.gate.w2.data.normal_(0, 0.5, generator=g)


def _gather_vs_masked(net, xs):
    """Outputs of batch-1 forwards through the gather path and through the masked path."""
    blocks = [b for _, b in gated_blocks(net)]
    fast = []
    gathered = 0
    for x in xs:
        fast.append(net(x))
        gathered += sum(b.ss_last_path == "gather" for b in blocks)
    for b in blocks:
        b.ss_gather = False
    masked = [net(x) for x in xs]
    assert all(b.ss_last_path == "masked" for b in blocks)
    for b in blocks:
        b.ss_gather = True
    return torch.cat(fast), torch.cat(masked), gathered


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_gather_equals_masked_with_random_bn_statistics_and_differing_twins(arch):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()
    convert_resnet(net, separate_bn=True)
    _gates_half_open(net)
    _randomise_bns(net)
    blk = gated_blocks(net)[0][1]
    assert not torch.allclose(blk.bn1.running_mean, blk.bn1_g.running_mean)       # the twins differ
    net.eval()
    set_mode(net, "gated")
    xs = torch.randn(3, 1, 3, 32, 32)
    fast, masked, gathered = _gather_vs_masked(net, xs)
    assert gathered >= len(xs) * len(gated_blocks(net)) // 2                        # the path under test ran
    # the gather path folds BN into the convs, which rounds differently: tolerance relative to the output scale
    # (ResNet-50 with these random statistics reaches |y| ~ 460, where the masked path itself is 5e-4 off a
    # float64 reference)
    tol = 1e-5 * float(masked.abs().max()) + 1e-5
    assert torch.allclose(fast, masked, atol=tol, rtol=1e-4), (fast - masked).abs().max()
    set_mode(net, "dense")                                                        # and the branches do differ
    assert not torch.allclose(net(xs[0]), masked[:1], atol=1e-2)


def _dgnet_entry():
    from solo_sparse import zoo

    try:
        entries = [e for e in zoo.list_entries() if "dgnet" in str(e.get("algorithm", ""))]
    except zoo.ZooError as exc:
        pytest.skip(f"no zoo manifest: {exc}")
    if not entries:
        pytest.skip("the zoo ships no DGNet entry")
    return entries[0]["name"]


def test_gather_equals_masked_on_the_shipped_dgnet_zoo_entry():
    from solo_sparse import zoo

    net = zoo.load(_dgnet_entry())                    # its evaluation path: gated, eval mode
    blocks = [b for _, b in gated_blocks(net)]
    assert blocks and all(b.ss_mode == "gated" and b.ss_separate_bn for b in blocks)
    b0 = blocks[0]
    assert not torch.allclose(b0.bn1.running_mean, b0.bn1_g.running_mean)          # trained twins differ
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 1, 3, 32, 32, generator=g)
    with torch.no_grad():
        fast, masked, gathered = _gather_vs_masked(net, xs)
    assert gathered > 0
    assert torch.allclose(fast, masked, atol=1e-4, rtol=1e-4), (fast - masked).abs().max()

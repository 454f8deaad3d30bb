"""CDG structured inference (solo_sparse.gating.cdg_exec): equal outputs to the trained conv at every
granularity, gated-off blocks really skipped, the conditional-path scale honoured, executed shares."""
import pytest
import torch
import torch.nn as nn
import torchvision

from solo_sparse.gating import cdg_exec as X
from solo_sparse.gating import cgnet
from solo_sparse.gating.channel import gated_convs, set_branch


def _net(cg=8, groups=4, target=0.75, seed=0):
    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    cgnet.convert_resnet(net, groups=groups, cg=cg, init_tau=cgnet.target_threshold(target))
    set_branch(net, "a1")
    return net.eval()


@pytest.mark.parametrize("cg,granularity", [(8, "block"), (8, "tile"), (16, "block"), (1, "block")])
def test_executable_backbone_equals_the_trained_one(cg, granularity):
    net = _net(cg)
    fast = X.make_executable(net, granularity, tile=4)
    assert all(not isinstance(m, cgnet.CGNetConv2d) for m in fast.modules())
    assert sum(isinstance(m, X.CDGExecConv) for m in fast.modules()) == len(gated_convs(net))
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            ref, out = net(x), fast(x)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), (out - ref).abs().max()
    assert all(isinstance(m, cgnet.CGNetConv2d) for _, m in gated_convs(net))        # the original unchanged


def test_one_conv_equal_outputs_and_skipped_blocks():
    net = _net(8)
    conv = net.layer2[1].conv1
    with torch.no_grad():
        conv.tau[:64] = 50.0                            # the first 8 blocks off at every position
    ex = X.CDGExecConv(conv, "block")
    ex.stats = []
    x = torch.randn(1, 128, 8, 8)
    calls = []
    orig = torch.nn.functional.conv2d

    def spy(inp, w, *a, **k):
        calls.append(w.shape[0])
        return orig(inp, w, *a, **k)

    torch.nn.functional.conv2d = spy
    try:
        with torch.no_grad():
            out = ex(x)
    finally:
        torch.nn.functional.conv2d = orig
    with torch.no_grad():
        ref = conv(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    # base conv on all 128 outputs, the conditional conv on the active blocks' channels only
    assert calls[0] == 128 and calls[1] <= 128 - 64 and calls[1] % 8 == 0
    assert ex.stats[0]["executed"] <= 0.5


@pytest.mark.parametrize("granularity", ["block", "tile"])
def test_cond_scale_is_applied_when_the_conv_has_one(granularity):
    net = _net(8)
    conv = net.layer1[0].conv2
    x = torch.randn(1, 64, 16, 16)
    gamma = torch.rand(64) + 0.1
    with torch.no_grad():
        had = getattr(conv, "cond_scale", None)
        conv.cond_scale = None
        ref = conv(x)                                  # the paper's form, gamma = 1
        base = X.CDGExecConv(conv)._base(x)
        conv.cond_scale = nn.Parameter(gamma.clone())
        out = X.CDGExecConv(conv, granularity)(x)
        want = base + gamma[None, :, None, None] * (ref - base)
        assert torch.allclose(out, want, atol=1e-5, rtol=1e-4)
        if had is not None or "cond_scale" in cgnet.convert_resnet.__code__.co_varnames:
            # the trained conv applies the same scale itself
            assert torch.allclose(out, conv(x), atol=1e-5, rtol=1e-4)


def test_executed_shares_are_ordered():
    net = _net(8)
    rows = X.executed_share(net, torch.randn(2, 3, 64, 64), tile=4)
    tot = rows.pop("total")
    assert 0 < tot["position"] <= tot["tile"] <= tot["block"] <= 1
    assert set(rows) == {n for n, _ in gated_convs(net)}
    with pytest.raises(ValueError, match="no CDG"):
        X.make_executable(torchvision.models.resnet18())
    with pytest.raises(ValueError, match="granularity"):
        X.CDGExecConv(net.layer1[0].conv1, "position")

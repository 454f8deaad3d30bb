"""Compact export: which internal channels are removable, exact outputs after physical removal, the
zoo round trip of a compact file, refusal of gated backbones."""
import pytest
import torch
import torchvision

from solo_sparse import zoo
from solo_sparse.engine import compact as C
from solo_sparse.engine.sparsifier import MASK
from solo_sparse.tools.evaluate import build_resnet
from solo_sparse.tools.zoo_bench import bench_entry


def _randomise_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5
    return net.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_channel_prune_then_compact_is_exact_and_smaller(arch):
    torch.manual_seed(0)
    net = _randomise_bn(build_resnet(arch))
    keep = C.channel_prune(net, 0.5)
    for key, ca, _bn, cb in C.pairs(net):
        assert int(keep[key].sum()) == round(0.5 * ca.out_channels)
        assert torch.equal(getattr(cb, MASK)[:, ~keep[key]].any(), torch.tensor(False))
    small = C.compact(net)
    w_small, w_full = C.widths(small), C.widths(net)
    assert all(2 * w_small[k] == w_full[k] for k in w_full)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-4, atol=1e-4)
    assert C.macs(small) < 0.7 * C.macs(net)
    # residual shapes untouched: every block's output channels are the original ones
    for (n1, m1), (n2, m2) in zip(net.named_modules(), small.named_modules()):
        assert n1 == n2
        if n1.endswith(("conv2", "conv3")) and "layer" in n1 and isinstance(m1, torch.nn.Conv2d):
            if arch == "resnet18" or n1.endswith("conv3"):
                assert m1.out_channels == m2.out_channels, n1


def test_dead_output_channels_removed_only_when_bn_output_is_zero():
    torch.manual_seed(1)
    net = _randomise_bn(build_resnet("resnet18"))
    blk = net.layer1[0]
    with torch.no_grad():
        blk.conv1.weight[3].zero_()          # dead output channel, BN(0) <= 0 -> removable
        blk.bn1.bias[3] = -1.0
        blk.conv1.weight[5].zero_()          # dead conv output, but BN(0) > 0 -> a constant: kept
        blk.bn1.bias[5] = 1.0
        blk.bn1.running_mean[5] = 0.0
        blk.conv2.weight[:, 7].zero_()       # never read by conv2 -> removable
    keep = C.removable(net)["layer1.0.conv1"]
    assert not keep[3] and keep[5] and not keep[7]
    assert int((~keep).sum()) == 2
    assert all(bool(k.all()) for key, k in C.removable(net).items() if key != "layer1.0.conv1")
    small = C.compact(net)
    assert small.layer1[0].conv1.out_channels == 62 and small.layer1[0].conv2.in_channels == 62
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)


def test_compacting_a_channel_that_is_read_changes_the_output():
    # the exactness check can fail: removing a live channel by hand is visible
    torch.manual_seed(2)
    net = _randomise_bn(build_resnet("resnet18"))
    keep = {k: torch.ones(ca.out_channels, dtype=torch.bool) for k, ca, _, _ in C.pairs(net)}
    keep["layer2.1.conv1"][0] = False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (C.compact(net, keep)(x) - net(x)).abs().max() > 1e-4


def test_compact_zoo_round_trip(tmp_path):
    torch.manual_seed(3)
    net = _randomise_bn(build_resnet("resnet18"))
    masks = {}
    for n, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            mk = torch.rand(m.weight.shape) < 0.5
            m.weight.data.mul_(mk)
            masks[n + ".weight"] = mk
    root = tmp_path / "zoo"
    f = root / "weights" / "toy.safetensors"
    zoo.save_backbone(f, net.state_dict(), masks)
    zoo.add_entry(root, {"name": "toy", "file": "weights/toy.safetensors", "sha256": zoo.sha256(f),
                         "size_bytes": f.stat().st_size, "backbone": "resnet18"})
    rep = zoo.export_compact("toy", tmp_path / "toy_c.safetensors", channel_density=0.5, root=root)
    assert rep["internal_channels"][0] * 2 == rep["internal_channels"][1]
    assert rep["max_abs_diff"] < 1e-4
    small = zoo.load_file(tmp_path / "toy_c.safetensors")
    ref = zoo.load("toy", root=root)
    C.channel_prune(ref, 0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref(x), rtol=1e-4, atol=1e-4)
    assert small.layer3[0].conv1.out_channels == 128
    # the element masks survive compaction (sliced with the weights)
    assert getattr(small.layer3[0].conv2, MASK).shape == small.layer3[0].conv2.weight.shape
    res = bench_entry("toy", 0.5, sizes=(32,), batches=(1,), reps=3, root=root, progress=False)
    assert res["rows"][0]["dense_ms"] > 0 and res["rows"][0]["fast_ms"] > 0 and res["max_abs_diff"] < 1e-4
    # the speed-up is paired by repetition, as solo-sparse speed's: the median of the per-repetition ratios
    d = res["rows"][0]["detail"]
    ratios = sorted(a / b for a, b in zip(d["dense"]["ms"], d["fast"]["ms"]))
    assert len(ratios) == 3 and res["rows"][0]["speedup"] == ratios[1]
    assert res["rows"][0]["ratio_of_medians"] == res["rows"][0]["dense_ms"] / res["rows"][0]["fast_ms"]


def test_gated_backbones_refused():
    from solo_sparse.gating.dgnet import convert_resnet

    net = build_resnet("resnet18")
    convert_resnet(net)
    with pytest.raises(ValueError, match="is gated"):
        C.compact(net)
    with pytest.raises(ValueError, match=r"channel density must be in \(0, 1\]"):
        C.channel_prune(build_resnet("resnet18"), 0.0)


def test_torchvision_resnet_compacts_too():
    net = _randomise_bn(torchvision.models.resnet18(num_classes=10))
    C.channel_prune(net, 0.25)
    small = C.compact(net)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,size", [("resnet18", 32), ("resnet18", 64), ("resnet18", 224), ("resnet50", 64)])
def test_inference_form_equals_the_masked_dense_network_within_1e5_relative(arch, size):
    """compact + BN folded + channels-last (+ widths rounded to the vector width) vs the masked dense
    network: max |diff| <= 1e-5 of the output's scale, on random inputs."""
    torch.manual_seed(4)
    net = _randomise_bn(build_resnet(arch))
    keep = C.channel_prune(net, 0.45)                  # 0.45: widths that are no multiple of 16
    rounded = C.round_keep(net, keep, C.vector_width())
    assert all(int(rounded[k].sum()) % C.vector_width() == 0 or bool(rounded[k].all()) for k in rounded)
    assert all(bool((rounded[k] | ~keep[k]).all()) and rounded[k].sum() >= keep[k].sum() for k in keep)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = net(x)
        scale = float(ref.abs().max())
        for small in (C.optimise(C.compact(net)), C.optimise(C.compact(net, rounded)),
                      C.optimise(C.compact(net), steps=("fold_bn",)), C.optimise(net)):
            err = float((small(x) - ref).abs().max())
            assert err <= 1e-5 * scale, (err, scale)
    assert sum(C.widths(C.optimise(C.compact(net))).values()) < sum(C.widths(net).values())
    with pytest.raises(ValueError, match="unknown optimisation"):
        C.optimise(net, steps=("compile",))


def test_fold_bn_leaves_no_batchnorm_and_applies_masks():
    net = _randomise_bn(build_resnet("resnet18"))
    conv = net.layer2[0].conv2
    mask = torch.rand(conv.weight.shape) < 0.5
    conv.register_buffer(MASK, mask)
    with torch.no_grad():
        conv.weight[~mask] = 1.0                       # stored weights not yet masked: the fold applies the mask
        ref_w = conv.weight * mask
    folded = C.fold_bn(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert bool((folded.layer2[0].conv2.weight[~mask] == 0).all())
    conv.weight.data = ref_w
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)

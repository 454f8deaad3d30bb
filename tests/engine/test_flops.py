import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from solo_sparse.core.config import MaskSpec
from solo_sparse.engine.density import allocate_masks
from solo_sparse.engine.flops import count_macs
from solo_sparse.engine.sparsifier import ModuleGroup, WeightSparsifier


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet50", 64), ("resnet18", 224)])
def test_dense_macs_match_torch_flop_counter(name, size):
    net = getattr(torchvision.models, name)().eval()
    x = torch.zeros(2, 3, size, size)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x)
    rep = count_macs(net, x)
    assert 2 * rep.dense == fc.get_total_flops()
    assert rep.ratio == 1.0


def test_effective_macs_under_masks_are_exact():
    net = torchvision.models.resnet18().eval()
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", net)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.1))
    rep = count_macs(net, (1, 3, 32, 32))
    by_name = {r.name: r for r in rep.layers}
    # a masked conv costs positions * nnz(mask); the stem and fc stay dense
    r = by_name["layer3.0.conv2"]
    assert r.effective == pytest.approx(r.dense * 0.1, rel=1e-3)
    assert by_name["conv1"].effective == by_name["conv1"].dense
    assert by_name["fc"].effective == by_name["fc"].dense
    assert 0.1 < rep.ratio < 0.2


def test_from_weights_counts_zeros_after_squash():
    net = torchvision.models.resnet18().eval()
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", net)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.3))
    masked = count_macs(net, (1, 3, 32, 32)).effective
    sp.squash()
    assert count_macs(net, (1, 3, 32, 32)).ratio == 1.0
    assert count_macs(net, (1, 3, 32, 32), from_weights=True).effective == pytest.approx(masked)


def test_modules_can_report_their_own_effective_macs():
    class Gated(torch.nn.Conv2d):
        def effective_macs(self, inputs, output, dense):
            return dense * 0.25 + 7  # e.g. a gate keeping a quarter of channels plus its own cost

    net = torch.nn.Sequential(Gated(3, 8, 3))
    rep = count_macs(net, (1, 3, 10, 10))
    assert rep.layers[0].effective == rep.layers[0].dense * 0.25 + 7

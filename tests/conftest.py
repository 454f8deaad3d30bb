import copy
import importlib.util

import pytest
import torch
import torch.nn as nn

HAS_SOLO = importlib.util.find_spec("solo") is not None
#: the marker of tests that need solo-learn: skipped where it is not importable, deselected by the solo-free subset
#: (``-m "not solo"``, what ``scripts/solo_free.py`` runs); markers are registered in pytest.ini
needs_solo = pytest.mark.solo
SOLO_REASON = "solo-learn is not importable (install solo-learn 1.0.6 to run the integration tests)"


def pytest_runtest_setup(item):
    if item.get_closest_marker("solo") is not None and not HAS_SOLO:
        pytest.skip(SOLO_REASON)


class TinyNet(nn.Module):
    """A ResNet-like toy: stem conv, two 3x3 convs, a 1x1 conv, a classifier head named fc."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
                                    nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False), nn.ReLU())
        self.down = nn.Conv2d(2 * c, 4 * c, 1, bias=False)
        self.fc = nn.Linear(4 * c, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.down(self.layer1(x))
        return x.mean((2, 3))


@pytest.fixture
def tiny_pair():
    torch.manual_seed(0)
    online = TinyNet()
    momentum = copy.deepcopy(online)
    for p in momentum.parameters():
        p.requires_grad = False
    return online, momentum

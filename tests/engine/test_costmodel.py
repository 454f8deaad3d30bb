"""The module timer hooks the cost model and the per-block latency script share."""
import torch
import torch.nn as nn

from solo_sparse.engine.costmodel import time_modules


def test_time_modules_reports_each_forward_of_each_module_and_removes_cleanly():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    seen, syncs = [], []
    hooks = time_modules([("conv", net[0]), ("relu", net[1])], lambda n, ms: seen.append((n, ms)),
                         sync=lambda: syncs.append(1))
    net(torch.randn(1, 3, 8, 8))
    net(torch.randn(1, 3, 8, 8))
    assert [n for n, _ in seen] == ["conv", "relu", "conv", "relu"] and all(ms >= 0 for _, ms in seen)
    assert len(syncs) == 4
    for h in hooks:
        h.remove()
    net(torch.randn(1, 3, 8, 8))
    assert len(seen) == 4

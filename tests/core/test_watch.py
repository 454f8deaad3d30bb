"""The embedding watch of every plugin run (solo_sparse.core.watch): the host hooks the method's online projector and
logs the mean effective rank of its training embeddings at each epoch end -- about the embedding width for spread
embeddings, ~1 for a complete collapse, the number of directions for a dimensional one."""
import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from solo_sparse.core.plugin import ModelView, ModuleGroup, Plugin, PluginHost
from solo_sparse.core.watch import WATCH_ROWS, EmbeddingWatch


@dataclass
class _Cfg:
    pass


class _Noop(Plugin):
    name = "noop_watch"
    Config = _Cfg


class _Fixed(nn.Module):
    """A 'projector' that returns whatever embeddings the test sets (the input only gives the batch size)."""

    def __init__(self):
        super().__init__()
        self.out = None

    def forward(self, x):
        return self.out[: len(x)]


def _host(projector=True):
    logged = []
    proj = _Fixed()
    groups = {"backbone": ModuleGroup("backbone", nn.Identity())}
    if projector:
        groups["projector"] = ModuleGroup("projector", proj)
    view = ModelView(groups, "shared", method="simclr", log=logged.append)
    h = PluginHost([_Noop.from_params({})])
    h.setup(view)
    return h, proj, logged


def _erank_logged(logged):
    return [m[EmbeddingWatch.KEY] for m in logged if EmbeddingWatch.KEY in m]


def test_the_host_logs_the_epochs_mean_effective_rank_of_the_training_embeddings():
    h, proj, logged = _host()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(256, 3)
    proj.train()
    proj.out = torch.randn(256, 16, generator=g)                  # spread over 16 directions
    proj(x)
    proj(x)
    h.on_epoch_end(0)
    (spread,) = _erank_logged(logged)
    assert 12.0 < spread <= 16.0
    proj.out = torch.randn(256, 1, generator=g) * torch.randn(1, 16, generator=g) + 3.0     # one direction
    proj(x)
    proj.eval()
    proj.out = torch.randn(256, 16, generator=g)                  # evaluation forwards are not training embeddings
    proj(x)
    h.on_epoch_end(1)
    assert _erank_logged(logged)[1] == pytest.approx(1.0, abs=0.03)
    two = torch.cat([torch.randn(256, 2, generator=g), torch.zeros(256, 14)], 1)
    proj.train()
    proj.out = two                                                # a dimensional collapse: 2 directions
    proj(x)
    h.on_epoch_end(2)
    assert 1.5 < _erank_logged(logged)[2] <= 2.01
    h.on_epoch_end(3)                                             # no training forward: nothing logged
    assert len(_erank_logged(logged)) == 3


def test_only_the_first_rows_of_finite_batches_of_the_hooked_module_count():
    h, proj, logged = _host()
    g = torch.Generator().manual_seed(1)
    proj.train()
    rows = torch.randn(WATCH_ROWS, 8, generator=g)
    # beyond WATCH_ROWS the embeddings all lie on one line: they must not enter the rank
    proj.out = torch.cat([rows, torch.ones(64, 8)])
    proj(torch.zeros(WATCH_ROWS + 64, 3))
    bad = torch.randn(32, 8, generator=g)
    bad[0, 0] = float("nan")
    proj.out = bad
    proj(torch.zeros(32, 3))                                      # non-finite: skipped, not a NaN mean
    head = copy.deepcopy(proj)                                    # a plugin's head copied later carries the hook
    head.out = torch.ones(32, 8)
    head(torch.zeros(32, 3))
    h.on_epoch_end(0)
    from solo_sparse.core.watch import effective_rank

    assert _erank_logged(logged) == [pytest.approx(effective_rank(rows), rel=1e-3)]


def test_the_gram_route_reads_what_the_singular_values_read():
    from solo_sparse.core.watch import effective_rank

    g = torch.Generator().manual_seed(3)
    cases = {"spread": torch.randn(64, 2048, generator=g),
             "anisotropic": torch.randn(64, 512, generator=g) * torch.logspace(0, -3, 512),
             "two directions": torch.cat([torch.randn(64, 2, generator=g), torch.zeros(64, 300)], 1),
             "one line": torch.randn(64, 1, generator=g) * torch.randn(1, 256, generator=g) + 3.0}
    for name, z in cases.items():
        exact, fast = effective_rank(z), effective_rank(z, gram=True)
        assert fast == pytest.approx(exact, rel=1e-3, abs=0.03), name


def test_no_projector_no_watch_and_a_second_setup_hooks_once():
    h, _, logged = _host(projector=False)
    assert h.watch is None
    h.on_epoch_end(0)
    assert not _erank_logged(logged)
    h, proj, logged = _host()
    h.setup(h.view)                                               # set up again: the old hook is removed
    proj.train()
    proj.out = torch.randn(64, 8)
    proj(torch.zeros(64, 3))
    assert h.watch.n == 1

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


def _step(h, proj, out, n=256):
    h.on_step_start()
    proj.out = out
    return proj(torch.zeros(n, 3))


def test_the_host_logs_the_epochs_mean_effective_rank_of_the_training_embeddings():
    h, proj, logged = _host()
    g = torch.Generator().manual_seed(0)
    proj.train()
    _step(h, proj, torch.randn(256, 16, generator=g))             # spread over 16 directions
    _step(h, proj, torch.randn(256, 16, generator=g))
    h.on_epoch_end(0)
    (spread,) = _erank_logged(logged)
    assert 12.0 < spread <= 16.0
    _step(h, proj, torch.randn(256, 1, generator=g) * torch.randn(1, 16, generator=g) + 3.0)    # one direction
    proj.eval()
    _step(h, proj, torch.randn(256, 16, generator=g))             # evaluation forwards are not training embeddings
    h.on_epoch_end(1)
    assert _erank_logged(logged)[1] == pytest.approx(1.0, abs=0.03)
    proj.train()
    _step(h, proj, torch.cat([torch.randn(256, 2, generator=g), torch.zeros(256, 14)], 1))   # 2 directions
    proj.out = torch.randn(256, 16, generator=g)                  # the step's second forward (crop 1): not read
    proj(torch.zeros(256, 3))
    h.on_epoch_end(2)
    assert 1.5 < _erank_logged(logged)[2] <= 2.01
    h.on_epoch_end(3)                                             # no training forward: nothing logged
    assert len(_erank_logged(logged)) == 3


def test_only_the_first_rows_of_full_finite_batches_of_the_hooked_module_count():
    h, proj, logged = _host()
    g = torch.Generator().manual_seed(1)
    proj.train()
    rows = torch.randn(WATCH_ROWS, 8, generator=g)
    # beyond WATCH_ROWS the embeddings all lie on one line: they must not enter the rank
    _step(h, proj, torch.cat([rows, torch.ones(64, 8)]), WATCH_ROWS + 64)
    bad = torch.randn(WATCH_ROWS, 8, generator=g)
    bad[0, 0] = float("nan")
    _step(h, proj, bad, WATCH_ROWS)                                # non-finite: skipped, not a NaN mean
    _step(h, proj, torch.ones(8, 8), 8)                            # a short last batch: skipped (rank <= its size)
    head = copy.deepcopy(proj)                                    # a copy made later carries the hook: not read
    h.on_step_start()
    head.out = torch.ones(WATCH_ROWS, 8)
    head(torch.zeros(WATCH_ROWS, 3))
    h.on_epoch_end(0)
    from solo_sparse.core.watch import effective_rank

    assert _erank_logged(logged) == [pytest.approx(effective_rank(rows), rel=1e-3)]


def test_the_hook_never_changes_the_output_nor_raises():
    h, proj, logged = _host()
    proj.train()
    out = torch.randn(WATCH_ROWS, 8)
    twin = copy.deepcopy(proj)                                    # e.g. a model copied for export
    h.setup(h.view)                                               # the first watch is freed: its hook is removed,
    del h                                                         # the copy's hook points at a dead watch
    twin.out = out
    y = twin(torch.zeros(WATCH_ROWS, 3))
    assert torch.is_tensor(y) and torch.equal(y, out)
    h2, proj2, _ = _host()
    proj2.train()
    y = _step(h2, proj2, out, WATCH_ROWS)
    assert torch.is_tensor(y) and torch.equal(y, out)


def test_under_bf16_autocast_the_rank_is_taken_in_float32():
    h, proj, logged = _host()
    g = torch.Generator().manual_seed(4)
    proj.train()
    low = torch.randn(WATCH_ROWS, 4, generator=g) @ torch.randn(4, 256, generator=g)     # rank 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _step(h, proj, low, WATCH_ROWS)
    h.on_epoch_end(0)
    from solo_sparse.core.watch import effective_rank

    assert _erank_logged(logged) == [pytest.approx(effective_rank(low, gram=True), rel=1e-6)]   # as in fp32
    assert _erank_logged(logged)[0] < 4.1         # bf16 products would read ~7 for this rank-4 batch


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
    _step(h, proj, torch.randn(64, 8), 64)
    assert h.watch.n == 1

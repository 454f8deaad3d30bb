"""Under DDP every rank holds identical masks and scores (2 CPU processes, gloo)."""
import copy
import os
import sys
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/: conftest, helpers


def _worker(rank, world, init_file, out_dir, plugin_name, params):
    sys.path.insert(0, HERE)
    from conftest import TinyNet
    from helpers import ema_like_solo

    from solo_sparse import get_plugin
    from solo_sparse.core.plugin import Branch, ModelView, PluginHost
    from solo_sparse.engine.sparsifier import ModuleGroup

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)                       # same init on every rank, as DDP requires
    online = TinyNet()
    momentum = copy.deepcopy(online)
    for p in momentum.parameters():
        p.requires_grad = False
    plugin = get_plugin(plugin_name).from_params(params)
    host = PluginHost([plugin])
    host.setup(ModelView({"backbone": ModuleGroup("backbone", online, momentum)}, "momentum", method="toy"))
    host.set_schedule_info(4, 40)
    host.on_train_start()
    ddp = torch.nn.parallel.DistributedDataParallel(online, find_unused_parameters=True)  # TinyNet.fc is unused
    opt = torch.optim.SGD(online.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    for _ in range(8):
        x = torch.randn(4, 3, 8, 8, generator=g)
        host.on_step_start()
        host.on_crop(Branch(crop=0))
        ddp(x).pow(2).mean().backward()
        host.after_backward()
        opt.step()
        host.after_optimizer_step(opt)
        opt.zero_grad()
        ema_like_solo(online, momentum)
        host.after_momentum_update()
    sp = plugin.sparsifier
    torch.save({"online": sp.masks("online"), "momentum": sp.masks("momentum"),
                "scores": getattr(getattr(plugin, "scores", None), "scores", {}),
                "weights": sp.weights("online"), "density": sp.density()}, os.path.join(out_dir, f"r{rank}.pt"))
    del ddp                  # dropped before teardown (not shown to prevent the abort: spawn_and_load tolerates it)
    finish(rank, out_dir)


#: the prune-and-regrow plugins of the DDP tests (here and test_ddp_divergence.py)
PRUNE_REGROW = [
    ("synccp", {"final_density": 0.2, "start": 1, "end": 6, "every": 1, "distribution": "uniform",
                "regrow_fraction": 0.2}),
    ("granet", {"final_density": 0.2, "start": 1, "end": 6, "every": 1, "regrow_fraction": 0.2}),
]


def spawn_and_load(worker, tmp_path, plugin_name, params):
    """Run ``worker`` on 2 gloo ranks; the two ranks' saved dicts.

    A rank killed by SIGABRT *after* both ranks saved their results ("terminate called without an active
    exception": gloo torn down at process exit; seen in two CI runs on 2 shared cores, 50966dc and 88b3ea9) is not
    what these tests check; it is tolerated only when both result files are complete. Any other failure, or
    an abort before a rank saved, fails the test."""
    try:
        mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path), plugin_name, params), nprocs=2,
                 join=True)
    except mp.ProcessExitedException as e:
        done = all((tmp_path / f"r{r}.done").is_file() for r in (0, 1))
        if not (done and e.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"rank {e.error_index} aborted at gloo teardown after both ranks saved: {e}", stacklevel=2)
    return [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1)]


def finish(rank, out_dir):
    """A worker's end: mark its result file complete, then tear gloo down on every rank together (no rank
    leaves while the other still talks to it)."""
    open(os.path.join(out_dir, f"r{rank}.done"), "w").close()
    dist.barrier()
    dist.destroy_process_group()


def assert_ranks_equal(r0, r1, keys):
    for key in keys:
        assert set(r0[key]) == set(r1[key])
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)


@pytest.mark.parametrize("plugin_name,params", PRUNE_REGROW)
def test_ranks_agree_after_prune_and_regrow(tmp_path, plugin_name, params):
    r0, r1 = spawn_and_load(_worker, tmp_path, plugin_name, params)
    assert r0["density"] == pytest.approx(0.2, abs=3e-3)
    assert_ranks_equal(r0, r1, ("online", "momentum", "scores", "weights"))
    assert r0["scores"]  # scores were tracked (gradients were all-reduced before scoring)


def _abort_worker(rank, world, init_file, out_dir, plugin_name, params):
    """No gloo: saves (or not) like a worker, then rank 0 aborts as gloo's teardown sometimes does."""
    if params["save"]:
        torch.save({"rank": rank}, os.path.join(out_dir, f"r{rank}.pt"))
        open(os.path.join(out_dir, f"r{rank}.done"), "w").close()
    if rank == 0:
        # the abort this models comes at teardown, after *both* ranks saved: wait for rank 1's file (an abort
        # racing rank 1's save made this test flaky on 2 busy cores; spawn then kills rank 1 before it saves)
        deadline = time.time() + 60
        while params["save"] and not os.path.exists(os.path.join(out_dir, "r1.done")) and time.time() < deadline:
            time.sleep(0.05)
        os.abort()


@pytest.mark.parametrize("save", [True, False])
def test_an_abort_is_tolerated_only_after_both_ranks_saved(tmp_path, save):
    if save:
        with pytest.warns(UserWarning, match="aborted at gloo teardown"):
            r0, r1 = spawn_and_load(_abort_worker, tmp_path, "none", {"save": True})
        assert (r0["rank"], r1["rank"]) == (0, 1)
    else:
        with pytest.raises(mp.ProcessExitedException):
            spawn_and_load(_abort_worker, tmp_path, "none", {"save": False})

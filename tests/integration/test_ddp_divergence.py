"""Under DDP a rank that diverged ends with rank 0's masks and scores (2 CPU processes, gloo).

DDP keeps replicas identical by itself (same init, all-reduced gradients), so a test on identical replicas
cannot see a missing broadcast. Here rank 1 is made to diverge right before a mask update: its masked
weights (online and momentum) and its gradient scores are replaced by noise, so its own magnitude pruning
and regrowth would choose other units. Right after each later update and at the end it must hold exactly rank 0's
masks (both encoders) and scores, with no pruned weight non-zero — which only the broadcast after each mask
update (``DynamicSparsityPlugin.broadcast_state``: masks, then ``GradientScore.broadcast``) can give it. (DDP
itself re-broadcasts the wrapped module's buffers, the online masks among them, at its next forward: too late
for the weights masked right after the update, and never for the scores.)
"""
import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist
from test_ddp import PRUNE_REGROW, assert_ranks_equal, finish, spawn_and_load

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/: conftest, helpers
DIVERGE_AFTER = 3          # rank 1 diverges after optimizer step 3; masks are updated at steps 4, 5, 6
LAST_UPDATE = 6


def _worker(rank, world, init_file, out_dir, plugin_name, params):
    sys.path.insert(0, HERE)
    from conftest import TinyNet
    from helpers import ema_like_solo

    from solo_sparse import get_plugin
    from solo_sparse.core.plugin import Branch, ModelView, PluginHost
    from solo_sparse.engine.sparsifier import ModuleGroup

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    online = TinyNet()
    momentum = copy.deepcopy(online)
    for p in momentum.parameters():
        p.requires_grad = False
    plugin = get_plugin(plugin_name).from_params(params)
    host = PluginHost([plugin])
    host.setup(ModelView({"backbone": ModuleGroup("backbone", online, momentum)}, "momentum", method="toy"))
    host.set_schedule_info(4, 40)
    host.on_train_start()
    ddp = torch.nn.parallel.DistributedDataParallel(online, find_unused_parameters=True)
    opt = torch.optim.SGD(online.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(100 + rank)
    sp = plugin.sparsifier
    before = at_update = None
    for step in range(1, 9):
        x = torch.randn(4, 3, 8, 8, generator=g)
        host.on_step_start()
        host.on_crop(Branch(crop=0))
        ddp(x).pow(2).mean().backward()
        host.after_backward()
        opt.step()
        host.after_optimizer_step(opt)
        opt.zero_grad()
        if step == LAST_UPDATE:    # right after the update: before DDP's next forward syncs the online buffers
            at_update = {"online": {k: v.clone() for k, v in sp.masks("online").items()},
                         "momentum": {k: v.clone() for k, v in sp.masks("momentum").items()}}
        ema_like_solo(online, momentum)
        host.after_momentum_update()
        if step == DIVERGE_AFTER:
            before = {k: v.clone() for k, v in sp.masks("online").items()}
            if rank == 1:
                noise = torch.Generator().manual_seed(7)
                with torch.no_grad():
                    for L in sp:
                        for mod in (L.online, L.momentum):
                            mod.weight.copy_(torch.randn(mod.weight.shape, generator=noise) * mod.weight_mask)
                    for v in plugin.scores.scores.values():
                        v.copy_(torch.rand(v.shape, generator=noise) * 100)
    torch.save({"online": sp.masks("online"), "momentum": sp.masks("momentum"), "scores": plugin.scores.scores,
                "update_online": at_update["online"], "update_momentum": at_update["momentum"],
                "leaked": sp.leaked("online") + sp.leaked("momentum"),
                "changed": any(not torch.equal(before[k], m) for k, m in sp.masks("online").items())},
               os.path.join(out_dir, f"r{rank}.pt"))
    del ddp                  # dropped before teardown (not shown to prevent the abort: spawn_and_load tolerates it)
    finish(rank, out_dir)


@pytest.mark.parametrize("plugin_name,params", PRUNE_REGROW)   # EMA scores (SyncCP): a diverged one would persist
def test_a_diverged_rank_ends_with_rank0_masks_and_scores(tmp_path, plugin_name, params):
    r0, r1 = spawn_and_load(_worker, tmp_path, plugin_name, params)
    assert r0["changed"] and r1["changed"]                  # masks were updated after the divergence
    assert r0["scores"]
    assert (r0["leaked"], r1["leaked"]) == (0, 0)           # pruned weights non-zero on rank 0 / rank 1
    # at the last update (DDP syncs the online encoder's buffers at each forward, not right after an update)
    # and at the end
    assert_ranks_equal(r0, r1, ("update_online", "update_momentum", "online", "momentum", "scores"))

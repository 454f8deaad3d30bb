"""A Lightning-free training loop that calls the PluginHost hooks where the solo-learn binding does."""
import torch

from solo_sparse.plugin import Branch, ModelView, PluginHost
from solo_sparse.sparsifier import ModuleGroup


def ema_like_solo(online, momentum, tau=0.9):
    # solo-learn's MomentumUpdater: pairs parameters by position and *replaces* .data
    for op, mp in zip(online.parameters(), momentum.parameters()):
        mp.data = tau * mp.data + (1 - tau) * op.data


def make_host(plugin, online, momentum=None, steps_per_epoch=4, total_steps=40, log=None):
    fam = "momentum" if momentum is not None else "shared"
    view = ModelView({"backbone": ModuleGroup("backbone", online, momentum)}, fam, method="toy", log=log)
    host = PluginHost([plugin])
    host.setup(view)
    host.set_schedule_info(steps_per_epoch, total_steps)
    host.on_train_start()
    return host


def train(host, online, momentum, opt, steps, seed=0, batch=4):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, 3, 8, 8, generator=g)
        host.on_step_start()
        host.on_crop(Branch(crop=0))
        loss = online(x).pow(2).mean() - online(x.flip(3)).mean()
        loss.backward()
        host.after_backward()
        opt.step()
        host.after_optimizer_step(opt)
        opt.zero_grad(set_to_none=True)
        if momentum is not None:
            ema_like_solo(online, momentum)
            host.after_momentum_update()

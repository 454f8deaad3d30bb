"""Resuming is exact: an interrupted run continues as if it never stopped.

- ``start: csi``: a SyncCP run interrupted after CSI *armed* and before it *fired* fires at the same step after
  the resume (a lost "armed" flag would wait for the timeout instead). Plain host loop.
- Through Lightning (``trainer.fit(ckpt_path=...)``): weights of every module, masks of both encoders, gradient
  scores and the plugin's step / trigger equal those of the uninterrupted run, bit for bit. Through the real
  wrapped solo-learn method when it is importable, always through the plain-Lightning ``BindingMirror``.

Where Lightning does not allow an exact resume (so not tested as exact): mid-epoch checkpoints — Lightning 2.1
restarts the interrupted epoch's data loader and warns "You're resuming from a checkpoint that ended before the
epoch ended. This can cause unreliable results"; the runs are cut at an epoch end, where solo-learn's checkpointer
saves. solo-learn itself does not checkpoint its EMA coefficient (``MomentumUpdater.cur_tau``): the binding saves
and restores it (``base_tau != final_tau`` here, so a resume that restarted at ``base_tau`` fails).
"""
import copy

import pytest
import torch
from conftest import TinyNet, needs_solo
from helpers import crop_loader, make_host, mirror_class, plain_loader, resume, snapshot, tiny_solo_cfg, train, trainer

from solo_sparse import get_plugin


# ------------------------------------------------------------------------------ CSI: armed, not fired
def _pair(seed=0):
    torch.manual_seed(seed)
    on = TinyNet()
    mo = copy.deepcopy(on)
    for p in mo.parameters():
        p.requires_grad = False
    return on, mo


def _csi():
    return get_plugin("synccp").from_params({"final_density": 0.2, "density_gap": 0.3, "every": 1,
                                             "distribution": "uniform", "csi_warmup": 0, "csi_rule": "resync"})


def _convs(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def _disagree(mo):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in _convs(mo):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))


def _resync(on, mo):
    with torch.no_grad():
        for a, b in zip(_convs(on), _convs(mo)):
            b.weight.copy_(a.weight)


def _until_armed(p, on, mo):
    host = make_host(p, on, mo)
    opt = torch.optim.SGD(on.parameters(), lr=0.05, momentum=0.9)
    train(host, on, mo, opt, 1, seed=0)                   # copies: r = 0, nothing to arm
    _disagree(mo)
    opt.param_groups[0]["lr"] = 0.0
    train(host, on, mo, opt, 1, seed=1)                   # the encoders disagree: CSI arms
    assert p._csi_armed and p.trigger_step is None
    return host, opt


def _fire_and_continue(host, p, on, mo, opt):
    _resync(on, mo)
    train(host, on, mo, opt, 1, seed=2)                   # re-synchronised: an armed CSI fires here
    opt.param_groups[0]["lr"] = 0.05
    for s in range(3, 7):
        train(host, on, mo, opt, 1, seed=s)


def test_csi_run_interrupted_between_arming_and_firing_fires_at_the_same_step():
    on, mo = _pair()
    p = _csi()
    host, opt = _until_armed(p, on, mo)
    _fire_and_continue(host, p, on, mo, opt)
    assert p.trigger_step == 3

    on2, mo2 = _pair()
    q = _csi()
    h2, opt2 = _until_armed(q, on2, mo2)
    saved = snapshot(on2, mo2, opt2, h2)
    on3, mo3 = _pair(seed=9)
    r = _csi()
    h3, opt3 = resume(r, on3, mo3, saved)
    assert r.step == 2 and r.trigger_step is None
    _fire_and_continue(h3, r, on3, mo3, opt3)
    assert r.trigger_step == p.trigger_step == 3
    for (k, a), b in zip([*on.state_dict().items(), *mo.state_dict().items()],
                         [*on3.state_dict().values(), *mo3.state_dict().values()]):
        assert torch.equal(a, b), k
    assert set(r.scores.scores) == set(p.scores.scores)
    for k, s in p.scores.scores.items():
        assert torch.equal(s, r.scores.scores[k]), k


# ------------------------------------------------------------------------------ through Lightning
def _stop_after_first_epoch():
    import lightning.pytorch as pl

    class Stop(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    return Stop()


def _assert_same_run(a, b, pa, pb):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert any(k.endswith("weight_mask") and k.startswith("momentum_") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert (pa.step, pa.trigger_step) == (pb.step, pb.trigger_step)
    assert pa.scores.scores and set(pa.scores.scores) == set(pb.scores.scores)
    for k, s in pa.scores.scores.items():
        assert torch.equal(s, pb.scores.scores[k]), k


def _resumed(make, loader, tmp_path, **fit_kw):
    """(uninterrupted model, resumed model): 2 epochs straight, and 1 epoch + checkpoint + a fresh model
    (other init) resumed to 2 epochs."""
    pytest.importorskip("lightning", reason="lightning is not installed (pip install solo-sparse[solo])")
    a = make(0)
    trainer(2, **fit_kw).fit(a, loader())
    b = make(0)
    tr = trainer(2, [_stop_after_first_epoch()], **fit_kw)
    tr.fit(b, loader())
    ck = tmp_path / "ep0.ckpt"
    tr.save_checkpoint(ck)
    c = make(1)
    trainer(2, **fit_kw).fit(c, loader(), ckpt_path=str(ck))
    return a, c


SCHEDULES = {
    "synccp": {"final_density": 0.2, "start": 1, "end": 6, "every": 1, "distribution": "uniform",
               "regrow_fraction": 0.2},
    "granet": {"final_density": 0.2, "start": 1, "end": 6, "every": 1, "regrow_fraction": 0.2},
}


@needs_solo
def test_wrapped_method_resumed_through_lightning_equals_the_uninterrupted_run(tmp_path):
    from solo.methods import BYOL

    import solo_sparse

    cls = solo_sparse.wrap(BYOL, "synccp", **{**SCHEDULES["synccp"], "end": 3})

    def make(seed):
        torch.manual_seed(seed)
        return cls(tiny_solo_cfg(base_tau=0.9, final_tau=1.0))

    a, c = _resumed(make, lambda: crop_loader(n=8), tmp_path)      # 2 steps per epoch: masks change at 1, 2, 3
    pa, pc = a.solo_sparse.plugins[0], c.solo_sparse.plugins[0]
    assert pa.step == 4 and pa.sparsifier.density() == pytest.approx(0.2, abs=3e-3)
    _assert_same_run(a, c, pa, pc)


@pytest.mark.parametrize("plugin", ["synccp", "granet"])
def test_mirror_resumed_through_lightning_equals_the_uninterrupted_run(tmp_path, plugin):
    def make(seed):
        return mirror_class()(get_plugin(plugin).from_params(SCHEDULES[plugin]), seed=seed)

    a, c = _resumed(make, plain_loader, tmp_path)
    assert a.plugin.step == 16 and a.plugin.sparsifier.density() == pytest.approx(0.2, abs=3e-3)
    _assert_same_run(a, c, a.plugin, c.plugin)

"""The weight-sparsity invariants hold at EVERY optimizer step of a real Lightning fit, not only after the epoch-end
re-mask: no pruned gradient reaches the optimizer (after AMP unscaling, accumulation and clipping: a torch step
pre-hook sees what the optimizer uses), the step never revives a pruned weight, and after solo-learn's EMA
update no pruned weight is non-zero in either encoder.

The epoch-end safety net (``on_epoch_end`` re-masks every weight) is switched off in these tests, so only the
per-step invariants can keep the zeros. Through the real wrapped solo-learn method (gmp and granet, SGD and
LARS, with and without gradient accumulation and clipping, AMP with a gradient scaler) when solo-learn is
importable; always through ``BindingMirror`` (tests/helpers.py), a plain LightningModule that places the hooks
as the binding does and mirrors solo-learn's momentum update. The checker itself is shown to catch a broken
hook (negative controls).
"""
import pytest
import torch
from conftest import needs_solo
from helpers import crop_loader, invariant_checker, mirror_class, plain_loader, tiny_solo_cfg, trainer

from solo_sparse import get_plugin

pytest.importorskip("lightning", reason="lightning is not installed (pip install solo-sparse[solo])")

SCHED = {
    "gmp": {"final_density": 0.2, "start": 1, "end": 3, "every": 1},
    # granet's momentum encoder has its own masks (policy "own"): the EMA update writes online values into
    # positions the momentum mask prunes, so only the post-EMA re-mask keeps them at zero
    "granet": {"final_density": 0.2, "start": 1, "end": 3, "every": 1, "regrow_fraction": 0.2,
               "momentum_final_density": 0.4},
}
#: pairwise cover: each plugin with each optimizer, and with and without accumulation + clipping
CASES = [("gmp", 0, 1, None), ("gmp", 1, 2, 1e-3), ("granet", 0, 2, 1e-3), ("granet", 1, 1, None)]


def _safety_net_off(p):
    p.on_epoch_end = lambda epoch: None        # the plugin's epoch-end re-mask of every weight


def _check_end(p, chk, steps, batches):
    sp = p.sparsifier
    assert chk.steps == chk.post_steps == steps and chk.batches == batches   # every step and batch was checked
    assert p.step == steps
    assert sp.density("online") == pytest.approx(0.2, abs=3e-3)
    if p.name == "granet":
        assert sp.density("momentum") == pytest.approx(0.4, abs=3e-3)         # its own, denser masks
        assert any(not torch.equal(a, b) for a, b in zip(sp.masks("online").values(), sp.masks("momentum").values()))


# ------------------------------------------------------------------------------ through solo-learn
@needs_solo
@pytest.mark.parametrize("plugin,lars,accumulate,clip", CASES)
def test_wrapped_method_keeps_the_invariants_at_every_step(plugin, lars, accumulate, clip):
    from solo.methods import BYOL

    import solo_sparse

    model = solo_sparse.wrap(BYOL, plugin, **SCHED[plugin])(tiny_solo_cfg(optimizer="lars" if lars else "sgd"))
    p = model.solo_sparse.plugins[0]
    _safety_net_off(p)
    chk = invariant_checker(lambda m: m.solo_sparse.plugins[0].sparsifier, clip_norm=clip)
    n = 8 * accumulate                                   # 2 optimizer steps per epoch, masks change at 1, 2, 3
    tr = trainer(2, [chk], accumulate_grad_batches=accumulate, gradient_clip_val=clip)
    tr.fit(model, crop_loader(n=n))
    _check_end(p, chk, steps=2 * n // (4 * accumulate), batches=2 * n // 4)


def _score_check(p, seen):
    """Instant GraNet scores are |dense gradient| captured by the hook: on the kept positions they equal the
    gradient the optimizer uses — unscaled (a hook before AMP unscaling would see it times the scale)."""
    ids = {}

    def check(opt):
        for L in p.sparsifier:
            s = p.scores.scores.get(L.name)
            if s is None or ids.get(L.name) == id(s):
                continue                                  # not updated in this step
            ids[L.name] = id(s)
            keep = L.mask("online")
            g = L.online.weight.grad
            assert torch.equal(s[keep], g.abs()[keep].float()), f"{L.name}: score is not |unscaled gradient|"
            seen.append(L.name)

    return check


@needs_solo
def test_wrapped_method_under_amp_sees_unscaled_gradients():
    from lightning.pytorch.plugins.precision import MixedPrecision
    from solo.methods import BYOL

    import solo_sparse

    # fp16 convolutions are slow on CPU: one epoch
    model = solo_sparse.wrap(BYOL, "granet", **SCHED["granet"])(tiny_solo_cfg(max_epochs=1))
    p = model.solo_sparse.plugins[0]
    _safety_net_off(p)
    seen = []
    chk = invariant_checker(lambda m: m.solo_sparse.plugins[0].sparsifier, score_check=_score_check(p, seen))
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=10 ** 6)
    tr = trainer(1, [chk], plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    tr.fit(model, crop_loader())
    assert scaler.get_scale() == 64.0                      # no step was skipped for inf/nan: every one is checked
    _check_end(p, chk, steps=4, batches=4)
    assert seen                                            # scores were compared at the mask-update steps


# ------------------------------------------------------------------------------ without solo-learn
def _mirror(plugin, opt="sgd"):
    return mirror_class()(get_plugin(plugin).from_params(SCHED[plugin]), optimizer=opt)


@pytest.mark.slow
@pytest.mark.parametrize("plugin,adam,accumulate,clip", CASES)
def test_mirror_keeps_the_invariants_at_every_step(plugin, adam, accumulate, clip):
    model = _mirror(plugin, "adamw" if adam else "sgd")
    _safety_net_off(model.plugin)
    chk = invariant_checker(lambda m: m.plugin.sparsifier, clip_norm=clip)
    n = 32 * accumulate
    trainer(2, [chk], accumulate_grad_batches=accumulate, gradient_clip_val=clip).fit(model, plain_loader(n=n))
    _check_end(model.plugin, chk, steps=2 * n // (4 * accumulate), batches=2 * n // 4)


def test_mirror_under_amp_sees_unscaled_gradients():
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = _mirror("granet")
    _safety_net_off(model.plugin)
    seen = []
    chk = invariant_checker(lambda m: m.plugin.sparsifier, score_check=_score_check(model.plugin, seen))
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=10 ** 6)
    trainer(2, [chk], plugins=[MixedPrecision("16-mixed", "cpu", scaler)]).fit(model, plain_loader())
    assert scaler.get_scale() == 64.0
    _check_end(model.plugin, chk, steps=16, batches=16)
    assert seen


# ------------------------------------------------------------------------------ the checker can fail
@pytest.mark.parametrize("broken,match", [
    ("after_momentum_update", "non-zero after the EMA update"),     # the momentum encoder is not re-masked
    ("after_backward", "pruned gradient entries"),                  # gradients are not masked
])
def test_the_checker_catches_a_broken_hook(broken, match):
    model = _mirror("granet")
    _safety_net_off(model.plugin)
    setattr(model.plugin, broken, lambda *a: None)
    chk = invariant_checker(lambda m: m.plugin.sparsifier)
    with pytest.raises(AssertionError, match=match):
        trainer(2, [chk]).fit(model, plain_loader())


def test_the_checker_catches_a_gradient_masked_after_clipping():
    model = _mirror("gmp")
    _safety_net_off(model.plugin)
    sp = model.plugin.sparsifier
    model.plugin.after_backward = lambda: None

    def clip_then_mask(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        model.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        sp.mask_gradients()                                                          # masked after clipping

    model.configure_gradient_clipping = clip_then_mask
    chk = invariant_checker(lambda m: m.plugin.sparsifier, clip_norm=1e-3)
    with pytest.raises(AssertionError, match="clipped gradient norm"):
        trainer(2, [chk], gradient_clip_val=1e-3).fit(model, plain_loader())

"""A plugin's defaults run on every method it supports (issue 26): each weight-sparsity plugin, with no key set
but the plugin line, wraps each of solo-learn's shared-encoder (SimCLR, Barlow Twins, VICReg) and momentum (BYOL,
MoCo v2+) methods, and takes two optimizer steps with the invariants holding."""
import pytest
import torch
from conftest import needs_solo

pytestmark = [needs_solo, pytest.mark.slow]

PLUGINS = ("synccp", "granet", "gmp", "sdclr")
METHODS = ("simclr", "barlow_twins", "vicreg", "byol", "mocov2plus")


def tiny_cfg(method):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "method": method, "name": "t", "backbone": {"name": "resnet18", "kwargs": {}},
        "method_kwargs": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32, "temperature": 0.2,
                          "queue_size": 16, "lamb": 0.0051, "scale_loss": 0.024, "sim_loss_weight": 25.0,
                          "var_loss_weight": 25.0, "cov_loss_weight": 1.0},
        "momentum": {"base_tau": 0.9, "final_tau": 1.0, "classifier": False},
        "data": {"dataset": "custom", "num_classes": 3, "num_large_crops": 2, "num_small_crops": 0},
        "optimizer": {"name": "sgd", "batch_size": 4, "lr": 0.05, "classifier_lr": 0.1, "weight_decay": 1e-4,
                      "kwargs": {"momentum": 0.9}},
        "scheduler": {"name": "none"}, "max_epochs": 1, "accumulate_grad_batches": 1,
        "performance": {"disable_channel_last": True}, "strategy": "auto",
    })


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", PLUGINS)
def test_every_weight_sparsity_plugin_runs_with_its_defaults_on_every_method(name, method):
    import lightning.pytorch as pl
    import solo.methods as sm
    from helpers import crop_loader

    import solo_sparse

    model = solo_sparse.wrap(sm.METHODS[method], name)(tiny_cfg(method))   # the plugin's defaults only
    tr = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    tr.fit(model, crop_loader(n=8))
    p = model.solo_sparse.plugins[0]
    sp = p.sparsifier
    assert p.step == 2
    assert sp.density("online") == pytest.approx(0.1, abs=0.01)          # every default ends at 10%
    assert sp.leaked("online") == 0 and (not sp.has_momentum or sp.leaked("momentum") == 0)
    if name == "synccp":
        assert p.trigger_step == 1                                        # the first check: literal rule / one encoder
        if sp.has_momentum:
            assert sp.density("momentum") == pytest.approx(0.4, abs=0.01)
    if name == "sdclr" and sp.has_momentum:                               # the momentum encoder sees the pruned one
        assert all(torch.equal(m, sp.masks("momentum")[k]) for k, m in sp.masks().items())
    if name == "sdclr" and not sp.has_momentum:                           # crop 1 ran through BNs of its own
        twins = model.solo_sparse_modules["sdclr"].twins
        assert len(twins) >= 20 and all(int(t.num_batches_tracked) == 2 for t in twins.values())

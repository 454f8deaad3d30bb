"""A non-finite training loss stops the run at the step it happened, naming the plugins, the step and both loss
terms (PluginHost.add_extra_loss, called by the solo-learn binding and the Lightning callback alike); a diverged
checkpoint is refused at evaluation; a failed training reports the exception line of its log."""
import math
import sys
from dataclasses import dataclass

import pytest
import torch

from solo_sparse.core.plugin import Plugin, PluginHost, TrainingDiverged
from solo_sparse.tools.runner import failure_reason, run_command


@dataclass
class _Cfg:
    extra: float = 0.5


class _Extra(Plugin):
    name = "extra_term"
    Config = _Cfg

    def extra_loss(self):
        return torch.tensor(self.config.extra)


def host(extra=0.5):
    h = PluginHost([_Extra.from_params({"extra": extra})])
    h.plugins[0].step, h.plugins[0].epoch = 38, 0
    return h


def test_finite_losses_get_the_plugin_term_added():
    out = host().add_extra_loss(torch.tensor(1.0))
    assert float(out) == pytest.approx(1.5)
    d = {"loss": torch.tensor(2.0), "z": 1}
    out = host().add_extra_loss(d)
    assert float(out["loss"]) == pytest.approx(2.5) and out["z"] == 1 and float(d["loss"]) == 2.0
    assert host().add_extra_loss(None) is None          # Lightning's "skip this batch"


@pytest.mark.parametrize("loss,extra,says", [
    (float("nan"), 0.5, "the method's loss nan, the plugins' loss 0.5"),
    (1.0, float("inf"), "the method's loss 1.0, the plugins' loss inf"),
    (float("-inf"), 0.0, "the method's loss -inf"),
])
def test_a_non_finite_loss_stops_training_naming_plugin_step_and_terms(loss, extra, says):
    h = host(extra)
    for _ in range(h.nonfinite_patience - 1):          # fp16 AMP survives an overflow: a few steps are tolerated
        h.add_extra_loss({"loss": torch.tensor(loss)})
        h.plugins[0].step += 1
    with pytest.raises(TrainingDiverged) as e:
        h.add_extra_loss({"loss": torch.tensor(loss)})
    msg = str(e.value)
    assert "'extra_term'" in msg and "since step 38 (epoch 0), 3 steps in a row" in msg and says in msg
    assert isinstance(e.value, FloatingPointError)


def test_a_finite_step_resets_the_count():
    h = host()
    for loss in (math.nan, math.nan, 1.0, math.nan, math.nan, 1.0):
        h.add_extra_loss(torch.tensor(loss))
    with pytest.raises(TrainingDiverged, match="since step 38"):
        for _ in range(3):
            h.add_extra_loss(torch.tensor(math.inf))


def test_other_outputs_pass_through_or_are_refused():
    manual = {"g_loss": torch.tensor(1.0)}                   # manual optimisation: no "loss" key
    h = PluginHost([type("NoExtra", (Plugin,), {"name": "no_extra", "Config": _Cfg}).from_params({})])
    assert h.add_extra_loss(manual) is manual
    assert h.add_extra_loss((1, 2)) == (1, 2)
    from solo_sparse.core.config import ConfigError

    with pytest.raises(ConfigError, match="returned dict without a 'loss' tensor"):
        host().add_extra_loss(manual)


def test_every_rank_stops_when_one_diverges(monkeypatch):
    """The flag is reduced (MAX) across ranks: a rank whose own loss is finite stops with the others."""
    calls = []

    def all_reduce(t, op=None):
        calls.append(op)
        t.fill_(1.0)                                         # another rank saw a non-finite loss

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    h = host()
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row \(on another rank\)"):
        for _ in range(3):
            h.add_extra_loss(torch.tensor(1.0))
    assert calls == [torch.distributed.ReduceOp.MAX] * 3


def test_the_patience_is_the_sections_key_and_0_never_stops():
    from solo_sparse.core.registry import build_plugins, host_options

    sec = {"plugin": "gmp", "final_density": 0.5, "nonfinite_patience": 5}
    (p,) = build_plugins(sec)                                 # a host key, not the plugin's (no unknown-key error)
    h = PluginHost([p], **host_options(sec))
    h.plugins[0].step = 7
    for _ in range(4):
        h.add_extra_loss(torch.tensor(math.nan))
    with pytest.raises(TrainingDiverged, match=r"5 steps in a row.*nonfinite_patience=5 steps; 0 never stops"):
        h.add_extra_loss(torch.tensor(math.nan))
    two = {"plugins": ["gmp", "sdclr"], "nonfinite_patience": 0, "gmp": {"final_density": 0.5}}
    h = PluginHost(build_plugins(two), **host_options(two))
    with pytest.warns(RuntimeWarning, match=r"3 steps in a row.*Training goes on") as w:
        for _ in range(10):
            h.add_extra_loss(torch.tensor(math.inf))
    assert len(w) == 1                                        # once per run of non-finite steps
    assert host_options({"plugin": "gmp"}) == {} and PluginHost(build_plugins({"plugin": "gmp"})).nonfinite_patience == 3


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True, None])
def test_a_bad_patience_is_refused_naming_key_value_and_what_is_allowed(bad):
    from solo_sparse.core.config import ConfigError
    from solo_sparse.core.registry import build_plugins

    with pytest.raises(ConfigError, match=r"solo_sparse.nonfinite_patience=.*expected an int >= 0"):
        build_plugins({"plugin": "gmp", "nonfinite_patience": bad})


def test_a_failed_training_reports_its_exception_line_not_hydras_hint(tmp_path):
    script = ("import sys\n"
              "print('Epoch 0: 100%|####| 39/39')\n"
              "print('Error executing job with overrides: []', file=sys.stderr)\n"
              "print('Traceback (most recent call last):', file=sys.stderr)\n"
              "print('solo_sparse.core.plugin.TrainingDiverged: solo-sparse: the training loss is not finite at step 5',"
              " file=sys.stderr)\n"
              "print('', file=sys.stderr)\n"
              "print('Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.', file=sys.stderr)\n"
              "sys.exit(1)\n")
    res = run_command([sys.executable, "-c", script], tmp_path / "r")
    assert not res.ok
    assert res.error == ("exit 1: solo_sparse.core.plugin.TrainingDiverged: solo-sparse: the training loss is not "
                         "finite at step 5")
    assert failure_reason(tmp_path / "missing.log") == ""
    # an exception handled earlier in the log is not the reason; a killed run says so
    log = tmp_path / "k.log"
    log.write_text("Traceback (most recent call last):\nValueError: a retried loader error\n"
                   + "".join(f"Epoch 3: {i}%\n" for i in range(40)))
    res = run_command([sys.executable, "-c", "import os, signal; print('Epoch 3: 60%', flush=True); "
                                             "os.kill(os.getpid(), signal.SIGKILL)"], tmp_path / "k", log=log,
                      append=True)
    assert res.error == "killed by signal 9: Epoch 3: 60%"


def test_load_backbone_refuses_a_diverged_checkpoint(tmp_path):
    from torchvision.models import resnet18

    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.evaluate import load_backbone

    net = resnet18()
    state = {f"backbone.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "ok.ckpt")
    load_backbone(str(tmp_path / "ok.ckpt"))
    state["backbone.conv1.weight"] = torch.full_like(state["backbone.conv1.weight"], math.nan)
    state["backbone.layer1.0.bn1.weight"][3] = math.inf
    torch.save({"state_dict": state}, tmp_path / "nan.ckpt")
    with pytest.raises(ConfigError, match=r"2 of \d+ backbone tensors are not finite \(first: conv1.weight, "
                                          r"layer1.0.bn1.weight\): the run diverged"):
        load_backbone(str(tmp_path / "nan.ckpt"))

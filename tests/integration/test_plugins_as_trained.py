"""main_linear.py rebuilds each plugin from the config its checkpoint records: a layout key the linear config sets
to another value is refused naming both; an evaluation key (the plugin's ``evaluation_keys``) is the linear run's."""
import pytest
import torch
from conftest import needs_solo

from solo_sparse.core.config import ConfigError, config_to_state
from solo_sparse.core.registry import build_plugins

pytestmark = needs_solo


def _ckpt(tmp_path, section):
    (p,) = build_plugins(section)
    path = tmp_path / "pre.ckpt"
    torch.save({"solo_sparse": {p.name: {"config": config_to_state(p.config)}}}, path)
    return str(path)


def test_eval_path_is_the_linear_runs_choice_and_layout_is_the_checkpoints(tmp_path):
    from solo_sparse.binding.install import plugins_as_trained

    ck = _ckpt(tmp_path, {"plugin": "dgnet_dual", "target": 0.3})
    line = {"plugin": "dgnet_dual", "eval_path": "dense"}
    (p,) = plugins_as_trained(build_plugins(line), line, ck)
    assert p.config.eval_path == "dense" and p.config.target == pytest.approx(0.3)   # chosen here / as trained
    (p,) = plugins_as_trained(build_plugins({"plugin": "dgnet_dual"}), {"plugin": "dgnet_dual"}, ck)
    assert p.config.eval_path == "gated" and p.config.target == pytest.approx(0.3)

    bad = {"plugin": "dgnet_dual", "target": 0.5}
    with pytest.raises(ConfigError, match=r"solo_sparse.target=0.5 in the linear config, but .* was pre-trained "
                                          r"with solo_sparse.target=0.3"):
        plugins_as_trained(build_plugins(bad), bad, ck)


def test_a_plugin_without_evaluation_keys_refuses_every_differing_key(tmp_path):
    from solo_sparse.binding.install import plugins_as_trained

    ck = _ckpt(tmp_path, {"plugin": "cdg", "groups": 4})
    bad = {"plugin": "cdg", "groups": 2}
    with pytest.raises(ConfigError, match="solo_sparse.groups=2"):
        plugins_as_trained(build_plugins(bad), bad, ck)

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from solo_sparse.cli import main
from solo_sparse.config import MaskSpec
from solo_sparse.density import allocate_masks
from solo_sparse.sparsifier import ModuleGroup, WeightSparsifier


def test_plugins_lists_description_families_and_keys(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gmp: gradual magnitude pruning")
    assert "method families: momentum, shared" in out and "final_density: None" in out and "every: 100" in out and "end: '75%'" in out
    assert main(["plugins", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[0]["name"] == "gmp" and "granularity" in info[0]["keys"]


def test_console_script_installed():
    r = subprocess.run(["solo-sparse", "plugins"], capture_output=True, text=True)
    assert r.returncode == 0 and "gmp" in r.stdout


@pytest.fixture
def sparse_ckpt(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    mom = torchvision.models.resnet18()
    mom.fc = torch.nn.Identity()
    sp = WeightSparsifier({"backbone": ModuleGroup("backbone", net, mom)}, MaskSpec())
    sp.set_masks(allocate_masks({k: w.abs() for k, w in sp.weights().items()}, 0.1))
    sp.copy_online_to_momentum()
    sp.apply_masks()
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"momentum_backbone.{k}": v for k, v in mom.state_dict().items()})
    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": sd, "solo_sparse": {"gmp": {"step": 7, "epoch": 1, "config": {}, "extra": {}}}}, p)
    return p


def test_flops_and_sparsity_of_a_checkpoint(sparse_ckpt, capsys):
    assert main(["flops", str(sparse_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "masked layers at density 0.1000" in out
    ratio = float(out.split("ratio ")[1].split()[0])
    assert 0.1 < ratio < 0.2
    assert main(["sparsity", str(sparse_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "| backbone.layer1.0.conv1 | 36864 | 0.1000 | 0.1000 |" in out
    assert "plugin gmp: step 7" in out


def test_flops_of_a_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone:\n  name: resnet18\ndata:\n  dataset: custom\nsolo_sparse:\n  plugin: gmp\n"
                   "  final_density: 0.5\n  distribution: erk\n")
    assert main(["flops", str(cfg), "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "gmp at final density 0.5 (erk, element" in out and "| layer1.0.conv1 |" in out
    cfg.write_text("backbone:\n  name: resnet18\nsolo_sparse:\n  plugin: gmp\n  final_density: 7\n")
    assert main(["flops", str(cfg)]) == 2
    assert "final_density=7.0" in capsys.readouterr().err


def test_flops_refuses_unknown_backbone(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone:\n  name: vit_tiny\n")
    assert main(["flops", str(cfg)]) == 2
    assert "backbone.name='vit_tiny'" in capsys.readouterr().err

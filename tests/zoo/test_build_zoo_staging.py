"""``scripts/build_zoo.py`` packs into a staged file and moves it over the entry's weights only once the packed
network has been evaluated: a rebuild whose features overflow (:class:`NonFiniteFeatures`) leaves the entry's
weights and config as they were, and no staged file behind; so does a config copy that fails."""
import pytest
import torch
from helpers import load_script

from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools.evaluate import NonFiniteFeatures


def _setup(tmp_path, monkeypatch, evaluate):
    mod = load_script("build_zoo")
    zroot = tmp_path / "zoo"
    (zroot / "weights").mkdir(parents=True)
    (zroot / "configs").mkdir()
    (zroot / "weights" / "e.safetensors").write_bytes(b"the entry's weights")
    (zroot / "configs" / "e.yaml").write_text("method: simclr\nold: 1\n")
    new_cfg = tmp_path / "new.yaml"
    new_cfg.write_text("method: simclr\nnew: 1\n")
    torch.manual_seed(0)
    ck = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in build_resnet("resnet18").state_dict().items()},
                "epoch": 0}, ck)
    x = torch.randn(4, 3, 32, 32)
    monkeypatch.setattr(mod, "load_splits", lambda data, px: ((x, torch.zeros(4)), (x, torch.zeros(4))))
    monkeypatch.setattr(mod, "evaluate_backbone", evaluate)
    monkeypatch.setattr(mod, "flops_of", lambda net, g, X: {"flops_ratio": 1.0})
    argv = ["--name", "e", "--data", str(tmp_path / "data"), "--config", str(new_cfg), "--checkpoint", str(ck),
            "--zoo", str(zroot)]
    return mod, zroot, argv


def test_a_rebuild_with_non_finite_features_keeps_the_entry(tmp_path, monkeypatch):
    def overflow(net, train, test):
        raise NonFiniteFeatures("3 of 4 images give non-finite features")

    mod, zroot, argv = _setup(tmp_path, monkeypatch, overflow)
    with pytest.raises(SystemExit, match="not added to the zoo .*3 of 4 images"):
        mod.main(argv)
    assert (zroot / "weights" / "e.safetensors").read_bytes() == b"the entry's weights"
    assert (zroot / "configs" / "e.yaml").read_text() == "method: simclr\nold: 1\n"
    assert sorted(p.name for p in (zroot / "weights").iterdir()) == ["e.safetensors"]   # nothing staged left


def test_a_rebuild_that_evaluates_replaces_weights_and_config(tmp_path, monkeypatch):
    mod, zroot, argv = _setup(tmp_path, monkeypatch, lambda net, train, test: {"knn20": 0.5, "linear": 0.6})
    assert mod.main(argv) in (0, None)
    w = zroot / "weights" / "e.safetensors"
    assert w.read_bytes() != b"the entry's weights" and w.stat().st_size > 1000
    assert (zroot / "configs" / "e.yaml").read_text() == "method: simclr\nnew: 1\n"
    assert sorted(p.name for p in (zroot / "weights").iterdir()) == ["e.safetensors"]
    assert sorted(p.name for p in (zroot / "configs").iterdir()) == ["e.yaml"]


def test_a_config_copy_that_fails_keeps_the_entry(tmp_path, monkeypatch):
    """The config is staged before the weights move: a copy that fails (disk full, permissions) leaves the old
    weights beside the old config, not new weights beside an old config."""
    mod, zroot, argv = _setup(tmp_path, monkeypatch, lambda net, train, test: {"knn20": 0.5, "linear": 0.6})

    def full_disk(src, dst, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod.shutil, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        mod.main(argv)
    assert (zroot / "weights" / "e.safetensors").read_bytes() == b"the entry's weights"
    assert (zroot / "configs" / "e.yaml").read_text() == "method: simclr\nold: 1\n"
    assert sorted(p.name for p in (zroot / "weights").iterdir()) == ["e.safetensors"]
    assert sorted(p.name for p in (zroot / "configs").iterdir()) == ["e.yaml"]

import json
import subprocess

import pytest
import torch
import torchvision

from solo_sparse.core.config import MaskSpec
from solo_sparse.engine.density import allocate_masks
from solo_sparse.engine.sparsifier import ModuleGroup, WeightSparsifier
from solo_sparse.tools.cli import main


def test_plugins_lists_description_families_and_keys(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "\ngmp: gradual magnitude pruning" in "\n" + out
    for name in ("imp", "dgnet_dual", "dgnet_gated", "synccp"):
        assert f"\n{name}: " in "\n" + out
    assert "method families: momentum, shared" in out and "final_density: None" in out and "every: 100" in out and "end: '75%'" in out
    assert main(["plugins", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    gmp = next(p for p in info if p["name"] == "gmp")
    assert "granularity" in gmp["keys"]


@pytest.mark.slow
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


def test_flops_of_a_dense_config_and_of_the_dgnet_static_control(tmp_path, capsys):
    """A config without a solo_sparse section (it used to fail: 'Input cfg is not an OmegaConf config object'),
    a gated one (its cost needs data: dense shown, said so) and DGNet's static control (known before training)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone:\n  name: resnet18\ndata:\n  dataset: custom\n")
    assert main(["flops", str(cfg), "--input-size", "64"]) == 0
    assert "dense (no solo_sparse section)" in capsys.readouterr().out
    cfg.write_text("backbone:\n  name: resnet18\nsolo_sparse:\n  plugin: dgnet_gated\n  target: 0.3\n")
    assert main(["flops", str(cfg), "--input-size", "64"]) == 0
    assert "cost needs data" in capsys.readouterr().out
    cfg.write_text("backbone:\n  name: resnet18\nsolo_sparse:\n  plugin: dgnet_gated\n  target: 0.3\n"
                   "  control: static\n")
    assert main(["flops", str(cfg), "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "control static at target 0.3" in out and "19/64" in out


def test_flops_refuses_unknown_backbone(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone:\n  name: vit_tiny\n")
    assert main(["flops", str(cfg)]) == 2
    assert "backbone.name='vit_tiny'" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_on_an_image_folder(tmp_path, sparse_ckpt, capsys):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in range(3):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                base = torch.full((28, 28, 3), 60.0 * c)
                arr = (base + 20 * torch.rand(28, 28, 3, generator=g)).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(d / f"{i}.png")
    out = tmp_path / "r.json"
    assert main(["evaluate", str(sparse_ckpt), "--data", str(tmp_path / "data"), "--random-init-densities", "1.0",
                 "0.5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["backbone"].split(" (")[0] for r in res] == [
        "random-init, magnitude-pruned to 1.0", "random-init, magnitude-pruned to 0.5", str(sparse_ckpt)]
    assert res[0]["macs_ratio"] == 1.0 and 0.5 < res[1]["macs_ratio"] < 0.6 and res[2]["macs_ratio"] < 0.2
    for r in res:  # three well-separated grey levels: every backbone separates them
        assert r["knn1"] == 1.0 and 0.0 <= r["linear"] <= 1.0
    assert [(r["kind"], r["name"]) for r in res] == [("random-init", "random-init d1"),
                                                     ("random-init", "random-init d0.5"),
                                                     ("checkpoint", sparse_ckpt.stem)]
    # the main job's fallback plots this run's numbers (not the zoo manifest's), random-init drawn as the floor
    plotted = {}
    import matplotlib.axes

    real_axhline = matplotlib.axes.Axes.axhline

    def spy(self, y=0, *a, **k):
        plotted.setdefault("floor", []).append(y)
        return real_axhline(self, y, *a, **k)

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "axhline", spy)
        assert main(["report", str(out), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "r.png").stat().st_size > 1000
    assert plotted["floor"] == [pytest.approx(100 * res[0]["linear"])]


def test_report_refuses_a_json_that_is_not_an_evaluation(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": {}}))
    assert main(["report", str(bad), "--out", str(tmp_path)]) == 2
    assert "not an evaluation file" in capsys.readouterr().err


def test_evaluate_reports_an_overflowing_backbone_and_goes_on_to_the_next(tmp_path, capsys):
    """A backbone whose features overflow float32 gets an error row, not an accuracy from inf/NaN; the next
    backbone is evaluated and the exit status says one failed."""
    from helpers import make_image_folder

    from solo_sparse.engine.resnet import build_resnet

    make_image_folder(tmp_path / "data", train_per_class=2, val_per_class=1)
    cks = []
    for name, big in (("bad", True), ("good", False)):
        torch.manual_seed(0)
        sd = {f"backbone.{k}": v for k, v in build_resnet("resnet18").state_dict().items()}
        if big:     # finite weights, features at 3e38 * (x_hat + 1): inf
            for p in ("weight", "bias"):
                sd[f"backbone.layer4.1.bn2.{p}"] = torch.full_like(sd[f"backbone.layer4.1.bn2.{p}"], 3e38)
        torch.save({"state_dict": sd}, tmp_path / f"{name}.ckpt")
        cks.append(str(tmp_path / f"{name}.ckpt"))
    out = tmp_path / "r.json"
    assert main(["evaluate", *cks, "--data", str(tmp_path / "data"), "--out", str(out)]) == 1
    res = json.loads(out.read_text())
    assert [r["name"] for r in res] == ["bad", "good"]
    assert "non-finite features" in res[0]["error"] and "linear" not in res[0]
    assert 0.0 <= res[1]["linear"] <= 1.0 and "error" not in res[1]
    assert "bad.ckpt" in capsys.readouterr().err

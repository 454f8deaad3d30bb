"""Zoo entries exported with `solo-sparse zoo export` load in solo-learn's unchanged main_linear.py
with every backbone key (weight-sparse entry: plain linear YAML; gated DGNet entry: its plugin line)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_solo
from solo_sparse import zoo

pytestmark = needs_solo
ROOT = Path(__file__).resolve().parents[1]


def _images(root: Path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 1)):
        for c in "abcde":
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(28, 28, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("kind,plugin_line", [("imp", None), ("dgnet_dual", "dgnet_dual")])
def test_exported_entry_loads_in_main_linear_with_every_key(tmp_path, kind, plugin_line):
    from test_solo_integration import _solo_dir

    name = next(e["name"] for e in zoo.list() if e["algorithm"] == kind)
    ck = tmp_path / "entry.ckpt"
    r = subprocess.run([sys.executable, "-m", "solo_sparse.cli", "zoo", "export", name, "--out", str(ck)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    sd = torch.load(ck, map_location="cpu", weights_only=True)["state_dict"]
    _images(tmp_path / "imgs")
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    lin = (ROOT / "scripts" / "configs" / "fmnist" / "linear.yaml").read_text()
    if plugin_line:
        lin = lin.replace("  - _self_\n", f"  - _self_\n  - solo_sparse: {plugin_line}\n", 1)
        lin += "solo_sparse:\n  target: 0.3\n"
    (cfgs / "lin.yaml").write_text(lin)
    data = tmp_path / "imgs"
    r = subprocess.run([sys.executable, str(_solo_dir() / "main_linear.py"), "--config-path", str(cfgs),
                        "--config-name", "lin.yaml", "++optimizer.batch_size=4", "++max_epochs=1",
                        "++data.num_workers=0", f"++data.train_path={data / 'train'}",
                        f"++data.val_path={data / 'val'}", "++data.augmentations.crop_size=32",
                        f"++pretrained_feature_extractor='{ck}'", f"++checkpoint.dir={tmp_path / 'lin'}"],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lin_sd = torch.load(next((tmp_path / "lin").rglob("*.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    weights = [k for k in sd if not k.endswith("weight_mask")]
    assert weights
    for k in weights:
        assert k in lin_sd, k
        assert torch.equal(lin_sd[k], sd[k]), k

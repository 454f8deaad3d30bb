"""Zoo entries exported with `solo-sparse zoo export` load in solo-learn's unchanged main_linear.py
with every backbone key (weight-sparse entry: plain linear YAML; gated DGNet entry: its plugin line)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_solo
from helpers import assert_backbone_kept, config_dir, linear_config, linear_overrides, make_image_folder, run_solo

from solo_sparse import zoo

pytestmark = needs_solo
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind,plugin_line", [("imp", None), ("dgnet_dual", "dgnet_dual")])
def test_exported_entry_loads_in_main_linear_with_every_key(tmp_path, kind, plugin_line):
    name = next(e["name"] for e in zoo.list() if e["algorithm"] == kind)
    ck = tmp_path / "entry.ckpt"
    r = subprocess.run([sys.executable, "-m", "solo_sparse.tools.cli", "zoo", "export", name, "--out", str(ck)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("- solo_sparse: dgnet_dual'" in r.stdout) == bool(plugin_line), r.stdout    # the line it needs, if any
    sd = torch.load(ck, map_location="cpu", weights_only=True)["state_dict"]
    data = make_image_folder(tmp_path / "imgs")
    cfgs = config_dir(tmp_path, lin=linear_config(plugin_line, "solo_sparse:\n  target: 0.3\n" if plugin_line else ""))
    r = run_solo("main_linear.py", cfgs, "lin.yaml", *linear_overrides(data, ck, tmp_path / "lin"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_backbone_kept(sd, tmp_path / "lin", keys=[k for k in sd if not k.endswith("weight_mask")])

"""Editable installs work with Hydra: in setuptools' default (lenient), ``compat`` and ``strict`` editable
modes, a throwaway venv that holds the checkout editable gives ``import solo_sparse_plugins``, Hydra's
discovery of the search-path plugin and the ``solo_sparse/`` config group.

The venv sees this machine's dependencies (torch, hydra, ...) through a filtered copy of the
site-packages directory made of symlinks, without any regular install of solo-sparse (which would
shadow the editable one and make the test pass for the wrong reason). ``--no-deps``, no network.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from solo_free import filtered_site  # noqa: E402  (the throwaway-venv builder CI's solo-free run uses)

pytestmark = pytest.mark.slow

CHECK = r"""
import json
from pathlib import Path
import solo_sparse, solo_sparse_plugins
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra import compose, initialize_config_dir
names = [type(p).__name__ if not isinstance(p, type) else p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
import tempfile
d = tempfile.mkdtemp()
Path(d, "app.yaml").write_text("defaults:\n  - _self_\n  - solo_sparse: gmp\nmethod: byol\n")
with initialize_config_dir(d, version_base="1.2"):
    cfg = compose("app")
from solo_sparse import get_plugin
print(json.dumps({"solo_sparse": solo_sparse.__file__, "plugins": solo_sparse_plugins.__file__,
                  "searchpath": names, "group_plugin": cfg.solo_sparse.plugin,
                  "gmp": get_plugin("gmp").__module__}))
"""


@pytest.mark.parametrize("mode", ["default", "compat", "strict"])
def test_editable_install_is_seen_by_hydra(tmp_path, mode):
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the checkout")
    work = tmp_path / "checkout"
    # a copy of the tracked and untracked-but-not-ignored files, as a contributor's clone would have
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    vsite = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    deps = filtered_site(tmp_path / "deps")
    (vsite / "_deps.pth").write_text(f"{deps}\n")
    args = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(work)]
    if mode != "default":
        args += ["--config-settings", f"editable_mode={mode}"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(got["solo_sparse"]).resolve().is_relative_to(work.resolve()), got     # the checkout, not a copy
    assert "SoloSparseSearchPathPlugin" in got["searchpath"], got
    assert got["group_plugin"] == "gmp" and got["gmp"] == "solo_sparse_plugins.gmp"

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
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"solo_sparse", "solo_sparse_plugins", "solo_sparse_zoo"}

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


def _site_dirs() -> list:
    """This interpreter's site-packages directories in import order (a venv made with
    ``--system-site-packages`` sees its own and the base interpreter's)."""
    import site

    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    seen, out = set(), []
    for d in [p for p in sys.path if p in dirs] + dirs:
        if d not in seen and Path(d).is_dir():
            seen.add(d)
            out.append(Path(d))
    return out


def _filtered_site(dest: Path) -> Path:
    """Symlinks to every entry of this interpreter's site-packages except solo-sparse's own (the first
    directory that holds a name wins, as on import)."""
    dest.mkdir()
    for src in _site_dirs():
        for entry in src.iterdir():
            name = entry.name
            if name in OURS or name.startswith(("solo_sparse-", "solo_sparse.", "__editable__")) \
                    or name.endswith(".pth") or name == "__pycache__":
                continue
            if name == "hydra_plugins":
                (dest / name).mkdir(exist_ok=True)
                for sub in entry.iterdir():
                    if sub.name != "solo_sparse_searchpath" and not (dest / name / sub.name).exists():
                        (dest / name / sub.name).symlink_to(sub)
                continue
            if not (dest / name).exists() and not (dest / name).is_symlink():
                (dest / name).symlink_to(entry)
    return dest


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
    deps = _filtered_site(tmp_path / "deps")
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

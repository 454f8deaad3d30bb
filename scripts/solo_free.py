"""Run the tests as a newcomer without solo-learn would: in a throwaway venv that cannot import ``solo``.

    python scripts/solo_free.py [pytest args ...]      # default: the fast solo-free subset (-m "not solo and not slow")

solo-learn is not on the package registry at a usable version, and GitHub may be unreachable, so a fresh
machine often has no solo-learn; the machine CI runs on may have it installed by hand. This script makes
the difference visible on every CI run: it builds a venv (no pip download: ``--no-index``) whose
dependencies are the interpreter's own site-packages seen through a filtered folder of symlinks, without
solo-learn (its package, its metadata and every ``.pth`` file, which is how editable installs are found)
and without solo-sparse, installs this checkout into it (a regular install, as ``scripts/test.sh`` does),
checks that ``import solo`` fails there, and runs pytest from ``tests/`` with the venv's interpreter.

The filtered-site builder is shared with ``tests/integration/test_editable_install.py``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterable, List

ROOT = Path(__file__).resolve().parents[1]
#: import names of solo-sparse's own packages (never taken from the interpreter's site-packages)
OURS = {"solo_sparse", "solo_sparse_plugins", "solo_sparse_zoo"}
#: import names and distribution prefixes of solo-learn
SOLO = {"solo"}
SOLO_DIST = ("solo_learn-", "solo_learn.", "solo-learn")


def site_dirs() -> List[Path]:
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


def filtered_site(dest: Path, exclude: Iterable[str] = (), exclude_prefixes: Iterable[str] = ()) -> Path:
    """Symlinks to every entry of this interpreter's site-packages except solo-sparse's own, ``.pth`` files
    (editable installs) and the names in ``exclude`` / starting with ``exclude_prefixes`` (the first
    directory that holds a name wins, as on import)."""
    skip = OURS | set(exclude)
    prefixes = ("solo_sparse-", "solo_sparse.", "__editable__", *exclude_prefixes)
    dest.mkdir(parents=True)
    for src in site_dirs():
        for entry in src.iterdir():
            name = entry.name
            if name in skip or name.startswith(prefixes) or name.endswith((".pth", ".egg-link")) \
                    or name == "__pycache__":
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


def make_venv(where: Path, deps: Path) -> Path:
    """A venv at ``where`` (no pip of its own) that sees ``deps`` through a ``.pth`` line; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    vsite = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (vsite / "_deps.pth").write_text(f"{deps}\n")
    return py


def main(argv: List[str]) -> int:
    t0 = time.time()
    args = argv or ["-m", "not solo and not slow"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    with tempfile.TemporaryDirectory(prefix="solo-free-") as tmp:
        tmp = Path(tmp)
        deps = filtered_site(tmp / "deps", exclude=SOLO, exclude_prefixes=SOLO_DIST)
        venv = tmp / "venv"
        py = make_venv(venv, deps)
        shutil.rmtree(ROOT / "build", ignore_errors=True)   # setuptools reuses build/lib
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                            str(ROOT)], env=env, cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"solo-free: installing the checkout into the throwaway venv failed:\n{r.stderr[-3000:]}")
            return 1
        probe = subprocess.run([str(py), "-c", "import importlib.util as u; import solo_sparse; "
                                "print(u.find_spec('solo') is None, solo_sparse.__file__)"],
                               env=env, cwd=tmp, capture_output=True, text=True)
        hidden, _, where = probe.stdout.strip().partition(" ")
        if probe.returncode != 0 or hidden != "True" or not Path(where).resolve().is_relative_to(venv.resolve()):
            print(f"solo-free: the throwaway venv does not hide solo-learn or does not import the installed "
                  f"solo-sparse ({probe.stdout.strip()} {probe.stderr.strip()[-500:]})")
            return 1
        print(f"solo-free: venv ready in {time.time() - t0:.0f} s (solo-learn not importable); pytest {' '.join(args)}",
              flush=True)
        venv_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
        r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                            "-W", "ignore::FutureWarning", *args], cwd=ROOT / "tests", env=venv_env)
        print(f"solo-free: pytest exit code {r.returncode}, {time.time() - t0:.0f} s in all", flush=True)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

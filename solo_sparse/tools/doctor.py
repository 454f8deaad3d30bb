"""``solo-sparse doctor``: one screen that says whether everything solo-sparse needs is in place, each line
``ok`` or ``problem`` with the fix; and the installer of solo-learn at the pinned commit that
``scripts/main.sh`` and ``scripts/test.sh`` call (``python -m solo_sparse.tools.doctor --ensure-solo-learn``).

The pinned solo-learn commit lives here (:data:`SOLO_LEARN_COMMIT`) and nowhere else.
"""
from __future__ import annotations

import argparse
import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

#: solo-learn 1.0.6, the commit every integration test and benchmark ran against
SOLO_LEARN_COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"
SOLO_LEARN_URL = "https://github.com/vturrisi/solo-learn"
#: what solo-sparse is tested with (requirements.txt): package -> (description, test on the version's numbers)
PINS = {
    "torch": ("2.14", lambda v: v[:2] == [2, 14]),
    "lightning": ("2.1.2", lambda v: v[:3] == [2, 1, 2]),
    "torchmetrics": ("<0.12", lambda v: v[:2] < [0, 12]),
    "setuptools": ("<81 (lightning 2.1 imports pkg_resources)", lambda v: v[:1] < [81]),
}
#: the optional Lightning host's pins (setup.py's extra ``lightly``): checked where installed
LIGHTLY_PINS = {
    "lightly": ("1.6.0", lambda v: v[:3] == [1, 6, 0]),
    "pytorch_lightning": ("2.1.2, as lightning", lambda v: v[:3] == [2, 1, 2]),
}

Line = Tuple[str, str, str]          # (status "ok" | "problem" | "note", what, fix)


def _version(mod: str) -> Optional[str]:
    try:
        from importlib import metadata

        return metadata.version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return None


def solo_learn_info() -> Tuple[Optional[str], Optional[Path], Optional[str]]:
    """(version, checkout dir holding main_pretrain.py or None, git commit or None) of the importable solo."""
    import warnings

    try:
        with warnings.catch_warnings():       # solo-learn's imports warn about timm registries
            warnings.simplefilter("ignore")
            import solo  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken
        return None, None, None
    import solo as s

    d = Path(s.__file__).resolve().parents[1]
    version = _version("solo-learn")
    commit = None
    if (d / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
        except Exception:  # noqa: BLE001
            commit = None
    return version, (d if (d / "main_pretrain.py").exists() else None), commit


def reachable(host: str = "github.com", port: int = 443, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_solo_learn(src: Optional[Path] = None, timeout: int = 600) -> int:
    """Install solo-learn at the pinned commit when it is not importable and GitHub can be reached
    (``pip install --no-deps -e git+URL@COMMIT``: its requirements are solo-sparse's own). One line says what
    happened; returns 0 when solo-learn is importable afterwards, 1 otherwise (never raises)."""
    version, d, _ = solo_learn_info()
    if version is not None or d is not None:
        print(f"solo-learn: present ({version or 'version unknown'}{', scripts in ' + str(d) if d else ''})")
        return 0
    if not reachable():
        print("solo-learn: not installed, and github.com cannot be reached from here: runs without it (tests that "
              "need it skip; the main job trains through the Lightning host). To install it elsewhere: pip install "
              f"--no-deps -e git+{SOLO_LEARN_URL}@{SOLO_LEARN_COMMIT}#egg=solo-learn")
        return 1
    src = Path(src or Path.home() / ".cache" / "solo_sparse" / "src")
    src.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--src", str(src), "-e",
           f"git+{SOLO_LEARN_URL}@{SOLO_LEARN_COMMIT}#egg=solo-learn"]
    print(f"solo-learn: installing the pinned commit {SOLO_LEARN_COMMIT[:7]} into {src} ...", flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"solo-learn: the install did not finish within {timeout} s; runs without it")
        return 1
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        print(f"solo-learn: the install failed ({last[0][:200]}); runs without it")
        return 1
    importlib.invalidate_caches()
    print(f"solo-learn: installed at {SOLO_LEARN_COMMIT[:7]}")
    return 0


def _hydra_lines() -> List[Line]:
    out: List[Line] = []
    try:
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin

        found = [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
    except Exception as e:  # noqa: BLE001
        return [("problem", f"Hydra plugin discovery failed ({type(e).__name__}: {e})", "pip install hydra-core>=1.3")]
    if "SoloSparseSearchPathPlugin" in found:
        out.append(("ok", "Hydra finds the solo-sparse search-path plugin", ""))
    else:
        out.append(("problem", "Hydra does not find the solo-sparse search-path plugin (hydra_plugins."
                               "solo_sparse_searchpath)", "reinstall: pip install -e . (or pip install .) from the "
                                                          "checkout"))
    name = "<first registered plugin>"
    try:
        import tempfile

        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from solo_sparse.core.registry import available_plugins

        name = sorted(available_plugins())[0]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "app.yaml").write_text(f"defaults:\n  - _self_\n  - solo_sparse: {name}\n")
            GlobalHydra.instance().clear()
            with initialize_config_dir(d, version_base="1.2"):
                cfg = compose("app")
            GlobalHydra.instance().clear()
        ok = cfg.solo_sparse.plugin == name
        out.append(("ok" if ok else "problem", f"the solo_sparse/ config group is visible ('- solo_sparse: {name}' "
                    "composes)", "" if ok else "reinstall solo-sparse"))
    except Exception as e:  # noqa: BLE001
        out.append(("problem", f"'- solo_sparse: {name}' does not compose ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:120]})", "reinstall solo-sparse"))
    return out


def checks(data_root: Path = Path("data")) -> List[Line]:
    lines: List[Line] = []
    lines.append(("ok", f"python {sys.version.split()[0]}", ""))
    for pkg in ("torch", "torchvision", "lightning", "torchmetrics", "setuptools", "hydra-core", "omegaconf",
                "safetensors"):
        v = _version(pkg)
        if v is None:
            lines.append(("problem", f"{pkg} is not installed", "pip install -r requirements.txt"))
            continue
        pin = PINS.get(pkg)
        nums = _numbers(v)
        bad = pin is not None and nums is not None and not pin[1](nums)
        lines.append(("problem" if bad else "ok", f"{pkg} {v}" + (f" (tested with {pin[0]})" if pin else ""),
                      "pip install -r requirements.txt" if bad else ""))
    version, d, commit = solo_learn_info()
    hosts = host_lines(d is not None)
    lines += hosts
    if version is None and d is None:
        other = any(s == "ok" for s, _, _ in hosts)    # training still works through the Lightning host
        lines.append(("note" if other else "problem", "solo-learn is not importable",
                      f"python -m solo_sparse.tools.doctor --ensure-solo-learn (pinned {SOLO_LEARN_COMMIT[:7]})"))
    else:
        pinned = commit is None or commit == SOLO_LEARN_COMMIT
        lines.append(("ok" if pinned else "note",
                      f"solo-learn {version or '?'}" + (f" at {commit[:7]}" if commit else " (commit unknown)")
                      + ("" if pinned else f", tested at {SOLO_LEARN_COMMIT[:7]}"), ""))
        lines.append(("ok" if d else "problem", "solo-learn's main_pretrain.py " + (f"in {d}" if d else "not found"),
                      "" if d else "install solo-learn from a checkout (editable), not a wheel: "
                                   "python -m solo_sparse.tools.doctor --ensure-solo-learn"))
    lines += _hydra_lines()
    from solo_sparse.core.registry import GROUP, available_plugins, get_plugin

    bad = []
    for n in available_plugins():
        try:
            get_plugin(n)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{n} ({type(e).__name__}: {e})")
    lines.append(("problem" if bad else "ok", f"{len(available_plugins())} plugins load from the entry-point group "
                  f"{GROUP}" + (f"; failing: {', '.join(bad)}" if bad else ""),
                  "reinstall solo-sparse" if bad else ""))
    import torch

    if torch.cuda.is_available():
        lines.append(("ok", f"CUDA: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))", ""))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        lines.append(("ok", "MPS (Apple GPU) available", ""))
    else:
        lines.append(("note", f"no GPU: CPU with {torch.get_num_threads()} threads", "CPU configs need devices: \"1\", "
                      "accelerator: cpu, precision: 32, strategy: auto, sync_batchnorm: False"))
    wandb = _version("wandb")
    lines.append(("note", f"W&B {'installed (' + wandb + ')' if wandb else 'not installed'}; solo-learn's "
                          "wandb/private.yaml enables it", "offline or CPU runs: wandb.enabled: False"))
    from solo_sparse.tools.data import DEBIAN_DIR

    deb = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists()
    lines.append(("ok" if deb else "problem", f"Fashion-MNIST {'found in ' + str(DEBIAN_DIR) if deb else 'missing'}",
                  "" if deb else "apt-get install dataset-fashion-mnist (the main job does it)"))
    prepared = [p.name for p in sorted(Path(data_root).glob("fmnist*")) if (p / "train").is_dir()]
    prep = "python scripts/prepare_fashion_mnist.py --out data/fmnist5k --train-per-class 500"
    lines.append(("ok" if prepared else "note", f"prepared data in {data_root}/: {', '.join(prepared) or 'none'}",
                  "" if prepared else prep))
    return lines


def host_lines(solo_ok: bool) -> List[Line]:
    """Which training hosts are usable here: solo-learn (its unchanged scripts) and the Lightning binding
    (``solo_sparse.lightning``: Lightly's building blocks + the ``Sparsify`` callback). A problem only when
    neither is."""
    import importlib.util

    out: List[Line] = []
    missing = [m for m in ("lightly", "lightning") if importlib.util.find_spec(m) is None]
    versions = {pkg: _version(pkg) for pkg in LIGHTLY_PINS}
    off = [f"{pkg} {v} (tested with {LIGHTLY_PINS[pkg][0]})" for pkg, v in versions.items()
           if v is not None and _numbers(v) is not None and not LIGHTLY_PINS[pkg][1](_numbers(v))]
    light_ok = not missing
    status = "ok" if solo_ok else ("note" if light_ok else "problem")
    out.append((status, "host solo-learn: " + ("usable (main_pretrain.py found)" if solo_ok else "not usable"),
                "" if solo_ok else "python -m solo_sparse.tools.doctor --ensure-solo-learn"
                + (" (the Lightning host trains meanwhile)" if light_ok else "")))
    what = ("usable (" + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ")" if light_ok
            else f"not usable ({' and '.join(missing)} missing)")
    out.append(("ok" if light_ok and not off else ("note" if solo_ok or light_ok else "problem"),
                "host lightning (solo_sparse.lightning.Sparsify, Lightly modules): " + what
                + (f"; {'; '.join(off)}" if off else ""),
                "" if light_ok and not off else "pip install 'solo-sparse[lightly]'"))
    return out


def _numbers(v: str) -> Optional[List[int]]:
    """Leading numeric parts of a version string ("2.14.1+cu130" -> [2, 14, 1]), None if there are none."""
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return out or None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="solo-sparse doctor", description=__doc__)
    ap.add_argument("--ensure-solo-learn", action="store_true",
                    help="install solo-learn at the pinned commit if it is missing and GitHub can be reached")
    ap.add_argument("--data-root", default="data")
    args = ap.parse_args(argv)
    if args.ensure_solo_learn:
        return ensure_solo_learn()
    return report(Path(args.data_root))


def report(data_root: Path = Path("data")) -> int:
    lines = checks(data_root)
    width = max(len(s) for s, _, _ in lines)
    for status, what, fix in lines:
        print(f"{status:<{width}}  {what}" + (f"\n{'':<{width}}  -> {fix}" if fix and status != "ok" else ""))
    problems = sum(s == "problem" for s, _, _ in lines)
    print(f"\n{problems} problem(s)." if problems else "\neverything solo-sparse needs is in place.")
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    sys.exit(main())

"""Running solo-learn's unchanged ``main_pretrain.py`` on a config, once for every caller.

The benchmarks (``scripts/*_benchmark.py``), the zoo builder and the IMP driver all train through
solo-learn's own script in a subprocess (that is the path users take); this module builds that
command, runs it with its log in the run directory, times it and finds the checkpoint it wrote.

    res = run_pretrain("scripts/configs/fmnist/simclr_cdg.yaml", Path("runs/simclr_cdg"),
                       train_path=Path("data/fmnist5k/train"))
    if res.ok:
        ck = res.checkpoint
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from solo_sparse.core.config import ConfigError

PathLike = Union[str, Path]


def solo_learn_dir(arg: Optional[PathLike] = None) -> Path:
    """The directory holding solo-learn's ``main_pretrain.py``: ``arg`` when given, else next to the
    importable ``solo`` package. ConfigError (with what to do) when neither works."""
    if arg:
        return Path(arg)
    try:
        import solo
    except ImportError as e:
        raise ConfigError("solo-learn is not importable: install it (README, 'solo-learn') "
                          "or pass --solo-learn DIR") from e
    d = Path(solo.__file__).resolve().parents[1]
    if not (d / "main_pretrain.py").exists():
        raise ConfigError(f"main_pretrain.py not found next to the solo package ({d}); pass --solo-learn DIR")
    return d


def newest_checkpoint(d: Path) -> Optional[Path]:
    """The most recently written ``*.ckpt`` under ``d`` (recursively), or None."""
    cks = sorted(Path(d).rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return cks[-1] if cks else None


def config_digest(path: PathLike) -> str:
    """First 12 hex digits of the config file's sha256: a result is reused only for the same content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def pretrain_command(config: PathLike, *, solo_dir: Optional[PathLike] = None, name: Optional[str] = None,
                     run_dir: Optional[PathLike] = None, train_path: Optional[PathLike] = None,
                     overrides: Sequence[str] = (), python: str = sys.executable) -> List[str]:
    """``python main_pretrain.py --config-path DIR --config-name FILE [++name=..] [++checkpoint.dir=..]
    [++data.train_path=..] *overrides`` — solo-learn's script, unchanged, on one YAML."""
    cfg = Path(config).resolve()
    cmd = [python, str(solo_learn_dir(solo_dir) / "main_pretrain.py"), "--config-path", str(cfg.parent),
           "--config-name", cfg.name]
    if name is not None:
        cmd.append(f"++name={name}")
    if run_dir is not None:
        cmd.append(f"++checkpoint.dir={Path(run_dir).resolve()}")
    if train_path is not None:
        cmd.append(f"++data.train_path={Path(train_path).resolve()}")
    return cmd + list(overrides)


@dataclass
class PretrainResult:
    returncode: int
    seconds: float
    command: List[str]
    log: Path
    checkpoint: Optional[Path]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.checkpoint is not None

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    @property
    def error(self) -> str:
        if self.returncode:
            return f"exit {self.returncode}"
        return "" if self.checkpoint else "no checkpoint written (checkpoint.enabled must be true)"


def run_command(cmd: Sequence[str], run_dir: PathLike, *, log: Optional[PathLike] = None, append: bool = False,
                cwd: Optional[PathLike] = None) -> PretrainResult:
    """Run ``cmd`` (a training command) with stdout+stderr to ``log`` (default ``run_dir/train.log``),
    in ``cwd`` (default ``run_dir``); the result carries the newest checkpoint under ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else run_dir / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "a" if append else "w") as logf:
        rc = subprocess.call(list(cmd), stdout=logf, stderr=subprocess.STDOUT, cwd=str(cwd or run_dir))
    return PretrainResult(rc, time.time() - t0, list(cmd), log, newest_checkpoint(run_dir) if rc == 0 else None)


def run_pretrain(config: PathLike, run_dir: PathLike, *, name: Optional[str] = None,
                 train_path: Optional[PathLike] = None, overrides: Sequence[str] = (),
                 solo_dir: Optional[PathLike] = None, log: Optional[PathLike] = None,
                 cwd: Optional[PathLike] = None, echo: bool = True) -> PretrainResult:
    """Train ``config`` with solo-learn's ``main_pretrain.py`` into ``run_dir`` (checkpoints there,
    run name ``name`` or the config's stem); see :func:`pretrain_command` and :func:`run_command`."""
    name = name if name is not None else Path(config).stem
    cmd = pretrain_command(config, solo_dir=solo_dir, name=name, run_dir=run_dir, train_path=train_path,
                           overrides=overrides)
    if echo:
        print(f"[{name}] training: {shlex.join(cmd)}", flush=True)
    return run_command(cmd, run_dir, log=log, cwd=cwd)


def add_suite_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every training benchmark suite takes (configs, data, out, solo-learn, size, overrides)."""
    ap.add_argument("--configs", nargs="+", required=True, help="solo-learn YAMLs, one row each (by file stem)")
    ap.add_argument("--data", required=True, help="image folder root with train/ and val/")
    ap.add_argument("--out", required=True, help="results.json, results.md and runs/ go here")
    ap.add_argument("--solo-learn", default=None, help="solo-learn checkout (default: next to the importable solo)")
    ap.add_argument("--size", type=int, default=32, help="evaluation image size")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides added to every training run")
    return ap


class SuiteResults:
    """``out/results.json`` of a benchmark suite — ``rows`` by config stem, kept across invocations,
    and ``meta`` of this invocation — rewritten with its derived views after every row.

    ``writers``: callables ``(data, out_dir)`` (markdown table, plots) run by :meth:`save`.
    """

    def __init__(self, out: PathLike, data_dir: PathLike, writers: Sequence[Callable[[Dict, Path], None]] = ()):
        import torch

        self.out = Path(out).resolve()
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self.path = self.out / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"rows": {}}
        self.data["meta"] = {"data": str(data_dir), "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "command": " ".join(sys.argv)}
        self.writers = list(writers)

    @property
    def rows(self) -> Dict[str, Dict]:
        return self.data["rows"]

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)       # a crash mid-write never leaves a truncated results.json
        for w in self.writers:
            w(self.data, self.out)

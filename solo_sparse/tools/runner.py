"""Running solo-learn's unchanged ``main_pretrain.py`` on a config, once for every caller.

The benchmarks (``scripts/*_benchmark.py``), the zoo builder and the IMP driver all train through
solo-learn's own script in a subprocess (that is the path users take); this module builds that
command, runs it with its log in the run directory, times it and finds the checkpoint it wrote.

    res = run_pretrain("scripts/configs/fmnist/simclr_cdg_cg8.yaml", Path("runs/simclr_cdg_cg8"),
                       train_path=Path("data/fmnist5k/train"))
    if res.ok:
        ck = res.checkpoint
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from solo_sparse.core.config import ConfigError
from solo_sparse.core.files import file_sha256

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


_CKPT_EPOCH = re.compile(r"(?:^|[-_])(?:ep|epoch)=(\d+)")
_CKPT_STEP = re.compile(r"(?:^|[-_])step=(\d+)")
#: checkpoints written within this many seconds of the newest one are ordered by their names, not by their
#: modification times (file-system clocks are coarse — FAT: 2 s — or skewed, and fast runs write in bursts)
MTIME_TOLERANCE_S = 2.0


def _checkpoint_order(p: Path) -> Tuple[int, int, str, str]:
    """(epoch, step) from a checkpoint's name — solo-learn writes ``<name>-<version>-ep=<E>.ckpt``, Lightning
    ``epoch=<E>-step=<S>.ckpt``; -1 when absent — then its name and path."""
    ep = _CKPT_EPOCH.findall(p.name)
    st = _CKPT_STEP.findall(p.name)
    return (int(ep[-1]) if ep else -1, int(st[-1]) if st else -1, p.name, str(p))


def newest_checkpoint(d: Path) -> Optional[Path]:
    """The newest ``*.ckpt`` under ``d`` (recursively), or None.

    Among the checkpoints written within :data:`MTIME_TOLERANCE_S` of the most recent one (so a later run in
    the same folder wins over an older one), the highest epoch and step in the name, then the name and path:
    deterministic where modification times tie or are reordered by a coarse or skewed clock (a run resumed
    into a new version folder, a fast run's consecutive epochs)."""
    cks = list(Path(d).rglob("*.ckpt"))
    if not cks:
        return None
    mtime = {p: p.stat().st_mtime for p in cks}
    latest = max(mtime.values())
    return max((p for p in cks if mtime[p] >= latest - MTIME_TOLERANCE_S), key=_checkpoint_order)


def config_digest(path: PathLike) -> str:
    """First 12 hex digits of the config file's sha256: a result is reused only for the same content."""
    return file_sha256(path)[:12]


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


#: the hosts a pre-training can run through: solo-learn's unchanged ``main_pretrain.py``, or the Lightning binding's
#: trainer (``python -m solo_sparse.lightning.train``: Lightly's building blocks + the ``Sparsify`` callback), which
#: takes the same YAML and overrides
HOSTS = ("solo-learn", "lightning")


def host_available(host: str) -> Optional[str]:
    """None when ``host`` can train here, else one line saying what is missing."""
    import importlib.util

    if host == "solo-learn":
        try:
            solo_learn_dir()
        except ConfigError as e:
            return str(e)
        return None
    if host == "lightning":
        missing = [m for m in ("lightly", "lightning") if importlib.util.find_spec(m) is None]
        return (f"the lightning host needs {' and '.join(missing)}: pip install 'solo-sparse[lightly]'"
                if missing else None)
    raise ConfigError(f"host {host!r}: allowed {', '.join(HOSTS)} or auto")


def resolve_host(host: str = "auto") -> str:
    """``auto``: solo-learn where it is installed (users' own path), else the Lightning host; a named host that
    cannot run here is refused naming what is missing."""
    if host == "auto":
        for h in HOSTS:
            if host_available(h) is None:
                return h
        raise ConfigError("no training host here: " + "; ".join(f"{h}: {host_available(h)}" for h in HOSTS))
    why = host_available(host)
    if why is not None:
        raise ConfigError(why)
    return host


def lightning_command(config: PathLike, *, name: Optional[str] = None, run_dir: Optional[PathLike] = None,
                      train_path: Optional[PathLike] = None, overrides: Sequence[str] = (),
                      python: str = sys.executable) -> List[str]:
    """:func:`pretrain_command` for the Lightning host: the same YAML and overrides, trained by
    ``python -m solo_sparse.lightning.train``."""
    cfg = Path(config).resolve()
    cmd = [python, "-m", "solo_sparse.lightning.train", "--config-path", str(cfg.parent), "--config-name", cfg.name]
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
        """Why the run failed: the exit status and the exception line of the training log (e.g. solo-sparse's
        ``TrainingDiverged: ... the training loss is not finite at step 38 ...``); "" when it did not."""
        if self.returncode:
            reason = failure_reason(self.log)
            head = (f"killed by signal {-self.returncode}" if self.returncode < 0 else f"exit {self.returncode}")
            return head + (f": {reason}" if reason else "")
        return "" if self.checkpoint else "no checkpoint written (checkpoint.enabled must be true)"


#: the last line of a Python traceback: ``package.module.SomeError: message`` (Hydra prints its own hint after it)
_EXC_LINE = re.compile(r"^(?:\[rank\d+\]: )?(?:[A-Za-z_]\w*\.)*\w*"
                       r"(?:Error|Exception|Diverged|Interrupt|Exit)\b(?::.*)?$")


def failure_reason(log: Optional[PathLike], limit: int = 400) -> str:
    """The exception line of the traceback a training log ends with (at most ``limit`` characters), else its last
    non-empty line (an exception handled earlier in the log is not the reason)."""
    if log is None or not Path(log).exists():
        return ""
    lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    tb = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")), default=-1)
    exc = next((i for i in range(tb + 1, len(lines)) if _EXC_LINE.match(lines[i])), None) if tb >= 0 else None
    # the process ended with that traceback (its message and Hydra's hint after it), not long after it
    line = lines[exc] if exc is not None and len(lines) - exc <= 30 else (lines[-1] if lines else "")
    return line[:limit]


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

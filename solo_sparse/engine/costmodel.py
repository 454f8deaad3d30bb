"""A measured cost model: small per-layer timing tables, cached on disk per machine.

Execution paths that skip work (DGNet's channel gather, block skipping) pay for it in copies and
dispatch, so whether a path is faster than the dense kernel at a given kept share is a property of
the machine, the thread count, the torch build and the layer's shapes -- not of the MACs. A
:class:`LatencyTable` holds, for one such key, entries ``{signature: {...}}`` measured once and
reused: what a layer at a given shape costs dense and along each alternative path.

Cache: ``$SOLO_SPARSE_LATENCY_DIR`` or ``$XDG_CACHE_HOME/solo_sparse/latency`` (default
``~/.cache/solo_sparse/latency``), one JSON file per machine key (:func:`machine_key`: CPU model,
architecture, logical cores, torch threads, torch version, device). Writes are atomic (a temp file
renamed), so concurrent builders at worst measure the same entry twice.

Timing (:func:`time_ms`, :func:`summary`): warm-up calls first, then ``reps`` timed calls; the
median and the inter-quartile range are what the tables and benchmarks report.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

#: 2: DGNet entries hold the minimum over the repeats; 3: gathered convs on the dense kernel family;
#: 4: DGNet blocks timed inside the network (one entry per network shape), the ungated time beside them;
#: 5: kept shares every 1/32
VERSION = 5


def cache_dir() -> Path:
    if os.environ.get("SOLO_SPARSE_LATENCY_DIR"):
        return Path(os.environ["SOLO_SPARSE_LATENCY_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "solo_sparse" / "latency"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tag() -> str:
    """A short name of what a wall-clock was measured on: CPU model, the cores this process may use, the CPU's widest
    vector unit, the NVIDIA GPUs the driver lists (read from ``/proc``: no CUDA context is created) and the torch
    build. Machines sold under one model name differ there (measured in this project: a MoCo v2+ epoch took 2.9 min
    on an 'AMD EPYC' with AVX2 and 1.3 min on an 'Intel(R) Xeon(R) Processor' with AVX-512, both 2 cores), so times
    are compared within one tag only."""
    flags: List[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    isa = next((name for flag, name in (("avx512f", "avx512"), ("avx2", "avx2"), ("asimd", "neon")) if flag in flags),
               platform.machine())
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    gpus = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            gpus += [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("Model:")]
        except OSError:
            pass
    gpu = [f"{n}× {g}" if n > 1 else g for g, n in sorted(Counter(gpus).items())]
    return ", ".join([f"{cpu_model()} ({cores} cores, {isa})", *gpu, f"torch {torch.__version__}"])


def machine_key(device: str = "cpu") -> Dict[str, Any]:
    """What a timing depends on besides the layer: machine, threads, torch build, device."""
    key = {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device, "version": VERSION}
    if device.startswith("cuda") and torch.cuda.is_available():
        key["gpu"] = torch.cuda.get_device_name(0)
    return key


def time_ms(fn: Callable[[], Any], reps: int = 20, warmup: int = 3, sync: Optional[Callable[[], None]] = None
            ) -> List[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def time_modules(modules, sink: Callable[[str, float], None], sync: Optional[Callable[[], None]] = None) -> List:
    """Forward hooks on ``modules`` (``(name, module)`` pairs) that call ``sink(name, ms)`` with the milliseconds of
    each forward of each module (``sync`` before reading the clock: a CUDA synchronisation). Returns the hook
    handles; ``remove()`` them when done."""
    t0s: Dict[str, float] = {}

    def pre(name):
        def f(_m, _i):
            t0s[name] = time.perf_counter()
        return f

    def post(name):
        def f(_m, _i, _o):
            if sync:
                sync()
            sink(name, 1e3 * (time.perf_counter() - t0s[name]))
        return f

    return [h for n, m in modules for h in (m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n)))]


def summary(ts: List[float]) -> Dict[str, float]:
    """Median, quartiles and IQR of timings (ms)."""
    if len(ts) >= 4:
        q1, med, q3 = statistics.quantiles(ts, n=4)
        med = statistics.median(ts)
    else:
        q1 = q3 = med = statistics.median(ts)
    return {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "n": len(ts)}


class LatencyTable:
    """Per-machine timing entries ``{signature: value}`` in one JSON file (see the module docstring)."""

    def __init__(self, key: Optional[Mapping[str, Any]] = None, root: Optional[Path] = None):
        self.key = dict(key or machine_key())
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(root or cache_dir()) / f"{digest}.json"
        self.entries: Dict[str, Any] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == self.key:
                    self.entries = dict(data.get("entries", {}))
            except (OSError, ValueError):
                self.entries = {}

    def __contains__(self, sig: str) -> bool:
        return sig in self.entries

    def get(self, sig: str) -> Optional[Any]:
        return self.entries.get(sig)

    def put(self, sig: str, value: Any) -> None:
        self.entries[sig] = value

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": self.key, "entries": self.entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        return self.path


def interp(x: torch.Tensor, xs: List[float], ys: List[float]) -> torch.Tensor:
    """Piecewise-linear interpolation of the points (xs, ys) at ``x`` (any shape), differentiable in x,
    also at the end points (a kept share of exactly 1 -- every gate open -- must still pull the budget);
    outside [xs[0], xs[-1]] the end segments extend linearly. ``xs`` increasing."""
    xt = torch.as_tensor(xs, dtype=x.dtype, device=x.device)
    yt = torch.as_tensor(ys, dtype=x.dtype, device=x.device)
    i = torch.bucketize(x.detach(), xt, right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xt[i - 1], xt[i], yt[i - 1], yt[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

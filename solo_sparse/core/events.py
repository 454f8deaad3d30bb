"""The events a plugin reports while it trains, as one line each on stderr, and their reading back: the one place
where that line format is spelled.

A run without a logger (solo-learn's scripts with W&B off, the benchmark's runs) still shows what a plugin
decided: the plugin emits an event (:func:`emit`: one line on stderr, rank 0 only), the runner keeps the output
in the run's ``train.log``, and ``solo-sparse report`` and the benchmark read the events back with :func:`read`.
Metrics still go through :meth:`Plugin.log <solo_sparse.core.plugin.Plugin.log>`; an event line is what a person
reads in the terminal and what a tool reads after the run. Tests build the lines a fake run prints with
:func:`line`.

Every line reads ``solo-sparse <plugin> <clock> <n>: <head> <key>=<value> ...`` followed by a free note, e.g.::

    solo-sparse synccp step 40: CSI I=0.3000 r=0.0000 gap=0.3000 (rule literal: fires at r <= 0.02)
    solo-sparse synccp step 40: schedule starts (CSI fired); cubic ramp to the final density over steps 40..117
    solo-sparse cdg epoch 3: pair cosine positives=0.8123 random=0.2011 shift=0.00412
    solo-sparse cdg probe 64: online_momentum_cos=0.9912 key_drift_cos=0.9990

The kinds are :data:`KINDS`; a ``message`` is free text (a person's line, never read back). The form is the one
runs have always printed, so the logs of every committed result read the same.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

PREFIX = "solo-sparse"
#: a number as the formats below print it (and ``nan``/``inf``)
_NUM = r"(-?(?:[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?|nan|inf))"


@dataclass(frozen=True)
class Kind:
    """How one kind of event is written: its clock (``step``, ``epoch`` or ``probe``), the head words, the
    ``key=value`` fields in order (the first ``required`` always there, the rest omitted when None) and, for an
    event that says why it happened, the allowed causes (written in parentheses after the head)."""

    clock: str
    head: str = ""
    fields: Tuple[Tuple[str, str], ...] = ()
    required: int = 0
    causes: Tuple[str, ...] = ()

    def pattern(self) -> "re.Pattern[str]":
        body = re.escape(self.head)
        for i, (key, _) in enumerate(self.fields):
            sep = " " if body else ""
            part = f"{sep}{re.escape(key)}={_NUM}"
            body += part if i < self.required else f"(?:{part})?"
        if self.causes:
            body += r" \((" + "|".join(re.escape(c) for c in self.causes) + r")\)"
        return re.compile(rf"{PREFIX} (\S+) {self.clock} (\d+): {body}")


#: every kind of event a plugin emits
KINDS: Dict[str, Kind] = {
    # the contrastive sparsification indicator at one check (families.dynamic)
    "csi": Kind("step", "CSI", (("I", ".4f"), ("r", ".4f"), ("gap", ".4f")), required=2),
    # the sparsity schedule starts (families.dynamic); cause: the indicator fired or its timeout was reached
    "schedule_start": Kind("step", "schedule starts", causes=("CSI fired", "csi_timeout reached")),
    # mean cosine of positive and random pairs of the online features over an epoch (families.gating.PairMonitor)
    "pairs": Kind("epoch", "pair cosine", (("positives", ".4f"), ("random", ".4f"), ("shift", ".5f")), required=2),
    # online vs momentum encoder (and the key's drift) on a fixed batch (families.gating.PairMonitor)
    "probe": Kind("probe", "", (("online_momentum_cos", ".4f"), ("key_drift_cos", ".4f")), required=1),
    # free text for a person (never read back)
    "message": Kind("step"),
}
_PATTERNS = {k: v.pattern() for k, v in KINDS.items() if k != "message"}


@dataclass(frozen=True)
class Event:
    """One event read back: the plugin's name, the kind, the clock value and the fields (``cause`` too)."""

    plugin: str
    kind: str
    at: int
    values: Dict[str, Any] = field(default_factory=dict)


def line(plugin: str, kind: str, at: int, note: str = "", cause: Optional[str] = None, **values: Any) -> str:
    """The line of one event: ``values`` are the kind's fields (optional ones may be None or absent), ``cause``
    one of its causes, ``note`` free text appended as written (a ``message``'s whole text)."""
    k = KINDS[kind]
    unknown = set(values) - {key for key, _ in k.fields}
    if unknown:
        raise ValueError(f"event {kind!r} has no field(s) {sorted(unknown)}; fields: {[f for f, _ in k.fields]}")
    parts = [k.head] if k.head else []
    for i, (key, fmt) in enumerate(k.fields):
        v = values.get(key)
        if v is None:
            if i < k.required:
                raise ValueError(f"event {kind!r} needs field {key!r}")
            continue
        parts.append(f"{key}={float(v):{fmt}}")
    body = " ".join(parts)
    if k.causes:
        if cause not in k.causes:
            raise ValueError(f"event {kind!r}: cause must be one of {k.causes}, got {cause!r}")
        body += f" ({cause})"
    return f"{PREFIX} {plugin} {k.clock} {int(at)}: {body}{note}"


def _rank0() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:      # pragma: no cover - torch is a dependency
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def warn(msg: str) -> None:
    """A warning a user must not miss during training: one flushed stderr line (progress bars hide Python's
    warnings) and :func:`warnings.warn` (tests and callers can catch it), attributed to the plugin hook's caller."""
    import warnings

    print(msg, file=sys.stderr, flush=True)
    warnings.warn(msg, stacklevel=3)


def emit(plugin: str, kind: str, at: int, note: str = "", cause: Optional[str] = None, **values: Any) -> str:
    """Print one event's :func:`line` on stderr (rank 0 only, flushed) and return it."""
    text = line(plugin, kind, at, note, cause, **values)
    if _rank0():
        print(text, file=sys.stderr, flush=True)
    return text


def parse(text: str) -> Optional[Event]:
    """The event a line holds (anywhere in it: a logger may prefix it), or None."""
    if PREFIX not in text:
        return None
    for kind, pat in _PATTERNS.items():
        m = pat.search(text)
        if m is None:
            continue
        k = KINDS[kind]
        values: Dict[str, Any] = {}
        groups = m.groups()[2:]
        for (key, _), g in zip(k.fields, groups):
            values[key] = float(g) if g is not None else None
        if k.causes:
            values["cause"] = groups[len(k.fields)]
        return Event(m.group(1), kind, int(m.group(2)), values)
    return None


def log_files(run: Union[str, Path], by: str = "mtime") -> list:
    """The ``*.log`` files of a run directory (a file: itself; absent: none), oldest first (``by="mtime"``, so a
    restarted run's newest value comes last) or by path (``by="name"``)."""
    run = Path(run)
    if not run.exists():
        return []
    if not run.is_dir():
        return [run]
    key = (lambda f: (f.stat().st_mtime, str(f))) if by == "mtime" else str
    return sorted(run.rglob("*.log"), key=key)


def read(files: Iterable[Union[str, Path]]) -> Iterator[Event]:
    """The events of log files (e.g. :func:`log_files`), in order."""
    for f in files:
        for text in Path(f).read_text(errors="replace").splitlines():
            ev = parse(text)
            if ev is not None:
                yield ev

"""Config validation shared by every plugin: typed dataclasses, loud errors, step specs.

Every error names the key (as the user writes it, ``solo_sparse.<key>``), the value, and what is
allowed. Validation happens before step 0: in the Hydra callback (before data loading) and again
when a wrapped method is constructed from Python.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

PREFIX = "solo_sparse"


class ConfigError(ValueError):
    """A solo-sparse configuration value is invalid. The message names key, value and what is allowed."""


def key_error(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{PREFIX}.{key}={value!r}: {allowed}")


# ----------------------------------------------------------------------------------------- steps
_STEP_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ep|epoch|epochs|%|steps?)?\s*$")


@dataclass(frozen=True)
class StepSpec:
    """A point in training: optimizer steps (``1200``), epochs (``"30ep"``) or a share of all steps (``"75%"``).

    Resolved to an optimizer-step index once the trainer knows ``steps_per_epoch``/``total_steps``.
    """

    value: float
    unit: str  # "step" | "epoch" | "percent"

    @classmethod
    def parse(cls, key: str, raw: Any) -> "StepSpec":
        if isinstance(raw, StepSpec):
            return raw
        if isinstance(raw, bool):
            raise key_error(key, raw, "expected an int (optimizer steps), 'Nep' (epochs) or 'P%' (share of training)")
        if isinstance(raw, int):
            if raw < 0:
                raise key_error(key, raw, "must be >= 0")
            return cls(float(raw), "step")
        if isinstance(raw, str):
            m = _STEP_RE.match(raw)
            if m:
                v, u = float(m.group(1)), (m.group(2) or "step")
                unit = "epoch" if u.startswith("ep") else "percent" if u == "%" else "step"
                if unit == "step" and not v.is_integer():
                    raise key_error(key, raw, "a step count must be an integer")
                if unit == "percent" and v > 100:
                    raise key_error(key, raw, "a share of training must be within 0%..100%")
                return cls(v, unit)
        raise key_error(key, raw, "expected an int (optimizer steps), 'Nep' (epochs, e.g. '30ep') or 'P%' (e.g. '75%')")

    def resolve(self, steps_per_epoch: Optional[int] = None, total_steps: Optional[int] = None) -> int:
        if self.unit == "step":
            return int(self.value)
        if self.unit == "epoch":
            if not steps_per_epoch:
                raise ConfigError(f"cannot resolve {self} without the number of steps per epoch")
            return int(round(self.value * steps_per_epoch))
        if not total_steps:
            raise ConfigError(f"cannot resolve {self} without the total number of training steps")
        return int(math.floor(self.value / 100.0 * total_steps))

    def comparable(self, other: "StepSpec") -> bool:
        return self.unit == other.unit

    def __str__(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return {"step": f"{v}", "epoch": f"{v}ep", "percent": f"{v}%"}[self.unit]


# ----------------------------------------------------------------------------------------- checks
def check_density(key: str, v: Any, *, allow_one: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise key_error(key, v, "expected a number in (0, 1]")
    v = float(v)
    if not (0.0 < v <= 1.0) or (not allow_one and v == 1.0):
        raise key_error(key, v, "must be in (0, 1]" if allow_one else "must be in (0, 1)")
    return v


def check_choice(key: str, v: Any, choices: Sequence[str]) -> str:
    if v not in choices:
        raise key_error(key, v, f"allowed: {', '.join(map(str, choices))}")
    return v


def check_range(key: str, v: Any, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise key_error(key, v, "expected a number")
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise key_error(key, v, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    return float(v)


def check_int(key: str, v: Any, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise key_error(key, v, f"expected an integer >= {minimum}")
    return v


# ----------------------------------------------------------------------------------------- building
def _to_plain(v: Any) -> Any:
    try:  # OmegaConf containers -> plain python
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return v


def build_config(config_cls, params: Optional[Mapping[str, Any]], plugin: str):
    """Instantiate ``config_cls`` from ``params``; unknown keys are rejected with the valid ones listed, and a
    key the class lists in ``RENAMED`` (``{old key: what to write instead}``) with that advice.

    The dataclass's ``__post_init__`` does the per-key validation.
    """
    params = dict(_to_plain(params) or {})
    params.pop("plugin", None)
    valid = [f.name for f in dataclasses.fields(config_cls) if f.init]
    unknown = sorted(set(params) - set(valid))
    renamed = getattr(config_cls, "RENAMED", {})
    for k in unknown:
        if k in renamed:
            raise key_error(k, params[k], renamed[k])
    if unknown:
        raise ConfigError(
            f"{PREFIX}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for plugin '{plugin}'; "
            f"valid keys: {', '.join(valid)}"
        )
    return config_cls(**{k: _to_plain(v) for k, v in params.items()})


def config_defaults(config_cls) -> Dict[str, Any]:
    """``{key: default}`` of a plugin config dataclass (for ``solo-sparse plugins``)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            d = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            d = f.default_factory()  # type: ignore[misc]
        else:
            d = "<required>"
        out[f.name] = str(d) if isinstance(d, StepSpec) else d
    return out


def config_to_state(cfg) -> Dict[str, Any]:
    """A plain-Python view of a config (weights_only-safe, for checkpoints and logs)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = str(v) if isinstance(v, StepSpec) else (list(v) if isinstance(v, tuple) else v)
    return out


# ----------------------------------------------------------------------------------------- shared mask spec
GRANULARITIES = ("element", "nm", "block", "channel")
DISTRIBUTIONS = ("uniform", "global", "erk")
MODULE_GROUPS = ("backbone", "projector", "predictor")


@dataclass
class MaskSpec:
    """Which weights are masked and at what granularity (shared by every weight-sparsity plugin).

    - ``granularity``: ``element`` | ``nm`` (``n`` of every ``m`` consecutive input channels kept, as
      NVIDIA ASP groups them) | ``block`` (``block`` = [K, C] blocks over (out, in) channels, every
      kernel tap of a block together) | ``channel`` (whole output channels).
    - ``distribution``: how a total density is split over layers: ``uniform``, ``global`` (one
      magnitude threshold over all layers), ``erk`` (Erdős–Rényi-Kernel, RigL's capacity rule).
    - ``include``: module groups to mask: ``backbone`` (every conv/linear except the stem conv),
      plus optionally ``projector`` and ``predictor``. The online classifier is never masked.
    - ``on_indivisible``: ``error`` or ``skip`` (keep such a layer dense, with a warning) when a layer's
      shape does not fit the N:M or block pattern.
    """

    granularity: str = "element"
    n: int = 2
    m: int = 4
    block: Tuple[int, int] = (8, 8)
    distribution: str = "uniform"
    include: Tuple[str, ...] = ("backbone",)
    exclude_stem: bool = True
    on_indivisible: str = "error"

    def __post_init__(self):
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("distribution", self.distribution, DISTRIBUTIONS)
        check_choice("on_indivisible", self.on_indivisible, ("error", "skip"))
        self.n = check_int("n", self.n, 1)
        self.m = check_int("m", self.m, 1)
        if self.granularity == "nm":
            if self.n > self.m:
                raise key_error("n", self.n, f"N:M needs n <= m (m={self.m})")
            if self.n == self.m:
                raise key_error("n", self.n, f"N:M with n == m (={self.m}) prunes nothing; choose n < m")
            if self.distribution != "uniform":
                raise key_error(
                    "distribution", self.distribution,
                    "granularity 'nm' fixes every layer at n/m density; only 'uniform' is allowed",
                )
        blk = tuple(self.block) if isinstance(self.block, (list, tuple)) else None
        if blk is None or len(blk) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blk):
            raise key_error("block", self.block, "expected [K, C], two positive integers (out, in channels)")
        self.block = blk  # type: ignore[assignment]
        inc = (self.include,) if isinstance(self.include, str) else tuple(self.include)
        for g in inc:
            check_choice("include", g, MODULE_GROUPS)
        if not inc:
            raise key_error("include", list(inc), f"name at least one of {', '.join(MODULE_GROUPS)}")
        self.include = inc  # type: ignore[assignment]
        if not isinstance(self.exclude_stem, bool):
            raise key_error("exclude_stem", self.exclude_stem, "expected true or false")

    @property
    def nm_density(self) -> float:
        return self.n / self.m


@dataclass
class ScheduleSpec:
    """When masks are updated: from ``start`` to ``end`` every ``every`` (each a StepSpec)."""

    start: Any = 0
    end: Any = "75%"
    every: Any = 100
    #: accept a schedule that does not finish inside training (the final density is then not reached)
    allow_partial_schedule: bool = False

    def __post_init__(self):
        if not isinstance(self.allow_partial_schedule, bool):
            raise key_error("allow_partial_schedule", self.allow_partial_schedule, "expected true or false")
        self.start = StepSpec.parse("start", self.start)
        self.end = StepSpec.parse("end", self.end)
        self.every = StepSpec.parse("every", self.every)
        if self.every.value <= 0:
            raise key_error("every", str(self.every), "must be > 0")
        if self.start.comparable(self.end) and self.end.value < self.start.value:
            raise ConfigError(
                f"{PREFIX}.end={self.end} is before {PREFIX}.start={self.start}: the schedule must end after it starts"
            )

    def resolve(self, steps_per_epoch: Optional[int], total_steps: Optional[int]) -> Tuple[int, int, int]:
        start = self.start.resolve(steps_per_epoch, total_steps)
        end = self.end.resolve(steps_per_epoch, total_steps)
        every = max(1, self.every.resolve(steps_per_epoch, total_steps))
        if end < start:
            raise ConfigError(
                f"{PREFIX}.end={self.end} (step {end}) is before {PREFIX}.start={self.start} (step {start}) "
                f"with {steps_per_epoch} steps per epoch"
            )
        return start, end, every

    def check_fits(self, start: int, end: int, total_steps: Optional[int]) -> None:
        """Refuse, before step 0, a schedule that does not run inside training: no update step at all (the
        model would train dense), or an ``end`` after the last step (the final density is never reached)
        unless ``allow_partial_schedule``. ``start``/``end`` are resolved optimizer steps."""
        if not total_steps:
            return
        if start > total_steps:
            raise ConfigError(f"{PREFIX}.start={self.start} is step {start}, after the last training step "
                              f"({total_steps}): no mask update would happen and the model would train dense")
        if end > total_steps and not self.allow_partial_schedule:
            raise ConfigError(f"{PREFIX}.end={self.end} is step {end}, after the last training step ({total_steps}): "
                              f"the final density would never be reached. Move end inside training, or set "
                              f"{PREFIX}.allow_partial_schedule=true to accept it")


def check_density_pair(cfg, init_key: str = "init_density", final_key: str = "final_density") -> None:
    """Validate a gradual-pruning density pair on ``cfg`` (a MaskSpec dataclass) in place.

    ``final`` None means 0.1, or n/m at granularity nm (where it must be n/m); ``init >= final``.
    """
    init = check_density(init_key, getattr(cfg, init_key))
    final = getattr(cfg, final_key)
    if final is None:
        final = cfg.nm_density if cfg.granularity == "nm" else 0.1
    final = check_density(final_key, final)
    if cfg.granularity == "nm" and abs(final - cfg.nm_density) > 1e-9:
        raise key_error(final_key, final, f"granularity 'nm' ends at n/m = {cfg.n}/{cfg.m} = {cfg.nm_density}; "
                                          "leave it unset or set it to that")
    if init < final:
        raise ConfigError(f"{PREFIX}.{init_key}={init} < {PREFIX}.{final_key}={final}: "
                          f"gradual pruning only removes weights ({init_key} must be >= {final_key})")
    setattr(cfg, init_key, init)
    setattr(cfg, final_key, final)

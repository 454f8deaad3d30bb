"""``synccp`` — synchronized contrastive pruning (SyncS + CSI + EMA-gradient prune-and-regrow).

Both encoders are sparse; the momentum (offline) encoder is denser than the online one by
``density_gap`` (Δs) throughout: initial masks at ``init_density`` (online) and the momentum density
that trails it by Δs, final densities ``final_density`` and the same rule; cubic schedule in between,
started by the contrastive sparsification indicator (``start: csi``, checked from the end of
``csi_warmup``, for ``csi_ramp`` steps or, with ``csi_ramp: null``, until ``end``) or at an explicit step
(then ending at ``end``). Δs is in density units at element, block and channel granularity; at
``granularity: nm`` it is in units of N:M groups, as the paper states it ("the percentage of N:M sparse
groups as 30% and 0%"): the momentum encoder's share of N:M groups trails the online one's by Δs, and the
default start has 30% of the online groups N:M (at 2:4 and Δs = 0.3 the momentum encoder ends with 70% of
its groups N:M, density 0.65).

CSI: the paper's literal rule by default (fires when I equals Δs, i.e. r ≤ ``csi_fire``); solo-learn
builds the momentum encoder as a copy, so it fires at the first check after the learning-rate warm-up
and the start is in effect a hyper-parameter. I and r are logged at every check. ``csi_rule: resync``
(arm on divergence, fire on re-synchronisation) is our option.

After every schedule step the online encoder prunes-and-regrows ``regrow_fraction`` of its active units,
regrowing by an EMA of the gradient magnitude with ``score_ema`` the weight of the newest gradient
(the paper's "EMA momentum 0.1 for gentle gradient score averaging", read in the BatchNorm convention:
memory ≈ 10 steps; 1.0 = the instant gradient). The momentum mask is ``nested`` (the online mask plus
the largest momentum weights outside it) or ``own`` (the top-(d + Δs) of |W_momentum| recomputed at every
update: a weight the momentum encoder dropped can return; momentum methods only). Shared-encoder methods
have one encoder: with ``csi_tau`` CSI compares the online pseudo masks of consecutive epochs, without it
the schedule starts at the first check after ``csi_warmup``. Family: ``solo_sparse.families.dynamic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from solo_sparse.core.config import (
    PREFIX,
    ConfigError,
    MaskSpec,
    ScheduleSpec,
    StepSpec,
    check_choice,
    check_density_pair,
    check_range,
    key_error,
)
from solo_sparse.families.dynamic import CSI_RULES, MOMENTUM_POLICIES, DynamicSparsityPlugin, parse_start

#: share of the online N:M groups at the start (the paper's "30% and 0%" of N:M groups)
NM_START_SHARE = 0.3


@dataclass
class SyncCPConfig(ScheduleSpec, MaskSpec):
    RENAMED: ClassVar[Dict[str, str]] = {
        "score_momentum": "removed: it was the weight of the *old* score (s = m s_old + (1 - m)|g|), which made "
                          "the default 0.1 an almost instant gradient. Write score_ema: the weight of the newest "
                          "gradient (s = (1 - e) s_old + e |g|; the paper's 0.1 is score_ema: 0.1; your old m is "
                          "score_ema: 1 - m)",
        "csi_tolerance": "removed: CSI now arms and fires on r, the share of the online pseudo mask outside the "
                         "momentum one (csi_arm, csi_fire; csi_rule: resync | literal)",
    }
    #: None = "erk", or "uniform" for granularity nm (every layer ends at n/m)
    distribution: Optional[str] = None
    start: Any = "csi"
    #: explicit start: where the schedule ends; start: csi with csi_ramp: null: where the ramp ends
    end: Any = "75%"
    every: Any = 100
    #: None = 0.7, or at granularity nm 30% of the groups N:M (1 - 0.3 (1 - n/m); 0.85 at 2:4), as the paper
    init_density: Optional[float] = None
    #: None = 0.1, or n/m for granularity nm
    final_density: Optional[float] = None
    density_gap: float = 0.3
    regrow_fraction: float = 0.1
    #: weight of the newest gradient in the score EMA, (0, 1]; 1 = instant gradient
    score_ema: float = 0.1
    #: momentum mask: nested (contains the online mask) | own (its own magnitude mask)
    momentum_mask: str = "nested"
    #: CSI rule: literal (the paper's: fire when I equals Δs, i.e. r <= csi_fire) | resync (arm on divergence,
    #: fire on re-synchronisation)
    csi_rule: str = "literal"
    #: resync: arm once r, the share of the online pseudo mask outside the momentum one, reaches this
    csi_arm: float = 0.05
    #: fire when r is back at or below this (resync: once armed; literal: at the first such check)
    csi_fire: float = 0.02
    #: no check before this point: "lr" (solo-learn's learning-rate warm-up) or steps / "Nep" / "P%"
    csi_warmup: Any = "lr"
    #: length of the cubic schedule once CSI fires (kept when the trigger comes late, capped at the end);
    #: null: the ramp ends at `end`
    csi_ramp: Any = "50%"
    #: shared-encoder methods: fires when I between consecutive epochs is below this; null: the schedule starts
    #: at the first check after csi_warmup
    csi_tau: Optional[float] = None
    #: start anyway at this point if CSI has not fired
    csi_timeout: Any = "50%"
    use_csi: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "erk"
        MaskSpec.__post_init__(self)
        if self.init_density is None:
            self.init_density = 1.0 - NM_START_SHARE * (1.0 - self.nm_density) if self.granularity == "nm" else 0.7
        parse_start(self, allow_csi=True)
        ScheduleSpec.__post_init__(self)
        self.csi_timeout = StepSpec.parse("csi_timeout", self.csi_timeout)
        if self.csi_ramp is not None:
            self.csi_ramp = StepSpec.parse("csi_ramp", self.csi_ramp)
            if self.csi_ramp.value <= 0:
                raise key_error("csi_ramp", str(self.csi_ramp), "must be > 0, or null (the ramp ends at end)")
        if self.csi_warmup != "lr":
            self.csi_warmup = StepSpec.parse("csi_warmup", self.csi_warmup)
        check_density_pair(self)
        if isinstance(self.density_gap, bool) or not isinstance(self.density_gap, (int, float)) \
                or not 0 <= self.density_gap <= 1:
            raise key_error("density_gap", self.density_gap, "must be a number in [0, 1]")
        self.density_gap = float(self.density_gap)
        if self.granularity != "nm" and self.final_density + self.density_gap > 1.0 + 1e-9:
            raise ConfigError(f"{PREFIX}.final_density + {PREFIX}.density_gap = {self.final_density} + "
                              f"{self.density_gap} > 1: the momentum encoder cannot be denser than dense")
        self.regrow_fraction = check_range("regrow_fraction", self.regrow_fraction, 0.0, 1.0, hi_open=True)
        self.score_ema = check_range("score_ema", self.score_ema, 0.0, 1.0, lo_open=True)
        check_choice("momentum_mask", self.momentum_mask, MOMENTUM_POLICIES)
        check_choice("csi_rule", self.csi_rule, CSI_RULES)
        self.csi_arm = check_range("csi_arm", self.csi_arm, 0.0, 1.0, lo_open=True)
        self.csi_fire = check_range("csi_fire", self.csi_fire, 0.0, 1.0)
        if self.csi_rule == "resync" and self.csi_fire >= self.csi_arm:
            raise key_error("csi_fire", self.csi_fire, f"must be below {PREFIX}.csi_arm={self.csi_arm} (hysteresis: "
                                                       "the indicator arms above csi_arm and fires below csi_fire)")
        if self.csi_tau is not None:
            self.csi_tau = check_range("csi_tau", self.csi_tau, 0.0, 1.0, lo_open=True, hi_open=True)


class SyncCP(DynamicSparsityPlugin):
    name = "synccp"
    description = ("synchronized contrastive pruning: both encoders sparse with a density gap, CSI-triggered cubic "
                   "schedule, EMA-gradient prune-and-regrow")
    families = ("momentum", "shared")
    Config = SyncCPConfig
    dense_gradients = "every"     # the EMA score folds in every step's dense gradient

    def momentum_policy(self) -> str:
        return self.config.momentum_mask

    def score_ema(self) -> Optional[float]:
        return self.config.score_ema

    def uses_csi(self) -> bool:
        return self.config.use_csi

    def momentum_density(self, online_density: float, step: int) -> float:
        """The online density plus Δs; at N:M, the momentum share of N:M groups = the online share - Δs."""
        c = self.config
        if c.granularity == "nm":
            q = 1.0 - c.nm_density                      # density lost by making one more group N:M, per group
            share = (1.0 - online_density) / q           # online share of N:M groups
            return 1.0 - max(0.0, share - c.density_gap) * q
        return min(1.0, online_density + c.density_gap)

    def setup(self, view) -> None:
        if self.config.momentum_mask == "own" and view.family != "momentum":
            raise key_error("momentum_mask", "own", f"needs a momentum encoder and '{view.method}' has none; allowed "
                                                    "there: nested (the default; without a momentum encoder it "
                                                    "masks the one encoder)")
        super().setup(view)

    @classmethod
    def window_overrides(cls, start, end, config) -> Dict[str, Any]:
        """An explicit start keeps start/end; with CSI the indicator is checked first at ``start`` (the literal
        rule fires there on copy-initialised encoders, the timeout otherwise) and the ramp ends at ``end``."""
        if config.use_csi:
            return {"csi_warmup": start, "csi_timeout": start, "csi_ramp": None, "end": end}
        return {"start": start, "end": end}

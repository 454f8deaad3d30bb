"""``synccp`` — synchronized contrastive pruning (SyncS + CSI + EMA-gradient prune-and-regrow).

Both encoders are sparse; the momentum (offline) encoder is denser than the online one by
``density_gap`` (Δs) throughout: initial masks at ``init_density`` (online) and the momentum density
that trails it by Δs, final densities ``final_density`` and the same rule; cubic schedule in between,
started by the contrastive sparsification indicator (``start: csi``, after ``csi_warmup``, for
``csi_ramp`` steps) or at an explicit step (then ending at ``end``). Δs is in density units at element,
block and channel granularity; at ``granularity: nm`` it is in units of N:M groups, as the paper states
it ("the percentage of N:M sparse groups as 30% and 0%"): the momentum encoder's share of N:M groups
trails the online one's by Δs (at 2:4 and Δs = 0.3 it ends with 70% of its groups N:M, density 0.65).

After every schedule step the online encoder prunes-and-regrows ``regrow_fraction`` of its active units,
regrowing by an EMA of the gradient magnitude with ``score_ema`` the weight of the newest gradient
(the paper's "EMA momentum 0.1 for gentle gradient score averaging", read in the BatchNorm convention:
memory ≈ 10 steps; 1.0 = the instant gradient). The momentum mask is ``nested`` (the online mask plus
the largest momentum weights outside it) or ``own`` (its own magnitude mask at its density).
Shared-encoder methods have one encoder: CSI then compares the online pseudo masks of consecutive
epochs (``csi_tau``). Family: ``solo_sparse.families.dynamic``.
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
    end: Any = "75%"
    every: Any = 100
    init_density: float = 0.7
    #: None = 0.1, or n/m for granularity nm
    final_density: Optional[float] = None
    density_gap: float = 0.3
    regrow_fraction: float = 0.1
    #: weight of the newest gradient in the score EMA, (0, 1]; 1 = instant gradient
    score_ema: float = 0.1
    #: momentum mask: nested (contains the online mask) | own (its own magnitude mask)
    momentum_mask: str = "nested"
    #: CSI rule: resync (arm on divergence, fire on re-synchronisation) | literal (fire when I reaches Δs)
    csi_rule: str = "resync"
    #: resync: arm once r, the share of the online pseudo mask outside the momentum one, reaches this
    csi_arm: float = 0.05
    #: fire when r is back at or below this (resync: once armed; literal: at the first such check)
    csi_fire: float = 0.02
    #: no check before this point: "lr" (solo-learn's learning-rate warm-up) or steps / "Nep" / "P%"
    csi_warmup: Any = "lr"
    #: length of the cubic schedule once CSI fires (kept when the trigger comes late, capped at the end)
    csi_ramp: Any = "50%"
    #: shared-encoder methods (required there with start: csi): fires when I between consecutive epochs
    #: is below this
    csi_tau: Optional[float] = None
    #: start anyway at this point if CSI has not fired
    csi_timeout: Any = "50%"
    use_csi: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "erk"
        MaskSpec.__post_init__(self)
        parse_start(self, allow_csi=True)
        ScheduleSpec.__post_init__(self)
        self.csi_timeout = StepSpec.parse("csi_timeout", self.csi_timeout)
        self.csi_ramp = StepSpec.parse("csi_ramp", self.csi_ramp)
        if self.csi_ramp.value <= 0:
            raise key_error("csi_ramp", str(self.csi_ramp), "must be > 0")
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
        if self.config.use_csi and view.family == "shared" and self.config.csi_tau is None:
            raise ConfigError(f"{PREFIX}.start=csi on '{view.method}', which has no momentum encoder: CSI then "
                              f"compares the online pseudo masks of consecutive epochs and needs {PREFIX}.csi_tau "
                              "(the share of differing positions below which it fires, e.g. 0.1)")
        super().setup(view)

"""``synccp`` — synchronized contrastive pruning (SyncS + CSI + EMA-gradient prune-and-regrow).

Both encoders are sparse; the momentum (offline) encoder is denser than the online one by
``density_gap`` (Δs) throughout: initial masks by ERK at ``init_density`` (online) and
``init_density + Δs`` (momentum, capped at 1), final densities ``final_density`` and
``final_density + Δs``, cubic schedule in between, started by the contrastive sparsification
indicator (``start: csi``) or at an explicit step. After every schedule step the online encoder
prunes-and-regrows ``regrow_fraction`` of its active units, regrowing by an EMA of gradient
magnitude (``score_momentum`` = weight on the old score; 0 = GraNet's instant gradient); the
momentum mask is the online mask plus the largest momentum weights outside it (see
``solo_sparse.dynamic``). Shared-encoder methods have one encoder: CSI then compares the online
pseudo masks of consecutive epochs (``csi_tau``). Engine: ``solo_sparse.dynamic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from solo_sparse.config import ConfigError, MaskSpec, PREFIX, ScheduleSpec, StepSpec, check_density_pair, check_range, key_error
from solo_sparse.dynamic import DynamicSparsityPlugin, parse_start


@dataclass
class SyncCPConfig(ScheduleSpec, MaskSpec):
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
    score_momentum: float = 0.1
    csi_tolerance: float = 0.02
    csi_tau: float = 0.1
    csi_timeout: Any = "50%"
    use_csi: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "erk"
        MaskSpec.__post_init__(self)
        parse_start(self, allow_csi=True)
        ScheduleSpec.__post_init__(self)
        self.csi_timeout = StepSpec.parse("csi_timeout", self.csi_timeout)
        check_density_pair(self)
        if isinstance(self.density_gap, bool) or not isinstance(self.density_gap, (int, float)) or self.density_gap < 0:
            raise key_error("density_gap", self.density_gap, "must be a number >= 0")
        self.density_gap = float(self.density_gap)
        if self.final_density + self.density_gap > 1.0 + 1e-9:
            raise ConfigError(f"{PREFIX}.final_density + {PREFIX}.density_gap = {self.final_density} + "
                              f"{self.density_gap} > 1: the momentum encoder cannot be denser than dense")
        self.regrow_fraction = check_range("regrow_fraction", self.regrow_fraction, 0.0, 1.0, hi_open=True)
        self.score_momentum = check_range("score_momentum", self.score_momentum, 0.0, 1.0, hi_open=True)
        self.csi_tolerance = check_range("csi_tolerance", self.csi_tolerance, 0.0, 1.0)
        self.csi_tau = check_range("csi_tau", self.csi_tau, 0.0, 1.0, lo_open=True, hi_open=True)


class SyncCP(DynamicSparsityPlugin):
    name = "synccp"
    description = ("synchronized contrastive pruning: both encoders sparse with a density gap, CSI-triggered cubic "
                   "schedule, EMA-gradient prune-and-regrow")
    families = ("momentum", "shared")
    Config = SyncCPConfig
    momentum_policy = "nested"

    def score_momentum(self):
        return self.config.score_momentum

    def uses_csi(self) -> bool:
        return self.config.use_csi

    def momentum_density(self, online_density: float, step: int) -> float:
        return min(1.0, online_density + self.config.density_gap)

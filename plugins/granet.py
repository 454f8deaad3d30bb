"""``granet`` — GraNet (Liu et al. 2021) transferred to SSL, as in the SyncCP seed's Table 2.

Both encoders on their own cubic schedules (online ``init_density`` -> ``final_density``, momentum
``momentum_init_density`` -> ``momentum_final_density``), from an explicit ``start``; after each
schedule step the online encoder prunes-and-regrows ``regrow_fraction`` of its units by the *instant*
gradient magnitude. The momentum encoder prunes by its own weight magnitude: no gap synchronization,
no CSI. Engine: ``solo_sparse.families.dynamic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from solo_sparse.core.config import (
    PREFIX,
    ConfigError,
    MaskSpec,
    ScheduleSpec,
    check_density,
    check_density_pair,
    check_range,
    key_error,
)
from solo_sparse.engine.schedule import cubic_density
from solo_sparse.families.dynamic import DynamicSparsityPlugin, parse_start


@dataclass
class GraNetConfig(ScheduleSpec, MaskSpec):
    #: None = "erk", or "uniform" for granularity nm (every layer ends at n/m)
    distribution: Optional[str] = None
    start: Any = 0
    init_density: float = 1.0
    final_density: Optional[float] = None
    momentum_init_density: float = 1.0
    momentum_final_density: float = 0.4
    regrow_fraction: float = 0.1
    use_csi: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "erk"
        MaskSpec.__post_init__(self)
        parse_start(self, allow_csi=False)
        ScheduleSpec.__post_init__(self)
        check_density_pair(self)  # online: same rule as gmp/synccp (nm ends at n/m)
        self.momentum_init_density = check_density("momentum_init_density", self.momentum_init_density)
        self.momentum_final_density = check_density("momentum_final_density", self.momentum_final_density)
        if self.granularity == "nm" and self.momentum_final_density < self.nm_density - 1e-9:
            raise key_error("momentum_final_density", self.momentum_final_density,
                            f"granularity 'nm' cannot go below n/m = {self.nm_density}")
        if self.momentum_init_density < self.momentum_final_density:
            raise ConfigError(f"{PREFIX}.momentum_init_density={self.momentum_init_density} < "
                              f"{PREFIX}.momentum_final_density={self.momentum_final_density}: must be >=")
        self.regrow_fraction = check_range("regrow_fraction", self.regrow_fraction, 0.0, 1.0, hi_open=True)


class GraNet(DynamicSparsityPlugin):
    name = "granet"
    description = ("GraNet in SSL: both encoders on their own cubic schedules, instant-gradient prune-and-regrow "
                   "on the online encoder, no gap synchronization, no CSI")
    families = ("momentum", "shared")
    Config = GraNetConfig
    dense_gradients = "updates"   # the instant gradient of the step before each mask update

    def momentum_policy(self) -> str:
        return "own"

    def momentum_density(self, online_density: float, step: int) -> float:
        c = self.config
        w = self.window()
        if w is None:
            return c.momentum_init_density
        return cubic_density(step, w[0], w[1], c.momentum_init_density, c.momentum_final_density)

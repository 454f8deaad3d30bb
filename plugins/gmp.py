"""``gmp`` — gradual magnitude pruning (Zhu & Gupta, 2017) of the online and momentum encoders.

Masks start at ``init_density`` and shrink by magnitude on the cubic schedule

    d_t = d_f + (d_i - d_f) * (1 - (t - t0) / (end - t0)) ** 3

at ``start``, ``start + every``, ... and at ``end`` (``solo_sparse.engine.schedule``). Pruning is
monotone: a pruned weight never returns. The momentum encoder, where the method has one, uses the
online masks (re-applied after every EMA update). The per-layer split of each density follows
``distribution`` (uniform | global | erk); at ``granularity: nm`` the share of N:M groups grows until
every group is N:M (density n/m).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from solo_sparse.core.config import MaskSpec, ScheduleSpec, check_density_pair
from solo_sparse.engine.density import allocate_by_spec
from solo_sparse.engine.schedule import cubic_density, is_update_step
from solo_sparse.families.weight import WeightSparsityPlugin


@dataclass
class GMPConfig(ScheduleSpec, MaskSpec):
    """Keys under ``solo_sparse:`` for ``gmp`` (see MaskSpec and ScheduleSpec for the shared ones)."""

    init_density: float = 1.0
    #: None = 0.1, or n/m for granularity nm
    final_density: Optional[float] = None

    def __post_init__(self):
        MaskSpec.__post_init__(self)
        ScheduleSpec.__post_init__(self)
        check_density_pair(self)


class GMP(WeightSparsityPlugin):
    name = "gmp"
    description = "gradual magnitude pruning on a cubic schedule (Zhu & Gupta 2017); momentum encoder shares the masks"
    families = ("momentum", "shared")
    Config = GMPConfig

    def __init__(self, config: GMPConfig):
        super().__init__(config)
        self._resolved = None

    def _allocate(self, density: float):
        return allocate_by_spec(self.config, self.magnitude_scores(prune_only=True), density)

    def init_masks(self) -> None:
        if self.config.init_density < 1.0:
            self.sparsifier.set_masks(self._allocate(self.config.init_density))

    def on_train_start(self) -> None:
        start, end, every = self.steps_of(self.config)
        self.config.check_fits(start, end, self.total_steps)
        self._resolved = (start, end, every)
        self.log({"schedule/start_step": start, "schedule/end_step": end})

    def schedule(self):
        if self._resolved is None:  # used outside a trainer: steps only
            self._resolved = self.steps_of(self.config)
        return self._resolved

    def target_density(self, step: Optional[int] = None) -> float:
        start, end, _ = self.schedule()
        return cubic_density(self.step if step is None else step, start, end,
                             self.config.init_density, self.config.final_density)

    def update_masks(self, optimizer) -> bool:
        start, end, every = self.schedule()
        if not is_update_step(self.step, start, end, every):
            return False
        d = self.target_density()
        if d >= self.sparsifier.density("online") - 1e-12:
            return False
        self.sparsifier.set_masks(self._allocate(d))
        self.log({"target_density": d})
        return True

    @classmethod
    def window_overrides(cls, start, end, config) -> Optional[Dict[str, Any]]:
        return {"start": start, "end": end}

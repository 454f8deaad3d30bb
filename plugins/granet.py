"""``granet`` — GraNet (Liu et al. 2021) transferred to SSL, the SyncCP paper's "GraNet-SSL" baseline.

The online encoder follows GraNet's code (github.com/VITA-Group/GraNet, ``CIFAR/sparselearning/core.py``):

* initial masks random at ``init_density`` with per-layer ERK densities (``init_masks: random``,
  ``init_distribution: erk``; core.py ``init``, the ``ERK`` branch draws ``torch.rand < density``);
* gradual pruning on the cubic schedule from ``start`` to ``end`` with **one global magnitude threshold**
  over all masked layers (``distribution: global``; core.py ``pruning``);
* after each pruning step, and every ``every`` steps after ``end`` **until training ends**, prune-and-regrow
  per layer: the share ``regrow_fraction`` (GraNet's death rate, ``--prune-rate 0.5``) of each layer's
  active weights with the smallest magnitude die and as many inactive ones with the largest *instant*
  gradient magnitude grow back (core.py ``step`` / ``truncate_weights``); the death rate is cosine-annealed
  to ``regrow_fraction_final`` (0.005) over the whole training (``regrow_decay: cosine``; core.py
  ``CosineDecay``, ``T_max`` = every training step in main.py).

The momentum encoder (GraNet has none; the SyncCP paper's transfer) prunes by its own magnitude on its own
cubic schedule (``momentum_init_density`` -> ``momentum_final_density``), monotone, with the same
distribution: no gap synchronization, no CSI. Engine: ``solo_sparse.families.dynamic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

import torch

from solo_sparse.core.config import (
    DISTRIBUTIONS,
    PREFIX,
    ConfigError,
    MaskSpec,
    ScheduleSpec,
    check_choice,
    check_density,
    check_density_pair,
    check_range,
    key_error,
)
from solo_sparse.engine.schedule import cosine_decay, cubic_density
from solo_sparse.families.dynamic import DynamicSparsityPlugin, parse_start

INIT_MASKS = ("random", "magnitude")
DECAYS = ("cosine", "constant")


@dataclass
class GraNetConfig(ScheduleSpec, MaskSpec):
    RENAMED: ClassVar[Dict[str, str]] = {
        "death_rate": "write regrow_fraction (GraNet's death rate / --prune-rate; it is cosine-annealed to "
                      "regrow_fraction_final over training, regrow_decay: cosine)",
    }
    #: gradual pruning over layers: None = "global" (one magnitude threshold, as GraNet), or "uniform" for
    #: granularity nm (every layer ends at n/m)
    distribution: Optional[str] = None
    #: the initial online masks: random (GraNet) | magnitude
    init_masks: str = "random"
    #: per-layer densities of the initial masks: None = "erk" (GraNet's --sparse-init ERK), "uniform" at nm
    init_distribution: Optional[str] = None
    start: Any = 0
    #: 0.5 as GraNet's scripts (--init-density 0.50): the initial masks are random ERK at this density
    init_density: float = 0.5
    final_density: Optional[float] = None
    momentum_init_density: float = 1.0
    momentum_final_density: float = 0.4
    #: GraNet's death rate at the start of training (--prune-rate 0.5)
    regrow_fraction: float = 0.5
    #: the death rate at the end of training (GraNet's CosineDecay eta_min = 0.005)
    regrow_fraction_final: float = 0.005
    #: cosine (annealed over the whole training, as GraNet) | constant (regrow_fraction throughout)
    regrow_decay: str = "cosine"
    use_csi: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "global"
        if self.init_distribution is None:
            self.init_distribution = "uniform" if self.granularity == "nm" else "erk"
        MaskSpec.__post_init__(self)
        check_choice("init_distribution", self.init_distribution, DISTRIBUTIONS)
        if self.granularity == "nm" and self.init_distribution != "uniform":
            raise key_error("init_distribution", self.init_distribution,
                            "granularity 'nm' fixes every layer at n/m density; only 'uniform' is allowed")
        check_choice("init_masks", self.init_masks, INIT_MASKS)
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
        check_choice("regrow_decay", self.regrow_decay, DECAYS)
        self.regrow_fraction_final = check_range("regrow_fraction_final", self.regrow_fraction_final, 0.0, 1.0,
                                                 hi_open=True)
        if self.regrow_decay == "cosine" and self.regrow_fraction_final > self.regrow_fraction:
            raise key_error("regrow_fraction_final", self.regrow_fraction_final,
                            f"must be in [0, {PREFIX}.regrow_fraction={self.regrow_fraction}] (the death rate "
                            "decays from regrow_fraction to it)")


class GraNet(DynamicSparsityPlugin):
    name = "granet"
    description = ("GraNet in SSL: random ERK start, gradual pruning by one global magnitude threshold, "
                   "instant-gradient prune-and-regrow to the end of training with a cosine-annealed death rate; "
                   "the momentum encoder on its own magnitude schedule")
    families = ("momentum", "shared")
    Config = GraNetConfig
    dense_gradients = "updates"   # the instant gradient of the step before each mask update

    def momentum_policy(self) -> str:
        return "gradual"

    def regrow_after_window(self) -> bool:
        return True

    def death_rate(self, step: int) -> float:
        c = self.config
        if c.regrow_decay == "constant":
            return c.regrow_fraction
        return cosine_decay(step, self.total_steps or 0, c.regrow_fraction, c.regrow_fraction_final)

    def init_scores(self) -> Dict[str, torch.Tensor]:
        if self.config.init_masks == "magnitude":
            return self.magnitude_scores()
        # a generator of its own: the run's global random stream (data order, augmentations) is not consumed,
        # so runs of one seed with and without the plugin share it; every DDP rank draws the same masks
        g = torch.Generator().manual_seed((torch.initial_seed() + 1) % 2 ** 63)
        return {k: torch.rand(w.shape, generator=g).to(w.device) for k, w in self.sparsifier.weights().items()}

    def momentum_density(self, online_density: float, step: int) -> float:
        c = self.config
        w = self.window()
        if w is None:
            return c.momentum_init_density
        return cubic_density(step, w[0], w[1], c.momentum_init_density, c.momentum_final_density)

    @classmethod
    def window_overrides(cls, start, end, config) -> Optional[Dict[str, Any]]:
        return {"start": start, "end": end}

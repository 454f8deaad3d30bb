"""``sdclr`` — self-damaging contrastive learning (Jiang et al. 2021) as the SyncCP seed uses it.

One encoder is "damaged": its forward uses its weights masked at a fixed high sparsity (``density``
kept), the masks re-derived by weight magnitude at the start of every epoch, while its stored weights
stay dense (soft masking, ``solo_sparse.sparsifier.SoftMaskedConv2d``) — so a weight pruned in one
epoch can return in the next, as in SDCLR's on-the-fly pruned branch. ``damage: online`` (the seed's
Table 1: sparse online, dense momentum) or ``damage: momentum`` (its Appendix D). For linear
evaluation with the plugin line the online backbone gets its masks applied; without the line it loads
its dense weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from solo_sparse.config import ConfigError, MaskSpec, PREFIX, check_choice, check_density
from solo_sparse.density import allocate_masks
from solo_sparse.weight_plugin import WeightSparsityPlugin


@dataclass
class SDCLRConfig(MaskSpec):
    density: float = 0.1
    damage: str = "online"

    def __post_init__(self):
        MaskSpec.__post_init__(self)
        self.density = check_density("density", self.density)
        check_choice("damage", self.damage, ("online", "momentum"))
        if self.granularity == "nm" and abs(self.density - self.nm_density) > 1e-9:
            raise ConfigError(f"{PREFIX}.density={self.density}: granularity 'nm' fixes it at n/m = {self.nm_density}")


class SDCLR(WeightSparsityPlugin):
    name = "sdclr"
    description = ("self-damaging: one encoder's forward masked at a fixed sparsity, masks re-derived by magnitude "
                   "every epoch, weights kept dense (online by default; damage: momentum for the EMA encoder)")
    families = ("momentum", "shared")
    Config = SDCLRConfig
    momentum_follows_online = False

    def setup(self, view) -> None:
        if self.config.damage == "momentum" and view.family != "momentum":
            raise ConfigError(f"{PREFIX}.damage=momentum but method '{view.method}' has no momentum encoder; "
                              "use damage: online")
        self.soft_encoders = (self.config.damage,)
        super().setup(view)

    def _rederive(self) -> None:
        enc = self.config.damage
        c = self.config
        w = self.sparsifier.weights(enc)
        masks = allocate_masks({k: v.abs().float() for k, v in w.items()}, c.density, c.distribution, c.granularity,
                               n=c.n, m=c.m, block=c.block)
        self.sparsifier.set_masks(masks, enc)

    def init_masks(self) -> None:
        self._rederive()

    def on_epoch_start(self, epoch: int) -> None:
        self._rederive()
        self.sparsifier.broadcast_masks()
        self.log(self.density_metrics())

"""``sdclr`` — self-damaging contrastive learning (Jiang et al. 2021), and its use as a SyncCP baseline.

A "damaged" network is the same weights pruned on the fly: its forward uses the weights masked at a
fixed high sparsity (``density`` kept), the masks re-derived by weight magnitude at the start of every
epoch with **one global threshold** over every masked layer, **the stem included** (as SDCLR's code:
``prune/mask.py`` ``magnitudePruning``, every ``prune_conv2d`` of ``models/resnet_prune*.py``), while the
stored weights stay dense (soft masking, ``solo_sparse.engine.sparsifier.SoftMaskedConv2d``) — a weight
pruned in one epoch can return in the next.

* Shared-encoder methods (simclr, barlow_twins, vicreg, ...), as in SDCLR itself (``damage: branch``, the
  default there): crop 0 goes through the dense weights, crop 1 through the pruned view of the *same*
  weights; gradients of both branches reach the shared dense weights; validation and linear evaluation
  use the dense network. The pruned branch has BatchNorms of its own (``branch_bn: separate``, as SDCLR's
  code with ``--prune_dual_bn``, every BN of the backbone and the projector); the twins live in the plugin's
  module (``solo_sparse_modules.sdclr``), so the backbone's keys stay a plain ResNet's.
* Momentum methods (the SyncCP paper's use): ``damage: online`` (sparse online encoder) or
  ``damage: momentum`` (its Appendix D). Under ``damage: online`` the momentum encoder sees the pruned online
  network: the online mask is applied to the momentum copy after every EMA update (and whenever the mask
  changes), so the momentum encoder is the EMA of the pruned online weights at every kept position and zero
  at every pruned one — without it solo-learn's EMA copies the dense stored weights and the keys come from a
  network that is mostly untrained initialisation.

For linear evaluation with the plugin line the masks of the damaged *online* encoder are applied;
without the line (or for ``branch`` / ``momentum`` damage, whose evaluated network is dense) the backbone
loads its dense weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from solo_sparse.core.config import PREFIX, ConfigError, MaskSpec, check_choice, check_density
from solo_sparse.core.plugin import Branch
from solo_sparse.engine.density import allocate_by_spec
from solo_sparse.engine.sparsifier import BranchNorms, set_damaged
from solo_sparse.families.weight import WeightSparsityPlugin

BRANCH_BN = ("separate", "shared")


@dataclass
class SDCLRConfig(MaskSpec):
    #: None = "global" (one magnitude threshold over every masked layer, as SDCLR), "uniform" at granularity nm
    distribution: Optional[str] = None
    #: SDCLR prunes the first conv too
    exclude_stem: bool = False
    density: float = 0.1
    #: online | momentum (momentum methods) | branch (shared-encoder methods: crop 1 damaged); None = the
    #: method's natural choice (online for momentum methods, branch for shared-encoder ones)
    damage: Optional[str] = None
    #: damage: branch — separate (the pruned branch has BatchNorms of its own, as SDCLR) | shared
    branch_bn: str = "separate"

    def __post_init__(self):
        if self.distribution is None:
            self.distribution = "uniform" if self.granularity == "nm" else "global"
        MaskSpec.__post_init__(self)
        self.density = check_density("density", self.density)
        if self.damage is not None:
            check_choice("damage", self.damage, ("online", "momentum", "branch"))
        check_choice("branch_bn", self.branch_bn, BRANCH_BN)
        if self.granularity == "nm" and abs(self.density - self.nm_density) > 1e-9:
            raise ConfigError(f"{PREFIX}.density={self.density}: granularity 'nm' fixes it at n/m = {self.nm_density}")


class SDCLR(WeightSparsityPlugin):
    name = "sdclr"
    description = ("self-damaging: the same weights pruned on the fly at a fixed sparsity (one global magnitude "
                   "threshold, re-derived every epoch, weights kept dense) — crop 1's branch with BatchNorms of "
                   "its own (shared-encoder methods) or the online encoder, seen by the momentum encoder too")
    families = ("momentum", "shared")
    density_key = "density"
    Config = SDCLRConfig
    momentum_follows_online = False
    #: the damaged branch depends on the crop for shared-encoder methods
    branch_independent = False

    def setup(self, view) -> None:
        damage = self.config.damage or ("online" if view.family == "momentum" else "branch")
        if damage == "momentum" and view.family != "momentum":
            raise ConfigError(f"{PREFIX}.damage=momentum but method '{view.method}' has no momentum encoder; "
                              "use damage: branch (crop 1 through the pruned view of the shared weights)")
        if damage == "branch" and view.family == "momentum":
            raise ConfigError(f"{PREFIX}.damage=branch is for shared-encoder methods; '{view.method}' has a "
                              "momentum encoder: use damage: online or momentum")
        self.damage = self.config.damage = damage      # resolved, so checkpoints record it
        # only the branch mode depends on which crop is forwarded (hosts ask the instance after setup)
        self.branch_independent = damage != "branch"
        self.soft_encoders = ("online" if damage == "branch" else damage,)
        # damage: online — the momentum encoder carries the online mask (hard: re-applied after every EMA update)
        self.momentum_follows_online = damage == "online"
        super().setup(view)
        self.norms: Optional[BranchNorms] = None
        if damage == "branch" and self.config.branch_bn == "separate":
            self.norms = BranchNorms({g: grp.online for g, grp in view.groups.items()})

    def _encoder(self) -> str:
        return "online" if self.damage == "branch" else self.damage

    def _rederive(self) -> None:
        enc = self._encoder()
        c = self.config
        w = self.sparsifier.weights(enc)
        masks = allocate_by_spec(c, {k: v.abs().float() for k, v in w.items()}, c.density)
        self.sparsifier.set_masks(masks, enc)

    def init_masks(self) -> None:
        self._rederive()

    def modules(self):
        return self.norms

    def param_groups(self, base_lr: float) -> list:
        if self.norms is None:
            return []
        return [{"name": "solo_sparse_sdclr_branch_bn", "params": list(self.norms.parameters()), "lr": base_lr}]

    def on_crop(self, branch: Branch) -> None:
        if self.damage != "branch" or branch.encoder != "online":
            return
        damaged = branch.phase == "train" and branch.crop == 1
        for grp in self.view.groups.values():
            set_damaged(grp.online, damaged)
        if self.norms is not None:
            self.norms.set_active(damaged)

    def on_step_start(self) -> None:
        if self.norms is not None:
            self.norms.set_active(False)

    def on_epoch_start(self, epoch: int) -> None:
        self._rederive()
        self.sparsifier.broadcast_masks()
        self._sync_momentum()
        self.sparsifier.apply_masks()
        self.log(self.density_metrics())

    @classmethod
    def evaluates_masked(cls, config) -> bool:
        return config.get("damage") != "branch"

    def prepare_eval_backbone(self, backbone) -> None:
        """main_linear.py: the damaged online encoder is evaluated masked; with ``damage: branch`` (crop 1
        damaged) the result is the dense network and no mask is applied."""
        if self.config.damage != "branch":
            super().prepare_eval_backbone(backbone)

"""``imp`` — training under fixed masks from a mask file, with rewind capture (one IMP round).

One round of iterative magnitude pruning with self-supervision (Caron et al. 2020), usable alone
or driven round by round by ``solo-sparse imp`` (``solo_sparse.tools.imp.driver``):

- ``masks``: a solo-sparse mask file (``solo_sparse.engine.maskio.save_masks``); its layers must match the
  model's maskable layers exactly (the first mismatching layer is named). No file = dense (round 0).
- ``init``: a state file (``solo_sparse.engine.imp.save_state``) loaded into the encoders before step 0:
  the rewind point of round 0 (winning ticket / late resetting). No file = the method's fresh init
  (the random re-initialisation control of Liu et al. 2019).
- ``rewind`` / ``rewind_out``: when ``rewind_out`` is set, the encoders' state (online and
  momentum backbone, projector, predictor — the method's classifier and queues are not part of the
  ticket) is written there after ``rewind`` optimizer steps ("1ep" = one epoch, the seed's CIFAR
  setting; 0 = the initialisation itself).
- ``supervised_fraction`` / ``supervised_weight``: semi-supervised pruning (seed §4.4): a
  cross-entropy loss through the method's online classifier on the first large crop's backbone
  features (not detached) for a fixed, index-hashed ``supervised_fraction`` of the training images.

Masks are fixed for the whole run; the engine keeps the invariants (gradients, weights, optimizer
state and the momentum encoder masked). By default the stem conv is pruned too (Caron et al. prune
every conv; ``exclude_stem: true`` keeps it dense); the classifier and BatchNorm never are.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from solo_sparse.core.config import PREFIX, ConfigError, MaskSpec, StepSpec, check_range, key_error
from solo_sparse.engine.imp import apply_state, load_state, save_state
from solo_sparse.engine.maskio import check_masks_match, load_masks
from solo_sparse.families.weight import WeightSparsityPlugin


@dataclass
class IMPConfig(MaskSpec):
    masks: Optional[str] = None
    init: Optional[str] = None
    rewind: Any = "1ep"
    rewind_out: Optional[str] = None
    #: stop the run once the rewind point is written (the IMP driver replays round 0's start this way to
    #: re-create a rewind point on another machine; the schedule is the full run's, only cut short)
    stop_after_rewind: bool = False
    exclude_stem: bool = False
    supervised_fraction: float = 0.0
    supervised_weight: float = 1.0

    def __post_init__(self):
        MaskSpec.__post_init__(self)
        if self.granularity != "element":
            raise key_error("granularity", self.granularity, "imp prunes single weights by global magnitude: "
                                                             "only 'element' is allowed")
        for k in ("masks", "init", "rewind_out"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v):
                raise key_error(k, v, "expected a file path or null")
            if k != "rewind_out" and v is not None and not os.path.isfile(v):
                raise key_error(k, v, "no such file")
        self.rewind = StepSpec.parse("rewind", self.rewind)
        if not isinstance(self.stop_after_rewind, bool):
            raise key_error("stop_after_rewind", self.stop_after_rewind, "true or false")
        if self.stop_after_rewind and self.rewind_out is None:
            raise key_error("stop_after_rewind", self.stop_after_rewind, "true only with rewind_out set (the run "
                                                                          "stops after writing it)")
        if self.rewind.unit == "percent":
            raise key_error("rewind", str(self.rewind), "give the rewind point in steps (e.g. 200) or epochs ('1ep')")
        self.supervised_fraction = check_range("supervised_fraction", self.supervised_fraction, 0.0, 1.0)
        self.supervised_weight = check_range("supervised_weight", self.supervised_weight, 0.0, float("inf"))


def labelled(indexes: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool (B,): the images whose dataset index hashes below ``fraction`` (a fixed labelled subset)."""
    h = (indexes.long() * 2654435761) % (1 << 32)
    return h < int(fraction * (1 << 32))


class IMP(WeightSparsityPlugin):
    name = "imp"
    description = ("one round of iterative magnitude pruning with self-supervision: fixed masks from a file, "
                   "rewind capture (Caron et al. 2020); driven by `solo-sparse imp`")
    families = ("momentum", "shared")
    density_key = None          # the masks come from a file
    Config = IMPConfig

    def __init__(self, config: IMPConfig):
        super().__init__(config)
        self.captured = False
        self._rewind_step: Optional[int] = None
        self._feats = None
        self.mask_meta = {}

    @classmethod
    def commands(cls):
        from solo_sparse.tools.imp.verbs import commands

        return commands(cls.name)

    # ------------------------------------------------------------------ construction
    def setup(self, view) -> None:
        super().setup(view)            # builds the sparsifier, calls init_masks, applies masks
        if self.config.init:
            state, _ = load_state(self.config.init)
            for g, grp in view.groups.items():
                for enc, mod in (("", grp.online), ("momentum_", grp.momentum)):
                    if mod is None:
                        continue
                    pre = f"{enc}{g}."
                    sub = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
                    if not sub:
                        raise ConfigError(f"{PREFIX}.init={self.config.init!r} holds no '{pre}*' tensors: "
                                          "was it written for this method?")
                    apply_state(mod, sub, f"{PREFIX}.init={self.config.init!r} ({pre[:-1]})", strict_prefixes=("",))
            self.sparsifier.apply_masks()
            print(f"solo-sparse imp: encoders reset to {self.config.init}", file=sys.stderr, flush=True)
        if self.config.supervised_fraction > 0:
            if view.classifier is None:
                raise ConfigError(f"{PREFIX}.supervised_fraction needs the method's online classifier")
            view.groups["backbone"].online.register_forward_hook(self._keep_features)

    def init_masks(self) -> None:
        if not self.config.masks:
            print(f"solo-sparse {self.name}: no {PREFIX}.masks given: this run trains dense (IMP round 0); "
                  f"`solo-sparse {self.name}` drives the rounds and writes the mask files", file=sys.stderr, flush=True)
            return
        masks, meta = load_masks(self.config.masks)
        check_masks_match(masks, self.sparsifier.shapes(), f"{PREFIX}.masks={self.config.masks!r}")
        self.sparsifier.set_masks(masks)
        self.mask_meta = meta

    # ------------------------------------------------------------------ rewind
    def on_train_start(self) -> None:
        c = self.config
        if c.rewind_out and not self.captured:
            self._rewind_step = self.steps_of(c.rewind)
            if self.total_steps is not None and self._rewind_step > self.total_steps:
                raise ConfigError(f"{PREFIX}.rewind={c.rewind} (step {self._rewind_step}) is beyond the end of "
                                  f"this run ({self.total_steps} steps): the rewind point must lie in the first round")
            if self._rewind_step == 0:
                self._capture()
        self.log({"density/online": self.sparsifier.density("online")})

    def after_optimizer_step(self, optimizer) -> None:
        super().after_optimizer_step(optimizer)
        if self.config.rewind_out and not self.captured and self._rewind_step is not None \
                and self.step >= self._rewind_step:
            self._capture()

    def _capture(self) -> None:
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank == 0:
            state = {}
            for g, grp in self.view.groups.items():
                for enc, mod in (("", grp.online), ("momentum_", grp.momentum)):
                    if mod is not None:
                        state.update({f"{enc}{g}.{k}": v for k, v in mod.state_dict().items()})
            save_state(self.config.rewind_out, state, step=self.step, epoch=self.epoch, method=self.view.method)
            print(f"solo-sparse imp: rewind point (step {self.step}) saved to {self.config.rewind_out}",
                  file=sys.stderr, flush=True)
        self.captured = True
        self.log({"rewind_step": self.step})
        trainer = getattr(getattr(self.view, "model", None), "_trainer", None)
        if self.config.stop_after_rewind and trainer is not None:
            trainer.should_stop = True
            print(f"solo-sparse imp: stop_after_rewind: the run stops after step {self.step}", file=sys.stderr,
                  flush=True)

    # ------------------------------------------------------------------ semi-supervised pruning
    def _keep_features(self, module, inp, out):
        b = self.view.branch
        if module.training and b.phase == "train" and b.encoder == "online" and b.crop == 0:
            self._feats = out

    def extra_loss(self):
        if self.config.supervised_fraction <= 0 or self._feats is None or self.view.batch is None:
            return None
        feats, self._feats = self._feats, None
        indexes, targets = self.view.batch
        sel = labelled(indexes, self.config.supervised_fraction).to(feats.device)
        if not bool(sel.any()):
            return feats.sum() * 0.0
        loss = F.cross_entropy(self.view.classifier(feats[sel]), targets[sel].to(feats.device))
        self.log({"supervised_loss": float(loss.detach())})
        return self.config.supervised_weight * loss

    # ------------------------------------------------------------------ state
    def extra_state(self):
        return {**super().extra_state(), "captured": self.captured}

    def load_extra_state(self, state) -> None:
        self.captured = bool(state.get("captured", False))

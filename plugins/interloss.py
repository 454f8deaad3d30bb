"""``interloss`` — intermediate contrastive loss with partial back-propagation and block-wise hard-pair
selection (seed 5, "Fast training of contrastive learning with intermediate contrastive loss").

Auxiliary heads after the listed ResNet stages are trained with the method's own objective at that
depth (SimCLR NT-Xent; MoCo v2+ with a queue per head; BYOL with a predictor and a momentum head per
depth; VICReg / Barlow Twins with an expander per depth). The final loss is the method's own.

* ``partial_backprop: true``: each step draws ONE depth d from {heads..., final} (``weights``,
  uniform by default); the forward of both views (online and momentum encoders) stops after block d,
  so only blocks 1..d and head d get gradients — that is where the time goes.
  ``false``: every step runs the whole network and the loss is Σ_d w_d L_d with ``loss_weights`` w
  (default 1 for every depth, so the final loss keeps the method's own weight; a drawn depth under
  partial back-prop is weighted the same way).
* ``hard_pairs: true``: after each of ``hard_blocks`` (≤ the depth reached), M = ``num_crops`` random
  crops of ``crop_fraction`` of each view's map; per image the hardest of the M×M positive pairs goes
  on — by default the pair with the largest contrastive loss, negatives included (the paper's eq. 4;
  ``hard_by: cosine`` keeps the lowest positive cosine instead), scored with head embeddings, no
  gradient; the resolution shrinks.
* ``hard_pair_keys``: what the pairs are scored against. ``auto`` (default): on a method with a key
  (momentum) encoder — MoCo v2+, BYOL — the query crops come from the online encoder and head, the key crops
  from the momentum encoder and momentum head, the negatives from the depth's queue (MoCo v2+; BYOL: the
  other images' keys): the paper's L_info; on the other methods both views through the online encoder,
  in-batch negatives. ``key``: the key encoder, refused before step 0 on a method without one. ``online``:
  both views through the online encoder on every method (our earlier rule).

Steps the plugin runs itself (every step when ``hard_pairs`` or ``partial_backprop: false``; the
intermediate-depth steps otherwise): solo-learn's online linear classifier is trained on the detached
pooled final features on full-depth steps only (from the selected crops under hard pairs); truncated
steps log no ``train_acc1`` / ``train_nce_loss`` and skip solo-learn's online kNN. Full-depth steps
without hard pairs under partial back-prop are solo-learn's own ``training_step``, unchanged.
Metrics: ``solo_sparse/interloss/depth``, ``solo_sparse/interloss/loss_d<d>``, ``.../hard_pair_sim_b<j>``.
Momentum heads follow the online heads with the encoder's tau. Two large crops only (no multicrop).
Stacks with weight-sparsity plugins (``plugins: [synccp, interloss]``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.binding.objectives import MOMENTUM, SUPPORTED
from solo_sparse.core.config import ConfigError, check_choice, check_int, check_range, key_error
from solo_sparse.core.plugin import Branch, Plugin
from solo_sparse.engine.interloss import (
    STAGES,
    adapt_head,
    check_backbone,
    draw_depth,
    ema_,
    forward_maps,
    fresh_copy,
    frozen_copy,
    pool,
    stage_channels,
    two_view_forward,
)
from solo_sparse.engine.probes import other_images_cos

FINAL = len(STAGES)
#: ``hard_pair_keys``: the key encoder where the method has one (auto), always (key), never (online)
HARD_PAIR_KEYS = ("auto", "key", "online")


def _blocks(key: str, v: Any, allow_empty: bool) -> List[int]:
    vals = [v] if isinstance(v, int) and not isinstance(v, bool) else list(v or [])
    if (not vals and not allow_empty) or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b < FINAL
                                             for b in vals) or len(set(vals)) != len(vals):
        raise key_error(key, v, f"distinct block indices in 1..{FINAL - 1} (ResNet stages before the last; "
                                f"{FINAL} is the method's own final loss)" + ("" if allow_empty else ", at least one"))
    return sorted(vals)


#: mean cosine between the MoCo v2+ embeddings of different images above which the collapse warning fires. The
#: watch's own readout (training crops, online projector): a MoCo v2+ + interloss run that does not collapse (every
#: depth each step, interloss-diag) 0.87 / 0.42 / 0.12 / 0.04 at epochs 0-3, |x| < 0.01 from epoch 4; runs that
#: collapse under partial back-propagation 0.998-1.00 from epoch 1 (+PB+HP seeds 1-2, +PB seed 2; +PB seed 1: 0.99
#: at epochs 1-3, then 0.54 by epoch 11 with a dimensionally collapsed projector, which this mean does not flag).
#: On validation images (eval mode, online vs momentum projector): healthy synccp-suite runs 0.71-0.75
COLLAPSE_COS = 0.9
#: the first epoch judged: an untrained projector maps every image close to one direction (0.87-0.95 at epoch 0),
#: so the warm-up epochs are logged, not judged
COLLAPSE_FROM_EPOCH = 3


def _call_if_alive(ref, module, inp, out) -> None:
    """The projector's forward hook: the plugin's watch while the plugin lives. Returns None (a hook's non-None
    return would replace the module's output -- e.g. in a deep copy of the model made after the plugin was freed)."""
    plugin = ref()
    if plugin is not None:
        plugin._watch_embeddings(module, inp, out)


@dataclass
class InterLossConfig:
    #: stages with an auxiliary head (1-based; the final stage is the method's own loss)
    heads: List[int] = field(default_factory=lambda: [1, 2, 3])
    #: partial back-propagation: sampling weights of [heads..., final] (null: uniform)
    weights: Optional[List[float]] = None
    #: loss weights of [heads..., final]: partial_backprop false trains Σ_d w_d L_d, true trains the drawn
    #: depth's w_d L_d (null: 1 for every depth — the final loss at the method's own weight)
    loss_weights: Optional[List[float]] = None
    partial_backprop: bool = True
    hard_pairs: bool = True
    #: blocks after which hard pairs are selected (each needs a head)
    hard_blocks: List[int] = field(default_factory=lambda: [1, 2])
    #: M: random crops per view and block
    num_crops: int = 4
    #: crop side as a fraction of the feature map's
    crop_fraction: float = 0.75
    #: hard pair = the largest contrastive loss, negatives included (loss; the paper) or the lowest
    #: positive cosine (cosine)
    hard_by: str = "loss"
    #: temperature of the hard-pair scores (null: the method's method_kwargs.temperature, else 0.2)
    hard_temperature: Optional[float] = None
    #: what hard pairs are scored against: auto (the key encoder and queue where the method has them: the
    #: paper's L_info), key (the key encoder; refused on a method without one), online (both views online)
    hard_pair_keys: str = "auto"
    #: seed of the per-step draws (partial back-propagation's depth, the hard-pair crops); null: the run's own seed
    #: (solo-learn's ``seed``, the same on every DDP rank), so the seeds of a suite draw differently
    seed: Optional[int] = None

    def __post_init__(self):
        self.heads = _blocks("heads", self.heads, allow_empty=False)
        self.hard_blocks = _blocks("hard_blocks", self.hard_blocks, allow_empty=True)
        if not isinstance(self.partial_backprop, bool):
            raise key_error("partial_backprop", self.partial_backprop, "true or false")
        if not isinstance(self.hard_pairs, bool):
            raise key_error("hard_pairs", self.hard_pairs, "true or false")
        self.num_crops = check_int("num_crops", self.num_crops, 1)
        self.crop_fraction = check_range("crop_fraction", self.crop_fraction, 0.0, 1.0, lo_open=True)
        check_choice("hard_by", self.hard_by, ("loss", "cosine"))
        check_choice("hard_pair_keys", self.hard_pair_keys, HARD_PAIR_KEYS)
        if self.hard_temperature is not None:
            self.hard_temperature = check_range("hard_temperature", self.hard_temperature, 0.0, float("inf"),
                                                lo_open=True)
        if self.seed is not None:
            self.seed = check_int("seed", self.seed, 0)
        if self.hard_pairs:
            if not self.hard_blocks:
                raise key_error("hard_blocks", self.hard_blocks, "at least one block when hard_pairs is true")
            missing = [b for b in self.hard_blocks if b not in self.heads]
            if missing:
                raise key_error("hard_blocks", self.hard_blocks, f"blocks with a head (heads: {self.heads}); "
                                f"hard pairs are scored with head embeddings, {missing} has none")
        if self.weights is not None:
            w = list(self.weights)
            if len(w) != len(self.heads) + 1 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0
                                                    for x in w) or sum(w) <= 0:
                raise key_error("weights", self.weights, f"{len(self.heads) + 1} non-negative numbers (one per head "
                                f"{self.heads} and one for the final loss), not all 0")
            self.weights = [float(x) for x in w]
        if self.loss_weights is not None:
            w = self.loss_weights
            if not isinstance(w, (list, tuple)) or len(w) != len(self.heads) + 1 or any(
                    isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0 for x in w):
                raise key_error("loss_weights", w, f"{len(self.heads) + 1} non-negative numbers, one per head "
                                f"{self.heads} and one for the final loss")
            if w[-1] == 0:
                raise key_error("loss_weights", w, "the final loss needs a positive weight")
            self.loss_weights = [float(x) for x in w]

    @property
    def depths(self) -> List[int]:
        return [*self.heads, FINAL]

    @property
    def probs(self) -> List[float]:
        w = self.weights or [1.0] * len(self.depths)
        return [x / sum(w) for x in w]

    @property
    def depth_weights(self) -> List[float]:
        return self.loss_weights or [1.0] * len(self.depths)


class _Modules(nn.Module):
    """Aux heads (``heads.<d>``), BYOL predictors, momentum heads and MoCo queues of one run."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict()
        self.predictors = nn.ModuleDict()
        self.momentum_heads = nn.ModuleDict()


class InterLoss(Plugin):
    name = "interloss"
    description = "intermediate contrastive loss: aux heads, partial back-propagation, block-wise hard pairs"
    Config = InterLossConfig
    drives_step = True
    leaves_parameters_unused = True
    run_seed_keys = ("seed",)
    #: the collapse warning was given (checkpointed: once per run, not once per resume)
    _warned_collapse = False
    supported_methods = SUPPORTED
    method_requirement = "applies the method's own objective at every head's depth and knows these objectives"

    @classmethod
    def commands(cls):
        """``solo-sparse epoch-time RESULTS.json``: seconds per training epoch of a suite's rows at equal batch
        (the figure this plugin's speed claim is read from; :mod:`solo_sparse.tools.epoch_time`)."""
        def add(a):
            __import__("solo_sparse.tools.epoch_time", fromlist=["add_arguments"]).add_arguments(a)

        def run(args):
            return __import__("solo_sparse.tools.epoch_time", fromlist=["main"]).main(args)

        return {"epoch-time": (add, run, "seconds per training epoch of a suite's rows at equal batch (not a "
                                         "paper's batch-scaled GPU-days)")}

    # ------------------------------------------------------------------ construction
    def setup(self, view) -> None:
        super().setup(view)
        model = view.model
        method = view.method
        self.check_method(method, view.family)     # also when set up outside the solo-learn binding
        if model is not None and (getattr(model, "num_large_crops", 2) != 2 or getattr(model, "num_small_crops", 0)):
            raise ConfigError(f"plugin 'interloss' needs exactly two large crops and no multicrop (got "
                              f"{model.num_large_crops} large, {model.num_small_crops} small): hard pairs and "
                              f"per-depth objectives pair view 1 with view 2")
        keyed = method in MOMENTUM
        if self.config.hard_pair_keys == "key" and not keyed:
            raise key_error("hard_pair_keys", "key", f"method {method!r} has no key (momentum) encoder to score hard "
                            f"pairs against (methods with one: {', '.join(MOMENTUM)}); allowed here: auto, online")
        #: seed of the per-step draws: the config's, else the run's (cfg.seed; 0 outside solo-learn)
        run_seed = getattr(getattr(model, "cfg", None), "seed", None)
        try:              # an int, or what seed_everything takes for one ('3' from a command line); else 0
            run_seed = 0 if run_seed is None or isinstance(run_seed, bool) else int(run_seed)
        except (TypeError, ValueError):
            run_seed = 0
        self.draw_seed = self.config.seed if self.config.seed is not None else run_seed
        #: hard pairs scored against the key encoder (and the queue, MoCo v2+): the paper's L_info
        self.key_pairs = keyed and self.config.hard_pairs and self.config.hard_pair_keys in ("auto", "key")
        backbone = view.groups["backbone"].online
        try:
            check_backbone(backbone)
        except ValueError as e:
            raise ConfigError(f"plugin 'interloss': {e} (hard pairs and aux heads need spatial feature maps)") from e
        chans = stage_channels(backbone)
        proj = view.groups["projector"].online
        self.mods = _Modules()
        for d in self.config.heads:
            head = adapt_head(proj, chans[d - 1])
            self.mods.heads[str(d)] = head
            if method == "byol":
                self.mods.predictors[str(d)] = fresh_copy(view.groups["predictor"].online)
            if method in ("byol", "mocov2plus"):
                self.mods.momentum_heads[str(d)] = frozen_copy(head)
            if method == "mocov2plus":
                dim = [m for m in proj.modules() if isinstance(m, nn.Linear)][-1].out_features
                k = int(model.queue_size) if model is not None else 4096
                self.mods.register_buffer(f"queue_{d}", F.normalize(torch.randn(2, dim, k), dim=1))
                self.mods.register_buffer(f"queue_ptr_{d}", torch.zeros(1, dtype=torch.long))
        self._tau: Optional[float] = None
        self._last_ema_step = -1
        #: per epoch, the mean cosine between the final embeddings (the method's projector outputs in training
        #: steps) of different images: a collapse watch (see :data:`COLLAPSE_COS`)
        self._emb: List[float] = []
        me = weakref.ref(self)       # the hook holds no reference to the plugin (a copied projector copies no plugin)
        proj.register_forward_hook(lambda m, i, o: _call_if_alive(me, m, i, o))

    def modules(self) -> nn.Module:
        return self.mods

    # ------------------------------------------------------------------ collapse watch
    def _watch_embeddings(self, module, inp, out) -> None:
        if module.training and torch.is_tensor(out) and out.dim() == 2 and len(out) > 1:
            self._emb.append(other_images_cos(out[:64]))     # 64 images of every training forward

    def on_epoch_end(self, epoch: int) -> None:
        if not self._emb:
            return
        cos, self._emb = sum(self._emb) / len(self._emb), []
        self.log({"interloss/embedding_cos": cos})
        if self.view.method == "mocov2plus" and epoch >= COLLAPSE_FROM_EPOCH and cos > COLLAPSE_COS \
                and not self._warned_collapse:
            from solo_sparse.core.events import warn

            self._warned_collapse = True
            warn(f"solo-sparse interloss: at epoch {epoch} the final embeddings of different images have mean "
                 f"cosine {cos:.3f} (> {COLLAPSE_COS}): the projection head is collapsing (MoCo v2+'s loss then "
                 f"sits at ln(queue + 1)); measured with partial back-propagation in docs/plugins/interloss.md")

    def extra_state(self):
        return {**super().extra_state(), "warned_collapse": self._warned_collapse}     # once per run, not per resume

    def load_extra_state(self, state) -> None:
        super().load_extra_state(state)
        self._warned_collapse = bool(state.get("warned_collapse", False))

    def param_groups(self, base_lr: float) -> list:
        params = list(self.mods.heads.parameters()) + list(self.mods.predictors.parameters())
        return [{"name": "solo_sparse_interloss_heads", "params": params, "lr": base_lr}]

    # ------------------------------------------------------------------ per depth
    def _enqueue(self, d: int):
        def enqueue(keys: torch.Tensor) -> None:
            queue, ptr = getattr(self.mods, f"queue_{d}"), getattr(self.mods, f"queue_ptr_{d}")
            b, k = keys.shape[1], queue.shape[-1]
            if k % b:
                raise ConfigError(f"interloss: MoCo queue size {k} is not a multiple of the batch {b}")
            p = int(ptr)
            queue[:, :, p: p + b] = keys.permute(0, 2, 1)
            ptr[0] = (p + b) % k
        return enqueue

    def parts(self, model, d: int):
        from solo_sparse.binding.objectives import Parts, final_parts

        if d == FINAL:
            return final_parts(model)
        key = str(d)
        return Parts(self.mods.heads[key], self.mods.predictors[key] if key in self.mods.predictors else None,
                     self.mods.momentum_heads[key] if key in self.mods.momentum_heads else None,
                     getattr(self.mods, f"queue_{d}", None),
                     self._enqueue(d) if hasattr(self.mods, f"queue_{d}") else None,
                     pooled=False)

    # ------------------------------------------------------------------ the step
    def on_step_start(self) -> None:
        model = self.view.model if self.view is not None else None
        upd = getattr(model, "momentum_updater", None)
        self._tau = float(upd.cur_tau) if upd is not None else None

    def training_step(self, model, batch, batch_idx: int):
        from solo_sparse.binding.objectives import classifier_loss, objective

        c = self.config
        depth = draw_depth(c.depths, c.probs, self.draw_seed, self.step) if c.partial_backprop else FINAL
        self.log({"interloss/depth": depth})
        if c.partial_backprop and depth == FINAL and not c.hard_pairs:
            return None                                        # the method's own step, unchanged
        indexes, X, targets = batch[0], batch[1], batch[-1]
        x1, x2 = X[0], X[1]
        if not getattr(model, "no_channel_last", True):
            x1, x2 = x1.to(memory_format=torch.channels_last), x2.to(memory_format=torch.channels_last)
        depths = [depth] if c.partial_backprop else c.depths
        hard = [b for b in c.hard_blocks if b <= depth] if c.hard_pairs else []
        gen = torch.Generator().manual_seed(self.draw_seed * 7919 + self.step)
        host = model.solo_sparse
        host.on_crop(Branch(crop=0, encoder="online"))
        temp = c.hard_temperature or float(self.view.method_kwargs.get("temperature", 0.2) or 0.2)
        method = self.view.method
        g1 = g2 = None
        if self.key_pairs and hard:
            # queries online, keys from the momentum encoder and head, negatives from the depth's queue
            def negatives(j):
                q = getattr(self.mods, f"queue_{j}", None)
                return None if q is None else (q[1].clone().detach(), q[0].clone().detach())

            maps1, maps2, crops1, crops2, sims, g1, g2 = two_view_forward(
                model.backbone, x1, x2, depth, hard, lambda j: self.parts(model, j).embed, c.num_crops,
                c.crop_fraction, gen, c.hard_by, temp, key_backbone=model.momentum_backbone,
                key_embed_at=lambda j: self.parts(model, j).momentum_projector, negatives_at=negatives,
                switch=lambda enc: host.on_crop(Branch(crop=0, encoder=enc)))
        else:
            maps1, maps2, crops1, crops2, sims = two_view_forward(
                model.backbone, x1, x2, depth, hard, lambda j: self.parts(model, j).embed, c.num_crops,
                c.crop_fraction, gen, c.hard_by, temp)
            if method in MOMENTUM:
                host.on_crop(Branch(crop=0, encoder="momentum"))
                with torch.no_grad():
                    g1 = forward_maps(model.momentum_backbone, x1, depth, crops1)
                    g2 = forward_maps(model.momentum_backbone, x2, depth, crops2)
                host.on_crop(Branch(crop=0, encoder="online"))     # the step's later hooks see the online branch
        total = 0.0
        metrics = {}
        weights = dict(zip(c.depths, c.depth_weights))
        for d in depths:
            loss, _ = objective(method, model, self.parts(model, d), maps1[d], maps2[d],
                                None if g1 is None else g1[d], None if g2 is None else g2[d], indexes)
            metrics[f"interloss/loss_d{d}"] = float(loss.detach())
            total = total + weights[d] * loss
        for j, s in sims.items():
            metrics[f"interloss/hard_pair_sim_b{j}"] = float(s.mean())
        if depth == FINAL:
            f = torch.cat([pool(maps1[FINAL]), pool(maps2[FINAL])])
            cls_loss, cls_m = classifier_loss(model, f, targets.repeat(2))
            total = total + cls_loss
            model.log("train_acc1", cls_m["train_acc1"], on_epoch=True, sync_dist=True)
        self.log(metrics)
        return total

    # ------------------------------------------------------------------ momentum heads
    def after_momentum_update(self) -> None:
        if self._tau is None or self.step == self._last_ema_step or not len(self.mods.momentum_heads):
            return
        self._last_ema_step = self.step
        for k, mh in self.mods.momentum_heads.items():
            ema_(self.mods.heads[k], mh, self._tau)

"""Shared base for weight-sparsity plugins (gmp, and later synccp, granet, sdclr, imp).

It owns a :class:`~solo_sparse.engine.sparsifier.WeightSparsifier` and keeps the invariants: gradients
masked after backward; weights and optimizer state masked after each optimizer step; the momentum
encoder re-masked after each EMA update. Subclasses decide *when* and *how* masks change
(:meth:`update_masks`), and whether the momentum encoder follows the online masks.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch

from solo_sparse.core.plugin import ModelView, ModuleGroup, Plugin
from solo_sparse.engine.density import allocate_by_spec
from solo_sparse.engine.sparsifier import MASK, WeightSparsifier, select_layers

log = logging.getLogger("solo_sparse")


class WeightSparsityPlugin(Plugin):
    #: masks act per encoder (online / momentum), never per crop: stackable with step drivers
    branch_independent = True
    masks_weights = True
    #: the momentum encoder uses the online masks (gmp); plugins with their own momentum masks set False
    momentum_follows_online: bool = True
    #: encoders masked in the forward only, their stored weights kept dense (SDCLR)
    soft_encoders: tuple = ()
    #: the config key of the density a run ends at; None where it is not known before training (masks from a file)
    density_key: ClassVar[Optional[str]] = "final_density"

    def setup(self, view: ModelView) -> None:
        super().setup(view)
        self.sparsifier = WeightSparsifier(view.groups, self.config, soft=self.soft_encoders)
        self.init_masks()
        self._sync_momentum()
        self.sparsifier.apply_masks()

    def extra_state(self) -> Dict[str, Any]:
        """The soft-masked encoders, so a checkpoint says which stored weights are dense by design."""
        return {"soft_encoders": list(self.soft_encoders)} if self.soft_encoders else {}

    @classmethod
    def stored_dense_encoders(cls, extra_state) -> Tuple[str, ...]:
        return tuple((extra_state or {}).get("soft_encoders", ()))

    def preview_backbone(self, net: torch.nn.Module) -> Optional[str]:
        """Masks at the final density from ``net``'s random-init magnitudes (``solo-sparse flops CONFIG``)."""
        c = self.config
        final = getattr(c, self.density_key, None) if self.density_key else None
        if final is None:
            return None
        self.setup(ModelView({"backbone": ModuleGroup("backbone", net)}, "shared"))
        sp = self.sparsifier
        sp.set_masks(allocate_by_spec(c, {k: w.abs() for k, w in sp.weights().items()}, final))
        return (f"{self.name} at final density {final} ({c.distribution}, {c.granularity}; "
                "masks from random-init magnitudes)")

    # ------------------------------------------------------------------ to override
    def init_masks(self) -> None:
        """Initial masks at construction (default: dense)."""

    def update_masks(self, optimizer) -> bool:
        """Change masks after optimizer step ``self.step``; return True when they changed."""
        return False

    # ------------------------------------------------------------------ invariants
    def _sync_momentum(self) -> None:
        if self.momentum_follows_online:
            self.sparsifier.copy_online_to_momentum()

    def after_backward(self) -> None:
        self.sparsifier.mask_gradients()

    def after_optimizer_step(self, optimizer) -> None:
        """Masks change here; weights and optimizer state are re-masked whenever they do.

        Between mask changes nothing needs re-masking: the gradient of a pruned weight is masked
        before every step, its value and optimizer state are zero, so SGD/LARS momentum, Adam moments
        and (coupled or decoupled) weight decay all keep it at exactly zero. This saves two full passes
        over the weights per step; the no-leak tests check the invariant at every step, and the weights
        are re-masked at every epoch end as a safety net.
        """
        sp = self.sparsifier
        if self.update_masks(optimizer):
            self.broadcast_state()
            self._sync_momentum()
            sp.apply_masks()
            sp.mask_optimizer_state(optimizer)
            self.log(self.density_metrics())

    def broadcast_state(self) -> None:
        """Under DDP, make every rank hold rank 0's masks (and whatever else decides them) after a change."""
        self.sparsifier.broadcast_masks()

    def after_momentum_update(self) -> None:
        self.sparsifier.apply_masks(("momentum",))

    def on_epoch_end(self, epoch: int) -> None:
        self.sparsifier.apply_masks()
        metrics = self.density_metrics()
        for enc in ("online", "momentum") if self.sparsifier.has_momentum else ("online",):
            for k, d in self.sparsifier.layer_densities(enc).items():
                metrics[f"layer_density/{enc}/{k}"] = d
        self.log(metrics)

    def density_metrics(self) -> Dict[str, float]:
        m = {"density/online": self.sparsifier.density("online")}
        if self.sparsifier.has_momentum:
            m["density/momentum"] = self.sparsifier.density("momentum")
        return m

    # ------------------------------------------------------------------ helpers for subclasses
    def magnitude_scores(self, encoder: str = "online", prune_only: bool = True) -> Dict[str, torch.Tensor]:
        """|w| per layer; with ``prune_only`` pruned weights score -inf so they stay pruned."""
        out = {}
        masks = self.sparsifier.masks(encoder)
        for k, w in self.sparsifier.weights(encoder).items():
            s = w.abs().float()
            out[k] = torch.where(masks[k], s, torch.full_like(s, float("-inf"))) if prune_only else s
        return out

    # ------------------------------------------------------------------ linear evaluation
    def prepare_eval_backbone(self, backbone: torch.nn.Module) -> None:
        """Give a freshly built backbone the same mask buffers, and make loading strict about them.

        solo-learn's ``main_linear.py`` loads with ``strict=False``: a post-load hook raises on any
        missing key (so a checkpoint without masks, or of another architecture, fails loudly), then
        applies the loaded masks. During fine-tuning the gradients of pruned weights are masked (a tensor
        hook) and every forward re-applies the masks (a pre-hook), so evaluation and saved checkpoints stay sparse.
        """
        layers = [(n, m) for n, m in select_layers(backbone, exclude_stem=self.config.exclude_stem)]
        for _, mod in layers:
            mod.register_buffer(MASK, torch.ones_like(mod.weight, dtype=torch.bool), persistent=True)

        def post_hook(module, incompatible):
            if incompatible.missing_keys:
                raise RuntimeError(
                    f"solo-sparse ({self.name}): the checkpoint lacks {len(incompatible.missing_keys)} backbone "
                    f"key(s), first: {incompatible.missing_keys[0]!r}. Was it pre-trained with "
                    f"'- solo_sparse: {self.name}' and the same backbone?"
                )
            kept = total = 0
            with torch.no_grad():
                for _, mod in layers:
                    mask = getattr(mod, MASK)
                    mod.weight.mul_(mask)
                    kept += int(mask.sum())
                    total += mask.numel()
            print(f"solo-sparse: loaded {self.name} backbone, masked layers at density {kept / total:.4f}",
                  file=sys.stderr, flush=True)
            module._solo_sparse_density = kept / total

        def pre_hook(mod, _inp):
            # every forward, training or eval: a weight changed behind our back (a user's optimizer
            # with its own update rule) is masked before it is used
            with torch.no_grad():
                mod.weight.mul_(getattr(mod, MASK))

        backbone.register_load_state_dict_post_hook(post_hook)
        for _, mod in layers:
            mod.register_forward_pre_hook(pre_hook)
            # the gradient of a pruned weight is zero, so SGD/Adam steps (momentum, weight decay of a
            # zero weight) leave it at zero and a checkpoint saved after the last step stays sparse
            mod.weight.register_hook(lambda g, m=mod: g * getattr(m, MASK))

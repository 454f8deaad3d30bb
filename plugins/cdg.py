"""``cdg`` — contrastive dual gating (CDG seed): CGNet-style channel gating of the block convs with
per-branch masks and disjoint base paths.

Every gated conv splits its input and output channels into G groups; the base path (1/G of the
input channels, dense) gives Y_base, the mask M = step(normal(Y_base) - tau) (straight-through,
alpha-scaled sigmoid) decides where the conditional path (the other input channels) is added:
Y = Y_base + gamma * M * Y_cond (gamma: a learnable per-channel scale from 0, our choice; ``cond_scale: none``
for the paper's form). Crop 0 runs branch a1 (diagonal base groups), crop 1 branch a2 (inverse
diagonal): disjoint base paths, separate masks, shared weights and thresholds. Inference, validation
and ``main_linear.py`` use a1. Loss: the method's + ``threshold_weight`` * Σ_l ||s - tau_l||_2
(seed eq. 11) with s = Phi^-1(target), the threshold that gives the target conditional sparsity on
normalised base outputs. ``cg`` > 1: structured CDG (masks per group of cg channels).

Defaults (see docs/plugins/cdg.md for the departures table): the partial sum is normalised per sample
and channel over (H, W) (``norm: channel``, as the CGNet authors' code); the gates start open and the
target sparsity rises to ``target`` over the first half of training along the cubic schedule of gradual
pruning (``ramp: "50%"``; the authors' CGNet code also starts its thresholds open, at -6, and moves
them to the target — the seed gives no initial value). ``ramp: 0`` starts at the target from step 0.
Why the ramp: per-position gating at a fixed sparsity makes a freshly initialised network's features
much worse than dense or base-path-only ones (linear probe on Fashion-MNIST at random init: dense 77.6,
base path only 79.1, 10% conditional sparsity 72.6, 50% 58.9). Gated maps of 1x1 are refused with
``norm: channel`` (degenerate) and 2x2 maps warn. A collapse (positive pairs no more alike than random
pairs) is logged (``pair/*``) and reported in one line. Conv: ``solo_sparse.gating.cgnet``; family:
``solo_sparse.families.channel_gating``; ``cgnet`` is the sibling with unified gating.
"""
from __future__ import annotations

from dataclasses import dataclass

from solo_sparse.core.config import ConfigError, key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.families.channel_gating import ThresholdGatingConfig, ThresholdGatingPlugin


@dataclass
class CDGConfig(ThresholdGatingConfig):
    def __post_init__(self):
        super().__post_init__()
        if self.control != "none":
            raise key_error("control", self.control, "the static controls are single-path networks (one base path "
                                                     "for both views); cdg trains two gated branches with disjoint "
                                                     "base paths; allowed on cdg: none (use '- solo_sparse: cgnet' "
                                                     "with this control)")


class CDG(ThresholdGatingPlugin):
    name = "cdg"
    description = ("contrastive dual gating: CGNet channel gating with per-branch masks and disjoint base paths "
                   "(crop 0 diagonal, crop 1 inverse diagonal)")
    Config = CDGConfig

    def setup(self, view) -> None:
        queue = view.method_kwargs.get("queue_size")
        if view.method == "mocov2plus" and queue is not None and view.batch_size and int(queue) < int(view.batch_size):
            raise ConfigError(f"method_kwargs.queue_size={queue} is smaller than one batch ({view.batch_size}) with "
                              f"'{self.name}' on mocov2plus: the queue must hold at least one batch of keys")
        super().setup(view)

    def route(self, branch: Branch) -> str:
        return "a2" if branch.crop == 1 else "a1"

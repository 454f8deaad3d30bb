"""``cdg`` — contrastive dual gating (CDG seed): CGNet-style channel gating of the block convs with
per-branch masks and disjoint base paths.

Every gated conv splits its input and output channels into G groups; the base path (1/G of the
input channels, dense) gives Y_base, the mask M = step(normal(Y_base) - tau) (straight-through,
alpha-scaled sigmoid) decides where the conditional path (the other input channels) is added:
Y = Y_base + M * Y_cond. Crop 0 runs branch a1 (diagonal base groups), crop 1 branch a2 (inverse
diagonal): disjoint base paths, separate masks, shared weights and thresholds. Inference, validation
and ``main_linear.py`` use a1. Loss: the method's + ``threshold_weight`` * Σ_l ||s - tau_l||_2
(seed eq. 11) with s = Phi^-1(target), the threshold that gives the target conditional sparsity on
normalised base outputs. ``cg`` > 1: structured CDG (masks per group of cg channels).

``ramp`` > 0 (our addition; the seed starts at the target): *gradual gating*. The target sparsity
rises from ``ramp_from`` to ``target`` along the cubic schedule of gradual pruning (Zhu & Gupta 2017),
eta(t) = target + (ramp_from - target) (1 - t / ramp)^3 for t < ramp, over optimizer steps t. After
every optimizer step the thresholds of both encoders are shifted by s(eta(t+1)) - s(eta(t)) (their
learned offsets from the target are kept; the momentum twin stays its EMA), and the threshold loss
pulls tau to the current s. Why: per-position gating at a fixed sparsity makes the features of a
freshly initialised network much worse than dense or base-path-only ones (linear probe on Fashion-MNIST
at random init: dense 77.6, base path only 79.1, 10% conditional sparsity 72.6, 50% 58.9), so the
seed's schedule starts training from broken features; the ramp starts it from dense ones. Engine:
``solo_sparse.cdg``, ``solo_sparse.cdg_plugin``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch

from solo_sparse.cdg import gated_convs, target_threshold, threshold_loss
from solo_sparse.cdg_plugin import GatingConfig, GatingPlugin
from solo_sparse.config import StepSpec, check_int, check_range, key_error
from solo_sparse.plugin import Branch
from solo_sparse.schedule import cubic_density


@dataclass
class CDGConfig(GatingConfig):
    #: G: base path = 1/G of the input channels
    groups: int = 4
    #: structured CDG: masks shared by groups of cg consecutive output channels (1 = unstructured)
    cg: int = 1
    #: target conditional-path sparsity eta* in [0, 1); s = Phi^-1(eta*)
    target: float = 0.75
    #: lambda of the threshold loss
    threshold_weight: float = 0.1
    #: sigmoid slope of the straight-through gradient
    alpha: float = 2.0
    #: initial tau: "target" (= s of the target at step 0, i.e. of ramp_from when ramping) or a number
    init_threshold: Union[str, float] = "target"
    #: gradual gating: steps ("Nep" epochs, "P%" of training) over which the target sparsity rises
    #: from ramp_from to target along the cubic schedule; 0 = off (the seed)
    ramp: Union[int, str] = 0
    #: target sparsity at step 0 when ramping, in [0, target]
    ramp_from: float = 0.0

    def __post_init__(self):
        GatingConfig.__post_init__(self)
        self.groups = check_int("groups", self.groups, 1)
        self.cg = check_int("cg", self.cg, 1)
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 1.0:
            raise key_error("target", t, "the target conditional sparsity must be in [0, 1)")
        self.target = float(t)
        self.threshold_weight = check_range("threshold_weight", self.threshold_weight, 0.0, float("inf"))
        self.alpha = check_range("alpha", self.alpha, 0.0, float("inf"), lo_open=True)
        if self.init_threshold != "target":
            self.init_threshold = check_range("init_threshold", self.init_threshold, -float("inf"), float("inf"))
        self.ramp = StepSpec.parse("ramp", self.ramp)
        self.ramp_from = check_range("ramp_from", self.ramp_from, 0.0, self.target)

    @property
    def s(self) -> float:
        return target_threshold(self.target)

    @property
    def ramping(self) -> bool:
        return self.ramp.value > 0 and self.ramp_from < self.target


class CDG(GatingPlugin):
    name = "cdg"
    kind = "cdg"
    description = ("contrastive dual gating: CGNet channel gating with per-branch masks and disjoint base paths "
                   "(crop 0 diagonal, crop 1 inverse diagonal)")
    Config = CDGConfig

    def __init__(self, config):
        super().__init__(config)
        self._ramp_steps: Optional[int] = None
        # the threshold the taus were last shifted to (ramp); saved with the plugin state
        self._s_applied = target_threshold(config.ramp_from) if config.ramping else None

    def setup(self, view) -> None:
        super().setup(view)
        if view.method == "mocov2plus" and self.kind == "cdg":
            warnings.warn(f"solo-sparse: '{self.name}' with mocov2plus collapsed in our 10-epoch benchmarks (linear "
                          "probe 31-39 vs 80 dense, with or without ramp/warm-up; README, CDG benchmark); "
                          "simclr is the tested pairing", stacklevel=2)

    def target_at(self, step: int) -> float:
        """Target conditional sparsity after ``step`` optimizer steps (the cubic ramp, or the target)."""
        c = self.config
        if not c.ramping:
            return c.target
        if self._ramp_steps is None:
            self._ramp_steps = max(1, c.ramp.resolve(self.steps_per_epoch, self.total_steps))
        return 1.0 - cubic_density(step, 0, self._ramp_steps, 1.0 - c.ramp_from, 1.0 - c.target)

    def s_at(self, step: int) -> float:
        return target_threshold(self.target_at(step))

    def convert_kwargs(self) -> Dict[str, Any]:
        c = self.config
        s0 = target_threshold(c.ramp_from) if c.ramping else c.s
        tau0 = s0 if c.init_threshold == "target" else c.init_threshold
        return {"groups": c.groups, "cg": c.cg, "alpha": c.alpha, "init_tau": tau0, "density": 1.0}

    def after_optimizer_step(self, optimizer) -> None:
        super().after_optimizer_step(optimizer)
        if not self.config.ramping:
            return
        s_now = self.s_at(self.step)
        delta = s_now - self._s_applied
        if delta != 0.0:
            grp = self.view.groups["backbone"]
            with torch.no_grad():
                for mod in (grp.online, grp.momentum):
                    if mod is not None:
                        for _, conv in gated_convs(mod):
                            conv.tau.add_(delta)
            self._s_applied = s_now

    def extra_state(self) -> Dict[str, Any]:
        return {"s_applied": self._s_applied} if self.config.ramping else {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        if self.config.ramping:
            self._s_applied = float(state["s_applied"])

    def route(self, branch: Branch) -> str:
        return "a2" if branch.crop == 1 else "a1"

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        if self.config.ramping:
            self.log({"target_sparsity": self.target_at(self.step)})
        if self.config.threshold_weight == 0:
            return None
        loss = threshold_loss(online, self.s_at(self.step))
        return None if loss is None else self.config.threshold_weight * loss

"""Shared plugin machinery for DGNet-gated two-view training (``dgnet_dual``, ``dgnet_gated``).

The backbone (and a momentum twin, if the method has one) is converted in place to a gated ResNet
(:mod:`solo_sparse.gating.dgnet`) at construction. Each crop's forward is routed by :meth:`branch_mode`;
the budget loss

    L_G = budget_weight * (Σ_l F_l^R / Σ_l F_l^O - target) ** 2

is computed on the online encoder's gated forwards of the step (per sample, batch mean, averaged
over the gated crops) and added to the method loss. During ``warmup`` the gated branch runs with
every gate open and no budget loss.

``budget``: ``macs`` (default, the seed) counts F^R / F^O in MACs; ``latency`` counts them in the
measured batch-1 CPU latency of each gated block at its kept share (the cost model of
:func:`solo_sparse.gating.dgnet.attach_latency_table`, timed at ``latency_size`` px, default the
training crop size), so a layer whose skipped channels save little wall-clock weighs little. The
table is read from this machine's cache or, where it is missing, timed before step 0 with one
progress line per block shape (never a silent fallback to MACs).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any, List, Optional, Tuple

import torch

from solo_sparse.core.config import PREFIX, ConfigError, StepSpec, check_choice, check_int, check_range, key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.engine.resnet import parse_stages
from solo_sparse.families.gating import SYMMETRIC_TWO_VIEW_METHODS, GatedBackbonePlugin, check_path
from solo_sparse.gating.dgnet import (
    CONTROLS,
    StaticGate,
    attach_latency_table,
    convert_resnet,
    copy_dense_bn_to_gated,
    flops_ratio,
    gated_blocks,
    is_gated,
    is_static,
    measure,
    set_mode,
    set_static_keep,
    start_recording,
    to_plain_resnet,
)

BUDGETS = ("macs", "latency")
#: keys of the gate and the budget loss, which ``control: static`` (no gate, no loss) does not use
STATIC_IDLE_KEYS = ("budget_weight", "reduction", "temperature", "init_bias", "gate_lr_scale", "latency_size",
                    "latency_threads")


@dataclass
class DGNetConfig:
    target: float = 0.5
    budget_weight: float = 5.0
    reduction: int = 4
    temperature: float = 1.0
    init_bias: float = 3.0
    stages: Tuple[int, ...] = (1, 2, 3, 4)
    warmup: Any = 0
    eval_path: str = "gated"
    gather: bool = True
    #: gate learning rate = gate_lr_scale * the method's lr (1 = the seed's single lr). The budget
    #: gradient reaching one gate is ~1/(number of gated channels) of dL_G/dratio, so on short
    #: schedules (hundreds of steps) the gates barely move at scale 1; see README, DGNet-dual.
    gate_lr_scale: float = 1.0
    #: what the budget counts: "macs" (the seed) or "latency" (measured batch-1 CPU latency per block)
    budget: str = "macs"
    #: input size (px) of the latency table; 0 = the training crop size
    latency_size: int = 0
    #: torch threads of the deployment the latency table describes; 0 = this process's
    latency_threads: int = 0
    #: "none": the DGNet gate (data-dependent); "static": the equal-MACs static control -- every gated block keeps
    #: the same first share of its channels for every input (a narrower ResNet), the share solved from ``target``
    #: (:func:`~solo_sparse.gating.dgnet.set_static_keep`); no gate, no budget loss
    control: str = "none"

    def __post_init__(self):
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
            raise key_error("target", t, "the FLOPs budget t_d must be in (0, 1]")
        self.target = float(t)
        self.budget_weight = check_range("budget_weight", self.budget_weight, 0.0, float("inf"))
        self.reduction = check_int("reduction", self.reduction, 1)
        self.temperature = check_range("temperature", self.temperature, 0.0, float("inf"), lo_open=True)
        self.init_bias = check_range("init_bias", self.init_bias, -float("inf"), float("inf"))
        self.stages = parse_stages("stages", self.stages)
        self.warmup = StepSpec.parse("warmup", self.warmup)
        if self.warmup.unit == "percent":
            raise key_error("warmup", str(self.warmup), "give steps or epochs ('2ep')")
        check_choice("eval_path", self.eval_path, ("gated", "dense"))
        self.gate_lr_scale = check_range("gate_lr_scale", self.gate_lr_scale, 0.0, float("inf"), lo_open=True)
        if not isinstance(self.gather, bool):
            raise key_error("gather", self.gather, "expected true or false")
        check_choice("budget", self.budget, BUDGETS)
        self.latency_size = check_int("latency_size", self.latency_size, 0)
        self.latency_threads = check_int("latency_threads", self.latency_threads, 0)
        check_choice("control", self.control, CONTROLS)
        if self.control == "static":
            if self.budget != "macs":
                raise key_error("budget", self.budget, "control: static is sized in MACs: budget must be 'macs'")
            if self.warmup.value > 0:
                raise key_error("warmup", str(self.warmup), "control: static has no gate to warm up: warmup must be 0")
            for key in STATIC_IDLE_KEYS:        # a key that would do nothing is refused, not silently ignored
                default = next(f.default for f in fields(DGNetConfig) if f.name == key)
                if getattr(self, key) != default:
                    raise key_error(key, getattr(self, key), f"control: static has no gate and no budget loss, so "
                                    f"{key} does nothing: leave it at its default ({default})")


class DGNetPlugin(GatedBackbonePlugin):
    supported_methods = SYMMETRIC_TWO_VIEW_METHODS
    method_requirement = "needs a two-view symmetric method with exactly two large crops"
    crops_why = "crop 0 gated, crop 1 dense"
    speed_paths = ("gated", "dense")
    evaluation_keys = ("eval_path", "gather")   # which path main_linear.py evaluates, and how it runs
    neutral_defaults = {"control": "none"}
    #: 2: the gates' own MACs counted per image (version 1 counted them once per measured batch: whole-network
    #: ratios 0.0021 low at 64 px, ResNet-18)
    cost_version = 2
    #: one gate set, shared-BN or separate-BN branches
    separate_bn: bool = False

    def __init__(self, config):
        super().__init__(config)
        self._records: List = []
        self._warm_end: Optional[int] = None
        # gates and gated BNs get no gradient during warm-up steps (they are not used)
        self.leaves_parameters_unused = config.warmup.value > 0

    # ------------------------------------------------------------------ policy (subclasses)
    def branch_mode(self, branch: Branch) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    @classmethod
    def backbone_variants(cls):
        """``resnet18_dgnet`` / ``resnet50_dgnet``: torchvision ResNets built already gated;
        ``backbone.kwargs`` may set reduction, temperature, init_bias, separate_bn, stages, control."""
        def make(arch):
            def build(method=None, *args, reduction=4, temperature=1.0, init_bias=3.0, separate_bn=True,
                      stages=(1, 2, 3, 4), control="none", **kwargs):
                import torchvision

                net = getattr(torchvision.models, arch)(*args, **kwargs)
                convert_resnet(net, reduction=reduction, temperature=temperature, init_bias=init_bias,
                               separate_bn=separate_bn, stages=tuple(stages), control=control)
                if separate_bn:
                    copy_dense_bn_to_gated(net)
                return net
            return build
        return {"resnet18_dgnet": make("resnet18"), "resnet50_dgnet": make("resnet50")}

    def _check_gated(self, backbone) -> None:
        """A backbone built gated (``resnet18_dgnet``) must agree with this plugin's settings."""
        c = self.config
        blocks = gated_blocks(backbone)
        static = {isinstance(blk.gate, StaticGate) for _, blk in blocks}
        if static != {c.control == "static"}:
            built = "static" if static == {True} else "none" if static == {False} else "mixed"
            raise ConfigError(f"backbone built with control={built} but {PREFIX}.control={c.control}")
        red = {blk.gate.in_channels // blk.gate.hidden for _, blk in blocks if not isinstance(blk.gate, StaticGate)}
        if red and red != {c.reduction}:
            raise ConfigError(f"backbone built with gate reduction {sorted(red)} but {PREFIX}.reduction={c.reduction}")
        if backbone.ss_separate_bn != self.separate_bn:
            raise ConfigError(f"backbone built with separate_bn={backbone.ss_separate_bn} but plugin '{self.name}' "
                              f"uses separate_bn={self.separate_bn}")

    @classmethod
    def eval_paths(cls) -> Tuple[str, ...]:
        return ("gated", "dense")

    def route_eval(self, backbone, path: Optional[str] = None) -> str:
        check_path(self.name, path, self.eval_paths())
        path = path or self.config.eval_path
        set_mode(backbone, path)
        return path

    @classmethod
    def measure_backbone(cls, net, X):
        if getattr(net, "ss_mode", None) == "dense":
            return None          # routed to its dense path: a static cost, counted from the weights
        m = measure(net, X)
        kept = list(m["kept_channels"].values())
        return {**m, "gate_sparsity": 1.0 - sum(kept) / len(kept) if kept else 0.0}

    @classmethod
    def cost_depends_on_input(cls, net) -> bool:
        """The DGNet gate's cost does; the static control's and the dense path's do not."""
        return getattr(net, "ss_mode", None) == "gated" and not is_static(net)

    @classmethod
    def plain_backbone(cls, net):
        """The static control: the narrower torchvision ResNet it is (:func:`~solo_sparse.gating.dgnet.to_plain_resnet`,
        closed channels unread, so a compact export removes them); the dense path: the plain ResNet. The DGNet
        gate's path: None."""
        return to_plain_resnet(net) if is_static(net) or getattr(net, "ss_mode", None) == "dense" else None

    @classmethod
    def prepare_fast_path(cls, net, size, progress=None, **options):
        """The gated path at batch 1: every gated block's measured execution plan at ``size`` px
        (:func:`~solo_sparse.gating.dgnet.attach_latency_table`; ``options``: ``reps``, ``rebuild``, ``threads``)."""
        return attach_latency_table(net, size, progress=progress, **options) if is_gated(net) else None

    def preview_backbone(self, net) -> Optional[str]:
        """``control: static``: its cost is known before training (``solo-sparse flops CONFIG``): ``net`` converted,
        narrowed and routed to its gated path. The DGNet gate's cost depends on the data: None."""
        if self.config.control != "static":
            return None
        self.convert(net)
        set_mode(net, "gated")
        for _, blk in gated_blocks(net):
            blk.ss_gather = False    # a batch-1 gather runs folded weights, not the convs a MAC counter hooks
        kept = [f"{blk.gate.kept}/{blk.gate.out_channels}" for _, blk in gated_blocks(net)]
        return (f"{self.name} control static at target {self.config.target} (gated blocks' MACs; kept channels "
                f"{', '.join(kept)})")

    def convert(self, backbone) -> None:
        c = self.config
        if is_gated(backbone):
            self._check_gated(backbone)
        else:
            convert_resnet(backbone, reduction=c.reduction, temperature=c.temperature, init_bias=c.init_bias,
                           separate_bn=self.separate_bn, stages=c.stages, control=c.control)
            if self.separate_bn:
                copy_dense_bn_to_gated(backbone)
        if c.control == "static":
            set_static_keep(backbone, c.target)
        for _, blk in gated_blocks(backbone):
            blk.ss_gather = c.gather

    def setup(self, view) -> None:
        super().setup(view)
        grp = view.groups["backbone"]
        self._records = start_recording(grp.online)
        if self.config.budget == "latency":
            self.latency_table = self.attach_latency(grp.online, view.input_size)

    def attach_latency(self, backbone, input_size: Optional[int]) -> dict:
        """``budget: latency``: the measured batch-1 latency curves of every gated block (built first
        where this machine's table lacks them, with progress lines on stderr)."""
        size = self.config.latency_size or input_size
        if not size:
            raise ConfigError(f"{PREFIX}.budget='latency' needs {PREFIX}.latency_size (the input size in px of the "
                              f"latency table): the training crop size is not known here")

        def say(msg: str) -> None:
            print(f"solo-sparse {self.name}: {msg}", file=sys.stderr, flush=True)

        threads = self.config.latency_threads or None
        rep = attach_latency_table(backbone, int(size), progress=say, threads=threads)
        if not rep["built"]:
            say(f"latency budget from the measured table {rep['path']} ({size} px, batch 1, "
                f"{threads or torch.get_num_threads()} thread(s))")
        return rep

    def param_groups(self, base_lr: float) -> list:
        if self.config.gate_lr_scale == 1.0:     # (control: static refuses any other scale)
            return []
        gates = [p for n, p in self.view.groups["backbone"].online.named_parameters() if ".gate." in n]
        return [self.gate_group(gates, base_lr)]

    # ------------------------------------------------------------------ hooks
    def _warm(self) -> bool:
        return self._warm_end is not None and self.step < self._warm_end

    def on_train_start(self) -> None:
        self._warm_end = self.steps_of(self.config.warmup)

    def on_step_start(self) -> None:
        self._records.clear()
        self._n_gated = 0

    def _route_eval_crop(self, mod) -> None:
        set_mode(mod, self.config.eval_path)

    def _route_crop(self, mod, branch: Branch) -> None:
        mode = self.branch_mode(branch)
        set_mode(mod, mode, gates_open=self._warm())
        if mode == "gated" and branch.encoder == "online":
            self._n_gated += 1

    def extra_loss(self) -> Optional[torch.Tensor]:
        self.pairs.step_end()
        if not self._records:
            return None
        n = max(1, self._n_gated)
        blocks = len(gated_blocks(self.view.groups["backbone"].online))
        ratios = [flops_ratio(self._records[i * blocks:(i + 1) * blocks]) for i in range(n)]
        ratio = sum(r for r in ratios if r is not None) / n
        self._records.clear()
        what = "latency_ratio" if self.config.budget == "latency" else "flops_ratio"
        self.log({what: float(ratio.detach()), "target": self.config.target})
        if self._warm() or self.config.control == "static":
            return None      # static control: the ratio is fixed by construction, nothing to train
        loss = self.config.budget_weight * (ratio - self.config.target) ** 2
        self.log({"budget_loss": float(loss.detach())})
        return loss

    def on_epoch_end(self, epoch: int) -> None:
        dens = {f"gate_density/{n}": blk._ss_rho for n, blk in gated_blocks(self.view.groups["backbone"].online)}
        self.log({**dens, **self.monitor_epoch(epoch)})

"""Plugins that gate the block convolutions channel by channel during two-view training: the
threshold gates of CGNet/CDG (``cdg``, ``cgnet``: :class:`ThresholdGatingPlugin`) and FBS's saliency
gates (``fbs``), on :class:`ChannelGatingPlugin`.

The backbone (and its momentum twin) is gated in place at construction. Each crop's forward is
routed by :meth:`ChannelGatingPlugin.route` (base path / mask policy); the online encoder's
training forwards are recorded: conditional (or channel) sparsity per layer and branch, the
branches' mask similarity S_c, the FLOPs reduction by the seed's eq. 13 and by exact count. Gate
parameters (``tau``; FBS ``phi``/``rho``) sit in their own optimizer group, without weight decay by
default (``gate_weight_decay``), at ``gate_lr_scale`` x the method's lr.

**Threshold gates** (``cdg`` and ``cgnet`` differ only in the crop routing): loss = the method's +
``threshold_weight`` * Σ_l ||s - tau_l||_2 (CDG seed eq. 11) with s = Phi^-1(target), the threshold
that gives the target conditional sparsity on normalised base outputs. ``ramp`` > 0 (our addition):
the target sparsity rises from ``ramp_from`` to ``target`` along the cubic schedule of gradual
pruning (Zhu & Gupta 2017), eta(t) = target + (ramp_from - target)(1 - t / ramp)^3 for t < ramp;
after every optimizer step the thresholds of both encoders are shifted by s(eta(t+1)) - s(eta(t))
(learned offsets kept; the momentum twin stays its EMA) and the threshold loss pulls tau to the
current s.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import torch

from solo_sparse.core.config import PREFIX, ConfigError, StepSpec, check_choice, check_int, check_range, key_error
from solo_sparse.core.plugin import Branch
from solo_sparse.engine.resnet import parse_stages
from solo_sparse.engine.schedule import cubic_density
from solo_sparse.families.gating import TWO_VIEW_METHODS, GatedBackbonePlugin, check_path, small_maps
from solo_sparse.gating import cgnet
from solo_sparse.gating.channel import (
    clear_cache,
    gated_convs,
    gating_kind,
    mask_similarity,
    measure,
    reduction_eq13,
    set_branch,
    set_recording,
)


@dataclass
class GatingConfig:
    #: ResNet stages whose blocks are gated
    stages: Tuple[int, ...] = (1, 2, 3, 4)
    #: which convs of a block: "3x3" (the seed: the 3x3 convs; stem and downsample dense) or "block" (all)
    convs: str = "3x3"
    gate_lr_scale: float = 1.0
    gate_weight_decay: float = 0.0

    def __post_init__(self):
        self.stages = parse_stages("stages", self.stages)
        check_choice("convs", self.convs, ("3x3", "block"))
        self.gate_lr_scale = check_range("gate_lr_scale", self.gate_lr_scale, 0.0, float("inf"), lo_open=True)
        self.gate_weight_decay = check_range("gate_weight_decay", self.gate_weight_decay, 0.0, float("inf"))


class ChannelGatingPlugin(GatedBackbonePlugin):
    """Routing, statistics, gate optimizer group and evaluation of channel-gated backbones."""

    supported_methods = TWO_VIEW_METHODS
    method_requirement = "needs a two-view method with exactly two large crops"
    crops_why = "crop 0 -> branch a1, crop 1 -> branch a2"
    #: names of the gate parameters of a gated conv (own optimizer group)
    gate_param_names: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, config):
        super().__init__(config)
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_n: Dict[str, int] = {}
        self._stats: Dict[str, List] = {}
        self._loss_terms: List[torch.Tensor] = []
        self._cur: Optional[str] = None

    # ------------------------------------------------------------------ subclass policy
    def route(self, branch: Branch) -> str:
        """Base-path / mask policy of a training crop: a1 | a2 | a1_own | follow."""
        raise NotImplementedError

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def gate_terms(self, online) -> Optional[torch.Tensor]:
        """Per-forward loss terms (FBS's saliency L1); None for threshold gates."""
        return None

    # ------------------------------------------------------------------ evaluation paths
    @classmethod
    def eval_paths(cls) -> Tuple[str, ...]:
        return ("a1", "a2")

    def route_eval(self, backbone, path: Optional[str] = None) -> str:
        check_path(self.name, path, self.eval_paths())
        set_branch(backbone, path or "a1")
        return f"branch {path or 'a1'} (gated)"

    @classmethod
    def cost_depends_on_input(cls, net) -> bool:
        """The gates' cost does; the static controls' (``base_only``, ``random``: no dependence on the input) does
        not (:meth:`measure_backbone` measures the gated path)."""
        return any(getattr(c, "ss_control", "none") == "none" for _, c in gated_convs(net))

    @classmethod
    def measure_backbone(cls, net, X) -> Dict[str, Any]:
        m = measure(net, X)
        return {**m, "network_macs_ratio": 1.0 / m["network_reduction"], "gate_sparsity": m["mean_sparsity"]}

    @classmethod
    def backbone_variants(cls):
        """``resnet18_<plugin>`` / ``resnet50_<plugin>``: torchvision ResNets built gated; ``backbone.kwargs``
        may set the plugin's config keys (the rest go to the torchvision constructor)."""
        import dataclasses

        keys = {f.name for f in dataclasses.fields(cls.Config) if f.init}

        def make(arch):
            def build(method=None, *args, **kwargs):
                import torchvision

                cfg = {k: kwargs.pop(k) for k in list(kwargs) if k in keys}
                net = getattr(torchvision.models, arch)(*args, **kwargs)
                cls.from_params(cfg).convert(net)
                return net
            return build
        return {f"resnet18_{cls.name}": make("resnet18"), f"resnet50_{cls.name}": make("resnet50")}

    # ------------------------------------------------------------------ construction
    def setup(self, view) -> None:
        super().setup(view)
        set_recording(view.groups["backbone"].online, True)

    def gate_params(self) -> List[torch.nn.Parameter]:
        out = []
        for _, c in gated_convs(self.view.groups["backbone"].online):
            out += [p for n, p in c.named_parameters(recurse=False) if n in self.gate_param_names]
        return out

    def param_groups(self, base_lr: float) -> list:
        return [self.gate_group(self.gate_params(), base_lr, weight_decay=self.config.gate_weight_decay)]

    # ------------------------------------------------------------------ hooks
    def on_step_start(self) -> None:
        self._stats = {}
        self._loss_terms = []
        grp = self.view.groups["backbone"]
        for mod in (grp.online, grp.momentum):
            if mod is not None:
                clear_cache(mod)

    def _harvest(self) -> None:
        """Collect the last online training forward's stats (and FBS saliency terms)."""
        online = self.view.groups["backbone"].online
        br = self._cur
        if br is None:
            return
        for n, c in gated_convs(online):
            st = c._ss_stats
            if st is not None:
                self._stats.setdefault(br, []).append((n, st))
                c._ss_stats = None
        term = self.gate_terms(online)
        if term is not None:
            self._loss_terms.append(term)
        self._cur = None

    def _route_eval_crop(self, mod) -> None:
        self._cur = None
        set_branch(mod, "a1")

    def _route_crop(self, mod, branch: Branch) -> None:
        if branch.encoder == "online":
            self._harvest()
        route = self.route(branch) if branch.large else "a1"
        set_branch(mod, route)
        if branch.encoder == "online":
            self._cur = route

    def _acc(self, key: str, v: float) -> None:
        self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + v
        self._epoch_n[key] = self._epoch_n.get(key, 0) + 1

    def extra_loss(self) -> Optional[torch.Tensor]:
        self._harvest()
        online = self.view.groups["backbone"].online
        metrics: Dict[str, float] = {}
        convs = gated_convs(online)
        for br, rows in self._stats.items():
            kept = [float(st["kept"].mean()) for _, st in rows]
            cost = sum(float(torch.as_tensor(st["cost"]).float().mean()) for _, st in rows)
            dense = sum(st["dense"] for _, st in rows)
            eta = 1.0 - sum(kept) / len(kept)
            metrics[f"sparsity/{br}"] = eta
            metrics[f"flops_reduction_exact/{br}"] = dense / cost if cost else 1.0
            if convs[0][1].eq13_groups:
                metrics[f"flops_reduction_eq13/{br}"] = reduction_eq13(eta, convs[0][1].eq13_groups)
            for (n, _), k in zip(rows, kept):
                self._acc(f"sparsity/{br}/{n}", 1.0 - k)
        sim = mask_similarity(online)
        if sim:
            metrics["mask_similarity"] = sum(sim.values()) / len(sim)
            for n, v in sim.items():
                self._acc(f"mask_similarity/{n}", v)
        loss = self.gate_loss(online)
        if loss is not None:
            metrics["gate_loss"] = float(loss.detach())
        self.log(metrics)
        self._stats = {}
        self.pairs.step_end()
        return loss

    def epoch_metrics(self) -> Dict[str, float]:
        """Per-epoch values beyond the step averages (subclasses add theirs)."""
        return {}

    def on_epoch_end(self, epoch: int) -> None:
        self.log({**{k: v / self._epoch_n[k] for k, v in self._epoch_sums.items()}, **self.epoch_metrics(),
                  **self.monitor_epoch(epoch)})
        self._epoch_sums, self._epoch_n = {}, {}


# ----------------------------------------------------------------------------------------- threshold gates
@dataclass
class ThresholdGatingConfig(GatingConfig):
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
    #: normalisation before the threshold: channel (per sample and channel over H, W: CGNet's code) |
    #: sample (per sample over C, H, W)
    norm: str = "channel"
    #: gradual gating: steps ("Nep" epochs, "P%" of training) over which the target sparsity rises
    #: from ramp_from to target along the cubic schedule (gates start open, as the CGNet authors' code
    #: starts its thresholds at -6 and moves them to the target); 0 = the target from step 0
    ramp: Union[int, str] = "50%"
    #: target sparsity at step 0 when ramping, in [0, target]
    ramp_from: float = 0.0
    #: the learnable per-output-channel scale gamma of the conditional path, Y = Y_base + gamma M Y_cond (our
    #: choice): its initial value (>= 0; 0 starts from the smooth base-path network), or "none" for the
    #: paper's form (no scale, gamma = 1 fixed)
    cond_scale: Union[str, float, None] = 0.0
    #: static controls (no data-dependent gate): "none" | "base_only" (the G-grouped base path alone; with
    #: groups=2 the static network of about the gated one's MACs) | "random" (a fixed data-independent
    #: pattern instead of the normalised base output, same thresholds and schedule)
    control: str = "none"

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
        check_choice("norm", self.norm, ("channel", "sample"))
        self.ramp = StepSpec.parse("ramp", self.ramp)
        self.ramp_from = check_range("ramp_from", self.ramp_from, 0.0, self.target)
        if self.cond_scale is None or (isinstance(self.cond_scale, str) and self.cond_scale.lower() == "none"):
            self.cond_scale = "none"
        elif isinstance(self.cond_scale, bool) or not isinstance(self.cond_scale, (int, float)) \
                or not math.isfinite(self.cond_scale) or self.cond_scale < 0:
            raise key_error("cond_scale", self.cond_scale, "the initial value of the learnable conditional-path "
                                                           "scale, a number >= 0 (0: start from the base path), "
                                                           "or 'none' for the paper's form (no scale)")
        else:
            self.cond_scale = float(self.cond_scale)
        check_choice("control", self.control, cgnet.CONTROLS)

    @property
    def scale_init(self) -> Optional[float]:
        """The conditional-path scale's initial value, or None for the paper's form."""
        return None if self.cond_scale == "none" else float(self.cond_scale)

    @property
    def s(self) -> float:
        return cgnet.target_threshold(self.target)

    @property
    def ramping(self) -> bool:
        return self.ramp.value > 0 and self.ramp_from < self.target


class ThresholdGatingPlugin(ChannelGatingPlugin):
    """CGNet/CDG threshold gates (see the module docstring); subclasses choose the crop routing."""

    Config = ThresholdGatingConfig
    gate_param_names = ("tau", "cond_scale")
    #: runs saved before these keys existed trained with these values
    legacy_defaults = {"norm": "sample", "ramp": 0, "cond_scale": "none", "control": "none"}

    @property
    def unified(self) -> bool:
        """CGNet's unified gating: crop 1 reuses crop 0's masks (route "follow")."""
        return bool(getattr(self.config, "unified", False))

    def setup(self, view) -> None:
        c = self.config
        small = small_maps(view.groups["backbone"].online, view.input_size, c.stages)
        ones = [(s, hw) for s, hw in small if hw == (1, 1)]
        if ones and c.norm == "channel" and c.control == "none":     # the static controls do not normalise
            raise ConfigError(f"{PREFIX}.stages={list(c.stages)}: at {view.input_size} px the gated convs of "
                              f"layer{ones[0][0]} see 1x1 maps, where per-channel normalisation is degenerate "
                              "(every value normalises to 0, so a whole channel is on or off by the sign of tau); "
                              f"gate fewer stages (e.g. {PREFIX}.stages=[1, 2, 3]), use larger images or a CIFAR "
                              f"stem, or {PREFIX}.norm=sample")
        for s, (h, w) in small:
            warnings.warn(f"solo-sparse {self.name}: at {view.input_size} px the gated convs of layer{s} see {h}x{w} "
                          f"maps: per-position gating there has {h * w} positions per channel (the CDG seed's CIFAR "
                          "runs gate 4x4 or larger maps); consider larger images or fewer gated stages", stacklevel=2)
        super().setup(view)

    def __init__(self, config):
        super().__init__(config)
        self._ramp_steps: Optional[int] = None
        # the threshold the taus were last shifted to (ramp); saved with the plugin state
        self._s_applied = cgnet.target_threshold(config.ramp_from) if config.ramping else None

    def convert(self, backbone) -> None:
        c = self.config
        if gating_kind(backbone) is not None:        # built gated (a backbone variant): check it is these gates
            convs = gated_convs(backbone)
            if not convs or not isinstance(convs[0][1], cgnet.CGNetConv2d) or convs[0][1].ss_unified != self.unified:
                raise ConfigError(f"backbone built with other gates than plugin '{self.name}' uses")
            first = convs[0][1]
            built = (first.ss_G, first.ss_cg, first.ss_control, first.cond_scale is not None)
            if built != (c.groups, c.cg, c.control, c.scale_init is not None):
                raise ConfigError(f"backbone built with groups={first.ss_G}, cg={first.ss_cg}, control="
                                  f"{first.ss_control}, cond_scale {'learned' if built[3] else 'none'} but "
                                  f"{PREFIX}.groups={c.groups}, {PREFIX}.cg={c.cg}, {PREFIX}.control={c.control}, "
                                  f"{PREFIX}.cond_scale={c.cond_scale}")
            for _, conv in convs:
                conv.ss_alpha, conv.ss_norm = c.alpha, c.norm
            return
        s0 = cgnet.target_threshold(c.ramp_from) if c.ramping else c.s
        tau0 = s0 if c.init_threshold == "target" else c.init_threshold
        # the random control's patterns are seeded from the initial weights, not drawn from the global
        # generator: converting consumes no random numbers, so the data order stays paired with the other rows
        first = next(backbone.parameters(), None)
        seed = 0 if first is None else int(float(first.detach().abs().sum()) * 1e6) % (2 ** 31)
        cgnet.convert_resnet(backbone, groups=c.groups, cg=c.cg, alpha=c.alpha, init_tau=tau0, stages=c.stages,
                             convs=c.convs, unified=self.unified, norm=c.norm, cond_scale=c.scale_init,
                             control=c.control, seed=seed)

    @classmethod
    def deploy_backbone(cls, net, config: Dict[str, Any]) -> Dict[str, Any]:
        """Fold the conditional-path scale into the weights (exact on the deployed a1 path) and return the
        config that rebuilds the folded network (the paper's form: ``cond_scale`` none)."""
        if cgnet.fold_cond_scale(net):
            return {**config, "cond_scale": "none"}
        return dict(config)

    def target_at(self, step: int) -> float:
        """Target conditional sparsity after ``step`` optimizer steps (the cubic ramp, or the target)."""
        c = self.config
        if not c.ramping:
            return c.target
        if self._ramp_steps is None:
            self._ramp_steps = max(1, self.steps_of(c.ramp))
        return 1.0 - cubic_density(step, 0, self._ramp_steps, 1.0 - c.ramp_from, 1.0 - c.target)

    def s_at(self, step: int) -> float:
        return cgnet.target_threshold(self.target_at(step))

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

    def epoch_metrics(self) -> Dict[str, float]:
        """The conditional-path scale gamma: mean |gamma| per gated conv and over all of them."""
        rows = [(n, float(c.cond_scale.detach().abs().mean())) for n, c in
                gated_convs(self.view.groups["backbone"].online) if getattr(c, "cond_scale", None) is not None]
        if not rows:
            return {}
        out = {f"cond_scale/{n}": v for n, v in rows}
        out["cond_scale"] = sum(v for _, v in rows) / len(rows)
        return out

    def extra_state(self) -> Dict[str, Any]:
        return {**super().extra_state(), **({"s_applied": self._s_applied} if self.config.ramping else {})}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        super().load_extra_state(state)
        if self.config.ramping:
            self._s_applied = float(state["s_applied"])

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        if self.config.ramping:
            self.log({"target_sparsity": self.target_at(self.step)})
        if self.config.threshold_weight == 0 or self.config.control == "base_only":
            return None
        loss = cgnet.threshold_loss(online, self.s_at(self.step))
        return None if loss is None else self.config.threshold_weight * loss

"""The plugin contract: a config dataclass, capability attributes and hooks, driven by :class:`PluginHost`.

A plugin never imports solo-learn. It sees the method through a :class:`ModelView` (module groups
such as ``backbone``/``projector``/``predictor`` with their momentum twins, the method family and a
``log`` function). The solo-learn binding (``solo_sparse.binding.wrap``) builds the view from a
solo-learn method and calls the host's hooks at these points of every training step::

    training_step start   host.on_step_start()
    each crop's forward   host.on_crop(Branch(crop=i, encoder="online"|"momentum", large=...))
    after the method loss host.extra_loss() -> added to the loss
    after backward        host.after_backward()   (once per optimizer step: the accumulated, unscaled
                                                   gradient, before clipping — Lightning's on_before_optimizer_step)
    after optimizer step  host.after_optimizer_step(optimizer)   (host.step += 1 first)
    after the EMA update  host.after_momentum_update()
    epoch start / end     host.on_epoch_start(e) / host.on_epoch_end(e)
    checkpoint save/load  host.state_dict() / host.load_state_dict(d)   (tensors + plain values)

Plugins describe themselves (class attributes and classmethods below), so that the CLI, checkpoint
loading, the zoo, compact export and the benchmarks ask the registry instead of naming plugins:
``rewrites_backbone`` + :meth:`Plugin.rebuild_backbone` / :meth:`Plugin.route_backbone` /
:meth:`Plugin.measure_backbone` (gated backbones), ``dense_gradients`` + :meth:`Plugin.dense_gradient_share`
(training-cost accounting), :meth:`Plugin.run_summary` (what a checkpoint's plugin state says about the run),
``compactable``, ``speed_paths`` + :meth:`Plugin.prepare_fast_path`, :meth:`Plugin.commands` (CLI verbs a
plugin contributes). Capability values are checked when a plugin class is defined.

Several plugins may be stacked on one host (``PluginHost([a, b])``): hooks run in list order
(the order of the ``solo_sparse.plugins`` list), extra losses are summed, each plugin keeps its own
state under its own name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import torch

from solo_sparse.core.config import PREFIX, ConfigError, build_config, config_to_state
from solo_sparse.core.watch import EmbeddingWatch

FAMILIES = ("momentum", "shared")
#: values of :attr:`Plugin.dense_gradients`
DENSE_GRADIENTS = ("never", "updates", "every")
#: the boolean capabilities of :class:`Plugin` (``registry.available_plugins(**capabilities)`` filters on them)
CAPABILITY_FLAGS = ("leaves_parameters_unused", "drives_step", "branch_independent", "rewrites_backbone",
                    "masks_weights", "compactable")


@dataclass
class ModuleGroup:
    """A group of modules of a method: ``online`` and its EMA twin ``momentum`` (or None)."""

    name: str
    online: torch.nn.Module
    momentum: Optional[torch.nn.Module] = None


@dataclass(frozen=True)
class Branch:
    """Which forward is running: the crop index in solo-learn's order and the encoder.

    ``crop`` counts large crops first (0, 1, ...), then small multicrop crops; ``large`` says which.
    ``encoder`` is ``online`` or ``momentum``; ``phase`` is ``train`` or ``eval``.
    """

    crop: int = 0
    encoder: str = "online"
    large: bool = True
    phase: str = "train"


class ModelView:
    """What a plugin may touch of a method: module groups, family, logging, current branch."""

    def __init__(self, groups: Mapping[str, ModuleGroup], family: str, method: str = "",
                 log: Optional[Callable[[Dict[str, float]], None]] = None, num_large_crops: int = 2,
                 classifier: Optional[torch.nn.Module] = None, input_size: Optional[int] = None,
                 method_kwargs: Optional[Mapping[str, Any]] = None, batch_size: Optional[int] = None):
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}")
        self.groups = dict(groups)
        self.family = family
        self.method = method
        self.num_large_crops = num_large_crops
        self._log = log
        self.branch = Branch()
        #: the method's online linear classifier (solo-learn trains it on detached features)
        self.classifier = classifier
        #: ``(indexes (B,), targets (B,))`` of the training batch in progress, or None
        self.batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        #: the method module itself (solo-learn binding only; None in plain-torch use), for plugins that
        #: drive the whole step and need its hyper-parameters and loss state
        self.model: Optional[torch.nn.Module] = None
        #: side of the large training crops in pixels, when known (map-size checks of per-position gates)
        self.input_size = input_size
        #: the method's own keys (solo-learn's ``method_kwargs``: queue_size, temperature, ...) and batch size
        self.method_kwargs = dict(method_kwargs or {})
        self.batch_size = batch_size

    def log(self, metrics: Dict[str, float]) -> None:
        if self._log is not None and metrics:
            self._log(metrics)


class Plugin:
    """Base class. Subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: method families the plugin supports: "momentum" (online + EMA encoder), "shared" (one encoder)
    families: ClassVar[Tuple[str, ...]] = FAMILIES
    #: explicit method names refused (e.g. methods without two large crops)
    refused_methods: ClassVar[Tuple[str, ...]] = ()
    #: if set, the only methods the plugin supports, and why (completes "plugin 'x' ...")
    supported_methods: ClassVar[Tuple[str, ...]] = ()
    method_requirement: ClassVar[str] = "supports only some methods"
    #: the plugin leaves parameters without gradient in some steps (gates, partial backprop)
    leaves_parameters_unused: ClassVar[bool] = False
    #: the plugin runs the whole training step itself (:meth:`training_step`); at most one per run
    drives_step: ClassVar[bool] = False
    #: the plugin's behaviour does not depend on which crop/branch is being forwarded (weight
    #: sparsity): only such plugins may be stacked with a step-driving plugin, whose forward may
    #: interleave the two views
    branch_independent: ClassVar[bool] = False
    #: the plugin rewrites the backbone's modules (gates, branch BNs): a checkpoint's backbone is
    #: rebuilt with :meth:`rebuild_backbone` before a strict load, and ``main_linear.py`` needs the
    #: plugin line to evaluate it as trained
    rewrites_backbone: ClassVar[bool] = False
    #: the plugin stores weight masks in the backbone (``*.weight_mask`` buffers)
    masks_weights: ClassVar[bool] = False
    #: version of the plugin's cost count (:meth:`measure_backbone`): bumped when a fix changes what it counts, so
    #: ``solo-sparse bench`` re-measures the cost columns of finished rows from their checkpoints (a row records
    #: the versions it was measured with, ``cost_versions``; a row without one was measured with version 1)
    cost_version: ClassVar[int] = 1
    #: which optimizer steps need the dense weight gradient of masked layers (training-cost
    #: accounting): "never" (masked gradients suffice), "updates" (mask-update steps only), "every"
    dense_gradients: ClassVar[str] = "never"
    #: the trained sparsity is static, so dead channels can be removed by compact export
    compactable: ClassVar[bool] = True
    #: ``(fast, dense)`` evaluation paths whose CPU latency is worth comparing (a path that skips
    #: computation at batch 1, e.g. DGNet's channel gather); empty when none does
    speed_paths: ClassVar[Tuple[str, ...]] = ()
    #: config keys that choose how a trained network is evaluated, not how it is built (e.g. DGNet's
    #: ``eval_path``): ``main_linear.py`` takes them from the linear config; every other key is rebuilt as
    #: the checkpoint records it
    evaluation_keys: ClassVar[Tuple[str, ...]] = ()
    #: config keys added after runs were benchmarked, each with the value that leaves a run as it was before the
    #: key existed: at that value the key stays out of a run's fingerprint (``solo-sparse bench``), so finished
    #: rows are not retrained for a key that changes nothing in them
    neutral_defaults: ClassVar[Dict[str, Any]] = {}
    #: config keys whose null value means "the run's own seed" (the plugin's own random draws): the plugin resolves
    #: them at setup, and a run's fingerprint (``solo-sparse bench``) holds the seed the run trains with
    run_seed_keys: ClassVar[Tuple[str, ...]] = ()
    Config: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        """Capability values are checked when a plugin class is defined, not when a tool first asks."""
        super().__init_subclass__(**kwargs)
        where = f"plugin class {cls.__module__}.{cls.__qualname__}"
        bad = [f for f in cls.families if f not in FAMILIES]
        if bad or not isinstance(cls.families, tuple):
            raise TypeError(f"{where}: families={cls.families!r}; a tuple of {FAMILIES}")
        if cls.dense_gradients not in DENSE_GRADIENTS:
            raise TypeError(f"{where}: dense_gradients={cls.dense_gradients!r}; one of {DENSE_GRADIENTS}")
        inherited = cls.dense_gradient_share.__func__ is Plugin.dense_gradient_share.__func__
        if cls.dense_gradients == "updates" and inherited:
            raise TypeError(f"{where}: dense_gradients='updates' needs dense_gradient_share(config): the share "
                            "of steps that update masks")
        for flag in CAPABILITY_FLAGS:
            if not isinstance(getattr(cls, flag), bool):
                raise TypeError(f"{where}: {flag}={getattr(cls, flag)!r}; True or False")
        if len(cls.speed_paths) not in (0, 2):
            raise TypeError(f"{where}: speed_paths={cls.speed_paths!r}; empty or (fast, dense)")
        for key in ("refused_methods", "supported_methods", "evaluation_keys", "speed_paths", "run_seed_keys"):
            v = getattr(cls, key)
            if not isinstance(v, tuple) or not all(isinstance(s, str) for s in v):
                raise TypeError(f"{where}: {key}={v!r}; a tuple of strings")

    def __init__(self, config):
        self.config = config
        self.view: Optional[ModelView] = None
        self.step = 0          # optimizer steps done
        self.epoch = 0
        self.steps_per_epoch: Optional[int] = None
        self.total_steps: Optional[int] = None

    def steps_of(self, spec):
        """``spec`` (a :class:`~solo_sparse.core.config.StepSpec`, or a config whose ``resolve`` takes the same
        two numbers, e.g. a pruning window) in this run's optimizer steps."""
        return spec.resolve(self.steps_per_epoch, self.total_steps)

    # --------------------------------------------------------------- construction
    @classmethod
    def from_params(cls, params: Optional[Mapping[str, Any]] = None) -> "Plugin":
        return cls(build_config(cls.Config, params, cls.name))

    @classmethod
    def from_saved(cls, config: Mapping[str, Any]) -> "Plugin":
        """The plugin as a run's saved config describes it (``checkpoint["solo_sparse"][name]["config"]``);
        plugins whose keys changed fill what older checkpoints lack. Default: :meth:`from_params`."""
        return cls.from_params(dict(config))

    @classmethod
    def check_method(cls, method: str, family: str) -> None:
        """Refuse methods the plugin does not support, naming the supported families."""
        if method == "linear":
            raise ConfigError(f"plugin '{cls.name}' applies to pre-training methods, not to 'linear'")
        if method in cls.refused_methods or family not in cls.families:
            raise ConfigError(
                f"plugin '{cls.name}' does not support method '{method}' (family '{family}'); "
                f"it supports families: {', '.join(cls.families)}"
                + (f"; refused methods: {', '.join(cls.refused_methods)}" if cls.refused_methods else "")
            )
        if cls.supported_methods and method not in cls.supported_methods:
            raise ConfigError(f"plugin '{cls.name}' {cls.method_requirement}; method '{method}' is not supported "
                              f"(supported: {', '.join(cls.supported_methods)})")

    def setup(self, view: ModelView) -> None:
        """Construction hook: create masks/gates (persistent buffers/parameters) on the modules."""
        self.view = view

    def modules(self) -> Optional[torch.nn.Module]:
        """Modules the plugin owns (e.g. auxiliary heads): the binding registers them on the method
        as ``solo_sparse_modules.<plugin>`` so they train, move to the device and are checkpointed."""
        return None

    def training_step(self, model, batch, batch_idx: int):
        """Step drivers (``drives_step``): return the step's loss, or None to let the method run its
        own ``training_step``. Called after ``on_step_start``."""
        return None

    @classmethod
    def check_stack(cls, others: Sequence["Plugin"]) -> None:
        """Refuse combinations with the other plugins of a ``plugins: [...]`` list."""

    # --------------------------------------------------------------- training hooks
    def on_train_start(self) -> None: ...
    def on_step_start(self) -> None: ...
    def on_crop(self, branch: Branch) -> None: ...
    def extra_loss(self) -> Optional[torch.Tensor]:
        return None
    def after_backward(self) -> None: ...
    def after_optimizer_step(self, optimizer) -> None: ...
    def after_momentum_update(self) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_epoch_end(self, epoch: int) -> None: ...

    # --------------------------------------------------------------- state
    def extra_state(self) -> Dict[str, Any]:
        """Plugin state beyond module buffers (tensors and plain values only)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None: ...

    # --------------------------------------------------------------- describing itself
    @classmethod
    def eval_paths(cls) -> Tuple[str, ...]:
        """Evaluation paths of a rebuilt backbone (e.g. ``gated``/``dense``); the first is the default."""
        return ()

    @classmethod
    def rebuild_backbone(cls, net: torch.nn.Module, config: Mapping[str, Any],
                         path: Optional[str] = None) -> torch.nn.Module:
        """Convert a fresh backbone ``net`` in place as training did, from the plugin's saved config
        (``checkpoint["solo_sparse"][name]["config"]`` or a zoo entry's), routed to ``path`` (default:
        the plugin's evaluation path). Identity for plugins that do not rewrite the backbone."""
        return net

    @classmethod
    def route_backbone(cls, net: torch.nn.Module, config: Mapping[str, Any],
                       path: Optional[str] = None) -> Optional[str]:
        """Route a backbone already rebuilt by :meth:`rebuild_backbone` to evaluation path ``path`` (one of
        :meth:`eval_paths`; None: the configured one); returns the path's name, None for plugins without paths."""
        return None

    @classmethod
    def prepare_fast_path(cls, net: torch.nn.Module, size: int, progress: Optional[Callable[[str], None]] = None,
                          **options: Any) -> Optional[Dict[str, Any]]:
        """Before timing a backbone routed to the fast one of :attr:`speed_paths` at ``size`` px: attach what that
        path needs to run at batch 1 (e.g. a measured per-block execution plan; ``options`` are the plugin's,
        such as ``reps``, ``rebuild``). Returns a report of what was attached, or None when nothing is needed."""
        return None

    @classmethod
    def measure_backbone(cls, net: torch.nn.Module, X: torch.Tensor) -> Optional[Dict[str, Any]]:
        """Input-dependent cost of a rebuilt backbone on images ``X`` (N, 3, H, W), on the evaluation path it is
        routed to, or None where that cost is static (weight masks, a dense path: count it from the weights). At
        least ``network_macs_ratio`` (exact effective / dense MACs of the whole network, gates' own cost included)
        and ``gate_sparsity`` (mean share of gated work skipped); plugins add their own detail."""
        return None

    @classmethod
    def cost_depends_on_input(cls, net: torch.nn.Module) -> bool:
        """Whether the cost :meth:`measure_backbone` reports for a rebuilt backbone, routed as it is, depends on the
        images (a data-dependent gate: measure it on real ones); False where any input of the right shape gives
        the exact cost -- weight masks, a dense path, a gate that keeps the same channels for every input. Default:
        True for a plugin that rewrites the backbone (the safe answer for a gate), False otherwise."""
        return cls.rewrites_backbone

    @classmethod
    def plain_backbone(cls, net: torch.nn.Module) -> Optional[torch.nn.Module]:
        """A plain network (no plugin module, no per-input decision) computing a rebuilt backbone's outputs on
        the path it is routed to, where one exists -- e.g. a gate that keeps the same channels for every input is
        a narrower network -- so tools treat it as any static network (compact export, ``solo-sparse speed``);
        None (the default) where the routed backbone's work depends on its input."""
        return None

    @classmethod
    def deploy_backbone(cls, net: torch.nn.Module, config: Mapping[str, Any]) -> Dict[str, Any]:
        """Fold training-only reparametrisations of a rebuilt backbone into its weights, in place, for
        export (the zoo); returns the config that rebuilds the folded network. Identity by default."""
        return dict(config)

    @classmethod
    def window_overrides(cls, start: str, end: str, config: Any) -> Optional[Dict[str, Any]]:
        """The plugin's own keys (``{key: value}``, value None = null) that make a run with ``config`` (its
        validated Config) prune over the steps ``start`` .. ``end`` (each an int of steps, ``"Nep"`` or
        ``"P%"``), so that every sparse row of a benchmark suite prunes over the same window; None when the
        plugin has no schedule window (e.g. a fixed density from step 0)."""
        return None

    @classmethod
    def dense_gradient_share(cls, config: Mapping[str, Any]) -> float:
        """Share of optimizer steps that need the dense weight gradient of masked layers in a run with this saved
        config (training-cost accounting): 1 for ``dense_gradients="every"``, 0 for ``"never"``; a plugin that
        declares ``"updates"`` says how often its masks update (checked when the class is defined)."""
        return 1.0 if cls.dense_gradients == "every" else 0.0

    @classmethod
    def run_summary(cls, extra_state: Mapping[str, Any]) -> Dict[str, Any]:
        """Benchmark-row columns a trained run's saved plugin state answers (:meth:`extra_state` as
        checkpointed), e.g. ``{"trigger_step": 40}`` for a schedule started by an indicator; {} by default."""
        return {}

    def preview_backbone(self, net: torch.nn.Module) -> Optional[str]:
        """Apply to a fresh backbone ``net`` the static sparsity a run of this config ends with, as far as it is
        known before training (``solo-sparse flops CONFIG``: weight masks at the final density from the
        random-init magnitudes); returns what was applied, in words, or None (nothing static to show)."""
        return None

    @classmethod
    def stored_dense_encoders(cls, extra_state: Mapping[str, Any]) -> Tuple[str, ...]:
        """Encoders ("online"/"momentum") whose masks act in the forward only, their stored weights dense by
        design (SDCLR's pruned view, SyncCP's own-mask momentum encoder), as a run's saved plugin state
        (:meth:`extra_state`) says: a checkpoint's non-zero weights outside those masks are not a leak. () by
        default."""
        return ()

    @classmethod
    def evaluates_masked(cls, config: Mapping[str, Any]) -> bool:
        """Whether a run's online backbone is evaluated with its mask buffers applied (weight sparsity: yes;
        a plugin whose masks only damage a training branch evaluates the dense weights)."""
        return True

    @classmethod
    def commands(cls) -> Dict[str, Tuple[Callable, Callable]]:
        """CLI verbs the plugin contributes: ``{verb: (add_arguments(parser), run(args) -> int)}``."""
        return {}

    # --------------------------------------------------------------- evaluation (main_linear)
    @classmethod
    def backbone_variants(cls) -> Dict[str, Callable]:
        """Backbone builders to register in solo-learn's ``BaseMethod._BACKBONES``."""
        return {}

    def prepare_eval_backbone(self, backbone: torch.nn.Module) -> None:
        """Called by ``main_linear.py`` (with the plugin line) on the freshly built backbone."""

    def param_groups(self, base_lr: float) -> list:
        """Extra optimizer groups ``[{"name", "params": [...], "lr", ...}]``; their parameters are
        taken out of the method's own groups (e.g. gates with their own learning rate)."""
        return []

    def log(self, metrics: Dict[str, float]) -> None:
        if self.view is not None:
            self.view.log({f"{PREFIX}/{k}": float(v) for k, v in metrics.items()})


def check_patience(value: Any) -> int:
    """``solo_sparse.nonfinite_patience``: an int >= 0 (0: never stop on a non-finite loss)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{PREFIX}.nonfinite_patience={value!r}: expected an int >= 0 (consecutive steps with a "
                          f"non-finite loss before the run stops; 0: never stop, warn)")
    return value


class TrainingDiverged(FloatingPointError):
    """The training loss stayed non-finite for :attr:`PluginHost.nonfinite_patience` steps. Raised by
    :meth:`PluginHost.add_extra_loss` so that a diverged run stops there, the checkpoints written before kept,
    instead of training on NaN weights to the end and failing at evaluation."""


def _value(x: Optional[torch.Tensor]) -> str:
    if x is None:
        return "none"
    x = x.detach()
    return str(float(x)) if x.numel() == 1 else f"{int((~torch.isfinite(x)).sum())} non-finite of {x.numel()}"


def check_stack(plugins: Sequence[Plugin]) -> None:
    """The stacking rule: at most one step-driving plugin, and only with branch-independent ones."""
    drivers = [p.name for p in plugins if p.drives_step]
    if len(drivers) > 1:
        raise ConfigError(f"{PREFIX}.plugins: {drivers} each run the whole training step; combine at most one")
    if drivers:
        bad = [p.name for p in plugins if not p.drives_step and not p.branch_independent]
        if bad:
            raise ConfigError(f"{PREFIX}.plugins: '{drivers[0]}' forwards both views itself and cannot be combined "
                              f"with branch-dependent plugin(s) {bad}; only branch-independent (weight-sparsity) "
                              f"plugins stack with it (`solo-sparse plugins` marks them)")
    for p in plugins:
        p.check_stack([q for q in plugins if q is not p])


class PluginHost:
    """Drives one or more plugins through the hooks, counts steps, and owns their saved state."""

    def __init__(self, plugins: Sequence[Plugin], nonfinite_patience: int = 3):
        if not plugins:
            raise ValueError("PluginHost needs at least one plugin")
        self.nonfinite_patience = check_patience(nonfinite_patience)
        names = [p.name for p in plugins]
        if len(set(names)) != len(names):
            raise ConfigError(f"{PREFIX}.plugins lists a plugin twice: {names}")
        check_stack(plugins)
        self.plugins = list(plugins)
        self.view: Optional[ModelView] = None
        self._nonfinite: Optional[Dict[str, Any]] = None     # the first step of a run of non-finite losses
        #: the collapse watch on the method's online projector (:mod:`solo_sparse.core.watch`), None without one
        self.watch: Optional[EmbeddingWatch] = None

    def setup(self, view: ModelView) -> None:
        self.view = view
        for p in self.plugins:
            p.setup(view)
        if self.watch is not None:
            self.watch.detach()
        proj = view.groups.get("projector")
        # after the plugins' setup: a head a plugin deep-copies from the projector there carries no hook
        self.watch = EmbeddingWatch(proj.online, view.log) if proj is not None and proj.online is not None else None

    def set_schedule_info(self, steps_per_epoch: Optional[int], total_steps: Optional[int]) -> None:
        for p in self.plugins:
            p.steps_per_epoch, p.total_steps = steps_per_epoch, total_steps

    def on_train_start(self) -> None:
        for p in self.plugins:
            p.on_train_start()

    def on_step_start(self) -> None:
        for p in self.plugins:
            p.on_step_start()
        if self.watch is not None:
            self.watch.step_start()

    def on_crop(self, branch: Branch) -> None:
        if self.view is not None:
            self.view.branch = branch
        for p in self.plugins:
            p.on_crop(branch)

    def training_step(self, model, batch, batch_idx: int):
        """The loss of the one step-driving plugin, or None (the method's own step)."""
        for p in self.plugins:
            if p.drives_step:
                return p.training_step(model, batch, batch_idx)
        return None

    def extra_loss(self) -> Optional[torch.Tensor]:
        total = None
        for p in self.plugins:
            x = p.extra_loss()
            if x is not None:
                total = x if total is None else total + x
        return total

    #: consecutive steps with a non-finite loss before :meth:`add_extra_loss` stops the run (the section's
    #: ``solo_sparse.nonfinite_patience``; 0: never stop, warn once per run of such steps): under fp32 a NaN loss
    #: poisons the weights at its update, so the next losses are NaN too and the run stops two steps later; under
    #: fp16 AMP, GradScaler skips the update of a step whose loss overflowed once and training goes on
    nonfinite_patience: int = 3

    def add_extra_loss(self, out: Any) -> Any:
        """The step's output (a loss tensor, a mapping with ``"loss"``, or None) plus the plugins'
        :meth:`extra_loss`. Raises :class:`TrainingDiverged`, naming the plugins, the first non-finite step and both
        loss terms, once the loss has not been finite for :attr:`nonfinite_patience` consecutive steps (on any rank
        of a distributed run: the flag is reduced so that every rank stops; one device sync per step)."""
        extra = self.extra_loss()
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            if extra is not None and out is not None:
                raise ConfigError(f"{PREFIX}: the plugins add a loss term but the training step returned "
                                  f"{type(out).__name__} without a 'loss' tensor to add it to")
            return out                      # Lightning's "skip this batch", or manual optimisation's dict
        total = loss if extra is None else loss + extra
        self._check_finite(total, loss, extra)
        if extra is None:
            return out
        if isinstance(out, Mapping):
            out = dict(out)
            out["loss"] = total
            return out
        return total

    def _check_finite(self, total: torch.Tensor, loss: torch.Tensor, extra: Optional[torch.Tensor]) -> None:
        bad = (~torch.isfinite(total.detach())).any().float()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)      # every rank stops together (no rank left in a collective)
        p = self.plugins[0]
        if not bool(bad):
            self._nonfinite = None
            return
        if self._nonfinite is None:
            self._nonfinite = {"step": p.step, "epoch": p.epoch, "count": 0, "loss": _value(loss),
                               "extra": _value(extra)}
        first = self._nonfinite
        first["count"] += 1
        off = self.nonfinite_patience == 0
        if first["count"] < (3 if off else self.nonfinite_patience) or (off and first["count"] > 3):
            return
        names = ", ".join(f"'{q.name}'" for q in self.plugins)
        where = " (on another rank)" if bool(torch.isfinite(total.detach()).all()) else ""
        said = (f"{PREFIX}: the training loss is not finite since step {first['step']} (epoch {first['epoch']}), "
                f"{first['count']} steps in a row{where}, with plugin(s) {names}: at step {first['step']} the "
                f"method's loss {first['loss']}, the plugins' loss {first['extra']}.")
        if off:
            import warnings

            warnings.warn(f"{said} Training goes on ({PREFIX}.nonfinite_patience=0: never stop)", RuntimeWarning,
                          stacklevel=3)
            return
        raise TrainingDiverged(
            f"{said} Training stopped (checkpoints written before are kept; {PREFIX}.nonfinite_patience="
            f"{self.nonfinite_patience} steps; 0 never stops). Usual causes: a learning rate too high for the sparse "
            f"or gated network (optimizer.lr, or the plugin's gate_lr_scale where it has one), or a plugin setting "
            f"that lets activations grow without bound (`solo-sparse plugins` lists each plugin's keys)")

    def after_backward(self) -> None:
        for p in self.plugins:
            p.after_backward()

    def after_optimizer_step(self, optimizer) -> None:
        for p in self.plugins:
            p.step += 1
            p.after_optimizer_step(optimizer)

    def after_momentum_update(self) -> None:
        for p in self.plugins:
            p.after_momentum_update()

    def on_epoch_start(self, epoch: int) -> None:
        for p in self.plugins:
            p.epoch = epoch
            p.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int) -> None:
        for p in self.plugins:
            p.on_epoch_end(epoch)
        if self.watch is not None:
            self.watch.epoch_end()

    def param_groups(self, base_lr: float) -> list:
        out = []
        for p in self.plugins:
            out += p.param_groups(base_lr)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            p.name: {"config": config_to_state(p.config), "step": p.step, "epoch": p.epoch,
                     "extra": p.extra_state()}
            for p in self.plugins
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = set(state)
        mine = {p.name for p in self.plugins}
        if saved != mine:
            raise ConfigError(
                f"checkpoint holds solo-sparse state for plugin(s) {sorted(saved)} but this run uses {sorted(mine)}"
            )
        for p in self.plugins:
            s = state[p.name]
            now = config_to_state(p.config)
            was = dict(s.get("config", {}))
            if set(now) - set(was):     # saved before some keys existed: as the run trained (the plugin's from_saved)
                was = config_to_state(type(p).from_saved(was).config)
            if was != now:
                diff = sorted(k for k in now if was.get(k) != now[k])
                detail = ", ".join(f"{k}: saved {was.get(k)!r}, now {now[k]!r}" for k in diff)
                raise ConfigError(f"resuming plugin '{p.name}' with a different config ({detail})")
            p.step, p.epoch = int(s["step"]), int(s["epoch"])
            p.load_extra_state(s.get("extra", {}))

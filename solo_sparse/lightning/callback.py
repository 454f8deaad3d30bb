"""``Sparsify``: a Lightning callback that drives solo-sparse plugins on a LightningModule.

Where the hooks run (the solo-learn binding calls the same :class:`~solo_sparse.core.plugin.PluginHost` hooks at
the same points of a step, ``solo_sparse/binding/wrap.py``)::

    training_step start      host.on_step_start()        (the module's training_step, wrapped at setup)
    each backbone forward    host.on_crop(Branch(...))   (forward pre-hooks on the backbone and its twin)
    after the module's loss  host.extra_loss()           (added to the returned loss by the wrapper)
    on_before_optimizer_step host.after_backward()       (accumulated, unscaled gradients, before clipping)
    after the real step      host.after_optimizer_step() (a post-hook on each optimizer: masks on weights and
                                                          optimizer state, schedule updates; a step fp16 AMP's
                                                          GradScaler skipped is counted at on_train_batch_end,
                                                          as global_step counts it)
    after the EMA update     host.after_momentum_update()
    epoch start / end        host.on_epoch_start(e) / host.on_epoch_end(e)
    checkpoint save / load   checkpoint["solo_sparse"], ["solo_sparse_rng"], ["solo_sparse_host"]

**The momentum encoder.** Lightly's modules update it themselves (``update_momentum`` at the *start* of
``training_step``, before the momentum forward), solo-learn after the step. So the momentum masks are re-applied
both at the first momentum-backbone forward of every training step (a forward pre-hook: whatever EMA ran before
it, the momentum forward sees masked weights) and at ``on_train_batch_end`` (the encoder is sparse between steps).

**Which view is forwarded.** Branch-dependent plugins (gates, per-branch masks: ``branch_independent`` False)
need the crop index of every backbone forward. The binding knows it when the module says how:
``crop_order="calls"`` — each backbone call of a training step is one view, in view order (the online backbone
called once per view; the momentum backbone once per view or not at all; checked at every step), or
``crop_order="context"`` — the module wraps each forward in ``with sparsify.crop(i):``. Without either, such
plugins are refused before the first step.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch.nn as nn

import solo_sparse.binding.host as _host
from solo_sparse.core.config import PREFIX, ConfigError, _to_plain
from solo_sparse.core.plugin import Branch, ModelView, ModuleGroup, PluginHost
from solo_sparse.core.registry import build_plugins, host_options

_BASES: List[type] = []
try:   # the unified package (what solo-learn uses)
    from lightning.pytorch import Callback as _LCallback

    _BASES.append(_LCallback)
except ImportError:  # pragma: no cover - depends on the environment
    pass
try:   # the standalone package (what Lightly's examples use): one Sparsify works with either Trainer
    from pytorch_lightning import Callback as _PLCallback

    if _PLCallback not in _BASES:
        _BASES.append(_PLCallback)
except ImportError:  # pragma: no cover
    pass
if not _BASES:  # pragma: no cover
    raise ImportError("solo_sparse.lightning needs Lightning: pip install 'solo-sparse[lightly]' "
                      "(or lightning / pytorch_lightning)")

#: how the module tells the binding which view each backbone forward is: None (it does not), "calls", "context"
CROP_ORDERS = (None, "calls", "context")
#: attribute names tried when ``backbone=`` is not given (exactly one must exist)
BACKBONE_NAMES = ("backbone", "encoder")
#: momentum twins tried for a backbone attribute (Lightly: ``backbone_momentum``; solo-learn: ``momentum_backbone``)
MOMENTUM_PATTERNS = ("{}_momentum", "momentum_{}", "{}_ema", "ema_{}")
#: projector / predictor attributes tried (Lightly's heads first), each with the momentum patterns
PROJECTOR_NAMES = ("projection_head", "projector")
PREDICTOR_NAMES = ("prediction_head", "predictor")
#: the children of a torchvision ResNet, in order (a ``Sequential(*list(resnet.children())[:-1])`` backbone, as
#: Lightly's examples build it, is renamed to these in checkpoints' solo-learn naming)
RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
#: one Sparsify per module (a weak map: modules are not kept alive by it)
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, Sparsify]" = weakref.WeakKeyDictionary()


def _get(module: nn.Module, path: str) -> Optional[Any]:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _same_structure(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(x.shape == y.shape for x, y in zip(pa, pb))


def resnet_child_names(backbone: nn.Module) -> Dict[str, str]:
    """``{"0": "conv1", "1": "bn1", "4": "layer1", ...}`` when ``backbone`` is a ``Sequential`` of a torchvision
    ResNet's children (stem, four stages, pooling; ``fc`` optional), else ``{}``."""
    if not isinstance(backbone, nn.Sequential):
        return {}
    kids = list(backbone.children())
    if len(kids) not in (9, 10):
        return {}
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Module, nn.Module, nn.Sequential, nn.Sequential, nn.Sequential,
             nn.Sequential, nn.Module, nn.Module)
    if not all(isinstance(k, t) for k, t in zip(kids, kinds)):
        return {}
    return {str(i): RESNET_CHILDREN[i] for i in range(len(kids))}


class Sparsify(*_BASES):
    """Drive solo-sparse plugin(s) on a LightningModule.

    ``Sparsify("gmp", final_density=0.1)`` — one plugin and its keys (the keys of ``solo_sparse:`` in a solo-learn
    YAML; ``solo-sparse plugins`` lists them); ``Sparsify(section={"plugins": ["gmp", "sdclr"], "gmp": {...}})`` —
    the stacked form. Where the module keeps its encoders: ``backbone`` / ``momentum_backbone`` (attribute names or
    dotted paths; default: discovered — ``backbone`` or ``encoder``, and its twin ``<name>_momentum`` /
    ``momentum_<name>`` / ``<name>_ema`` — refused where absent or ambiguous), ``projector`` /
    ``momentum_projector`` / ``predictor`` (for ``include: [projector, predictor]``). ``crop_order``: see the
    module docstring. ``views``: large views per step (gating plugins need 2). ``method``: the method's name for
    plugins that support only some (solo-learn's names: simclr, byol, mocov2plus, ...; default: the module's class
    name in lower case). ``input_size``: training crop side in pixels, when known (map-size checks of gates).
    """

    def __init__(self, plugin: Optional[str] = None, *, section: Optional[Mapping[str, Any]] = None,
                 backbone: Optional[str] = None, momentum_backbone: Optional[str] = None,
                 projector: Optional[str] = None, momentum_projector: Optional[str] = None,
                 predictor: Optional[str] = None, crop_order: Optional[str] = None, views: int = 2,
                 method: Optional[str] = None, input_size: Optional[int] = None, **params):
        super().__init__()
        if (plugin is None) == (section is None):
            raise ConfigError("Sparsify: name one plugin (Sparsify('gmp', final_density=0.1)) or pass "
                              "section={'plugins': [...], ...}, not both")
        if section is not None and params:
            raise ConfigError(f"Sparsify: with section=..., plugin keys go inside it; got {sorted(params)}")
        if crop_order not in CROP_ORDERS:
            raise ConfigError(f"Sparsify: crop_order={crop_order!r}; allowed: None (the module does not say), "
                              "'calls' (one backbone call per view, in view order), 'context' (the module uses "
                              "`with sparsify.crop(i):`)")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"Sparsify: views={views!r}; expected an int >= 1 (large views per step)")
        self.section: Dict[str, Any] = dict(_to_plain(section)) if section is not None else \
            {"plugin": plugin, **params}
        self.plugins = build_plugins(self.section)      # validation now, before any module exists
        self.names = {"backbone": backbone, "momentum_backbone": momentum_backbone, "projector": projector,
                      "momentum_projector": momentum_projector, "predictor": predictor}
        self.crop_order, self.views, self.method, self.input_size = crop_order, views, method, input_size
        self.host: Optional[PluginHost] = None
        self.module: Optional[nn.Module] = None
        self.where: Dict[str, Any] = {}
        self._log = _host.LogQueue()
        self._explicit: Optional[int] = None
        self._in_step = False
        self._calls = {"online": 0, "momentum": 0}
        self._momentum_masked = False
        self._resume_rng = None
        self._step_hooks: List[Any] = []
        self._pending_steps: List[Any] = []          # optimizer steps announced but not (yet) run
        self._steps_seen = 0

    # ------------------------------------------------------------------ reading
    @property
    def metrics(self) -> Dict[str, float]:
        """Every plugin metric's latest value."""
        return self._log.latest

    @property
    def events(self) -> int:
        return self._log.events

    # ------------------------------------------------------------------ the crop a module forwards
    @contextlib.contextmanager
    def crop(self, index: int) -> Iterator[None]:
        """Inside this block every backbone forward of the training step is view ``index`` (0, 1 = the large
        views; the encoder is the backbone that is called)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ConfigError(f"Sparsify.crop({index!r}): expected a view index >= 0")
        prev, self._explicit = self._explicit, index
        try:
            yield
        finally:
            self._explicit = prev

    def _pre_hook(self, encoder: str):
        def hook(module, args):
            host = self.host
            if host is None:
                return None
            if not self._in_step or not module.training:
                host.on_crop(Branch(crop=0, encoder=encoder, phase="eval"))
                return None
            if encoder == "momentum" and not self._momentum_masked:
                # whatever EMA the module ran before this forward (Lightly: update_momentum at the start of
                # training_step), the momentum forward sees masked weights
                self._momentum_masked = True
                host.after_momentum_update()
            n = self._calls[encoder]
            self._calls[encoder] = n + 1
            if self._explicit is not None:
                crop = self._explicit
            elif self.crop_order == "context":
                raise ConfigError(f"Sparsify(crop_order='context'): the {encoder} backbone was called outside "
                                  "`with sparsify.crop(i):` in a training step; wrap every view's forward")
            else:
                crop = n
            host.on_crop(Branch(crop=crop, encoder=encoder, large=crop < self.views))
            return None
        return hook

    def _check_calls(self) -> None:
        """``crop_order="calls"``: every training step called the online backbone once per view, and the momentum
        backbone once per view or not at all."""
        on, mo = self._calls["online"], self._calls["momentum"]
        if on != self.views or mo not in (0, self.views):
            raise ConfigError(
                f"Sparsify(crop_order='calls'): a training step called the online backbone {on} time(s) and the "
                f"momentum backbone {mo} time(s) for views={self.views}; 'calls' needs one call per view in view "
                "order (a module that concatenates views or forwards them asymmetrically wraps each forward in "
                "`with sparsify.crop(i):` and passes crop_order='context')")

    # ------------------------------------------------------------------ finding the encoders
    def _find(self, module: nn.Module) -> Tuple[Dict[str, ModuleGroup], Dict[str, str]]:
        cls = type(module).__name__
        given = self.names["backbone"]
        if given is not None:
            bb = _get(module, given)
            if not isinstance(bb, nn.Module):
                raise ConfigError(f"Sparsify: {cls} has no module '{given}' (backbone='{given}'); name the attribute "
                                  "that holds the backbone")
            bname = given
        else:
            found = [n for n in BACKBONE_NAMES if isinstance(getattr(module, n, None), nn.Module)]
            if not found:
                raise ConfigError(f"Sparsify: {cls} has no backbone attribute ({' or '.join(BACKBONE_NAMES)}); "
                                  "name it with Sparsify(..., backbone='<attribute>')")
            if len(found) > 1:
                raise ConfigError(f"Sparsify: {cls} has both {' and '.join(found)}: which is the backbone is "
                                  "ambiguous; name it with Sparsify(..., backbone='<attribute>')")
            bname, bb = found[0], getattr(module, found[0])
        prefixes = {"backbone": bname}
        mname, mom = self._twin(module, bname, "momentum_backbone", cls)
        if mom is not None:
            if mom is bb or not _same_structure(bb, mom):
                raise ConfigError(f"Sparsify: {cls}.{mname} is not a copy of {cls}.{bname} (its parameters differ "
                                  "in number or shape): a momentum backbone must be a twin of the backbone")
            prefixes["momentum_backbone"] = mname
        groups = {"backbone": ModuleGroup("backbone", bb, mom)}
        for canon, names in (("projector", PROJECTOR_NAMES), ("predictor", PREDICTOR_NAMES)):
            pname, proj = self._attr(module, self.names[canon], names, canon, cls)
            if proj is None:
                continue
            prefixes[canon] = pname
            twin = None
            if canon == "projector":
                tname, twin = self._twin(module, pname, "momentum_projector", cls)
                if twin is not None and not _same_structure(proj, twin):
                    twin = None
                if twin is not None:
                    prefixes["momentum_projector"] = tname
            groups[canon] = ModuleGroup(canon, proj, twin)
        return groups, prefixes

    def _attr(self, module, given, names, what, cls) -> Tuple[Optional[str], Optional[nn.Module]]:
        if given is not None:
            m = _get(module, given)
            if not isinstance(m, nn.Module):
                raise ConfigError(f"Sparsify: {cls} has no module '{given}' ({what}='{given}')")
            return given, m
        found = [n for n in names if isinstance(getattr(module, n, None), nn.Module)]
        if len(found) > 1:
            raise ConfigError(f"Sparsify: {cls} has both {' and '.join(found)}: name the {what} with "
                              f"Sparsify(..., {what}='<attribute>')")
        return (found[0], getattr(module, found[0])) if found else (None, None)

    def _twin(self, module, online_name: str, key: str, cls) -> Tuple[Optional[str], Optional[nn.Module]]:
        given = self.names[key]
        if given is not None:
            m = _get(module, given)
            if not isinstance(m, nn.Module):
                raise ConfigError(f"Sparsify: {cls} has no module '{given}' ({key}='{given}')")
            return given, m
        head, _, last = online_name.rpartition(".")
        cands = [(head + "." if head else "") + p.format(last) for p in MOMENTUM_PATTERNS]
        found = [c for c in cands if isinstance(_get(module, c), nn.Module)]
        if len(found) > 1:
            raise ConfigError(f"Sparsify: {cls} has {' and '.join(found)}: which is the momentum twin of "
                              f"'{online_name}' is ambiguous; name it with Sparsify(..., {key}='<attribute>')")
        return (found[0], _get(module, found[0])) if found else (None, None)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        if self.host is not None:
            if pl_module is not self.module:
                raise ConfigError(f"Sparsify drives one module; it already drives a {type(self.module).__name__} "
                                  f"(make a new Sparsify for this {type(pl_module).__name__})")
            return
        cls = type(pl_module).__name__
        mine = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, Sparsify)]
        if len(mine) > 1:
            raise ConfigError(f"Sparsify: {len(mine)} Sparsify callbacks on one Trainer; stack plugins in one "
                              "callback instead: Sparsify(section={'plugins': [a, b], a: {...}, b: {...}})")
        other = _ATTACHED.get(pl_module)
        if other is not None and other is not self:
            raise ConfigError(f"Sparsify: this {cls} is already driven by another Sparsify callback; stack plugins "
                              "in one callback instead: Sparsify(section={'plugins': [a, b], ...})")
        groups, prefixes = self._find(pl_module)
        family = "momentum" if groups["backbone"].momentum is not None else "shared"
        method = self.method or cls.lower()
        strategy = getattr(trainer, "strategy", None)
        ddp = getattr(strategy, "_ddp_kwargs", None)
        no_unused = ddp is not None and not ddp.get("find_unused_parameters", False)
        for p in self.plugins:
            if p.drives_step:
                raise ConfigError(f"Sparsify: plugin '{p.name}' runs the whole training step with solo-learn's "
                                  "method objects (its objectives at every depth); the Lightning binding cannot "
                                  "drive it: train it through solo-learn (its '- solo_sparse:' line)")
            if family == "shared" and "shared" not in p.families:
                raise ConfigError(f"Sparsify: plugin '{p.name}' needs a momentum encoder, and {cls} has none (no "
                                  f"{' / '.join(x.format(prefixes['backbone']) for x in MOMENTUM_PATTERNS)}); "
                                  "name it with Sparsify(..., momentum_backbone='<attribute>')")
        _host.check_plugins(self.plugins, method, family, no_unused,
                            where="a DDP strategy without find_unused_parameters", who="Lightning")
        host = PluginHost(self.plugins, **host_options(self.section))
        view = ModelView(groups, family, method=method, log=self._log, num_large_crops=self.views,
                         classifier=None, input_size=self.input_size)
        view.model = pl_module
        host.setup(view)
        if self.crop_order is None:
            dep = [p.name for p in self.plugins if not p.branch_independent]
            if dep:
                raise ConfigError(
                    f"Sparsify: plugin '{dep[0]}' depends on which view each backbone forward is, and {cls} does "
                    "not say: pass crop_order='calls' (the module calls the backbone once per view, in view order) "
                    "or crop_order='context' (it wraps each view's forward in `with sparsify.crop(i):`)")
        owned = {p.name: p.modules() for p in self.plugins}
        owned = {k: v for k, v in owned.items() if v is not None}
        if owned:   # aux heads: trained, moved to the device and checkpointed with the module
            pl_module.add_module("solo_sparse_modules", nn.ModuleDict(owned))
        groups["backbone"].online.register_forward_pre_hook(self._pre_hook("online"))
        if groups["backbone"].momentum is not None:
            groups["backbone"].momentum.register_forward_pre_hook(self._pre_hook("momentum"))
        self._wrap_training_step(pl_module)
        self.where = {"host": "lightning", "module": cls, "method": method, "family": family,
                      "prefixes": prefixes, "backbone_names": resnet_child_names(groups["backbone"].online)}
        self.host, self.module = host, pl_module
        _ATTACHED[pl_module] = self

    def _wrap_training_step(self, pl_module) -> None:
        inner = pl_module.training_step

        @functools.wraps(inner)
        def training_step(*args, **kwargs):
            host = self.host
            self._calls = {"online": 0, "momentum": 0}
            self._momentum_masked = False
            self._in_step = True
            host.on_step_start()
            try:
                out = inner(*args, **kwargs)
            finally:
                self._in_step = False
            if self.crop_order == "calls":
                self._check_calls()
            return host.add_extra_loss(out)   # raises TrainingDiverged on a non-finite loss

        pl_module.training_step = training_step   # an instance attribute: the class is untouched

    def on_fit_start(self, trainer, pl_module) -> None:
        # after configure_optimizers, before optimizer states are restored on resume
        self._install_param_groups(trainer)
        for h in self._step_hooks:
            h.remove()
        self._pending_steps = []
        self._step_hooks = [opt.register_step_post_hook(lambda o, a, k: self._after_step(o))
                            for opt in trainer.optimizers]

    def _after_step(self, optimizer) -> None:
        self._pending_steps = [o for o in self._pending_steps if o is not optimizer]
        self.host.after_optimizer_step(optimizer)

    def _install_param_groups(self, trainer) -> None:
        probe = [g for g in self.host.param_groups(1.0) if g["params"]]
        if not probe:
            return
        ids = {id(p) for g in probe for p in g["params"]}
        opts = [o for o in trainer.optimizers if any(id(p) in ids for g in o.param_groups for p in g["params"])]
        if len(opts) != 1:
            raise ConfigError(f"Sparsify: plugin parameters (group '{probe[0].get('name')}') are in {len(opts)} "
                              "optimizers; configure_optimizers must put them in exactly one (e.g. self.parameters())")
        opt = opts[0]
        for g in opt.param_groups:   # the user already made the plugin's groups: keep them
            if {id(p) for p in g["params"]} == {id(p) for p in probe[0]["params"]}:
                return
        base = opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"])
        extra = [g for g in self.host.param_groups(base) if g["params"]]
        scheds = [c.scheduler for c in getattr(trainer, "lr_scheduler_configs", []) if c.scheduler.optimizer is opt]
        for s in scheds:
            if not hasattr(s, "base_lrs") or type(s).__name__ in ("OneCycleLR", "CyclicLR", "SequentialLR",
                                                                  "ChainedScheduler", "ReduceLROnPlateau"):
                raise ConfigError(f"Sparsify: plugin '{self.plugins[0].name}' trains parameters in an optimizer group "
                                  f"of their own, and {type(s).__name__} keeps per-group state the binding cannot "
                                  "extend; use a LambdaLR/CosineAnnealingLR-style scheduler, or add the group "
                                  "yourself in configure_optimizers (sparsify.host.param_groups(lr))")
        for g in opt.param_groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        for g in extra:
            opt.add_param_group(dict(g))
            opt.param_groups[-1].setdefault("initial_lr", opt.param_groups[-1]["lr"])
            for s in scheds:
                s.base_lrs.append(opt.param_groups[-1]["initial_lr"])
                if hasattr(s, "lr_lambdas"):
                    s.lr_lambdas.append(s.lr_lambdas[0])
                if getattr(s, "_last_lr", None) is not None:
                    s._last_lr.append(opt.param_groups[-1]["lr"])

    def on_train_start(self, trainer, pl_module) -> None:
        self.host.set_schedule_info(*_host.schedule_info(trainer))
        self.host.on_train_start()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._resume_rng is not None:
            # Lightning 2.1, resuming at an epoch boundary, builds the train iterator twice; the random state is
            # set again here so the resumed epoch's iterator draws what the uninterrupted run drew
            _host.set_rng_state(self._resume_rng)
            self._resume_rng = None
        self.host.on_epoch_start(trainer.current_epoch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.host.after_backward()
        self._pending_steps.append(optimizer)   # cleared by the optimizer's post-hook when the step really runs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # an optimizer that never stepped: fp16 AMP's GradScaler skipped it (non-finite gradients). The step still
        # counts, as Lightning's global_step and the solo-learn binding (after LightningModule.optimizer_step) count
        # it, so plugin schedules stay on the trainer's steps; the masks go back on unchanged weights
        pending, self._pending_steps = self._pending_steps, []
        for opt in pending:
            self.host.after_optimizer_step(opt)
        if self.host.view.family == "momentum":
            self.host.after_momentum_update()
        self._log.flush(pl_module, True, lambda: getattr(pl_module, "_trainer", None) is not None)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.host.on_epoch_end(trainer.current_epoch)
        self._log.flush(pl_module, False, lambda: getattr(pl_module, "_trainer", None) is not None)

    def teardown(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        for h in self._step_hooks:
            h.remove()
        self._step_hooks = []

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.host is not None:
            _host.save_state(self.host, checkpoint, self.where)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.host is None:
            raise ConfigError("Sparsify: a checkpoint is loaded before the callback was set up")
        self._resume_rng = _host.load_state(self.host, checkpoint)


def crop(module: nn.Module, index: int):
    """``with crop(self, i):`` inside a module's ``training_step``: the backbone forwards in the block are view
    ``i`` for the :class:`Sparsify` that drives ``module`` (``crop_order="context"``); a no-op when none does, so the
    module also trains without the callback."""
    sp = _ATTACHED.get(module)
    return sp.crop(index) if sp is not None else contextlib.nullcontext()


def plugin_section(cfg) -> Optional[Dict[str, Any]]:
    """The ``solo_sparse:`` section of a composed solo-learn config, or None."""
    section = cfg.get(PREFIX, None) if hasattr(cfg, "get") else None
    return dict(_to_plain(section)) if section else None


__all__ = ["BACKBONE_NAMES", "CROP_ORDERS", "MOMENTUM_PATTERNS", "Sparsify", "crop", "plugin_section",
           "resnet_child_names"]


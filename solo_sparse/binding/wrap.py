"""Wrapping a solo-learn method class: :func:`wrap` turns it into a subclass that drives solo-sparse
plugins through the :class:`~solo_sparse.core.plugin.PluginHost` hooks.

Hook placement in a solo-learn method (the README's \"How it works\" says why each is there):
``base_training_step`` / ``multicrop_forward`` / ``_shared_step_momentum`` → ``on_crop`` with the
crop index (large crops in order, then small crops; the momentum encoder per large crop);
``on_before_optimizer_step`` (once per optimizer step, accumulated unscaled gradients, before clipping)
→ gradient scores, mask gradients; ``optimizer_step`` (after the real step) → masks on
weights and optimizer state, schedule updates; ``on_train_batch_end`` (after solo-learn's EMA
update) → re-mask the momentum encoder; checkpoint hooks → ``checkpoint["solo_sparse"]``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Type

try:
    from solo.methods.base import BaseMethod, BaseMomentumMethod
except ImportError as e:  # pragma: no cover - exercised only without solo-learn
    raise ImportError(
        "solo_sparse.binding.wrap needs solo-learn (1.0.6): install it as its README says "
        "(e.g. pip install from a clone of github.com/vturrisi/solo-learn); the engine "
        "(import solo_sparse) works without it"
    ) from e

import solo_sparse.binding.host as _host
from solo_sparse.binding.host import CKPT_KEY, RNG_KEY, rng_state, set_rng_state
from solo_sparse.core.config import PREFIX, ConfigError, _to_plain
from solo_sparse.core.plugin import Branch, ModelView, ModuleGroup, Plugin, PluginHost
from solo_sparse.core.registry import build_plugins, host_options, plugin_names

#: solo-learn's current EMA coefficient (``MomentumUpdater.cur_tau``), which solo-learn does not checkpoint: without
#: it the first EMA update after a resume uses ``base_tau`` and the run departs from the uninterrupted one
TAU_KEY = "solo_sparse_tau"
__all__ = ["CKPT_KEY", "RNG_KEY", "TAU_KEY", "check_plugins", "make_view", "method_family", "rng_state",
           "set_rng_state", "unwrap", "wrap"]


def method_family(method_cls: type) -> str:
    return "momentum" if issubclass(method_cls, BaseMomentumMethod) else "shared"


def check_plugins(plugins: Sequence[Plugin], method: str, method_cls: type, strategy: Any) -> None:
    _host.check_plugins(plugins, method, method_family(method_cls), str(strategy) == "ddp")


# ----------------------------------------------------------------------------------------- view
def make_view(model: "BaseMethod") -> ModelView:
    groups = {"backbone": ModuleGroup("backbone", model.backbone, getattr(model, "momentum_backbone", None))}
    for g in ("projector", "predictor"):
        mod = getattr(model, g, None)
        if mod is not None:
            groups[g] = ModuleGroup(g, mod, getattr(model, f"momentum_{g}", None))
    cfg = model.cfg
    try:
        size = int(cfg.augmentations[0].crop_size)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        size = None
    view = ModelView(groups, method_family(type(model)), method=str(cfg.method),
                     log=model._ss_log, num_large_crops=model.num_large_crops,
                     classifier=getattr(model, "classifier", None), input_size=size,
                     method_kwargs=_to_plain(cfg.get("method_kwargs", None)) or {},
                     batch_size=cfg.get("optimizer", {}).get("batch_size", None))
    view.model = model
    return view


# ----------------------------------------------------------------------------------------- wrapper
class _SoloSparseMixin:
    """Mixed in before a solo-learn method class by :func:`wrap`."""

    _ss_base: type
    _ss_bound: Optional[Dict[str, Any]] = None   # section bound at wrap() time (Python use)

    def __init__(self, cfg, *args, **kwargs):
        section = self._ss_section(cfg)
        plugins = build_plugins(section)           # validation before anything is built
        check_plugins(plugins, str(cfg.method), self._ss_base, cfg.get("strategy", None))
        super().__init__(cfg, *args, **kwargs)
        self._ss_log = _host.LogQueue()
        self._ss_crop = 0
        self._ss_mcrop = 0
        self._ss_mom_crop = 0
        self._ss_in_train = False
        self.solo_sparse = PluginHost(plugins, **host_options(section))
        self.solo_sparse.setup(make_view(self))
        owned = {p.name: p.modules() for p in plugins}
        owned = {k: v for k, v in owned.items() if v is not None}
        if owned:   # aux heads etc.: trained, moved to the device and checkpointed with the method
            import torch.nn as nn

            self.solo_sparse_modules = nn.ModuleDict(owned)

    @classmethod
    def _ss_section(cls, cfg) -> Dict[str, Any]:
        cfg_section = _to_plain(cfg.get(PREFIX, None)) if hasattr(cfg, "get") else None
        if cls._ss_bound is None:
            if not cfg_section:
                raise ConfigError(f"{cls.__name__} needs a '{PREFIX}:' section in the config")
            return dict(cfg_section)
        bound = dict(cls._ss_bound)
        if cfg_section:
            if plugin_names(cfg_section) != plugin_names(bound):
                raise ConfigError(f"config asks for {PREFIX} plugin(s) {plugin_names(cfg_section)} but the class "
                                  f"was wrapped with {plugin_names(bound)}")
            merged = dict(cfg_section)
            merged.update(bound)   # explicit wrap() parameters win
            return merged
        return bound

    @property
    def learnable_params(self):
        """solo-learn's groups, minus the parameters that plugins put in groups of their own."""
        groups = super().learnable_params
        host = getattr(self, "solo_sparse", None)
        extra = host.param_groups(self.lr) if host is not None else []
        return _host.split_param_groups(groups, extra)

    # ------------------------------------------------------------------ logging
    @property
    def solo_sparse_metrics(self) -> Dict[str, float]:
        """Every plugin metric's latest value."""
        return self._ss_log.latest

    @property
    def solo_sparse_events(self) -> int:
        """Number of times plugins logged (mask updates, CSI checks, epoch ends)."""
        return self._ss_log.events

    def _ss_flush(self, on_step: bool) -> None:
        self._ss_log.flush(self, on_step, lambda: getattr(self, "_trainer", None) is not None)

    # ------------------------------------------------------------------ crops / branches
    def training_step(self, batch, batch_idx):
        self._ss_crop = self._ss_mcrop = self._ss_mom_crop = 0
        self._ss_in_train = True
        self.solo_sparse.view.batch = (batch[0], batch[-1])
        self.solo_sparse.on_step_start()
        try:
            out = self.solo_sparse.training_step(self, batch, batch_idx)   # a step-driving plugin, or None
            if out is None:
                out = super().training_step(batch, batch_idx)
        finally:
            self._ss_in_train = False
        return self.solo_sparse.add_extra_loss(out)   # raises TrainingDiverged on a non-finite loss

    def base_training_step(self, X, targets):
        self.solo_sparse.on_crop(Branch(crop=self._ss_crop, encoder="online", large=True))
        self._ss_crop += 1
        return super().base_training_step(X, targets)

    def multicrop_forward(self, X):
        self.solo_sparse.on_crop(Branch(crop=self.num_large_crops + self._ss_mcrop, encoder="online", large=False))
        self._ss_mcrop += 1
        return super().multicrop_forward(X)

    def _shared_step_momentum(self, X, targets):
        if self._ss_in_train:
            self.solo_sparse.on_crop(Branch(crop=self._ss_mom_crop, encoder="momentum", large=True))
            self._ss_mom_crop += 1
        else:
            self.solo_sparse.on_crop(Branch(crop=0, encoder="momentum", phase="eval"))
        return super()._shared_step_momentum(X, targets)

    def validation_step(self, batch, batch_idx, *args, **kwargs):
        self.solo_sparse.on_crop(Branch(crop=0, encoder="online", phase="eval"))
        return super().validation_step(batch, batch_idx, *args, **kwargs)

    # ------------------------------------------------------------------ step hooks
    def on_before_optimizer_step(self, optimizer):
        # once per optimizer step, on the accumulated and (under AMP) unscaled gradient, before
        # gradient clipping and the step: gradient scores are updated and gradients masked here
        super().on_before_optimizer_step(optimizer)
        self.solo_sparse.after_backward()

    def optimizer_step(self, *args, **kwargs):
        out = super().optimizer_step(*args, **kwargs)
        optimizer = kwargs.get("optimizer", args[2] if len(args) > 2 else None)
        self.solo_sparse.after_optimizer_step(optimizer)
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)   # solo-learn's EMA update happens here
        if self.solo_sparse.view.family == "momentum":
            self.solo_sparse.after_momentum_update()
        self._ss_flush(on_step=True)

    def on_train_start(self):
        super().on_train_start()
        self.solo_sparse.set_schedule_info(*_host.schedule_info(self.trainer))
        self.solo_sparse.on_train_start()   # its metrics are logged at the first batch end

    def on_train_epoch_start(self):
        pending = getattr(self, "_ss_resume_rng", None)
        if pending is not None:
            # Lightning 2.1, resuming at an epoch boundary, builds the train iterator twice (once in
            # setup_data, again when the epoch starts) and the second one is used: the random state is set
            # again here so that the iterator of the resumed epoch draws what the uninterrupted run drew
            set_rng_state(pending)
            self._ss_resume_rng = None
        super().on_train_epoch_start()
        self.solo_sparse.on_epoch_start(self.current_epoch)

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self.solo_sparse.on_epoch_end(self.current_epoch)
        self._ss_flush(on_step=False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        _host.save_state(self.solo_sparse, checkpoint)
        updater = getattr(self, "momentum_updater", None)
        if updater is not None:
            checkpoint[TAU_KEY] = float(updater.cur_tau)

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        rng = _host.load_state(self.solo_sparse, checkpoint)
        if rng is not None:
            self._ss_resume_rng = rng     # set again when the resumed epoch starts
        updater = getattr(self, "momentum_updater", None)
        if updater is not None and TAU_KEY in checkpoint:
            updater.cur_tau = float(checkpoint[TAU_KEY])


def unwrap(method_cls: type) -> type:
    return getattr(method_cls, "_ss_base", method_cls)


def wrap(method_cls: Type["BaseMethod"], plugin: Optional[str] = None, **params) -> type:
    """A subclass of ``method_cls`` driven by solo-sparse plugin(s).

    ``wrap(BYOL, "gmp", final_density=0.2)`` binds the plugin and its parameters; ``wrap(BYOL)``
    reads them from ``cfg.solo_sparse`` when the class is instantiated (the Hydra path).
    """
    base = unwrap(method_cls)
    if not (isinstance(base, type) and issubclass(base, BaseMethod)):
        raise TypeError(f"wrap() expects a solo-learn method class, got {method_cls!r}")
    bound = None
    if plugin is not None:
        bound = {"plugin": plugin, **params}
        build_plugins(bound)  # fail now, not at construction
    elif params:
        raise TypeError("wrap(): parameters need a plugin name")
    name = "SoloSparse" + base.__name__
    return type(name, (_SoloSparseMixin, base), {"_ss_base": base, "_ss_bound": bound,
                                                 "__module__": __name__, "__doc__": base.__doc__})

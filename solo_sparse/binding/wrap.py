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

import math
from typing import Any, Dict, Optional, Sequence, Type

try:
    from solo.methods.base import BaseMethod, BaseMomentumMethod
except ImportError as e:  # pragma: no cover - exercised only without solo-learn
    raise ImportError(
        "solo_sparse.binding.wrap needs solo-learn (1.0.6): install it as its README says "
        "(e.g. pip install from a clone of github.com/vturrisi/solo-learn); the engine "
        "(import solo_sparse) works without it"
    ) from e

from solo_sparse.core.config import PREFIX, ConfigError, _to_plain
from solo_sparse.core.plugin import Branch, ModelView, ModuleGroup, Plugin, PluginHost
from solo_sparse.core.registry import build_plugins, plugin_names

CKPT_KEY = "solo_sparse"
#: the random state at the checkpoint (torch, CUDA, numpy, python): restored on resume, so a resumed run draws the
#: same data order, worker seeds and augmentations as the uninterrupted one (Lightning 2.1 saves none of it)
RNG_KEY = "solo_sparse_rng"
#: solo-learn's current EMA coefficient (``MomentumUpdater.cur_tau``), which solo-learn does not checkpoint: without
#: it the first EMA update after a resume uses ``base_tau`` and the run departs from the uninterrupted one
TAU_KEY = "solo_sparse_tau"


def rng_state() -> Dict[str, Any]:
    """Every global random state, as tensors and plain values (loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                           "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                                     "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def method_family(method_cls: type) -> str:
    return "momentum" if issubclass(method_cls, BaseMomentumMethod) else "shared"


def check_plugins(plugins: Sequence[Plugin], method: str, method_cls: type, strategy: Any) -> None:
    fam = method_family(method_cls)
    for p in plugins:
        p.check_method(method, fam)
        if p.leaves_parameters_unused and str(strategy) == "ddp":
            raise ConfigError(
                f"plugin '{p.name}' leaves parameters without gradients in some steps, but strategy=ddp "
                "makes solo-learn use DDP(find_unused_parameters=False); use "
                "strategy: ddp_find_unused_parameters_true"
            )


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
                     log=model._ss_queue_log, num_large_crops=model.num_large_crops,
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
        self._ss_pending: Dict[str, float] = {}
        self.solo_sparse_metrics: Dict[str, float] = {}
        self.solo_sparse_events = 0   # number of times plugins logged (mask updates, CSI checks, epoch ends)
        self._ss_crop = 0
        self._ss_mcrop = 0
        self._ss_mom_crop = 0
        self._ss_in_train = False
        self.solo_sparse = PluginHost(plugins)
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
        if not extra:
            return groups
        ids = {id(p) for g in extra for p in g["params"]}
        out = []
        for g in groups:
            g = dict(g)
            g["params"] = [p for p in g["params"] if id(p) not in ids]
            out.append(g)
        return out + extra

    # ------------------------------------------------------------------ logging
    def _ss_queue_log(self, metrics: Dict[str, float]) -> None:
        self._ss_pending.update(metrics)
        self.solo_sparse_metrics.update(metrics)
        self.solo_sparse_events += 1

    def _ss_flush(self, on_step: bool) -> None:
        if not self._ss_pending:
            return
        pending, self._ss_pending = self._ss_pending, {}
        if getattr(self, "_trainer", None) is None:
            return
        self.log_dict(pending, on_step=on_step, on_epoch=not on_step, sync_dist=False)

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
        extra = self.solo_sparse.extra_loss()
        if extra is not None:
            if isinstance(out, dict):
                out["loss"] = out["loss"] + extra
            else:
                out = out + extra
        return out

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
        tr = self.trainer
        acc = max(1, int(getattr(tr, "accumulate_grad_batches", 1) or 1))
        nb = tr.num_training_batches
        spe = None if nb is None or nb == float("inf") else max(1, math.ceil(nb / acc))
        total = tr.estimated_stepping_batches
        total = None if total is None or total == float("inf") else int(total)
        self.solo_sparse.set_schedule_info(spe, total)
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
        checkpoint[CKPT_KEY] = self.solo_sparse.state_dict()
        checkpoint[RNG_KEY] = rng_state()
        updater = getattr(self, "momentum_updater", None)
        if updater is not None:
            checkpoint[TAU_KEY] = float(updater.cur_tau)

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if CKPT_KEY not in checkpoint:
            raise ConfigError(
                f"resuming a solo-sparse run from a checkpoint without '{CKPT_KEY}' state: it was not "
                "trained with this plugin; start a new run instead"
            )
        self.solo_sparse.load_state_dict(checkpoint[CKPT_KEY])
        if RNG_KEY in checkpoint:   # resume where the interrupted run was: same data order and augmentations
            set_rng_state(checkpoint[RNG_KEY])
            self._ss_resume_rng = checkpoint[RNG_KEY]     # and again when the resumed epoch starts
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

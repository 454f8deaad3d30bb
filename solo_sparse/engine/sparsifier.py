"""The weight-mask engine: persistent bool mask buffers on the online and momentum encoders.

Lifecycle (after ``torch.ao.pruning``): construct (selects layers, registers ``weight_mask``
buffers, validates shapes) -> ``update_masks`` / ``apply_masks`` during training -> ``squash``
(drop the buffers, keep the zeros) for export.

Why buffers and not ``torch.nn.utils.prune``: solo-learn's ``MomentumUpdater`` pairs online and
momentum *parameters by position* and replaces ``.data``; ``prune`` renames parameters to
``weight_orig`` and reorders them. Buffers leave parameters untouched; the masks travel in every
``state_dict`` (``<layer>.weight_mask``), so checkpoints and resumes carry them with no extra code.

Invariants kept by the callers (the plugin binding):
- gradients masked after backward (:meth:`mask_gradients`),
- weights and optimizer state (SGD/LARS momentum, Adam moments) masked after every optimizer step
  (:meth:`apply_masks`, :meth:`mask_optimizer_state`), so neither momentum nor weight decay can
  bring a pruned weight back,
- the momentum encoder re-masked after every EMA update (its ``.data`` is replaced there).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from solo_sparse.core.config import PREFIX, ConfigError, MaskSpec
from solo_sparse.core.plugin import ModuleGroup
from solo_sparse.engine.maskio import MASK
from solo_sparse.engine.masks import check_layer_shape

__all__ = ["MASK", "BranchNorms", "ModuleGroup", "SoftMaskedConv2d", "SoftMaskedLinear", "WeightSparsifier",
           "select_layers"]
_CLASSIFIER_NAMES = {"fc", "head", "classifier"}


class SoftMaskedConv2d(nn.Conv2d):
    """A Conv2d whose forward uses ``weight * weight_mask``; the stored weight stays dense.

    Same parameters, names and ``state_dict`` as ``nn.Conv2d`` (modules are switched to it by class
    swap): used where a branch is damaged on the fly over shared dense weights (SDCLR). With
    ``ss_damaged = False`` (set per forward by :func:`set_damaged`) it runs the dense weights.
    """

    ss_damaged = True

    def forward(self, x):
        w = self.weight * self.weight_mask if self.ss_damaged else self.weight
        return self._conv_forward(x, w, self.bias)


class SoftMaskedLinear(nn.Linear):
    """``nn.Linear`` with ``weight * weight_mask`` in the forward (see SoftMaskedConv2d)."""

    ss_damaged = True

    def forward(self, x):
        w = self.weight * self.weight_mask if self.ss_damaged else self.weight
        return torch.nn.functional.linear(x, w, self.bias)


_SOFT = {nn.Conv2d: SoftMaskedConv2d, nn.Linear: SoftMaskedLinear}


def set_damaged(module: nn.Module, damaged: bool) -> None:
    """Route every soft-masked layer of ``module`` through its masked (``True``) or dense weights."""
    for m in module.modules():
        if type(m) in _SOFT.values():
            m.ss_damaged = damaged


class BranchNorms(nn.Module):
    """Twin BatchNorms for a damaged branch (SDCLR's separate BN for the pruned branch).

    Every BatchNorm under ``roots`` (``{name: module}``: the online backbone, projector, ...) gets a twin
    here, a BatchNorm of the same kind with its state copied. While :attr:`active` a forward hook returns the
    twin's output in place of the BN's, whose own forward (on the damaged batch as well, its output discarded)
    leaves its running statistics unchanged. The network keeps its modules, names and ``state_dict``: a
    linear evaluation, a zoo export or a strict load never sees the twins, which live in this module (the
    binding registers a plugin's :meth:`~solo_sparse.core.plugin.Plugin.modules` as
    ``solo_sparse_modules.<plugin>``: trained, moved to the device and checkpointed with the method).

    ``sync_batchnorm: True`` replaces every BatchNorm of the model after set-up (the twins too: they are
    plain BatchNorm children here): :meth:`bind` finds the network's current modules by name and hooks the
    new ones; call it before activating.
    """

    def __init__(self, roots: Mapping[str, nn.Module]):
        super().__init__()
        self.twins = nn.ModuleDict()
        self.active = False
        self._roots = dict(roots)                 # plain attributes: not registered, not in the state_dict
        self._where: Dict[str, Tuple[str, str]] = {}
        self._bound: Dict[str, nn.Module] = {}
        self._handles: Dict[str, tuple] = {}
        self._saved: Dict[str, tuple] = {}
        for rname, root in self._roots.items():
            for qn, mod in root.named_modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    key = f"{rname}--{qn.replace('.', '-')}"
                    self.twins[key] = _twin_bn(mod)
                    self._where[key] = (rname, qn)
        self.bind()

    def bind(self) -> None:
        """Hook the network's current BatchNorm at every recorded name (again where one was replaced)."""
        for key, (rname, qn) in self._where.items():
            mod = self._roots[rname].get_submodule(qn)
            if self._bound.get(key) is mod:
                continue
            for h in self._handles.pop(key, ()):
                h.remove()
            self._handles[key] = (mod.register_forward_pre_hook(functools.partial(self._pre, key)),
                                  mod.register_forward_hook(functools.partial(self._post, key)))
            self._bound[key] = mod

    def set_active(self, active: bool) -> None:
        if active:
            self.bind()
        self.active = bool(active)
        for key in list(self._saved):            # a forward that raised between the two hooks
            self._restore(key)

    def _pre(self, key, mod, args):
        # the BN's own forward still runs on the damaged batch (its output is discarded): a momentum of 0 keeps its
        # running statistics exactly (updated in place by the op itself, which autograd allows; a copy back after
        # the forward would invalidate what the op saved for backward)
        if self.active and mod.training and mod.track_running_stats:
            nbt = mod.num_batches_tracked
            self._saved[key] = (mod, mod.momentum, None if nbt is None else nbt.clone())
            mod.momentum = 0.0

    def _restore(self, key) -> None:
        mod, momentum, nbt = self._saved.pop(key)
        mod.momentum = momentum
        if nbt is not None:
            with torch.no_grad():
                mod.num_batches_tracked.copy_(nbt)

    def _post(self, key, mod, args, out):
        if key in self._saved:
            self._restore(key)
        if not self.active:
            return None
        return self.twins[key](args[0])


def _twin_bn(bn: nn.Module) -> nn.Module:
    kw = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats)
    twin = type(bn)(bn.num_features, **kw)
    twin.load_state_dict(bn.state_dict())
    ref = next(iter(bn.parameters()), None) if bn.affine else bn.running_mean
    return twin.to(ref.device) if ref is not None else twin


def make_soft(mod: nn.Module) -> None:
    if type(mod) in _SOFT.values():
        return
    if type(mod) not in _SOFT:
        raise TypeError(f"soft masking supports plain Conv2d/Linear, not {type(mod).__name__}")
    mod.__class__ = _SOFT[type(mod)]


def select_layers(module: nn.Module, *, exclude_stem: bool = True, is_backbone: bool = True
                  ) -> List[Tuple[str, nn.Module]]:
    """Maskable layers of ``module`` in definition order.

    Backbone: every ``Conv2d``/``Linear`` except the stem (the first conv) and classifier heads
    (modules named ``fc``/``head``/``classifier``). Projector/predictor: every ``Linear``.
    """
    out = []
    seen_conv = False
    for name, mod in module.named_modules():
        if is_backbone:
            if isinstance(mod, nn.Conv2d):
                first = not seen_conv
                seen_conv = True
                if first and exclude_stem:
                    continue
                out.append((name, mod))
            elif isinstance(mod, nn.Linear) and name.split(".")[-1] not in _CLASSIFIER_NAMES:
                out.append((name, mod))
        elif isinstance(mod, nn.Linear):
            out.append((name, mod))
    return out


@dataclass
class MaskedLayer:
    name: str                      # "<group>.<qualified name>", e.g. "backbone.layer1.0.conv1"
    online: nn.Module
    momentum: Optional[nn.Module]

    @property
    def shape(self) -> torch.Size:
        return self.online.weight.shape

    def mask(self, encoder: str = "online") -> torch.Tensor:
        mod = self.online if encoder == "online" else self.momentum
        if mod is None:
            raise ValueError(f"{self.name} has no {encoder} module")
        return getattr(mod, MASK)


class WeightSparsifier:
    """Masks for the layers that ``spec`` selects in ``groups`` (online and momentum twins)."""

    def __init__(self, groups: Mapping[str, ModuleGroup], spec: MaskSpec, soft: Iterable[str] = ()):
        """``soft``: encoders ("online"/"momentum") masked in the forward only (weights kept dense)."""
        self.spec = spec
        self.soft = frozenset(soft)
        self.layers: List[MaskedLayer] = []
        self.skipped: List[str] = []
        for g in spec.include:
            if g not in groups:
                raise ConfigError(
                    f"{PREFIX}.include contains '{g}' but this method has no {g}; available: {', '.join(groups)}"
                )
            grp = groups[g]
            for qn, mod in select_layers(grp.online, exclude_stem=spec.exclude_stem, is_backbone=g == "backbone"):
                name = f"{g}.{qn}"
                msg = check_layer_shape(name, mod.weight.shape, spec.granularity, spec.n, spec.m, spec.block)
                if msg:
                    if spec.on_indivisible == "skip":
                        warnings.warn(f"solo-sparse: {msg}; keeping it dense (on_indivisible=skip)", stacklevel=2)
                        self.skipped.append(name)
                        continue
                    raise ConfigError(f"{msg}. Set {PREFIX}.on_indivisible=skip to keep such layers dense.")
                mom = grp.momentum.get_submodule(qn) if grp.momentum is not None else None
                if mom is not None and mom.weight.shape != mod.weight.shape:
                    raise ConfigError(f"momentum twin of '{name}' has shape {tuple(mom.weight.shape)}")
                for m_ in (mod, mom):
                    if m_ is None:
                        continue
                    if hasattr(m_, MASK):
                        raise ConfigError(f"layer '{name}' already carries a {MASK}: two weight-sparsity "
                                          "plugins cannot mask the same layer")
                    m_.register_buffer(MASK, torch.ones_like(m_.weight, dtype=torch.bool), persistent=True)
                self.layers.append(MaskedLayer(name, mod, mom))
                if "online" in self.soft:
                    make_soft(mod)
                if "momentum" in self.soft and mom is not None:
                    make_soft(mom)
        if not self.layers:
            if self.skipped:
                raise ConfigError(f"{PREFIX}: every selected layer was kept dense by {PREFIX}.on_indivisible=skip "
                                  f"(their shapes do not fit granularity={spec.granularity!r}; first: "
                                  f"{self.skipped[0]}); nothing would be pruned")
            raise ConfigError(f"{PREFIX}: no layer selected for masking (include={list(spec.include)})")

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[MaskedLayer]:
        return iter(self.layers)

    @property
    def has_momentum(self) -> bool:
        return any(L.momentum is not None for L in self.layers)

    def shapes(self) -> Dict[str, torch.Size]:
        return {L.name: L.shape for L in self.layers}

    def masks(self, encoder: str = "online") -> Dict[str, torch.Tensor]:
        return {L.name: L.mask(encoder) for L in self.layers if encoder == "online" or L.momentum is not None}

    def weights(self, encoder: str = "online") -> Dict[str, torch.Tensor]:
        out = {}
        for L in self.layers:
            mod = L.online if encoder == "online" else L.momentum
            if mod is not None:
                out[L.name] = mod.weight.detach()
        return out

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor], encoder: str = "online") -> None:
        for L in self.layers:
            if L.name not in masks:
                continue
            mod = L.online if encoder == "online" else L.momentum
            if mod is None:
                continue
            buf = getattr(mod, MASK)
            new = masks[L.name].to(device=buf.device, dtype=torch.bool)
            if new.shape != buf.shape:
                raise ValueError(f"mask for '{L.name}' has shape {tuple(new.shape)}, expected {tuple(buf.shape)}")
            buf.copy_(new)

    @torch.no_grad()
    def copy_online_to_momentum(self) -> None:
        for L in self.layers:
            if L.momentum is not None:
                getattr(L.momentum, MASK).copy_(getattr(L.online, MASK))

    @staticmethod
    def _float_mask(mod: nn.Module) -> torch.Tensor:
        """The bool mask as the weight's dtype, cached until the mask buffer changes.

        The cache key holds the buffer's storage pointer and version counter, so ``set_masks``,
        ``load_state_dict`` (in-place copies) and ``.to()`` all invalidate it.
        """
        buf = getattr(mod, MASK)
        key = (buf.data_ptr(), buf._version, mod.weight.dtype, mod.weight.device)
        cache = mod.__dict__.get("_ss_mask_cache")
        if cache is None or cache[0] != key:
            cache = (key, buf.to(dtype=mod.weight.dtype))
            mod.__dict__["_ss_mask_cache"] = cache
        return cache[1]

    @staticmethod
    def _foreach_mul(tensors: List[torch.Tensor], masks: List[torch.Tensor]) -> None:
        if tensors:
            torch._foreach_mul_(tensors, masks)  # one multi-tensor pass instead of a Python loop

    @torch.no_grad()
    def apply_masks(self, encoders: Iterable[str] = ("online", "momentum")) -> None:
        """weight *= mask on the named encoders (soft-masked encoders keep their dense weights)."""
        ws, ms = [], []
        for L in self.layers:
            for enc in encoders:
                if enc in self.soft:
                    continue
                mod = L.online if enc == "online" else L.momentum
                if mod is not None:
                    ws.append(mod.weight)
                    ms.append(self._float_mask(mod))
        self._foreach_mul(ws, ms)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        if "online" in self.soft:  # the forward already routes no gradient to pruned weights
            return
        gs, ms = [], []
        for L in self.layers:
            g = L.online.weight.grad
            if g is not None:
                gs.append(g)
                ms.append(self._float_mask(L.online))
        self._foreach_mul(gs, ms)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-parameter state tensor shaped like a masked weight (momentum, Adam moments)."""
        opt = getattr(optimizer, "optimizer", optimizer)  # Lightning's LightningOptimizer
        if "online" in self.soft:
            return
        for L in self.layers:
            p = L.online.weight
            st = opt.state.get(p)
            if not st:
                continue
            mask = getattr(L.online, MASK)
            for v in st.values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(mask)

    def broadcast_masks(self, src: int = 0) -> None:
        """Make every DDP rank hold rank ``src``'s masks (no-op without torch.distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for L in self.layers:
            for mod in (L.online, L.momentum):
                if mod is None:
                    continue
                buf = getattr(mod, MASK)
                t = buf.to(torch.uint8)
                torch.distributed.broadcast(t, src)
                buf.copy_(t.bool())

    def squash(self) -> None:
        """Apply the masks and remove the buffers: plain modules with zeros where pruned."""
        with torch.no_grad():
            for L in self.layers:
                for mod in (L.online, L.momentum):
                    if mod is not None and MASK in mod._buffers:
                        mod.weight.mul_(getattr(mod, MASK))
                        del mod._buffers[MASK]
                        if type(mod) in _SOFT.values():
                            mod.__class__ = type(mod).__mro__[1]

    # ------------------------------------------------------------------ reports
    def density(self, encoder: str = "online") -> float:
        kept = total = 0
        for _name, m in self.masks(encoder).items():
            kept += int(m.sum().item())
            total += m.numel()
        return kept / max(total, 1)

    def layer_densities(self, encoder: str = "online") -> Dict[str, float]:
        return {k: float(m.sum().item()) / m.numel() for k, m in self.masks(encoder).items()}

    def leaked(self, encoder: str = "online") -> int:
        """Number of pruned weights that are non-zero (must be 0 whenever the invariants hold).

        For a soft-masked encoder this counts the weights its forward uses (``weight * mask``): 0 by construction.
        """
        n = 0
        if encoder in self.soft:
            return 0
        for L in self.layers:
            mod = L.online if encoder == "online" else L.momentum
            if mod is not None:
                n += int(((mod.weight.detach() != 0) & ~getattr(mod, MASK)).sum().item())
        return n

    def report(self) -> "SparsityReport":
        rows = []
        for L in self.layers:
            rows.append({
                "layer": L.name,
                "shape": list(L.shape),
                "params": int(L.shape.numel()),
                "online_density": float(L.mask("online").float().mean().item()),
                "momentum_density": (float(L.mask("momentum").float().mean().item())
                                     if L.momentum is not None else None),
            })
        return SparsityReport(rows, self.density("online"),
                              self.density("momentum") if self.has_momentum else None, list(self.skipped))


@dataclass
class SparsityReport:
    rows: List[dict]
    online_density: float
    momentum_density: Optional[float]
    skipped: List[str]

    def to_markdown(self) -> str:
        head = "| layer | shape | params | online density | momentum density |\n|---|---|---:|---:|---:|\n"
        body = "".join(
            f"| {r['layer']} | {'x'.join(map(str, r['shape']))} | {r['params']} | {r['online_density']:.4f} | "
            f"{'-' if r['momentum_density'] is None else format(r['momentum_density'], '.4f')} |\n"
            for r in self.rows
        )
        tot = (f"| **total** | | {sum(r['params'] for r in self.rows)} | {self.online_density:.4f} | "
               f"{'-' if self.momentum_density is None else format(self.momentum_density, '.4f')} |\n")
        skipped = f"\nKept dense (shape does not fit the pattern): {', '.join(self.skipped)}\n" if self.skipped else ""
        return head + body + tot + skipped

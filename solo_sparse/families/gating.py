"""The base of every plugin that rewrites the backbone with gates (``cdg``, ``cgnet``, ``fbs``,
``dgnet_dual``, ``dgnet_gated``): what they share, once.

* Construction: exactly two large crops; the online backbone and its momentum twin converted in
  place (:meth:`GatedBackbonePlugin.convert`), the twin then loaded from the online network (new
  modules included) and frozen — :func:`convert_encoders`.
* Checkpoints and the zoo: :meth:`rebuild_backbone` converts a fresh backbone from a run's saved
  plugin config before a strict load (keys a saved config lacks take :attr:`legacy_defaults`, the
  values older versions trained with), then routes it to an evaluation path.
* ``main_linear.py`` (with the plugin line): the fresh backbone is converted, routed, and any missing
  key is an error naming the first one (:func:`require_all_backbone_keys`; solo-learn loads with
  ``strict=False``).

Subclasses implement :meth:`convert` (gate a backbone in place, or check one built gated),
:meth:`route_eval` (select an evaluation path), :meth:`eval_paths`, and the routing of each forward that
:meth:`GatedBackbonePlugin.on_crop` hands them: :meth:`_route_crop` (a training crop) and :meth:`_route_eval_crop`
(an evaluation forward).
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F

from solo_sparse.core import events
from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.core.plugin import Branch, ModelView, Plugin

#: solo-learn methods that train on two views of each image (exactly two large crops): the methods whose crops
#: the gating plugins route to their two branches (``cdg``, ``cgnet``, ``fbs`` support every one)
TWO_VIEW_METHODS = ("simclr", "mocov2plus", "simsiam", "byol", "barlow_twins", "vicreg")
#: two-view methods whose two views play different roles: MoCo v2+ (queries of the online encoder against keys of
#: the momentum encoder and of its queue)
ASYMMETRIC_TWO_VIEW_METHODS = ("mocov2plus",)
#: the two-view methods DGNet-dual and DGNet-gated support ("a two-view symmetric method", docs/plugins/dgnet.md;
#: MoCo v2+ refused as not symmetric, tests/plugins/test_dgnet.py); a method added to :data:`TWO_VIEW_METHODS`
#: is here too unless it is listed as asymmetric
SYMMETRIC_TWO_VIEW_METHODS = tuple(m for m in TWO_VIEW_METHODS if m not in ASYMMETRIC_TWO_VIEW_METHODS)


def convert_encoders(plugin: Plugin, view: ModelView, convert: Callable[[torch.nn.Module], None],
                     crops_why: str) -> None:
    """Exactly two large crops (``crops_why`` says what each is for); ``convert`` applied in place to
    the online backbone and its momentum twin, then the twin loaded from the online network (new
    modules included) and frozen."""
    if view.num_large_crops != 2:
        raise ConfigError(f"plugin '{plugin.name}' needs exactly two large crops ({crops_why}), the config has "
                          f"{view.num_large_crops}")
    grp = view.groups["backbone"]
    for mod in (grp.online, grp.momentum):
        if mod is not None:
            convert(mod)
    if grp.momentum is not None:
        grp.momentum.load_state_dict(grp.online.state_dict())
        for p in grp.momentum.parameters():
            p.requires_grad = False


def require_all_backbone_keys(backbone: torch.nn.Module, plugin: str, path: str) -> None:
    """main_linear.py loads ``backbone.*`` with ``strict=False``: make a missing key (a gate, a BN
    twin) an error naming the first one, and say which path is evaluated once loaded."""

    def post_hook(module, incompatible):
        if incompatible.missing_keys:
            raise RuntimeError(f"solo-sparse ({plugin}): the checkpoint lacks {len(incompatible.missing_keys)} "
                               f"backbone key(s), first: {incompatible.missing_keys[0]!r}. Was it pre-trained "
                               f"with '- solo_sparse: {plugin}' and the same stages/backbone?")
        print(f"solo-sparse: loaded {plugin} backbone, evaluating the {path} path", file=sys.stderr, flush=True)

    backbone.register_load_state_dict_post_hook(post_hook)


class PairMonitor:
    """Is the run collapsing, and does the momentum encoder still compute the same function?

    * During training, the online backbone's pooled features of crop 0 and crop 1 of each step give the mean
      cosine similarity of positive pairs (the two views of an image) and of random pairs (view 0 of one image,
      view 1 of another). Logged per epoch as ``pair/pos_cos``, ``pair/neg_cos``, ``pair/margin`` (and one
      line on stderr); when the margin falls below ``margin`` after the first epoch, one warning line says the
      positives are no more alike than random pairs.
    * Methods with a momentum encoder: every ``probe_every`` steps, a fixed batch (the first 16 images of the
      run's first crop 0) goes through the online and the momentum encoder in eval mode on their evaluation
      path: ``diag/online_momentum_cos`` (query vs key of the same images — the two encoders should agree) and
      ``diag/key_drift_cos`` (the key now vs ``probe_every`` steps ago — MoCo's queue holds keys that old).
    * Every epoch end: ``diag/shift_sensitivity``, 1 - cos of the online encoder's eval-path features of the fixed
      batch and of the same images shifted by 1 px (:func:`solo_sparse.engine.probes.shift_sensitivity`): a hard
      data-dependent gate makes it 30-70x a dense network's.
    """

    def __init__(self, plugin: Plugin, margin: float = 0.05, probe_every: int = 32):
        self.plugin, self.margin, self.probe_every = plugin, margin, probe_every
        self.feats: Dict[int, torch.Tensor] = {}
        self.crop: Optional[int] = None
        self.sums = [0.0, 0.0]
        self.n = 0
        self.warned = False
        self.online: Optional[torch.nn.Module] = None
        self.momentum: Optional[torch.nn.Module] = None
        self.fixed: Optional[torch.Tensor] = None
        self.prev_key: Optional[torch.Tensor] = None
        self.steps = 0

    def attach(self, online: torch.nn.Module, momentum: Optional[torch.nn.Module] = None) -> None:
        self.online, self.momentum = online, momentum
        online.register_forward_hook(self._hook)

    def _hook(self, module, inp, out) -> None:
        if module.training and self.crop in (0, 1) and torch.is_tensor(out) and out.dim() == 2:
            self.feats[self.crop] = out.detach()
            if self.fixed is None and self.crop == 0 and inp and torch.is_tensor(inp[0]):
                self.fixed = inp[0][:16].detach().clone()

    def on_crop(self, crop: Optional[int]) -> None:
        self.crop = crop

    # ------------------------------------------------------------------ state (checkpointed by the plugin)
    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs to go on measuring as the uninterrupted run would: the fixed batch and the
        previous key (the same probe images, the same drift reference), the step count (the probe cadence), the
        epoch's running sums and whether the collapse warning was given (once per run, not once per resume)."""
        return {"fixed": self.fixed, "prev_key": self.prev_key, "steps": self.steps, "sums": list(self.sums),
                "n": self.n, "warned": self.warned}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty mapping: a checkpoint saved before the monitor was saved — it
        starts over, as it used to). The tensors stay where they were loaded: Lightning restores a checkpoint
        before it moves the module to its device, so they follow the encoder when used (:meth:`_here`)."""
        if not state:
            return

        def copy(t):
            return t.detach().clone() if torch.is_tensor(t) else None

        self.fixed, self.prev_key = copy(state.get("fixed")), copy(state.get("prev_key"))
        self.steps, self.n = int(state.get("steps", 0)), int(state.get("n", 0))
        self.sums = [float(v) for v in state.get("sums", (0.0, 0.0))]
        self.warned = bool(state.get("warned", False))

    def step_end(self) -> None:
        a, b = self.feats.get(0), self.feats.get(1)
        self.feats, self.crop = {}, None
        self.steps += 1
        if self.momentum is not None and self.fixed is not None and self.steps % self.probe_every == 0:
            self.probe()
        if a is None or b is None or a.shape != b.shape or len(a) < 2:
            return
        a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
        pos = float((a * b).sum(1).mean())
        neg = float((a * b.roll(1, 0)).sum(1).mean())
        self.sums[0] += pos
        self.sums[1] += neg
        self.n += 1

    def _here(self) -> None:
        """Put the fixed batch and the previous key on the online encoder's device (after a resume they were
        loaded before the module moved there)."""
        p = next(iter(self.online.parameters()), None) if self.online is not None else None
        if p is None:
            return
        if self.fixed is not None and self.fixed.device != p.device:
            self.fixed = self.fixed.to(p.device)
        if self.prev_key is not None and self.prev_key.device != p.device:
            self.prev_key = self.prev_key.to(p.device)

    @torch.no_grad()
    def probe(self) -> Dict[str, float]:
        self._here()
        was = (self.online.training, self.momentum.training)
        try:
            self.online.eval()
            self.momentum.eval()
            self.plugin.route_eval(self.online)
            self.plugin.route_eval(self.momentum)
            q = F.normalize(self.online(self.fixed).float(), dim=1)
            k = F.normalize(self.momentum(self.fixed).float(), dim=1)
        finally:
            self.online.train(was[0])
            self.momentum.train(was[1])
        out = {"diag/online_momentum_cos": float((q * k).sum(1).mean())}
        if self.prev_key is not None:
            out["diag/key_drift_cos"] = float((k * self.prev_key).sum(1).mean())
        self.prev_key = k
        self.plugin.log(out)
        events.emit(self.plugin.name, "probe", self.steps, online_momentum_cos=out["diag/online_momentum_cos"],
                    key_drift_cos=out.get("diag/key_drift_cos"))
        return out

    def shift(self) -> Optional[float]:
        """Shift sensitivity of the online encoder's evaluation path on the fixed batch (None before it exists)."""
        if self.fixed is None or self.online is None or self.fixed.dim() != 4:
            return None
        self._here()
        from solo_sparse.engine.probes import shift_sensitivity

        # like :meth:`probe`: the next crop's on_crop routes the encoder back to its training branch
        return shift_sensitivity(self.online, self.fixed, 1, self.plugin.route_eval)

    def epoch_end(self, epoch: int) -> Dict[str, float]:
        if not self.n:
            return {}
        pos, neg = self.sums[0] / self.n, self.sums[1] / self.n
        self.sums, self.n = [0.0, 0.0], 0
        sh = self.shift()
        events.emit(self.plugin.name, "pairs", epoch, positives=pos, random=neg, shift=sh)
        if sh is not None and not math.isfinite(sh):
            events.warn(f"solo-sparse {self.plugin.name}: at epoch {epoch} the online encoder's evaluation path (eval "
                        f"mode, BN running statistics) gives non-finite features on the monitor's fixed batch (shift "
                        f"sensitivity {sh}); the training loss is checked separately, so training goes on")
        if epoch >= 1 and pos - neg < self.margin and not self.warned:
            self.warned = True
            events.warn(f"solo-sparse {self.plugin.name}: collapse: at epoch {epoch} the two views of an image are no "
                        f"more alike than two random images (positive-pair cosine {pos:.3f}, random pairs {neg:.3f}); "
                        f"the representation is collapsing — see the plugin's docs for the known causes")
        out = {"pair/pos_cos": pos, "pair/neg_cos": neg, "pair/margin": pos - neg}
        if sh is not None:
            out["diag/shift_sensitivity"] = sh
        return out


class GatedBackbonePlugin(Plugin):
    """Shared by the gating plugins; see the module docstring."""

    rewrites_backbone = True
    compactable = False
    families = ("momentum", "shared")
    #: what each of the two large crops is for (error message of :func:`convert_encoders`)
    crops_why: ClassVar[str] = "one per branch"
    #: config values of runs saved before a key existed (rebuilding old checkpoints as they trained)
    legacy_defaults: ClassVar[Dict[str, Any]] = {}

    # ------------------------------------------------------------------ subclass policy
    def convert(self, backbone: torch.nn.Module) -> None:
        """Gate ``backbone`` in place with this config (or check one that was built gated)."""
        raise NotImplementedError

    def route_eval(self, backbone: torch.nn.Module, path: Optional[str] = None) -> str:
        """Route ``backbone`` to evaluation path ``path`` (None: the configured one); returns its name."""
        raise NotImplementedError

    def _route_crop(self, backbone: torch.nn.Module, branch: Branch) -> None:
        """Route the encoder ``backbone`` for the training forward ``branch`` (from :meth:`on_crop`)."""
        raise NotImplementedError

    def _route_eval_crop(self, backbone: torch.nn.Module) -> None:
        """Route the encoder ``backbone`` for an evaluation forward (validation; from :meth:`on_crop`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ construction
    def setup(self, view: ModelView) -> None:
        super().setup(view)
        convert_encoders(self, view, self.convert, self.crops_why)
        self.pairs = PairMonitor(self)
        self.pairs.attach(view.groups["backbone"].online, view.groups["backbone"].momentum)
        self.pairs.load_state_dict(getattr(self, "_monitor_state", {}))
        self._monitor_state = {}

    def monitor_crop(self, branch) -> None:
        """Tell the pair monitor which crop the online encoder is about to forward (subclasses' on_crop)."""
        if branch.encoder == "online":
            self.pairs.on_crop(branch.crop if branch.phase == "train" and branch.large else None)

    def monitor_epoch(self, epoch: int) -> Dict[str, float]:
        return self.pairs.epoch_end(epoch)

    def extra_state(self) -> Dict[str, Any]:
        pairs = getattr(self, "pairs", None)
        monitor = pairs.state_dict() if pairs is not None else getattr(self, "_monitor_state", {})
        return {**super().extra_state(), "monitor": monitor}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        super().load_extra_state(state)
        self._monitor_state = dict(state.get("monitor", {}))     # loaded before setup: the monitor takes it there
        if getattr(self, "pairs", None) is not None:
            self.pairs.load_state_dict(self._monitor_state)
            self._monitor_state = {}

    def on_crop(self, branch: Branch) -> None:
        """The pair monitor hears of the crop; then the encoder that forwards it (when the method has that
        encoder) is routed: :meth:`_route_eval_crop` in the evaluation phase, else :meth:`_route_crop`."""
        self.monitor_crop(branch)
        grp = self.view.groups["backbone"]
        mod = grp.online if branch.encoder == "online" else grp.momentum
        if mod is None:
            return
        if branch.phase == "eval":
            self._route_eval_crop(mod)
        else:
            self._route_crop(mod, branch)

    def gate_group(self, params: List[torch.nn.Parameter], base_lr: float, **options: Any) -> Dict[str, Any]:
        """The gates' optimizer group ``solo_sparse_<plugin>_gates``, at the config's ``gate_lr_scale`` x the
        method's lr (``options``: further group settings, e.g. ``weight_decay``)."""
        return {"name": f"solo_sparse_{self.name}_gates", "params": params,
                "lr": base_lr * self.config.gate_lr_scale, **options}

    # ------------------------------------------------------------------ checkpoints / zoo
    @classmethod
    def from_saved(cls, config: Mapping[str, Any]) -> "GatedBackbonePlugin":
        """The plugin as a run's saved config describes it (unknown keys refused, missing ones legacy)."""
        params = {**cls.legacy_defaults, **dict(config)}
        return cls.from_params(params)

    @classmethod
    def rebuild_backbone(cls, net: torch.nn.Module, config: Mapping[str, Any],
                         path: Optional[str] = None) -> torch.nn.Module:
        plugin = cls.from_saved(config)
        plugin.convert(net)
        plugin.route_eval(net, path)
        return net

    @classmethod
    def route_backbone(cls, net: torch.nn.Module, config: Mapping[str, Any],
                       path: Optional[str] = None) -> Optional[str]:
        return cls.from_saved(config).route_eval(net, path)

    # ------------------------------------------------------------------ main_linear.py
    def prepare_eval_backbone(self, backbone: torch.nn.Module) -> None:
        self.convert(backbone)
        path = self.route_eval(backbone)
        require_all_backbone_keys(backbone, self.name, path)


def small_maps(backbone: torch.nn.Module, input_size: Optional[int], stages) -> List[tuple]:
    """``[(stage, (H, W)), ...]`` of the gated stages whose maps have at most 2x2 positions at this input size."""
    if not input_size:
        return []
    from solo_sparse.engine.resnet import stage_sizes

    sizes = stage_sizes(backbone, input_size)
    return [(s, sizes[f"layer{s}"]) for s in stages if sizes[f"layer{s}"][0] * sizes[f"layer{s}"][1] <= 4]


def check_path(plugin: str, path: Optional[str], allowed) -> None:
    if path is not None and path not in allowed:
        raise ConfigError(f"{PREFIX}: plugin '{plugin}' has evaluation paths {', '.join(allowed)}; got {path!r}")

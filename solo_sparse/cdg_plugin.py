"""Shared plugin machinery for channel-gated contrastive training (``cdg``, ``cgnet``, ``fbs``).

The backbone (and its momentum twin) is gated in place at construction (:mod:`solo_sparse.cdg`).
Each crop's forward is routed by :meth:`GatingPlugin.route` (base path / mask policy); the online
encoder's training forwards are recorded: conditional (or channel) sparsity per layer and branch,
the branches' mask similarity S_c, the FLOPs reduction by the seed's eq. 13 and by exact count.
Gate parameters (``tau``; FBS ``phi``/``rho``) sit in their own optimizer group, without weight
decay by default (``gate_weight_decay``), at ``gate_lr_scale`` x the method's lr.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .cdg import (clear_cache, convert_resnet, gated_convs, is_cdg, mask_similarity, reduction_eq13, set_branch,
                  set_recording)
from .config import ConfigError, PREFIX, check_choice, check_range, key_error
from .plugin import Branch, Plugin, convert_encoders, require_all_backbone_keys

CDG_METHODS = ("simclr", "mocov2plus", "simsiam", "byol", "barlow_twins", "vicreg")


def _stages(v) -> Tuple[int, ...]:
    st = (v,) if isinstance(v, int) else tuple(v)
    if not st or any(isinstance(s, bool) or s not in (1, 2, 3, 4) for s in st):
        raise key_error("stages", list(st), "a non-empty subset of [1, 2, 3, 4] (ResNet stages to gate)")
    return st


@dataclass
class GatingConfig:
    #: ResNet stages whose blocks are gated
    stages: Tuple[int, ...] = (1, 2, 3, 4)
    #: which convs of a block: "3x3" (the seed: the 3x3 convs; stem and downsample dense) or "block" (all)
    convs: str = "3x3"
    gate_lr_scale: float = 1.0
    gate_weight_decay: float = 0.0

    def __post_init__(self):
        self.stages = _stages(self.stages)
        check_choice("convs", self.convs, ("3x3", "block"))
        self.gate_lr_scale = check_range("gate_lr_scale", self.gate_lr_scale, 0.0, float("inf"), lo_open=True)
        self.gate_weight_decay = check_range("gate_weight_decay", self.gate_weight_decay, 0.0, float("inf"))


class GatingPlugin(Plugin):
    families = ("momentum", "shared")
    supported_methods = CDG_METHODS
    method_requirement = "needs a two-view method with exactly two large crops"
    kind: str = ""

    def __init__(self, config):
        super().__init__(config)
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_n: Dict[str, int] = {}

    # ------------------------------------------------------------------ subclass policy
    def convert_kwargs(self) -> Dict[str, Any]:
        raise NotImplementedError

    def route(self, branch: Branch) -> str:
        """Base-path / mask policy of a training crop: a1 | a2 | follow."""
        raise NotImplementedError

    def gate_loss(self, online) -> Optional[torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    @classmethod
    def backbone_variants(cls):
        """``resnet18_<kind>`` / ``resnet50_<kind>``: torchvision ResNets built gated; ``backbone.kwargs``
        may set the :func:`solo_sparse.cdg.convert_resnet` arguments."""
        kind = cls.kind

        def make(arch):
            def build(method=None, *args, groups=4, cg=1, alpha=2.0, init_tau=0.0, density=0.5,
                      stages=(1, 2, 3, 4), convs="3x3", **kwargs):
                import torchvision

                net = getattr(torchvision.models, arch)(*args, **kwargs)
                return convert_resnet(net, kind=kind, groups=groups, cg=cg, alpha=alpha, init_tau=init_tau,
                                      density=density, stages=tuple(stages), convs=convs)
            return build
        return {f"resnet18_{kind}": make("resnet18"), f"resnet50_{kind}": make("resnet50")}

    def _convert(self, backbone) -> None:
        kw = self.convert_kwargs()
        if is_cdg(backbone):
            if backbone.ss_cdg_kind != self.kind:
                raise ConfigError(f"backbone built with '{backbone.ss_cdg_kind}' gates, plugin is '{self.name}'")
            c = gated_convs(backbone)[0][1]
            if self.kind != "fbs" and (c.ss_G, c.ss_cg) != (kw["groups"], kw["cg"]):
                raise ConfigError(f"backbone built with groups={c.ss_G}, cg={c.ss_cg} but {PREFIX}.groups="
                                  f"{kw['groups']}, {PREFIX}.cg={kw['cg']}")
            for _, c in gated_convs(backbone):
                c.ss_alpha, c.ss_density = kw["alpha"], kw["density"]
            return
        convert_resnet(backbone, kind=self.kind, stages=self.config.stages, convs=self.config.convs, **kw)

    def setup(self, view) -> None:
        super().setup(view)
        convert_encoders(self, view, self._convert, "crop 0 -> branch a1, crop 1 -> branch a2")
        grp = view.groups["backbone"]
        set_recording(grp.online, True)

    def gate_params(self) -> List[torch.nn.Parameter]:
        out = []
        for _, c in gated_convs(self.view.groups["backbone"].online):
            out += [p for n, p in c.named_parameters(recurse=False) if n in ("tau", "phi", "rho")]
        return out

    def param_groups(self, base_lr: float) -> list:
        return [{"name": f"solo_sparse_{self.name}_gates", "params": self.gate_params(),
                 "lr": base_lr * self.config.gate_lr_scale, "weight_decay": self.config.gate_weight_decay}]

    # ------------------------------------------------------------------ hooks
    def on_step_start(self) -> None:
        self._stats: Dict[str, List] = {}
        self._loss_terms: List[torch.Tensor] = []
        grp = self.view.groups["backbone"]
        for mod in (grp.online, grp.momentum):
            if mod is not None:
                clear_cache(mod)

    def _harvest(self) -> None:
        """Collect the last online training forward's stats (and FBS saliency terms)."""
        online = self.view.groups["backbone"].online
        br = getattr(self, "_cur", None)
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

    def gate_terms(self, online) -> Optional[torch.Tensor]:
        """Per-forward loss terms (FBS's saliency L1); None for threshold-based kinds."""
        return None

    def on_crop(self, branch: Branch) -> None:
        grp = self.view.groups["backbone"]
        mod = grp.online if branch.encoder == "online" else grp.momentum
        if mod is None:
            return
        if branch.phase == "eval":
            self._cur = None
            set_branch(mod, "a1")
            return
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
        for br, rows in self._stats.items():
            kept = [float(st["kept"].mean()) for _, st in rows]
            cost = sum(float(torch.as_tensor(st["cost"]).float().mean()) for _, st in rows)
            dense = sum(st["dense"] for _, st in rows)
            eta = 1.0 - sum(kept) / len(kept)
            metrics[f"sparsity/{br}"] = eta
            metrics[f"flops_reduction_exact/{br}"] = dense / cost if cost else 1.0
            if self.kind != "fbs":
                metrics[f"flops_reduction_eq13/{br}"] = reduction_eq13(eta, gated_convs(online)[0][1].ss_G)
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
        return loss

    def on_epoch_end(self, epoch: int) -> None:
        self.log({k: v / self._epoch_n[k] for k, v in self._epoch_sums.items()})
        self._epoch_sums, self._epoch_n = {}, {}

    # ------------------------------------------------------------------ evaluation
    def prepare_eval_backbone(self, backbone) -> None:
        """main_linear: gate the fresh backbone, route it through branch a1 (the seed's inference
        path) and refuse a checkpoint that lacks any gate key."""
        self._convert(backbone)
        set_branch(backbone, "a1")
        require_all_backbone_keys(backbone, self.name, "branch a1 (gated)")

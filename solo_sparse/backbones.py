"""Rebuild a trained backbone from a solo-learn checkpoint's plugin state: gated ResNets (DGNet,
CDG/CGNet/FBS) are converted with the run's settings before the strict load, so that no gate key is
ignored and the evaluated path is the one the plugin evaluates (``eval_path`` / branch a1).

Used by ``solo_sparse.evaluate.load_backbone`` (CLI ``evaluate``), the benchmark scripts and the zoo.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch.nn as nn

DGNET = ("dgnet_dual", "dgnet_gated")
GATING = ("cdg", "cgnet", "fbs")


def gating_plugin(plugin_state: Optional[Mapping[str, Any]]) -> Tuple[Optional[str], Dict[str, Any]]:
    """(name, config) of the gating plugin recorded in a checkpoint's ``solo_sparse`` entry, or (None, {})."""
    for name, st in (plugin_state or {}).items():
        if name in DGNET + GATING:
            return name, dict(st.get("config", {}))
    return None, {}


def apply_gating(net: nn.Module, name: Optional[str], cfg: Mapping[str, Any], path: Optional[str] = None) -> nn.Module:
    """Convert ``net`` in place as plugin ``name`` did at training time and select its evaluation
    path (``path`` overrides: DGNet ``gated``/``dense``; CDG ``a1``/``a2``)."""
    if name is None:
        return net
    if name in DGNET:
        from .dgnet import convert_resnet, set_mode

        convert_resnet(net, reduction=cfg["reduction"], temperature=cfg["temperature"], init_bias=cfg["init_bias"],
                       separate_bn=bool(cfg.get("separate_bn", False)), stages=tuple(cfg["stages"]))
        for m in net.modules():
            if hasattr(m, "ss_gather"):
                m.ss_gather = bool(cfg.get("gather", True))
        set_mode(net, path or cfg.get("eval_path", "gated"))
        return net
    if name in GATING:
        from .cdg import convert_resnet, set_branch, target_threshold

        s = target_threshold(cfg["target"]) if "target" in cfg else 0.0
        convert_resnet(net, kind=name, groups=cfg.get("groups", 1), cg=cfg.get("cg", 1), alpha=cfg.get("alpha", 2.0),
                       init_tau=s, density=cfg.get("density", 1.0), stages=tuple(cfg["stages"]),
                       convs=cfg.get("convs", "3x3"))
        set_branch(net, path or "a1")
        return net
    raise ValueError(f"unknown gating plugin {name!r}")

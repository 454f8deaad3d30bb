"""What a benchmark row measures from a trained checkpoint, asked of the plugins that trained it (no plugin is
named here): densities, inference and training MACs, the plugins' run summary and gate statistics
(:func:`checkpoint_stats`), smoothness and twin agreement of the evaluated backbone (:func:`probe_stats`)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from solo_sparse.core.config import ConfigError
from solo_sparse.core.registry import get_plugin
from solo_sparse.engine.flops import count_macs, training_macs_ratio
from solo_sparse.engine.maskio import counts, encoder_masks, split_state
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools.evaluate import load_backbone


def cost_versions(plugins) -> Dict[str, int]:
    """{plugin: the version of its cost count} (:attr:`~solo_sparse.core.plugin.Plugin.cost_version`)."""
    return {name: get_plugin(name).cost_version for name in plugins}


def stale_cost(row: Dict[str, Any]) -> bool:
    """Whether a finished row's cost columns were measured with an older cost count of one of its plugins than
    the current code's (a row without ``cost_versions`` was measured with version 1 of each)."""
    seen = row.get("cost_versions") or {}
    return any(seen.get(name, 1) < v for name, v in cost_versions(row.get("plugins") or ()).items())


def checkpoint_stats(ck: Dict[str, Any], size: int, X: Optional[torch.Tensor], net: torch.nn.Module,
                     path: Optional[str]) -> Dict[str, Any]:
    """Densities, inference/training MACs, trigger step and gate statistics of a trained checkpoint, asked
    of the plugins that trained it (no plugin is named here)."""
    state = ck.get("state_dict", ck)
    per = encoder_masks(state)
    on, mo = per.get("online", {}), per.get("momentum", {})
    on_bb = {k: v for k, v in on.items() if k.startswith("backbone.")}
    mo_bb = {k: v for k, v in mo.items() if k.startswith("backbone.")}
    out: Dict[str, Any] = {
        "density_online": (counts(on_bb)[0] / counts(on_bb)[1]) if on_bb else 1.0,
        "density_momentum": (counts(mo_bb)[0] / counts(mo_bb)[1]) if mo_bb else (1.0 if any(
            k.startswith("momentum_backbone.") for k in state) else None),
    }
    plugin_state = ck.get("solo_sparse") or {}
    out["plugins"] = sorted(plugin_state)
    out["cost_versions"] = cost_versions(out["plugins"])
    g = 0.0
    for name, st in plugin_state.items():
        cls = get_plugin(name)
        g = max(g, cls.dense_gradient_share(st.get("config") or {}))
        out.update(cls.run_summary(st.get("extra") or {}))
        if cls.rewrites_backbone and X is not None:
            m = cls.measure_backbone(net, X)
            if m is not None:
                out["inference_macs_ratio"] = m["network_macs_ratio"]
                out["gate_sparsity"] = m["gate_sparsity"]
    if "inference_macs_ratio" not in out:
        out["inference_macs_ratio"] = count_macs(net, (1, 3, size, size), from_weights=True).ratio
    gated = any(get_plugin(name).rewrites_backbone for name in plugin_state)
    reports = []
    for prefix in ("backbone.", "momentum_backbone."):
        st = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not st or gated:
            reports.append(None)      # gated backbones: their cost is input-dependent (inference column)
            continue
        weights, masks = split_state(st)
        rnet = build_resnet("resnet18")
        # not strict on purpose: rnet only carries the layer shapes and mask buffers count_macs counts from (its
        # weights never enter the count), so a key it lacks or has beyond the checkpoint changes nothing here
        rnet.load_state_dict(weights, strict=False)
        for layer, m in masks.items():
            rnet.get_submodule(layer).register_buffer("weight_mask", m)
        reports.append(count_macs(rnet, (1, 3, size, size)))
    if reports[0] is not None:
        out["training_macs_ratio"] = training_macs_ratio(reports[0], reports[1], g)
    return out


def probe_stats(ck_path: str, net: torch.nn.Module, X: torch.Tensor, path: Optional[str]) -> Dict[str, Any]:
    """Smoothness and twin agreement of a trained backbone on images ``X``: the shift sensitivity (1 - cos of the
    pooled features under a 1-px shift) and, where the checkpoint holds a momentum encoder, the online/momentum
    feature cosine (both on the evaluation path) — :mod:`solo_sparse.engine.probes`."""
    from solo_sparse.engine.probes import shift_sensitivity, twin_agreement

    out: Dict[str, Any] = {"shift_sensitivity": shift_sensitivity(net, X, 1)}
    try:
        mom, _ = load_backbone(ck_path, "resnet18", gated_path=path, prefix="momentum_backbone.")
    except ConfigError:
        mom = None                      # no momentum encoder in this checkpoint
    out["online_momentum_cos"] = None if mom is None else twin_agreement(net, mom, X)
    return out


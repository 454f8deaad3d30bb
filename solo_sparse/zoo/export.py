"""Writing zoo entries out: a solo-learn checkpoint (for ``main_linear.py``), a torchvision state dict,
or a compact (dead channels removed) zoo-format file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from solo_sparse.core.files import atomic_path
from solo_sparse.engine.maskio import MASK
from solo_sparse.zoo.format import ZooError, build_module, read_backbone, save_backbone
from solo_sparse.zoo.manifest import check_against_manifest, entry, fetch, load_with_meta


def _plain(name: str, root: Optional[Path]) -> torch.nn.Module:
    """Entry ``name``'s network, verified, as the plain network the plugin that rebuilt its backbone (the file's
    ``gating`` record) says it is on the entry's path (:meth:`~solo_sparse.core.plugin.Plugin.plain_backbone`),
    or as loaded (then compacting a gated one is refused with the reason). Only that plugin is asked: the entry's
    other plugins (weight masks) left nothing of theirs in the module and need not be installed."""
    from solo_sparse.core.registry import get_plugin

    net, meta = load_with_meta(name, "solo", root)
    gating = meta.get("gating") or {}
    plain = get_plugin(gating["plugin"]).plain_backbone(net) if gating else None
    return net if plain is None else plain


def export_compact(name: str, out: Path, channel_density: Optional[float] = None, root: Optional[Path] = None,
                   fp16: bool = False) -> Dict[str, Any]:
    """Write a compacted copy of entry ``name`` (zoo format, ``compact`` widths in the metadata) and
    return {path, kept channels, MACs, max output difference}. ``channel_density`` first prunes the
    internal channels to that fraction (``solo_sparse.engine.compact.channel_prune``); without it only the
    channels that carry nothing already are removed (exact)."""
    from solo_sparse.engine import compact as C

    out = _check_out(out)
    net = _plain(name, root)
    if channel_density is not None:
        C.channel_prune(net, channel_density)
    small = C.compact(net)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((small(x) - net(x)).abs().max())
    sd = small.state_dict()
    masks = {k[: -len(MASK) - 1] + ".weight": v for k, v in sd.items() if k.endswith("." + MASK)}
    weights = {k: v for k, v in sd.items() if not k.endswith("." + MASK)}
    save_backbone(Path(out), weights, masks, arch=entry(name, root).get("backbone", "resnet18"), fp16=fp16,
                  compact_widths=C.widths(small))
    full, kept = sum(C.widths(net).values()), sum(C.widths(small).values())
    return {"path": str(out), "internal_channels": [kept, full], "macs": [C.macs(small), C.macs(net)],
            "max_abs_diff": diff, "size_bytes": Path(out).stat().st_size}


def export(name: str, out: Path, fmt: str = "solo", root: Optional[Path] = None) -> Path:
    """Write ``solo``: a solo-learn checkpoint (``state_dict`` with ``backbone.*`` and the plugin
    state ``solo_sparse``) that the unchanged ``main_linear.py`` loads with no missing key (with the
    entry's plugin line for gated backbones); or ``torchvision``: a plain ResNet state dict."""
    if fmt not in ("solo", "torchvision"):
        raise ZooError(f"export format must be 'solo' or 'torchvision', got {fmt!r}")
    out = _check_out(out)
    e = entry(name, root)
    state, masks, meta = read_backbone(fetch(e, root))
    check_against_manifest(e, masks, meta)
    net = build_module(state, masks, meta, "solo" if fmt == "solo" else "torchvision")
    sd = {k: v for k, v in net.state_dict().items()}
    if fmt == "solo":
        gating = meta.get("gating") or {}
        payload = {"state_dict": {f"backbone.{k}": v for k, v in sd.items()},
                   "solo_sparse": ({gating["plugin"]: {"config": gating["config"]}} if gating else {}),
                   "zoo_entry": name}
    else:
        payload = {k: v for k, v in sd.items() if not k.endswith(MASK)}
    try:
        with atomic_path(out) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as exc:      # torch's zip writer reports a full disk or `ulimit -f` as a RuntimeError
        raise ZooError(f"{out}: could not be written ({str(exc).strip().splitlines()[0][:160]}); "
                       "a previous file there is unchanged") from None
    return out


def _check_out(out) -> Path:
    """An output file path: not a directory, its folder created."""
    out = Path(out)
    if out.is_dir():
        raise ZooError(f"--out {out} is a directory; give a file name (e.g. {out / 'backbone.ckpt'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out

"""The zoo's file format: compressed safetensors backbones (never pickled), read back into ready modules.

Storage (``*.safetensors``; format ``solo-sparse-zoo/1`` in the metadata):

* dense tensors as they are (``fp16`` stores floating tensors as float16; they load as float32);
* a weight-sparse tensor ``k`` (a conv with a mask) as ``k::bitmask`` (uint8, the flattened mask
  packed 8 per byte, little bit order) + ``k::values`` (its non-zero values in row-major order);
  its shape is in the metadata (``"shapes"``). A 90%-sparse fp32 conv costs 1/32 (bitmask) + 0.1
  (values) = 0.13 of dense; with fp16 values 0.08.
* metadata: ``format``, ``arch``, ``gating`` (plugin name and config for backbones a plugin rewrote,
  so gates are rebuilt), ``shapes``, ``fp16``, ``compact`` (internal widths of a compact export).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from solo_sparse.core.checkpoint import state_mismatch
from solo_sparse.core.files import write_safetensors
from solo_sparse.engine.maskio import MASK

FORMAT = "solo-sparse-zoo/1"
SEP = "::"
#: architectures a zoo file may name (built by solo_sparse.engine.resnet.build_resnet; nothing else is looked up)
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class ZooError(RuntimeError):
    pass


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> uint8 bits (8 per byte, little bit order)."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    bits = flat.view(-1, 8) << torch.arange(8, dtype=torch.uint8)
    return bits.sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].bool()


def compress_state(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], fp16: bool = False
                   ) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[int]]]:
    """Backbone ``state`` (weights) + ``masks`` {weight key: bool mask} -> (tensors, shapes)."""
    out: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, List[int]] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.half()
        if k in masks:
            m = masks[k].bool().cpu()
            if m.shape != v.shape:
                raise ZooError(f"mask of {k!r} has shape {tuple(m.shape)}, weight {tuple(v.shape)}")
            out[k + SEP + "bitmask"] = _pack(m)
            out[k + SEP + "values"] = v.flatten()[m.flatten()].contiguous()
            shapes[k] = [int(d) for d in v.shape]
        else:
            out[k] = v.contiguous()
    return out, shapes


def _check_shapes(tensors: Mapping[str, torch.Tensor], shapes: Any) -> Dict[str, List[int]]:
    """The metadata's ``shapes`` agree with the stored bitmask and value tensors — checked before anything
    is allocated from them (a crafted header cannot ask for terabytes)."""
    if not isinstance(shapes, dict):
        raise ZooError("metadata 'shapes' is not an object")
    out = {}
    for k, shape in shapes.items():
        if not isinstance(shape, list) or not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                                           for d in shape):
            raise ZooError(f"metadata shape of {k!r} is {shape!r}, expected a list of positive integers")
        bits, vals = tensors.get(k + SEP + "bitmask"), tensors.get(k + SEP + "values")
        if bits is None or vals is None:
            raise ZooError(f"{k!r} has a shape in the metadata but no {k}{SEP}bitmask / {k}{SEP}values tensors")
        n = 1
        for d in shape:
            n *= d
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (n + 7) // 8:
            raise ZooError(f"{k!r}: bitmask of {bits.numel()} bytes ({bits.dtype}) does not encode shape {shape} "
                           f"({(n + 7) // 8} bytes)")
        if vals.dim() != 1 or vals.numel() > n:
            raise ZooError(f"{k!r}: {vals.numel()} values for {n} positions")
        out[k] = shape
    stray = [k for k in tensors if SEP in k and k.split(SEP)[0] not in out]
    if stray:
        raise ZooError(f"tensor {stray[0]!r} has no shape in the metadata")
    return out


def decompress_state(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, List[int]]
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Inverse of :func:`compress_state`: (float32 state, {weight key: bool mask})."""
    shapes = _check_shapes(tensors, shapes)
    state: Dict[str, torch.Tensor] = {}
    masks: Dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if SEP in k:
            continue
        state[k] = v.float() if v.is_floating_point() else v
    for k, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        m = _unpack(tensors[k + SEP + "bitmask"], n)
        vals = tensors[k + SEP + "values"].float()
        if int(m.sum()) != vals.numel():
            raise ZooError(f"{k!r}: {int(m.sum())} kept positions but {vals.numel()} values (corrupt file)")
        w = torch.zeros(n, dtype=torch.float32)
        w[m] = vals
        state[k] = w.view(shape)
        masks[k] = m.view(shape)
    return state, masks


def save_backbone(path: Path, state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *,
                  arch: str = "resnet18", gating: Optional[Mapping[str, Any]] = None, fp16: bool = False,
                  compact_widths: Optional[Mapping[str, int]] = None, method: Optional[str] = None) -> None:
    """Write a backbone file (atomically, :mod:`solo_sparse.core.files`). ``compact_widths``: the
    internal channel counts of a compacted ResNet (``solo_sparse.engine.compact.widths``)."""
    tensors, shapes = compress_state(state, masks, fp16)
    meta = {"format": FORMAT, "arch": arch, "gating": json.dumps(gating or {}), "shapes": json.dumps(shapes),
            "fp16": str(bool(fp16)), "compact": json.dumps(dict(compact_widths or {}))}
    if method:
        meta["method"] = str(method)
    write_safetensors(path, tensors, meta)


def read_backbone(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, Any]]:
    """(float32 state, masks, metadata) of a backbone file; safetensors only, never unpickled. Anything
    malformed is a one-line :class:`ZooError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise ZooError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
            if meta.get("arch") not in ARCHS:
                raise ZooError(f"{path}: arch {str(meta.get('arch'))[:80]!r} is not one of {', '.join(ARCHS)}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key in ("shapes", "gating", "compact"):
            try:
                meta[key] = json.loads(meta.get(key, "{}"))
            except json.JSONDecodeError:
                raise ZooError(f"metadata {key!r} is not valid JSON") from None
        state, masks = decompress_state(tensors, meta["shapes"])
    except ZooError as exc:
        msg = str(exc)
        raise ZooError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise ZooError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return state, masks, meta


# ------------------------------------------------------------------------------ building modules
def _check_widths(net: nn.Module, w: Any, arch: str) -> Dict[str, int]:
    """A compact file's internal widths, checked against the architecture before anything is built from them
    (a crafted width cannot allocate gigabytes): known pair keys, integers in [1, the full width]."""
    from solo_sparse.engine.compact import widths

    full = widths(net)
    if not isinstance(w, dict):
        raise ZooError(f"metadata 'compact' is a {type(w).__name__}, expected an object of internal widths")
    for k, v in w.items():
        if k not in full:
            raise ZooError(f"metadata 'compact': {str(k)[:80]!r} is not an internal conv of a {arch} "
                           f"(e.g. {next(iter(full))!r})")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= full[k]:
            raise ZooError(f"metadata 'compact': width of {k!r} is {str(v)[:40]}; allowed an integer in "
                           f"[1, {full[k]}] for a {arch}")
    return w


def build_module(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                 form: str = "solo") -> nn.Module:
    """A ready module: solo-learn's ResNet form (``fc`` = Identity, masks as ``weight_mask`` buffers,
    gates converted and routed to their evaluation path) or ``torchvision`` form (a plain torchvision
    ResNet with the masked weights, ``fc`` = Identity; refused for gated backbones, whose gates are
    not torchvision modules)."""
    from solo_sparse.core.registry import rebuild_backbone
    from solo_sparse.engine.resnet import build_resnet

    if form not in ("solo", "torchvision"):
        raise ZooError(f"form must be 'solo' or 'torchvision', got {form!r}")
    gating = meta.get("gating") or {}
    if form == "torchvision" and gating:
        raise ZooError(f"a {gating.get('plugin')} backbone has gates: load it with form='solo' (or export it with "
                       f"`solo-sparse zoo export --format solo` for main_linear.py)")
    if meta.get("arch") not in ARCHS:
        raise ZooError(f"arch {meta.get('arch')!r} is not one of {', '.join(ARCHS)}")
    net = build_resnet(meta["arch"])
    if meta.get("compact"):
        from solo_sparse.engine.compact import shrink_to

        shrink_to(net, _check_widths(net, meta["compact"], meta["arch"]))
    if gating:
        if not isinstance(gating.get("config"), dict):
            raise ZooError("metadata 'gating' lacks the plugin's config")
        rebuild_backbone(net, {gating["plugin"]: {"config": gating["config"]}})
    bad = state_mismatch(net.state_dict(), state)
    if bad:
        raise ZooError(f"architecture mismatch: {bad} (arch {meta.get('arch')})")
    net.load_state_dict(dict(state), strict=True)
    for k, m in masks.items():
        mod = net.get_submodule(k.rsplit(".", 1)[0])
        with torch.no_grad():
            mod.weight.mul_(m.to(mod.weight.dtype))
        if form == "solo":
            mod.register_buffer(MASK, m.clone(), persistent=True)
    return net.eval()

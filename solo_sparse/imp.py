"""Iterative magnitude pruning (IMP) engine: global pruning of the remaining weights, mask files,
rewind states and the random-mask control. Plain PyTorch + safetensors; nothing is ever unpickled.

Caron et al. (2020), "Pruning convolutional neural networks with self-supervision", follow
Frankle & Carbin's IMP: each round trains under fixed masks, then removes ``rate`` (0.2) of the
*remaining* weights with the smallest magnitude, one threshold over all pruned layers (global),
the last FC / classifier and every BatchNorm excluded; survivors are reset to their values at an
early point of the first round ("late resetting", the winning ticket) or to a fresh random init.

Files (all safetensors, loadable without pickle):

- mask file: one bool tensor per layer, keyed ``<group>.<module path>`` (e.g.
  ``backbone.layer1.0.conv1``) as in :class:`~solo_sparse.sparsifier.WeightSparsifier`;
  metadata (strings) ``{"format": "solo-sparse-masks/1", "density", "round", ...}``.
- state file: tensors of a whole method (``state_dict`` of the LightningModule without mask
  buffers) at the rewind point; metadata ``{"format": "solo-sparse-state/1", "step", ...}``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .config import ConfigError, PREFIX

MASKS_FORMAT = "solo-sparse-masks/1"
STATE_FORMAT = "solo-sparse-state/1"


# ----------------------------------------------------------------------------------------- pruning
@torch.no_grad()
def global_magnitude_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                           rate: float) -> Dict[str, torch.Tensor]:
    """New masks with ``rate`` of the currently kept weights removed, smallest |w| first, globally.

    ``weights``/``masks``: ``{layer: tensor}`` with equal keys and shapes (masks bool). Exactly
    ``round(rate * kept)`` weights are removed (ties broken by position, deterministically);
    already pruned weights stay pruned. Returns ``{layer: bool tensor}`` on the masks' devices.
    """
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"{PREFIX}.rate={rate!r}: must be in (0, 1) (share of the remaining weights pruned per round)")
    names = list(masks)
    missing = [n for n in names if n not in weights]
    if missing:
        raise KeyError(f"no weight for masked layer {missing[0]!r}")
    scores, sizes = [], []
    for n in names:
        w, m = weights[n], masks[n].bool()
        if w.shape != m.shape:
            raise ValueError(f"layer {n!r}: weight shape {tuple(w.shape)} != mask shape {tuple(m.shape)}")
        s = w.detach().abs().float().flatten().cpu()
        s[~m.flatten().cpu()] = float("inf")   # pruned weights are never counted as candidates
        scores.append(s)
        sizes.append(s.numel())
    flat = torch.cat(scores)
    kept = int(torch.isfinite(flat).sum())
    n_prune = int(round(rate * kept))
    new_flat = torch.isfinite(flat)
    if n_prune > 0:
        # stable sort: equal magnitudes are pruned in layer/position order, reproducibly
        order = torch.sort(flat, stable=True).indices[:n_prune]
        new_flat[order] = False
    out, i = {}, 0
    for n, size in zip(names, sizes):
        out[n] = new_flat[i: i + size].view(masks[n].shape).to(masks[n].device)
        i += size
    return out


@torch.no_grad()
def permuted_masks(masks: Mapping[str, torch.Tensor], seed: int = 0) -> Dict[str, torch.Tensor]:
    """The random-mask control: each layer's mask shuffled within the layer (same per-layer density)."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for n, m in masks.items():
        flat = m.flatten().cpu()
        out[n] = flat[torch.randperm(flat.numel(), generator=g)].view(m.shape).to(m.device)
    return out


def total_density(masks: Mapping[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / max(total, 1)


def prunable_count_after(rounds: int, rate: float) -> float:
    """Density after ``rounds`` rounds at ``rate``: (1 - rate) ** rounds."""
    return (1.0 - rate) ** rounds


# ----------------------------------------------------------------------------------------- files
def _meta(d: Mapping[str, object]) -> Dict[str, str]:
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in d.items()}


def save_masks(path, masks: Mapping[str, torch.Tensor], **meta) -> Path:
    """Write ``{layer: bool mask}`` to a safetensors file (atomically: temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()}
    md = _meta({"format": MASKS_FORMAT, "density": total_density(tensors), **meta})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=md)
    tmp.replace(path)
    return path


def load_masks(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a mask file; raises ConfigError if it is missing or not a solo-sparse mask file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse error is a bad file
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: not a readable safetensors file ({e})") from e
    if meta.get("format") != MASKS_FORMAT:
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: not a solo-sparse mask file "
                          f"(format {meta.get('format')!r}, expected {MASKS_FORMAT!r})")
    bad = [k for k, v in tensors.items() if v.dtype != torch.bool]
    if bad:
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: mask {bad[0]!r} is {tensors[bad[0]].dtype}, expected bool")
    return tensors, meta


def check_masks_match(masks: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], source: str = "mask file") -> None:
    """Refuse a mask set that does not fit the model, naming the first mismatching layer.

    ``shapes``: the model's maskable layers ``{layer: weight shape}`` in model order.
    """
    for name, shape in shapes.items():
        if name not in masks:
            raise ConfigError(f"{source} does not match the model: no mask for layer {name!r} "
                              f"(the file has {len(masks)} layers, the model {len(shapes)})")
        if tuple(masks[name].shape) != tuple(shape):
            raise ConfigError(f"{source} does not match the model: layer {name!r} has mask shape "
                              f"{tuple(masks[name].shape)}, the model's weight is {tuple(shape)}")
    extra = [k for k in masks if k not in shapes]
    if extra:
        raise ConfigError(f"{source} does not match the model: layer {extra[0]!r} is not a masked layer of this model "
                          f"(check include / exclude_stem and the backbone)")


def save_state(path, state: Mapping[str, torch.Tensor], **meta) -> Path:
    """Write a module state (tensors only; mask buffers dropped) to safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state.items():
        if not torch.is_tensor(v) or k.endswith(".weight_mask"):
            continue
        tensors[k] = v.detach().to("cpu").clone().contiguous()   # clone: no shared storage in the file
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=_meta({"format": STATE_FORMAT, **meta}))
    tmp.replace(path)
    return path


def load_state(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.init={str(path)!r}: no such file")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(f"{PREFIX}.init={str(path)!r}: not a solo-sparse state file (format {meta.get('format')!r})")
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def fingerprint(obj) -> str:
    """A stable short hash of a JSON-able object (IMP run configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                strict_prefixes: Optional[Tuple[str, ...]] = ("backbone.",)) -> None:
    """Copy ``state`` into ``module`` (in place). Keys under ``strict_prefixes`` must all be present.

    Keys of the module missing from the file under those prefixes (mask buffers aside) are an error
    naming the first one; so is any shape mismatch. Other keys (classifier, queues) load when present.
    """
    own = module.state_dict()
    for k, v in own.items():
        if k.endswith(".weight_mask"):
            continue
        if strict_prefixes and k.startswith(strict_prefixes) and k not in state:
            raise ConfigError(f"{source} does not match the model: key {k!r} missing")
    with torch.no_grad():
        for k, v in state.items():
            if k not in own:
                if strict_prefixes and k.startswith(strict_prefixes):
                    raise ConfigError(f"{source} does not match the model: unexpected key {k!r}")
                continue
            if own[k].shape != v.shape:
                raise ConfigError(f"{source} does not match the model: {k!r} has shape {tuple(v.shape)}, "
                                  f"the model's is {tuple(own[k].shape)}")
            own[k].copy_(v.to(own[k].device, own[k].dtype))

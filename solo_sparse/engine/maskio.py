"""Masks outside the model: in checkpoints and state dicts, and in mask files — the one module that knows
the key convention. Plain torch + safetensors; nothing is ever unpickled.

* In a module's ``state_dict`` a masked layer ``<path>`` carries ``<path>.weight`` and the bool buffer
  ``<path>.weight_mask`` (:data:`MASK`); a solo-learn method holds the online encoder under
  ``backbone.`` / ``projector.`` / ``predictor.`` and its EMA twin under ``momentum_<group>.``.
  :func:`split_state` separates masks from weights, :func:`encoder_masks` splits a method's masks per
  encoder, :func:`density` / :func:`layer_densities` count them, :func:`apply_masks` puts them on a module.
* A mask file (IMP rounds, the mask controls) holds one bool tensor per layer keyed
  ``<group>.<module path>`` (e.g. ``backbone.layer1.0.conv1``, as
  :class:`~solo_sparse.engine.sparsifier.WeightSparsifier` names layers), metadata (strings)
  ``{"format": "solo-sparse-masks/1", "density", "round", ...}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch

from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.core.files import write_safetensors

#: name of the persistent bool buffer next to a masked layer's ``weight``
MASK = "weight_mask"
SUFFIX = "." + MASK
MASKS_FORMAT = "solo-sparse-masks/1"
MOMENTUM_PREFIX = "momentum_"


# ----------------------------------------------------------------------------------------- state dicts
def is_mask_key(key: str) -> bool:
    return key.endswith(SUFFIX)


def split_state(state: Mapping[str, torch.Tensor], source: str = "state dict"
                ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """``(weights, masks)`` of a state dict: ``masks`` keyed by layer path (``layer1.0.conv1``), ``weights``
    every other key unchanged. Every mask is checked (:func:`check_mask`): a crafted file cannot slip a float,
    NaN or mis-shaped mask into a model."""
    weights = {k: v for k, v in state.items() if not is_mask_key(k)}
    masks = {k[: -len(SUFFIX)]: v for k, v in state.items() if is_mask_key(k)}
    for layer, m in masks.items():
        check_mask(layer, m, weights.get(layer + ".weight"), source)
    return weights, masks


def check_mask(layer: str, mask, weight, source: str = "state dict") -> None:
    """A mask is a bool tensor of its weight's shape; anything else is a one-line ConfigError naming ``source``,
    the key and what it holds."""
    key = f"{source}: {layer}{SUFFIX}"
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        what = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
        raise ConfigError(f"{key} is {what}; a mask must be a bool tensor of its weight's shape")
    if not torch.is_tensor(weight):
        raise ConfigError(f"{key} has no {layer}.weight beside it; a mask belongs to a weight")
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"{key} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}; a mask must have "
                          "its weight's shape")


def encoder_masks(state: Mapping[str, torch.Tensor], source: str = "state dict"
                  ) -> Dict[str, Dict[str, torch.Tensor]]:
    """A method's masks per encoder: ``{"online": {layer: mask}, "momentum": {layer: mask}}`` with layer
    keys as the online encoder names them (``backbone.layer1.0.conv1``); an encoder without masks is absent."""
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for layer, m in split_state(state, source)[1].items():
        if layer.startswith(MOMENTUM_PREFIX):
            out.setdefault("momentum", {})[layer[len(MOMENTUM_PREFIX):]] = m
        else:
            out.setdefault("online", {})[layer] = m
    return out


def counts(masks: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    """``(kept, total)`` over all masks."""
    return sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Share of kept weights over all masks (1.0 when there are none)."""
    kept, total = counts(masks)
    return kept / total if total else 1.0


def layer_densities(masks: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    return {k: float(m.sum()) / m.numel() for k, m in masks.items()}


@torch.no_grad()
def apply_masks(module: torch.nn.Module, masks: Mapping[str, torch.Tensor], register: bool = False) -> None:
    """``weight *= mask`` for each ``{layer path: mask}`` of ``module``; ``register`` also keeps the masks
    as persistent :data:`MASK` buffers (for modules that are saved or fine-tuned later)."""
    for layer, m in masks.items():
        mod = module.get_submodule(layer)
        if tuple(m.shape) != tuple(mod.weight.shape):
            raise ValueError(f"mask of {layer!r} has shape {tuple(m.shape)}, weight {tuple(mod.weight.shape)}")
        mod.weight.mul_(m.to(device=mod.weight.device, dtype=mod.weight.dtype))
        if register:
            mod.register_buffer(MASK, m.to(device=mod.weight.device, dtype=torch.bool).clone(), persistent=True)


# ----------------------------------------------------------------------------------------- mask files
def _meta(d: Mapping[str, object]) -> Dict[str, str]:
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in d.items()}


@torch.no_grad()
def permuted_masks(masks: Mapping[str, torch.Tensor], seed: int = 0) -> Dict[str, torch.Tensor]:
    """The layer-wise permutation control (ours, not the paper's global random control): each layer's mask
    shuffled within the layer, so every layer keeps its density and only *which* weights are kept is random."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for n, m in masks.items():
        flat = m.flatten().cpu()
        out[n] = flat[torch.randperm(flat.numel(), generator=g)].view(m.shape).to(m.device)
    return out




@torch.no_grad()
def global_random_masks(masks: Mapping[str, torch.Tensor], seed: int = 0) -> Dict[str, torch.Tensor]:
    """The global random control: as many kept weights as ``masks`` in total, chosen uniformly at random
    over every weight of every layer (per-layer densities are not kept; each layer keeps at least one)."""
    g = torch.Generator().manual_seed(int(seed))
    names = list(masks)
    sizes = [masks[n].numel() for n in names]
    kept, total = counts(masks)
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=g)[:kept]] = True
    out, i = {}, 0
    for n, size in zip(names, sizes):
        m = keep[i: i + size].clone()
        if not m.any():
            m[int(torch.randint(size, (1,), generator=g))] = True
        out[n] = m.view(masks[n].shape).to(masks[n].device)
        i += size
    return out


def save_masks(path, masks: Mapping[str, torch.Tensor], **meta) -> Path:
    """Write ``{layer: bool mask}`` to a safetensors file (atomically: temp file + rename)."""
    tensors = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()}
    md = _meta({"format": MASKS_FORMAT, "density": density(tensors), **meta})
    return write_safetensors(path, tensors, md)


def _read(path, bad: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``({name: tensor}, metadata)`` of a safetensors file; any parse error is ConfigError ``bad (error)``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any parse error is a bad file
        raise ConfigError(f"{bad} ({e})") from e


def save_packed_masks(path, masks: Mapping[str, torch.Tensor], **meta) -> Path:
    """Write ``{layer: bool mask}`` bit-packed (8 weights per byte; a ResNet-18's masks in 1.4 MB instead of
    11 MB): what an IMP chain carries to another machine (:meth:`~solo_sparse.tools.imp.driver.IMPDriver.carry`).
    :func:`load_packed_masks` returns exactly the masks given."""
    import numpy as np

    tensors, shapes = {}, {}
    for k, v in masks.items():
        flat = v.detach().to("cpu", torch.bool).flatten().numpy()
        tensors[k] = torch.from_numpy(np.packbits(flat))
        shapes[k] = list(v.shape)
    md = _meta({"format": MASKS_FORMAT + "-packed", "density": density(masks), "shapes": shapes, **meta})
    return write_safetensors(path, tensors, md)


def load_packed_masks(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read :func:`save_packed_masks`'s file back to ``({layer: bool mask}, metadata)``."""
    import numpy as np

    packed, meta = _read(path, f"{str(path)!r}: not a readable packed mask file")
    if meta.get("format") != MASKS_FORMAT + "-packed":
        raise ConfigError(f"{str(path)!r}: not a packed solo-sparse mask file (format {meta.get('format')!r})")
    shapes = json.loads(meta.pop("shapes"))
    meta["format"] = MASKS_FORMAT
    out = {}
    for k, v in packed.items():
        n = int(np.prod(shapes[k])) if shapes[k] else 1
        bits = np.unpackbits(v.numpy(), count=n).astype(bool)
        out[k] = torch.from_numpy(bits).view(*shapes[k])
    return out, meta


def load_masks(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a mask file; raises ConfigError if it is missing, not a solo-sparse mask file, holds a non-bool
    mask, or keeps no weight at all (every layer all False: a dead backbone)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: no such file")
    tensors, meta = _read(path, f"{PREFIX}.masks={str(path)!r}: not a readable safetensors file")
    if meta.get("format") != MASKS_FORMAT:
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: not a solo-sparse mask file "
                          f"(format {meta.get('format')!r}, expected {MASKS_FORMAT!r})")
    bad = [k for k, v in tensors.items() if v.dtype != torch.bool]
    if bad:
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: mask {bad[0]!r} is {tensors[bad[0]].dtype}, expected bool")
    if not tensors or counts(tensors)[0] == 0:
        raise ConfigError(f"{PREFIX}.masks={str(path)!r}: keeps no weight ({len(tensors)} layer(s), all False): "
                          "a dead backbone; refused before any training")
    return tensors, meta


def check_masks_match(masks: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size],
                      source: str = "mask file") -> None:
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

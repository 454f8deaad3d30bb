"""Iterative magnitude pruning (IMP) engine: global pruning of the remaining weights, mask files,
rewind states. Plain PyTorch + safetensors; nothing is ever unpickled (the mask controls are in maskio).

Caron et al. (2020), "Pruning convolutional neural networks with self-supervision", follow
Frankle & Carbin's IMP: each round trains under fixed masks, then removes ``rate`` (0.2) of the
*remaining* weights with the smallest magnitude, one threshold over all pruned layers (global),
the last FC / classifier and every BatchNorm excluded; survivors are reset to their values at an
early point of the first round ("late resetting", the winning ticket) or to a fresh random init.

Files (all safetensors, loadable without pickle):

- mask file: :mod:`solo_sparse.engine.maskio` (one bool tensor per layer).
- state file: tensors of a whole method (``state_dict`` of the LightningModule without mask
  buffers) at the rewind point; metadata ``{"format": "solo-sparse-state/1", "step", ...}``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from solo_sparse.core.checkpoint import state_mismatch
from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.core.files import write_safetensors
from solo_sparse.engine.maskio import _meta, is_mask_key

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
        raise ConfigError(f"{PREFIX}.rate={rate!r}: must be in (0, 1) "
                          "(share of the remaining weights pruned per round)")
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


def save_state(path, state: Mapping[str, torch.Tensor], **meta) -> Path:
    """Write a module state (tensors only; mask buffers dropped) to safetensors, atomically."""
    tensors = {}
    for k, v in state.items():
        if not torch.is_tensor(v) or is_mask_key(k):
            continue
        tensors[k] = v.detach().to("cpu").clone().contiguous()   # clone: no shared storage in the file
    return write_safetensors(path, tensors, _meta({"format": STATE_FORMAT, **meta}))


def load_state(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{PREFIX}.init={str(path)!r}: no such file")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != STATE_FORMAT:
            raise ConfigError(f"{PREFIX}.init={str(path)!r}: not a solo-sparse state file "
                              f"(format {meta.get('format')!r})")
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def _content_hash(state: Mapping[str, torch.Tensor], meta: Mapping[str, str], floats: bool) -> str:
    """sha256 over the sorted metadata and every tensor's name, dtype, shape and bytes (a floating tensor's bytes
    only with ``floats``)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(state):
        v = state[k]
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        if v.numel() and (floats or not v.is_floating_point()):
            h.update(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_digest(path) -> str:
    """sha256 of a state file's *content* — every tensor's name, dtype, shape and bytes in name order, and the
    metadata sorted — not of its bytes: safetensors writes the metadata in hash-map order, so two writes of the same
    state may differ byte for byte."""
    return _content_hash(*load_state(path), floats=True)


def state_summary(path) -> Dict[str, object]:
    """One read of a state file: ``sha256`` (:func:`state_digest`), ``structure`` (the same hash without the
    floating-point values: metadata — the step and epoch the point was taken at —, names, dtypes, shapes and the
    non-floating tensors; two states equal here differ at most in float values) and ``norms`` (the float64 L2 norm
    of every floating tensor, by name: small enough to carry in JSON, what :func:`norms_difference` compares)."""
    state, meta = load_state(path)
    return {"sha256": _content_hash(state, meta, True), "structure": _content_hash(state, meta, False),
            "norms": {k: float(v.double().norm()) for k, v in sorted(state.items()) if v.is_floating_point()}}


def norms_difference(want: Mapping[str, float], got: Mapping[str, float]) -> Tuple[float, Optional[str]]:
    """The largest relative difference ``|got - want| / max(|want|, 1e-12)`` over the tensors of ``want`` and the
    tensor it is in; ``inf`` (and the name) when a tensor of ``want`` is missing from ``got`` or the other way
    round. ``(0.0, None)`` for equal summaries."""
    names = sorted(set(want) | set(got))
    worst, where = 0.0, None
    for n in names:
        if n not in want or n not in got:
            return float("inf"), n
        d = abs(float(got[n]) - float(want[n])) / max(abs(float(want[n])), 1e-12)
        if d > worst:
            worst, where = d, n
    return worst, where


def machine_summary() -> Dict[str, object]:
    """What decides whether two CPU trainings are bit-identical, without a machine path: the torch version, the
    CPU kernel level torch dispatches to, the thread count and the CPU's model name."""
    import platform

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cpu": model}


def fingerprint(obj) -> str:
    """A stable short hash of a JSON-able object (IMP run configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                strict_prefixes: Optional[Tuple[str, ...]] = ("backbone.",)) -> None:
    """Copy ``state`` into ``module`` (in place). Keys under ``strict_prefixes`` must all be present.

    Keys under those prefixes missing from the file (mask buffers aside) or not in the module are an error
    naming them (:func:`~solo_sparse.core.checkpoint.state_mismatch`); so is any shape mismatch. Other keys
    (classifier, queues) load when present.
    """
    own = module.state_dict()
    fit = {k: v for k, v in own.items() if not is_mask_key(k) or k in state}   # mask buffers need not be in the file
    bad = state_mismatch(fit, state, strict=lambda k: bool(strict_prefixes) and k.startswith(strict_prefixes))
    if bad:
        raise ConfigError(f"{source} does not match the model: {bad}")
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v.to(own[k].device, own[k].dtype))

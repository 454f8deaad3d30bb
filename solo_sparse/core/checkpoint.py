"""The checkpoint format every host writes, and its reading in solo-learn's naming.

A pre-training checkpoint is a Lightning checkpoint (``state_dict``, ``epoch``, ...) plus three entries, all
tensors and plain values (``torch.load(weights_only=True)`` reads them):

* ``solo_sparse`` — the plugins' state (:meth:`~solo_sparse.core.plugin.PluginHost.state_dict`): each plugin's
  config, step, epoch and extra state; the registry asks it which plugin rewrote the backbone;
* ``solo_sparse_rng`` — every global random state at the checkpoint (exact resume);
* ``solo_sparse_host`` (written by hosts other than solo-learn) — which host trained the run and where the
  module keeps its encoders::

      {"host": "lightning", "module": "MoCo", "family": "momentum",
       "prefixes": {"backbone": "backbone", "momentum_backbone": "backbone_momentum",
                    "projector": "projection_head", ...},
       "backbone_names": {"0": "conv1", "1": "bn1", "4": "layer1", ...}}

  ``prefixes`` maps solo-learn's attribute names to the module's; ``backbone_names`` renames the first component
  of the backbone keys where the backbone is a ``Sequential`` of a torchvision ResNet's children (the way Lightly's
  examples build it). :func:`solo_naming` rewrites such a checkpoint's ``state_dict`` into solo-learn's names
  (``backbone.conv1.weight``, ``momentum_backbone.layer1.0.conv1.weight_mask``, ...), which is what evaluation,
  the benchmarks and the zoo read: one format, whichever host trained the run.

Loading a state into a model strictly, every reader checks it with :func:`state_mismatch` first: one line naming the
missing and the unexpected keys (the first few of each and how many) or the first key whose shape differs.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from solo_sparse.core.config import ConfigError

CKPT_KEY = "solo_sparse"
RNG_KEY = "solo_sparse_rng"
HOST_KEY = "solo_sparse_host"
#: solo-learn's attribute names of the encoder groups (the canonical prefixes of a checkpoint)
GROUPS = ("backbone", "momentum_backbone", "projector", "momentum_projector", "predictor")
#: groups whose keys are renamed by ``backbone_names``
BACKBONES = ("backbone", "momentum_backbone")


def solo_naming(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """``checkpoint`` with its ``state_dict`` in solo-learn's names (a shallow copy); unchanged when no other
    host wrote it. A renamed key that collides with an existing one is refused naming both."""
    where = checkpoint.get(HOST_KEY) if isinstance(checkpoint, Mapping) else None
    if not where or "state_dict" not in checkpoint:
        return dict(checkpoint)
    prefixes: Mapping[str, str] = where.get("prefixes") or {}
    names: Mapping[str, str] = where.get("backbone_names") or {}
    bad = sorted(set(prefixes) - set(GROUPS))
    if bad:
        raise ConfigError(f"{HOST_KEY}.prefixes names unknown group(s) {bad}; allowed: {', '.join(GROUPS)}")
    # longest module prefix first: 'backbone_momentum.' must not be read as 'backbone' + '_momentum...'
    order = sorted(((canon, attr) for canon, attr in prefixes.items() if attr), key=lambda kv: -len(kv[1]))
    out: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    for key, value in checkpoint["state_dict"].items():
        new = key
        for canon, attr in order:
            if key.startswith(attr + "."):
                rest = key[len(attr) + 1:]
                if canon in BACKBONES and names:
                    head, _, tail = rest.partition(".")
                    rest = names.get(head, head) + ("." + tail if tail else "")
                new = f"{canon}.{rest}"
                break
        if new in out:
            raise ConfigError(f"checkpoint key {key!r} renamed to {new!r}, which {origin[new]!r} already has: "
                              f"{HOST_KEY}.prefixes overlap")
        out[new] = value
        origin[new] = key
    ck = dict(checkpoint)
    ck["state_dict"] = out
    return ck


def name_keys(keys: Sequence[str], show: int = 3) -> str:
    """``key 'a'``, or ``keys 'a', 'b', 'c', ... (12 in all)``: the first ``show`` keys and how many there are."""
    if len(keys) == 1:
        return f"key {keys[0]!r}"
    more = f", ... ({len(keys)} in all)" if len(keys) > show else ""
    return "keys " + ", ".join(repr(k) for k in keys[:show]) + more


def state_mismatch(own: Mapping[str, Any], state: Mapping[str, Any], *, strict: Optional[Callable[[str], bool]] = None,
                   file: str = "the file", model: str = "the model", show: int = 3) -> Optional[str]:
    """None when ``state`` (tensors by key) loads strictly into a model whose ``state_dict`` is ``own``; otherwise
    one line saying why: the keys of ``own`` missing from ``state`` and the keys of ``state`` not in ``own``
    (:func:`name_keys`), or, when the keys agree, the first key whose shape differs (and how many do).

    ``strict(key)``: whether a missing or unexpected ``key`` counts (default: every key); shapes are compared
    for every key both hold. ``file`` / ``model`` name the two sides in the message."""
    strict = strict or (lambda key: True)
    missing = [k for k in own if k not in state and strict(k)]
    unexpected = [k for k in state if k not in own and strict(k)]
    if missing or unexpected:
        parts = ([f"{name_keys(missing, show)} missing from {file}"] if missing else []) + \
                ([f"{name_keys(unexpected, show)} not in {model}"] if unexpected else [])
        return "; ".join(parts)
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        return (f"{k!r} has shape {tuple(state[k].shape)} in {file}, {tuple(own[k].shape)} in {model}"
                + (f" ({len(wrong)} keys differ in shape)" if len(wrong) > 1 else ""))
    return None

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
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

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

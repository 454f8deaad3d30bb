"""What every host of the plugins shares — the solo-learn binding (:mod:`solo_sparse.binding.wrap`) and the
Lightning binding (:mod:`solo_sparse.lightning`) — written once, host-neutral: this module imports neither
solo-learn nor Lightning nor Lightly (``tests/test_architecture.py`` checks it).

* checkpoint state: ``checkpoint["solo_sparse"]`` (the plugins' state), ``checkpoint["solo_sparse_rng"]`` (every
  global random state) and ``checkpoint["solo_sparse_host"]`` (which host wrote the run and where its encoders
  live, :mod:`solo_sparse.core.checkpoint`) — tensors and plain values only, so checkpoints load with
  ``torch.load(weights_only=True)``;
* the checks before step 0 that depend on the run, not on the host (method family, DDP without unused
  parameters);
* the schedule length from a Lightning-like trainer, the optimizer groups plugins ask for, and the queue of
  plugin metrics flushed through ``LightningModule.log_dict``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from solo_sparse.core.checkpoint import CKPT_KEY, HOST_KEY, RNG_KEY
from solo_sparse.core.config import ConfigError
from solo_sparse.core.plugin import Plugin, PluginHost

__all__ = ["CKPT_KEY", "HOST_KEY", "RNG_KEY", "LogQueue", "check_plugins", "load_state", "rng_state", "save_state",
           "schedule_info", "set_rng_state", "split_param_groups"]


# ----------------------------------------------------------------------------------------- random state
def rng_state() -> Dict[str, Any]:
    """Every global random state, as tensors and plain values (loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                           "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                                     "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------- checks before step 0
UNUSED_DDP = ("plugin '{name}' leaves parameters without gradients in some steps, but {where} makes {who} use "
              "DDP(find_unused_parameters=False); use strategy: ddp_find_unused_parameters_true")


def check_plugins(plugins: Sequence[Plugin], method: str, family: str, ddp_without_unused: bool,
                  where: str = "strategy=ddp", who: str = "solo-learn") -> None:
    """Every plugin accepts the method and its family; plugins that leave parameters unused refuse DDP without
    ``find_unused_parameters``."""
    for p in plugins:
        p.check_method(method, family)
        if p.leaves_parameters_unused and ddp_without_unused:
            raise ConfigError(UNUSED_DDP.format(name=p.name, where=where, who=who))


# ----------------------------------------------------------------------------------------- schedule length
def schedule_info(trainer) -> Tuple[Optional[int], Optional[int]]:
    """``(optimizer steps per epoch, total optimizer steps)`` of a Lightning trainer, None where unknown."""
    acc = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
    nb = trainer.num_training_batches
    spe = None if nb is None or nb == float("inf") else max(1, math.ceil(nb / acc))
    total = trainer.estimated_stepping_batches
    total = None if total is None or total == float("inf") else int(total)
    return spe, total


# ----------------------------------------------------------------------------------------- optimizer groups
def split_param_groups(groups: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]]) -> List[Dict]:
    """``groups`` without the parameters that plugins put in groups of their own (``extra``), then ``extra``."""
    if not extra:
        return list(groups)
    ids = {id(p) for g in extra for p in g["params"]}
    out = []
    for g in groups:
        g = dict(g)
        g["params"] = [p for p in g["params"] if id(p) not in ids]
        out.append(g)
    return out + list(extra)


# ----------------------------------------------------------------------------------------- metrics
class LogQueue:
    """Plugin metrics queued by ``ModelView.log`` and flushed where Lightning allows ``log_dict``."""

    def __init__(self):
        self.pending: Dict[str, float] = {}
        #: every metric's latest value (tests and reports read it)
        self.latest: Dict[str, float] = {}
        #: how many times plugins logged (mask updates, CSI checks, epoch ends)
        self.events = 0

    def __call__(self, metrics: Dict[str, float]) -> None:
        self.pending.update(metrics)
        self.latest.update(metrics)
        self.events += 1

    def flush(self, module, on_step: bool, attached: Callable[[], bool]) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        if not attached():
            return
        module.log_dict(pending, on_step=on_step, on_epoch=not on_step, sync_dist=False)


# ----------------------------------------------------------------------------------------- checkpoints
def save_state(host: PluginHost, checkpoint: Dict[str, Any], where: Optional[Dict[str, Any]] = None) -> None:
    """The plugins' state and every random state into ``checkpoint``; ``where`` (plain values) says which host
    wrote it and where its encoders live (:mod:`solo_sparse.core.checkpoint`)."""
    checkpoint[CKPT_KEY] = host.state_dict()
    checkpoint[RNG_KEY] = rng_state()
    if where is not None:
        checkpoint[HOST_KEY] = dict(where)


def load_state(host: PluginHost, checkpoint: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """Restore the plugins (refusing a checkpoint without their state) and every random state; returns the saved
    random state (hosts set it again where their framework rebuilds a data iterator), or None."""
    if CKPT_KEY not in checkpoint:
        raise ConfigError(
            f"resuming a solo-sparse run from a checkpoint without '{CKPT_KEY}' state: it was not "
            "trained with this plugin; start a new run instead"
        )
    host.load_state_dict(checkpoint[CKPT_KEY])
    if RNG_KEY in checkpoint:   # resume where the interrupted run was: same data order and augmentations
        set_rng_state(checkpoint[RNG_KEY])
        return checkpoint[RNG_KEY]
    return None

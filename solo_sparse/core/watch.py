"""The embedding watch every plugin run gets: is the representation collapsing, completely or dimensionally?

:class:`EmbeddingWatch` hooks the method's online projector (the ``projector`` group of the
:class:`~solo_sparse.core.plugin.ModelView`, when the method has one) and, once per training step (the projector's
first training forward of the step: crop 0, a large crop, in solo-learn's and Lightly's steps), takes the effective
rank (:func:`effective_rank`) of its first 64 embeddings. At each epoch end the host logs their mean as
``solo_sparse/embedding_erank`` (under DDP each process its own; rank 0's reaches the logger). A complete collapse
(every image on one direction) reads ~1, a dimensional collapse (the embeddings spread over a few directions) a few
units; how far from that a healthy run reads depends on the method, the head and the regime, so no threshold is
drawn (measured: docs/plugins/interloss.md, MoCo v2+ runs at 64 px read 6–29 healthy and 1.6–4 collapsed, in
train-mode batches of 64 at the last epoch). Logging only: nothing here changes the training (no random draw, no
gradient); per step it costs one copy of 64 embeddings to the CPU and a 64 x 64 eigenvalue problem.

A run resumed in the middle of an epoch logs that epoch's mean over the steps after the resume (the per-epoch sums
are not checkpointed; solo-learn checkpoints at epoch ends, where they are empty).
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

#: embeddings per forward the rank is taken over (the batches of the measurements in docs/plugins/interloss.md)
WATCH_ROWS = 64


def effective_rank(z: torch.Tensor, gram: bool = False) -> float:
    """exp(entropy) of the normalized singular values of the centred (N, D) batch ``z`` (Roy & Vetterli 2007):
    D for isotropic embeddings, 1 for embeddings on one line (or all equal).

    ``gram``: the singular values as the square roots of the eigenvalues of the smaller Gram matrix (N x N or
    D x D), in float32 — what the training-time watch uses: 64 x 8192 embeddings in 1.9 ms instead of 15 ms
    (1 CPU thread, measured on this project's 2-core machine), at the cost
    of float32 rounding of the small eigenvalues: a batch of exactly rank 1 reads 1.02 instead of 1.00, spread
    embeddings the same to 1e-3 — a monitor's precision, not a measurement's."""
    z = z.detach().float()
    z = z - z.mean(0)
    if gram:
        s = torch.linalg.eigvalsh(z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z).clamp_min(0).sqrt()
    else:
        s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


class EmbeddingWatch:
    """Mean effective rank of the online projector's training embeddings per epoch (see the module docstring).

    One reading per training step: the first training-mode forward of the hooked projector after :meth:`step_start`
    (in solo-learn's and Lightly's steps, crop 0 — a large crop — of the online encoder), its first ``rows``
    embeddings, copied to the CPU and taken in float32 outside autocast. A batch with fewer rows than the largest
    seen (an epoch's short last batch) is skipped: its rank is bounded by its size. ``log`` receives
    ``{"solo_sparse/embedding_erank": value}`` at :meth:`epoch_end` (nothing for an epoch without a reading). A copy
    of the projector (a deep copy carries the hook) is not measured, only the hooked module itself; the hook never
    changes the module's output and never raises."""

    KEY = "solo_sparse/embedding_erank"

    def __init__(self, projector: nn.Module, log: Callable[[Dict[str, float]], None], rows: int = WATCH_ROWS):
        self.log, self.rows = log, rows
        self.sum, self.n = 0.0, 0
        self._armed = True
        self._full = 2              # the largest batch (capped at rows) seen: shorter ones are skipped
        self._module = weakref.ref(projector)
        me = weakref.ref(self)     # the module's hook keeps neither the watch nor the host alive

        def hook(module, inp, out) -> None:      # returns None: the module's output is left as it is
            watch = me()
            if watch is not None:
                watch._record(module, out)

        self._handle = projector.register_forward_hook(hook)

    def step_start(self) -> None:
        self._armed = True

    def _record(self, module: nn.Module, out) -> None:
        if not self._armed or module is not self._module() or not module.training or not torch.is_tensor(out) \
                or out.dim() != 2 or len(out) < 2:
            return
        self._armed = False
        n = min(len(out), self.rows)
        if n < self._full:
            return
        self._full = n
        try:
            with torch.no_grad(), torch.autocast(out.device.type, enabled=False):
                z = out[:n].detach().to("cpu", torch.float32)
                if not bool(torch.isfinite(z).all()):    # a non-finite batch is the divergence check's business
                    return
                r = effective_rank(z, gram=True)
        except Exception:          # a monitor never stops a training (e.g. an eigensolver that fails to converge)
            return
        self.sum += r
        self.n += 1

    def epoch_end(self) -> Optional[float]:
        """Log and return the epoch's mean (None when nothing was recorded); the sums start over."""
        if not self.n:
            return None
        mean, self.sum, self.n = self.sum / self.n, 0.0, 0
        self.log({self.KEY: mean})
        return mean

    def detach(self) -> None:
        self._handle.remove()

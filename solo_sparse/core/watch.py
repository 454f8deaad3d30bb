"""The embedding watch every plugin run gets: is the representation collapsing, completely or dimensionally?

:class:`EmbeddingWatch` hooks the method's online projector (the ``projector`` group of the
:class:`~solo_sparse.core.plugin.ModelView`, when the method has one) and, for each training-mode forward, takes the
effective rank (:func:`effective_rank`) of the first 64 embeddings. At each epoch end the host logs their mean as
``solo_sparse/embedding_erank``. A complete collapse (every image on one direction) reads ~1, a dimensional collapse
(the embeddings spread over a few directions) a few units; how far from that a healthy run reads depends on the
method, the head and the regime, so no threshold is drawn (measured: docs/plugins/interloss.md, MoCo v2+ runs at
64 px read 6–29 healthy and 1.6–4 collapsed, in train-mode batches of 64 at the last epoch). Logging only: nothing
here changes the training (no random draw, no gradient).

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

    ``log`` receives ``{"solo_sparse/embedding_erank": value}`` at :meth:`epoch_end` (nothing for an epoch without
    a training forward). A copy of the projector (a plugin's auxiliary head made by deep copy carries the hook) is
    not measured: only the hooked module itself."""

    KEY = "solo_sparse/embedding_erank"

    def __init__(self, projector: nn.Module, log: Callable[[Dict[str, float]], None], rows: int = WATCH_ROWS):
        self.log, self.rows = log, rows
        self.sum, self.n = 0.0, 0
        self._module = weakref.ref(projector)
        me = weakref.ref(self)     # the module's hook keeps neither the watch nor the host alive
        self._handle = projector.register_forward_hook(
            lambda m, i, o: me() is not None and me()._record(m, o))

    def _record(self, module: nn.Module, out) -> None:
        if module is not self._module() or not module.training or not torch.is_tensor(out) or out.dim() != 2 \
                or len(out) < 2:
            return
        z = out[: self.rows]
        if not bool(torch.isfinite(z).all()):    # a non-finite batch is the divergence check's business
            return
        self.sum += effective_rank(z, gram=True)
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

"""Importance scores for regrowth: instant gradient magnitude (GraNet) or its EMA (SyncCP).

The EMA uses the convention ``s_t = m * s_{t-1} + (1 - m) * |g_t|`` with ``m = score_momentum``:
``m`` is the weight on the *old* score. ``m = 0`` is exactly GraNet's instant gradient; SyncCP's
"gentle" ``m = 0.1`` adds a little history to it (about one step's worth) to damp single-batch
noise without lagging behind the current landscape. Scores are tracked for every weight of a
masked layer — pruned ones included, since they are the regrowth candidates — from the dense
gradient, before the gradient is masked.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch


class GradientScore:
    def __init__(self, layers: Iterable, momentum: Optional[float] = None):
        """``layers``: the sparsifier's MaskedLayer list; ``momentum`` None = instant gradient."""
        self.layers = list(layers)
        self.momentum = momentum
        self.scores: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current (unmasked) gradients in. Call after backward, before masking gradients."""
        ema_s, ema_g = [], []
        for L in self.layers:
            g = L.online.weight.grad
            if g is None:
                continue
            s = self.scores.get(L.name)
            if s is None or self.momentum is None or s.shape != g.shape:
                self.scores[L.name] = g.detach().abs().float()
            else:
                ema_s.append(s)
                ema_g.append(g.detach().float())
        if ema_s:  # s <- s + (1 - m)(|g| - s) = m s + (1 - m)|g|, one fused multi-tensor pass
            torch._foreach_lerp_(ema_s, torch._foreach_abs(ema_g), 1.0 - self.momentum)

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        s = self.scores.get(name)
        return s if s is not None else torch.zeros_like(like, dtype=torch.float32)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.scores.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.scores = {k: v.clone() for k, v in state.items()}

    def broadcast(self, src: int = 0) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for v in self.scores.values():
                torch.distributed.broadcast(v, src)

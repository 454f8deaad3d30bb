"""Importance scores for regrowth: the instant gradient magnitude (GraNet) or its EMA (SyncCP).

EMA in the BatchNorm convention, with ``ema`` the weight of the *newest* gradient::

    s_t = (1 - ema) * s_{t-1} + ema * |g_t|        (the first update sets s = |g|)

A gradient seen k steps ago weighs ema (1 - ema)^k: with SyncCP's 0.1 a spike decays to half in
ln 2 / -ln 0.9 ≈ 6.6 steps and the score averages about 1 / ema = 10 steps — the paper's "slowly
average the gradient magnitude by EMA with gentle momentum, instead of using the instant score".
``ema = 1`` is the instant gradient. Scores are tracked for every weight of a masked layer (pruned
ones included: they are the regrowth candidates) from the dense gradient, before it is masked.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch


class GradientScore:
    def __init__(self, layers: Iterable, ema: Optional[float] = None):
        """``layers``: the sparsifier's MaskedLayer list; ``ema``: weight of the newest gradient in (0, 1]
        (None = instant gradient, updated only when the caller asks, e.g. before a mask update)."""
        if ema is not None and not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1], got {ema}")
        self.layers = list(layers)
        self.ema = ema
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
            if s is None or self.ema is None or self.ema == 1.0 or s.shape != g.shape:
                self.scores[L.name] = g.detach().abs().float()
            else:
                ema_s.append(s)
                ema_g.append(g.detach().float())
        if ema_s:  # s <- s + ema (|g| - s) = (1 - ema) s + ema |g|, one fused multi-tensor pass
            torch._foreach_lerp_(ema_s, torch._foreach_abs(ema_g), self.ema)

    def get(self, name: str, like: torch.Tensor) -> torch.Tensor:
        s = self.scores.get(name)
        return s if s is not None else torch.zeros_like(like, dtype=torch.float32)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.scores.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.scores = {k: v.clone() for k, v in state.items()}

    def broadcast(self, src: int = 0) -> None:
        """Under DDP, every rank takes rank ``src``'s scores (called with the masks after each update)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for v in self.scores.values():
                torch.distributed.broadcast(v, src)

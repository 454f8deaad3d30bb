"""Density schedules.

The cubic schedule of Zhu & Gupta (2017), used by GraNet and SyncCP, written in density:

    d_t = d_f + (d_i - d_f) * (1 - (t - t0) / (n * dt)) ** 3     for t0 <= t <= t0 + n*dt

with d_t = d_i before t0 and d_t = d_f after the end. Masks are updated at t0, t0 + dt, ... and at
the end step itself when (end - t0) is not a multiple of dt, so the final density is always reached.
"""
from __future__ import annotations

import math


def cubic_density(step: int, start: int, end: int, init: float, final: float) -> float:
    """Density at optimizer step ``step`` (0-based count of steps done)."""
    if step >= end:
        return float(final)
    if step <= start:
        return float(init)
    frac = (step - start) / float(end - start)
    return float(final + (init - final) * (1.0 - frac) ** 3)


def is_update_step(step: int, start: int, end: int, every: int) -> bool:
    """Whether masks are recomputed after optimizer step ``step``."""
    if step < start or step > end:
        return False
    return (step - start) % every == 0 or step == end


def cosine_decay(step: int, total: int, init: float, final: float) -> float:
    """``init`` cosine-annealed to ``final`` over ``total`` steps (``torch.optim.lr_scheduler.CosineAnnealingLR``
    with ``T_max = total``, ``eta_min = final``, read after ``step`` scheduler steps); ``final`` from ``total`` on.

    GraNet's death rate: 0.5 annealed to 0.005 over the whole training, stepped once per optimizer step.
    """
    if not total or total <= 0:
        return float(init)
    if step >= total:
        return float(final)
    return float(final + (init - final) * (1.0 + math.cos(math.pi * max(0, step) / total)) / 2.0)

"""Probes of a trained (or training) backbone that say whether it computes a smooth function of its input and
whether two encoders agree — plain torch, used by the gating monitor, the benchmark rows and the proxy runs.

* :func:`shift_sensitivity`: 1 - cos between the pooled features of images and of the same images shifted by
  ``px`` pixels (edge replicated), mean over the images. A dense ResNet scores ~0.001 at 64 px; a network whose
  hard data-dependent gates reorder under a 1-px shift scores 30-70x that (CDG in the paper's form at random init:
  0.06-0.07).
* :func:`twin_agreement`: mean cosine between two encoders' features of the same images (online vs momentum:
  MoCo's keys must come from about the same function as its queries).
* :func:`other_images_cos` / :func:`effective_rank`: whether embeddings collapsed — the mean cosine between the
  embeddings of different images (equal to the same-image cosine when every image maps to one direction) and the
  effective rank of a batch of embeddings (a dimensional collapse keeps a few directions).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.watch import effective_rank

__all__ = ["effective_rank", "other_images_cos", "shift", "shift_sensitivity", "twin_agreement"]


def shift(x: torch.Tensor, px: int = 1) -> torch.Tensor:
    """(N, C, H, W) images moved ``px`` pixels to the right, the left edge replicated."""
    if px <= 0:
        return x
    return F.pad(x, (px, 0, 0, 0), mode="replicate")[..., :-px]


@torch.no_grad()
def _features(net: nn.Module, x: torch.Tensor, route: Optional[Callable[[nn.Module], object]]) -> torch.Tensor:
    was = net.training
    try:
        net.eval()
        if route is not None:
            route(net)
        return F.normalize(net(x).flatten(1).float(), dim=1)
    finally:
        net.train(was)


@torch.no_grad()
def shift_sensitivity(net: nn.Module, x: torch.Tensor, px: int = 1,
                      route: Optional[Callable[[nn.Module], object]] = None) -> float:
    """Mean 1 - cos(f(x), f(shift(x, px))) in eval mode (``route``: put the net on its evaluation path first)."""
    a = _features(net, x, route)
    b = _features(net, shift(x, px), route)
    return float(1.0 - (a * b).sum(1).mean())


@torch.no_grad()
def twin_agreement(a: nn.Module, b: nn.Module, x: torch.Tensor,
                   route: Optional[Callable[[nn.Module], object]] = None) -> float:
    """Mean cos(f_a(x), f_b(x)) in eval mode."""
    return float((_features(a, x, route) * _features(b, x, route)).sum(1).mean())


def other_images_cos(a: torch.Tensor, b: Optional[torch.Tensor] = None) -> float:
    """Mean cos(a_i, b_j) over the pairs i != j of rows (different images); ``b`` defaults to ``a`` (one set of
    embeddings against itself). ``a`` and ``b``: (N, D) with the same N >= 2, normalized here."""
    b = a if b is None else b
    if a.dim() != 2 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"other_images_cos needs two (N, D) tensors of one shape with N >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(a.detach().float(), dim=1), F.normalize(b.detach().float(), dim=1)
    n = len(a)
    # sum_i sum_j a_i . b_j without the (N, N) matrix, minus the diagonal
    total = (a.sum(0) * b.sum(0)).sum() - (a * b).sum()
    return float(total / (n * (n - 1)))

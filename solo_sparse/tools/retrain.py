"""Label re-training of a pruned network (seed §4, evaluation mode (b)/(c)): a mask and an init,
trained with cross-entropy on labels, test accuracy reported. Plain PyTorch, no solo-learn.

Caron et al. compare masks found with self-supervision, re-trained on labels from their init, with
random masks re-trained the same way. The controls here (``solo-sparse permute-masks``): global random
masks at the ticket's total density (per-layer densities not kept; the CLI default) and the layer-wise
permutation (each layer's mask shuffled, per-layer densities kept; ours). The benchmark re-trains the
controls from the same init as the ticket, so they differ from it in the mask only.
Here the network is solo-learn's ResNet backbone (``build_resnet``, ``fc`` replaced by a fresh
``Linear(features, classes)``); masks (``backbone.<layer>`` keys of a mask file) stay fixed: the
gradient of a pruned weight is masked in backward and weights are re-masked after every step (SGD
momentum and weight decay cannot revive them). Augmentation: random crop (padding 2) + horizontal
flip on the in-memory tensors. SGD (momentum 0.9, nesterov), cosine schedule.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.checkpoint import state_mismatch
from solo_sparse.engine.maskio import check_masks_match
from solo_sparse.tools.evaluate import build_resnet


def masked_resnet(masks: Optional[Mapping[str, torch.Tensor]], init: Optional[Mapping[str, torch.Tensor]],
                  num_classes: int, name: str = "resnet18", seed: int = 0) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """A ResNet with ``fc = Linear(features, num_classes)``, backbone init from ``init`` (keys
    ``backbone.*``) or a fresh seeded init, weights masked. Returns ``(net, {module path: mask})``."""
    torch.manual_seed(seed)
    net = build_resnet(name)
    feat = 2048 if name in ("resnet50", "resnet101", "resnet152") else 512
    if init is not None:
        sub = {k[len("backbone."):]: v for k, v in init.items() if k.startswith("backbone.")}
        bad = state_mismatch(net.state_dict(), sub, file="the init state", model=f"a {name}")
        if bad:
            raise RuntimeError(f"init state does not fit the backbone: {bad}")
        net.load_state_dict(sub, strict=True)
    net.fc = nn.Linear(feat, num_classes)
    layer_masks = {}
    if masks:
        from solo_sparse.engine.sparsifier import select_layers

        shapes = {f"backbone.{n}": m.weight.shape for n, m in select_layers(net, exclude_stem=False)}
        shapes = {k: v for k, v in shapes.items() if k in masks}   # the file decides which layers are masked
        check_masks_match(masks, shapes, "mask file")
        with torch.no_grad():
            for k, m in masks.items():
                mod = net.get_submodule(k[len("backbone."):])
                mod.weight.mul_(m.to(mod.weight.dtype))
                layer_masks[k[len("backbone."):]] = m.bool()
    return net, layer_masks


def _augment(x: torch.Tensor, pad: int = 2) -> torch.Tensor:
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    i = torch.randint(0, 2 * pad + 1, (1,)).item()
    j = torch.randint(0, 2 * pad + 1, (1,)).item()
    out = xp[:, :, i: i + h, j: j + w]
    flip = torch.rand(b) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def retrain_supervised(masks: Optional[Mapping[str, torch.Tensor]], init: Optional[Mapping[str, torch.Tensor]],
                       train: Tuple[torch.Tensor, torch.Tensor], test: Tuple[torch.Tensor, torch.Tensor], *,
                       epochs: int = 5, lr: float = 0.05, batch_size: int = 128, weight_decay: float = 5e-4,
                       seed: int = 0, name: str = "resnet18", progress: bool = False) -> Dict[str, float]:
    """Train on ``train`` = (X (N, 3, H, W), y (N,)), report top-1 on ``test``.

    Returns ``{"accuracy", "density", "epochs"}``; the masks hold throughout (checked at the end).
    """
    n_cls = int(max(train[1].max(), test[1].max())) + 1
    net, layer_masks = masked_resnet(masks, init, n_cls, name, seed)
    fmask = {n: m.float() for n, m in layer_masks.items()}
    for n, m in fmask.items():
        net.get_submodule(n).weight.register_hook(lambda g, m=m: g * m)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    X, y = train
    steps = epochs * ((len(X) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    it = range(epochs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="label re-training", leave=False)
    for _ in it:
        net.train()
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch_size):
            idx = perm[i: i + batch_size]
            loss = F.cross_entropy(net(_augment(X[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for n, m in fmask.items():
                    net.get_submodule(n).weight.mul_(m)
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test[0]), 512):
            correct += int((net(test[0][i: i + 512]).argmax(1) == test[1][i: i + 512]).sum())
        leaked = sum(int(((net.get_submodule(n).weight != 0) & ~m).sum()) for n, m in layer_masks.items())
    if leaked:
        raise RuntimeError(f"label re-training: {leaked} pruned weights became non-zero")
    kept = sum(int(m.sum()) for m in layer_masks.values())
    total = sum(m.numel() for m in layer_masks.values())
    return {"accuracy": correct / len(test[0]), "density": kept / total if total else 1.0, "epochs": epochs}

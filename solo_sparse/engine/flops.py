"""Multiply-accumulate (MAC) accounting: dense and effective (under weight masks or gates).

Counted: every ``Conv2d`` and ``Linear`` (bias, BatchNorm, activations and pooling are not — the
same convention as ``torch.utils.flop_counter``, whose FLOPs equal 2 x our dense MACs). A conv
output element costs ``(C_in / groups) * kh * kw`` MACs, so a layer costs
``positions * weight.numel()`` (all output channels), and under a mask exactly
``positions * nnz(mask)`` where ``positions = N * H_out * W_out``.

Gates plug in without changing this module: a module that defines
``effective_macs(inputs, output, dense_macs) -> float`` is asked for its own effective count
(and may add the gate's own cost); the dense count stays the plain layer's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from solo_sparse.engine.sparsifier import MASK


@dataclass
class LayerMacs:
    name: str
    kind: str
    dense: float
    effective: float
    params: int
    kept_params: int


@dataclass
class MacsReport:
    layers: List[LayerMacs]
    input_shape: Tuple[int, ...]

    @property
    def dense(self) -> float:
        return float(sum(r.dense for r in self.layers))

    @property
    def effective(self) -> float:
        return float(sum(r.effective for r in self.layers))

    @property
    def ratio(self) -> float:
        """effective / dense (1.0 = no saving)."""
        return self.effective / self.dense if self.dense else 1.0

    def to_markdown(self) -> str:
        out = "| layer | kind | dense MMACs | effective MMACs | ratio |\n|---|---|---:|---:|---:|\n"
        for r in self.layers:
            out += (f"| {r.name} | {r.kind} | {r.dense / 1e6:.3f} | {r.effective / 1e6:.3f} | "
                    f"{r.effective / max(r.dense, 1):.3f} |\n")
        out += f"| **total** | | {self.dense / 1e6:.3f} | {self.effective / 1e6:.3f} | {self.ratio:.3f} |\n"
        return out


def _kept(mod: nn.Module, from_weights: bool) -> Optional[torch.Tensor]:
    m = getattr(mod, MASK, None)
    if m is not None:
        return m
    if from_weights:
        return mod.weight.detach() != 0
    return None


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Union[torch.Tensor, Sequence[int]] = (1, 3, 32, 32),
               from_weights: bool = False) -> MacsReport:
    """Per-layer dense and effective MACs of one forward pass of ``model`` on ``inputs``.

    ``inputs``: a tensor or a shape (zeros are used). ``from_weights``: for layers without a
    ``weight_mask`` buffer, count zero weights as pruned (for squashed/exported models).
    """
    x = inputs if torch.is_tensor(inputs) else torch.zeros(*inputs)
    rows: List[LayerMacs] = []
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            o = out if torch.is_tensor(out) else out[0]
            w = mod.weight
            out_ch = w.shape[0]
            positions = o.numel() // out_ch
            dense = float(positions * w.numel())
            kept = _kept(mod, from_weights)
            kept_n = int(kept.sum()) if kept is not None else w.numel()
            eff = float(positions * kept_n)
            if hasattr(mod, "effective_macs"):
                eff = float(mod.effective_macs(inp, out, dense))
            rows.append(LayerMacs(name, type(mod).__name__, dense, eff, w.numel(), kept_n))
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or hasattr(mod, "effective_macs"):
            if isinstance(getattr(mod, "weight", None), torch.Tensor):
                hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return MacsReport(rows, tuple(x.shape))


def training_macs_ratio(online: MacsReport, momentum: Optional[MacsReport] = None,
                        dense_weight_grad: float = 0.0) -> float:
    """Training MACs per step relative to dense training of the same method (same views, same layers).

    Per layer with dense cost D and effective cost E (under the masks at hand):
    online encoder = forward E + input-gradient E + weight-gradient (g D + (1 - g) E), where ``g`` is
    the share of steps that need the *dense* weight gradient (1 for SyncCP's per-step EMA score over
    all weights, 1/every for GraNet's instant gradient at update steps, 0 for gmp/SDCLR); the momentum
    encoder, when there is one, costs one forward E_m. Dense reference: 3 D (+ D with a momentum encoder).
    """
    g = float(dense_weight_grad)
    num = den = 0.0
    for r in online.layers:
        num += 2 * r.effective + g * r.dense + (1 - g) * r.effective
        den += 3 * r.dense
    if momentum is not None:
        for r in momentum.layers:
            num += r.effective
            den += r.dense
    return num / den if den else 1.0

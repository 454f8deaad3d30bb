"""FBS (feature boosting and suppression, Gao et al. 2019) channel gates for torchvision ResNets.

Each gated conv predicts, from its own input, a saliency per output channel

    s = ReLU(phi · mean_hw |x| + rho)            x (B, C_in, H, W) -> s (B, C_out); phi (C_out, C_in), rho (C_out,)

winner-take-all keeps the ceil(d · C_out) largest per sample (the others are exactly 0), and the
saliency takes the place of BN's scale γ: the conv's output becomes π ⊙ (norm(conv(x)) + β) with
norm the BN normalisation without affine (FBS's formulation: γ is replaced by the predicted saliency;
β stays inside the product, so a suppressed channel is exactly 0 before the activation and stays 0
after the ReLU, and the next conv of the block can skip those input channels). Convs are
class-swapped to :class:`FBSConv2d` and their blocks to :class:`FBSBasicBlock` /
:class:`FBSBottleneck` (same attributes; the forward applies the gated BN). ``ss_wta = False`` keeps
every channel (the saliency still replaces γ): the warm-up of the ``fbs`` plugin.

FLOPs (per sample, MACs, D(conv) = H_out W_out C_out C_in k^2): exact = D * kept_out * kept_in +
gate, kept_in < 1 when the conv's input is the output of an FBS-gated conv of the same block;
gate = C_in H_in W_in (|x| mean) + C_in C_out (FC) + C_out (winner-take-all). Loss: L1 on s
(:func:`saliency_l1`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.gating.cgnet import block_convs
from solo_sparse.gating.channel import GatedConvBase, gated_convs


class FBSConv2d(GatedConvBase):
    """A ``nn.Conv2d`` (same ``weight``) with an FBS saliency gate (``phi``, ``rho``)."""

    def _gate_init(self, density: float, init: str = "identity") -> None:
        self._gate_base_init()
        self.ss_density = float(density)
        self.ss_wta = True
        self.ss_in_kept: Optional[torch.Tensor] = None     # kept input channels (B, C_in) of this forward
        self._ss_pi: Optional[torch.Tensor] = None
        self._ss_s: Optional[torch.Tensor] = None
        c_out, c_in = self.weight.shape[:2]
        self.phi = nn.Parameter(torch.empty(c_out, c_in))
        self.rho = nn.Parameter(torch.ones(c_out))
        if init == "identity":
            nn.init.zeros_(self.phi)        # s = ReLU(rho) = 1 = a fresh BN's γ
        elif init == "kaiming":
            nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))     # nn.Linear's default
        else:
            raise ValueError(f"FBS saliency init {init!r}: expected 'identity' or 'kaiming'")

    def clear(self) -> None:
        super().clear()
        self._ss_s = None

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> winner-take-all saliency (B, C_out); also stores the raw s for the L1 loss."""
        s = F.relu(F.linear(x.abs().mean((2, 3)), self.phi, self.rho))
        k = max(1, math.ceil(self.ss_density * s.shape[1])) if self.ss_wta else s.shape[1]
        if k < s.shape[1]:
            thr = s.topk(k, dim=1).indices
            keep = torch.zeros_like(s, dtype=torch.bool).scatter_(1, thr, True)
            pi = s * keep
        else:
            pi = s
        self._ss_s = s
        return pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._ss_stats = None
        if self.ss_mode == "dense":
            self._ss_pi = None
            return self._conv_forward(x, self.weight, self.bias)
        self._ss_pi = self.saliency(x)
        out = self._conv_forward(x, self.weight, self.bias)
        if self.ss_record:
            b, c_out, h, w = out.shape
            kept = (self._ss_pi.detach() > 0).float()
            self._ss_last[self.ss_branch] = kept.bool()
            dense = float(h * w * self.weight.numel())
            k_in = self.ss_in_kept.mean(1) if self.ss_in_kept is not None else torch.ones(b, device=x.device)
            gate = x.shape[1] * x.shape[2] * x.shape[3] + x.shape[1] * c_out + c_out
            self._ss_stats = {"kept": kept.mean(1), "cost": dense * kept.mean(1) * k_in + gate, "dense": dense}
        return out

    def gated_bn(self, bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """``bn(y)`` with the saliency in place of γ: π ⊙ (norm(y) + β); plain ``bn(y)`` in dense mode."""
        if self.ss_mode == "dense" or self._ss_pi is None:
            return bn(y)
        pi, self._ss_pi = self._ss_pi, None
        x_hat = F.batch_norm(y, bn.running_mean, bn.running_var, None, None,
                             bn.training or bn.running_mean is None, bn.momentum if bn.momentum is not None else 0.1,
                             bn.eps)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(pi[0])
        return pi[:, :, None, None] * (x_hat + beta[None, :, None, None])


def _torchvision_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


BasicBlock, Bottleneck = _torchvision_blocks()


def _bn(conv: nn.Module, bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return conv.gated_bn(bn, y) if isinstance(conv, FBSConv2d) else bn(y)


def _pass_kept(src: nn.Module, dst: nn.Module) -> None:
    """Tell ``dst`` which of its input channels ``src`` suppressed (for the exact FLOPs)."""
    if isinstance(dst, FBSConv2d):
        pi = src._ss_pi if isinstance(src, FBSConv2d) and src.ss_mode != "dense" else None
        dst.ss_in_kept = (pi.detach() > 0).float() if (pi is not None and src.ss_record) else None


class FBSBasicBlock(BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        _pass_kept(self.conv1, self.conv2)
        out = F.relu(_bn(self.conv1, self.bn1, out))
        out = _bn(self.conv2, self.bn2, self.conv2(out))
        return F.relu(out + identity)


class FBSBottleneck(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        _pass_kept(self.conv1, self.conv2)
        out = F.relu(_bn(self.conv1, self.bn1, out))
        out2 = self.conv2(out)
        _pass_kept(self.conv2, self.conv3)
        out = F.relu(_bn(self.conv2, self.bn2, out2))
        out = _bn(self.conv3, self.bn3, self.conv3(out))
        return F.relu(out + identity)


def convert_resnet(backbone: nn.Module, *, density: float = 0.5, stages: Tuple[int, ...] = (1, 2, 3, 4),
                   convs: str = "3x3", init: str = "identity") -> nn.Module:
    """FBS-gate the ``convs`` of the blocks in ``stages`` of a torchvision ResNet, in place. ``init``:
    "identity" (φ = 0, ρ = 1: every saliency is 1, BN's γ at its initial value, so a freshly initialised
    network starts as its dense self; the saliency replaces γ, so a trained network's γ is not kept) or
    "kaiming" (φ as ``nn.Linear``'s default, ρ = 1: the saliency grows with the input's magnitude, which
    compounds through the residual stream — see docs/plugins/cdg.md)."""
    if getattr(backbone, "ss_gating", None) is not None:
        raise ValueError("backbone is already gated")
    for _, blk, conv in block_convs(backbone, stages, convs):
        conv.__class__ = FBSConv2d
        conv._gate_init(density, init)
        blk.__class__ = FBSBottleneck if isinstance(blk, Bottleneck) else FBSBasicBlock
    backbone.ss_gating = "fbs"
    return backbone


def saliency_l1(backbone: nn.Module, clear: bool = True) -> Optional[torch.Tensor]:
    """Σ_l mean_b ||s_l||_1 of the last forward (the saliencies before winner-take-all); ``clear``
    drops them so that a forward is counted once."""
    terms = []
    for _, c in gated_convs(backbone):
        if isinstance(c, FBSConv2d) and c._ss_s is not None:
            terms.append(c._ss_s.abs().sum(1).mean())
            if clear:
                c._ss_s = None
    return sum(terms) if terms else None

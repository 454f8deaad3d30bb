"""DGNet channel gating for torchvision ResNets, branch-aware (dense / gated) with separate BatchNorm.

Li et al. (DGNet, 2021) channel gate, as used by Krishna et al. ("Unifying synergies between
self-supervised learning and dynamic computation", VICReg-Dual):

    z = GAP(x)                       x: block input (B, C_in, H, W) -> z (B, C_in, 1, 1)
    W = w2(ReLU(BN(w1 z)))           w1: 1x1 conv C_in -> C_in / r, w2: 1x1 conv C_in / r -> C_1 (+ bias)
    training:  m = hard (forward), d m / d soft = 1 (backward),  soft = sigmoid((W + g) / T),  hard = [soft > 0.5],
               g = log u - log(1 - u), u ~ U(0, 1)          (Gumbel-sigmoid, straight-through)
    inference: m = [W > 0]                                   (deterministic threshold)

``m`` (B, C_1) multiplies the *activated* output of the block's first conv, so it is also the input
channel mask of the second conv. **Gates start open**: w2's bias is initialised to ``init_bias``
(default 3: P(open) = sigmoid(3) = 0.95 under the Gumbel noise), so training begins from the dense
network and the budget loss closes channels.

Conversion (:func:`convert_resnet`) works in place on a torchvision ResNet (as solo-learn builds it,
CIFAR stem or not): blocks are class-swapped to :class:`GatedBasicBlock` / :class:`GatedBottleneck`
and given a ``gate``; with ``separate_bn`` every BatchNorm of the network gets a twin used by the
gated branch (``bn1_g``, ``bn2_g``, ``downsample_bn_g``, stem ``bn1_g``; plain ``BatchNorm2d``
siblings, so ``sync_batchnorm`` converts them too). All torchvision parameter names are kept for
the shared weights and the dense BNs, so the dense path loads into a plain ``resnet18``.

FLOPs (per sample, MACs; the budget loss and the reports use the same count). For a gated block with
kept share rho = mean(m) over the C_1 gated channels:

    BasicBlock   F^O = D(conv1) + D(conv2) + D(downsample)
                 F^R = rho * (D(conv1) + D(conv2)) + D(downsample) + G
    Bottleneck   F^O = D(conv1) + D(conv2) + D(conv3) + D(downsample)
                 F^R = rho * (D(conv1) + D(conv2)) + D(conv3) + D(downsample) + G
    G (gate)     = C_in * H * W (average pool) + C_in * C_in / r (w1) + 2 * C_in / r (BN, ReLU)
                   + C_in / r * C_1 (w2) + C_1 (threshold)

with D(conv) = H_out * W_out * weight.numel(); the stem, BatchNorm, activations and the final FC
are outside the gated blocks and not in the budget ratio (they are in the whole-network count of
``solo_sparse.engine.flops.count_macs``, to which conv1/conv2 report their gated cost).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.config import PREFIX, ConfigError

#: batch-1 inference gathers the kept channels' weights only when at most this share is kept:
#: above it the weight copy costs more than the skipped channels save (a one-off one-thread
#: microbenchmark of conv pairs at ResNet-18's 224 px shapes, not kept as a script: at 512 channels /
#: 7x7 the gathered pair breaks even near 0.7 kept and is 1.3-1.4x slower than the dense pair above
#: 0.9; at 64 channels / 56x56 gathering wins up to 0.95).
GATHER_MAX_KEEP = 0.8

MODES = ("dense", "gated")


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact hard mask [soft > 0.5]; backward: the gradient of soft (identity)."""

    @staticmethod
    def forward(ctx, soft):
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ChannelGate(nn.Module):
    """DGNet channel gate: (B, C_in, H, W) -> mask (B, C_out) in {0, 1} (straight-through in training)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4, temperature: float = 1.0,
                 init_bias: float = 3.0):
        super().__init__()
        if in_channels % reduction:
            raise ConfigError(f"{PREFIX}.reduction={reduction}: does not divide a gated block's input channels "
                              f"({in_channels})")
        hidden = in_channels // reduction
        self.in_channels, self.out_channels, self.hidden = in_channels, out_channels, hidden
        self.temperature = float(temperature)
        # 1x1 convs on the pooled vector, kept as parameters (not Conv2d modules) so that weight
        # sparsifiers and the generic MAC counter never mistake them for backbone convs
        self.w1 = nn.Parameter(torch.empty(hidden, in_channels, 1, 1))
        self.bn = nn.BatchNorm2d(hidden)
        self.w2 = nn.Parameter(torch.empty(out_channels, hidden, 1, 1))
        self.b2 = nn.Parameter(torch.full((out_channels,), float(init_bias)))
        nn.init.kaiming_normal_(self.w1, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.w2, std=0.01)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # 1x1 convs on a 1x1 map are matrix products: F.linear on the (B, C) pooled vector (same
        # weights, same result, no conv dispatch)
        z = x.mean((2, 3))
        h = F.relu(self.bn(F.linear(z, self.w1.flatten(1))[:, :, None, None])).flatten(1)
        return F.linear(h, self.w2.flatten(1), self.b2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lg = self.logits(x)
        if self.training:
            u = torch.rand_like(lg).clamp_(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((lg + torch.log(u) - torch.log1p(-u)) / self.temperature)
            return _StraightThrough.apply(soft)   # exactly 0/1 forward (hard + soft - sg(soft) is not)
        return (lg > 0).to(lg.dtype)

    def cost(self, h: int, w: int) -> float:
        """MACs of the gate itself for one sample at input resolution (h, w) (see module docstring)."""
        c, r, o = self.in_channels, self.hidden, self.out_channels
        return float(c * h * w + c * r + 2 * r + r * o + o)


def _conv_dense(conv: nn.Conv2d, out: torch.Tensor) -> float:
    return float(out.shape[-2] * out.shape[-1] * conv.weight.numel())


def _bn_eval(x: torch.Tensor, bn: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm restricted to channels ``idx``."""
    return F.batch_norm(x, bn.running_mean.index_select(0, idx), bn.running_var.index_select(0, idx),
                        bn.weight.index_select(0, idx), bn.bias.index_select(0, idx), False, 0.0, bn.eps)


class _GatedMixin:
    """Shared state of gated blocks: mode, cost records, the gated-cost reporting of conv1/conv2."""

    def _gated_init(self, gate: ChannelGate, separate_bn: bool) -> None:
        self.gate = gate
        self.ss_mode = "dense"
        self.ss_gates_open = False     # warm-up: gated branch (its BNs) with every gate open
        self.ss_gather = True          # batch-1 inference computes only the kept channels ...
        self.ss_gather_max_keep = GATHER_MAX_KEEP   # ... when at most this share is kept
        self.ss_last_path: Optional[str] = None     # "gather" or "masked": what the last gated forward did
        self.ss_separate_bn = separate_bn
        self.ss_record: Optional[List] = None   # list to append (F^R (B,), F^O) to, set by the backbone
        self._ss_rho = 1.0
        self._ss_gate_cost = 0.0
        for conv_name in self._gated_convs:
            conv = getattr(self, conv_name)
            conv.effective_macs = functools.partial(_reported_macs, self, conv_name == self._gated_convs[0])
        if separate_bn:
            for name in self._bn_names:
                bn = getattr(self, name)
                setattr(self, name + "_g", nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum))
            if self.downsample is not None:
                bn = self.downsample[1]
                self.downsample_bn_g = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)

    def _bn(self, name: str) -> nn.Module:
        if self.ss_mode == "gated" and self.ss_separate_bn:
            return getattr(self, name + "_g")
        return getattr(self, name)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            return x
        if self.ss_mode == "gated" and self.ss_separate_bn:
            return self.downsample_bn_g(self.downsample[0](x))
        return self.downsample(x)

    def _use_gather(self, x: torch.Tensor) -> bool:
        """Batch-1 inference with few enough kept channels (``ss_gather_max_keep``) takes the gather
        path; otherwise the dense weights run with the mask (same outputs within fp tolerance)."""
        gather = (not self.training and x.shape[0] == 1 and self.ss_gather
                  and self._ss_rho <= self.ss_gather_max_keep)
        self.ss_last_path = "gather" if gather else "masked"
        return gather

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        m = self.gate(x)
        if self.ss_gates_open:
            m = torch.ones_like(m)
        self._ss_rho = float(m.detach().mean())
        self._ss_gate_cost = self.gate.cost(x.shape[-2], x.shape[-1])
        return m


def _reported_macs(block, first: bool, inputs, output, dense: float) -> float:
    """``effective_macs`` protocol of solo_sparse.engine.flops for a gated block's conv1 / conv2."""
    if block.ss_mode != "gated":
        return dense
    return dense * block._ss_rho + (block._ss_gate_cost if first else 0.0)


def _torchvision_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


BasicBlock, Bottleneck = _torchvision_blocks()


class GatedBasicBlock(_GatedMixin, BasicBlock):
    _gated_convs = ("conv1", "conv2")
    _bn_names = ("bn1", "bn2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ss_mode == "dense":
            return BasicBlock.forward(self, x)
        m = self._mask(x)
        identity = self._shortcut(x)
        if self._use_gather(x):
            return self._forward_gather(x, m, identity)
        out = F.relu(self._bn("bn1")(self.conv1(x))) * m[:, :, None, None]
        c1 = out
        out = self._bn("bn2")(self.conv2(out))
        self._record(m, c1, out, identity, x)
        return F.relu(out + identity)

    def _record(self, m, c1, out, identity, x) -> None:
        if self.ss_record is None or not self.training:
            return
        d12 = _conv_dense(self.conv1, c1) + _conv_dense(self.conv2, out)
        d_ds = _conv_dense(self.downsample[0], identity) if self.downsample is not None else 0.0
        g = self.gate.cost(x.shape[-2], x.shape[-1])
        self.ss_record.append((m.mean(1) * d12 + d_ds + g, d12 + d_ds))

    def _forward_gather(self, x, m, identity):
        idx = m[0].nonzero().flatten()
        if idx.numel() == 0:
            out = self._bn("bn2")(torch.zeros_like(identity[:, : self.conv2.out_channels]))
            return F.relu(out + identity)
        c1, c2 = self.conv1, self.conv2
        out = F.conv2d(x, c1.weight.index_select(0, idx), None, c1.stride, c1.padding, c1.dilation)
        out = F.relu(_bn_eval(out, self._bn("bn1"), idx))
        out = F.conv2d(out, c2.weight.index_select(1, idx), None, c2.stride, c2.padding, c2.dilation)
        return F.relu(self._bn("bn2")(out) + identity)


class GatedBottleneck(_GatedMixin, Bottleneck):
    _gated_convs = ("conv1", "conv2")
    _bn_names = ("bn1", "bn2", "bn3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ss_mode == "dense":
            return Bottleneck.forward(self, x)
        m = self._mask(x)
        identity = self._shortcut(x)
        if self._use_gather(x):
            return self._forward_gather(x, m, identity)
        out = F.relu(self._bn("bn1")(self.conv1(x))) * m[:, :, None, None]
        c1 = out
        out = F.relu(self._bn("bn2")(self.conv2(out)))
        c2 = out
        out = self._bn("bn3")(self.conv3(out))
        if self.ss_record is not None and self.training:
            d12 = _conv_dense(self.conv1, c1) + _conv_dense(self.conv2, c2)
            rest = _conv_dense(self.conv3, out) + (_conv_dense(self.downsample[0], identity)
                                                   if self.downsample is not None else 0.0)
            g = self.gate.cost(x.shape[-2], x.shape[-1])
            self.ss_record.append((m.mean(1) * d12 + rest + g, d12 + rest))
        return F.relu(out + identity)

    def _forward_gather(self, x, m, identity):
        idx = m[0].nonzero().flatten()
        c1, c2 = self.conv1, self.conv2
        if idx.numel() == 0:
            h = (x.shape[-2] + 2 * c2.padding[0] - c2.dilation[0] * (c2.kernel_size[0] - 1) - 1) // c2.stride[0] + 1
            w = (x.shape[-1] + 2 * c2.padding[1] - c2.dilation[1] * (c2.kernel_size[1] - 1) - 1) // c2.stride[1] + 1
            out = F.relu(self._bn("bn2")(x.new_zeros(1, c2.out_channels, h, w)))
        else:
            out = F.conv2d(x, c1.weight.index_select(0, idx), None, c1.stride, c1.padding, c1.dilation)
            out = F.relu(_bn_eval(out, self._bn("bn1"), idx))
            out = F.conv2d(out, c2.weight.index_select(1, idx), None, c2.stride, c2.padding, c2.dilation, c2.groups)
            out = F.relu(self._bn("bn2")(out))
        out = self._bn("bn3")(self.conv3(out))
        return F.relu(out + identity)


def _resnet_forward(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward, with the stem BN picked by the branch."""
    gated_bn = self.ss_mode == "gated" and self.ss_separate_bn
    x = self.conv1(x)
    x = (self.bn1_g if gated_bn else self.bn1)(x)
    x = self.maxpool(self.relu(x))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


_GATED_RESNET_CLASSES: Dict[type, type] = {}


def _gated_resnet_class(base: type) -> type:
    if base not in _GATED_RESNET_CLASSES:
        _GATED_RESNET_CLASSES[base] = type("Gated" + base.__name__, (base,), {"forward": _resnet_forward,
                                                                              "__module__": __name__})
    return _GATED_RESNET_CLASSES[base]


def is_gated(backbone: nn.Module) -> bool:
    return getattr(backbone, "ss_gated", False)


def gated_blocks(backbone: nn.Module) -> List[Tuple[str, _GatedMixin]]:
    return [(n, m) for n, m in backbone.named_modules() if isinstance(m, _GatedMixin)]


def convert_resnet(backbone: nn.Module, *, reduction: int = 4, temperature: float = 1.0, init_bias: float = 3.0,
                   separate_bn: bool = True, stages: Sequence[int] = (1, 2, 3, 4)) -> nn.Module:
    """Turn a torchvision ResNet into a DGNet-gated one, in place (parameters kept, gates added).

    Raises ConfigError for a non-ResNet module, a stage outside 1..4 or a reduction that does not
    divide a gated block's input channels (checked for every block before anything changes).
    """
    import torchvision

    if not isinstance(backbone, torchvision.models.ResNet):
        raise ConfigError(f"DGNet gating needs a torchvision ResNet backbone (backbone.name resnet18/resnet50), "
                          f"got {type(backbone).__name__}")
    if is_gated(backbone):
        raise ConfigError("backbone is already gated")
    stages = tuple(stages)
    bad = [s for s in stages if s not in (1, 2, 3, 4)]
    if bad or not stages:
        raise ConfigError(f"{PREFIX}.stages={list(stages)}: expected a non-empty subset of [1, 2, 3, 4]")
    blocks = [blk for s in stages for blk in getattr(backbone, f"layer{s}")]
    for blk in blocks:
        if blk.conv1.in_channels % reduction:
            raise ConfigError(f"{PREFIX}.reduction={reduction}: does not divide the input channels "
                              f"({blk.conv1.in_channels}) of a gated block")
    for blk in blocks:
        cls = GatedBasicBlock if isinstance(blk, BasicBlock) else GatedBottleneck
        blk.__class__ = cls
        gate = ChannelGate(blk.conv1.in_channels, blk.conv1.out_channels, reduction, temperature, init_bias)
        gate.to(blk.conv1.weight.device)
        blk._gated_init(gate, separate_bn)
    backbone.__class__ = _gated_resnet_class(type(backbone))
    backbone.ss_gated = True
    backbone.ss_mode = "dense"
    backbone.ss_separate_bn = separate_bn
    if separate_bn:
        bn = backbone.bn1
        backbone.bn1_g = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    backbone.to(next(backbone.parameters()).device)
    return backbone


def copy_dense_bn_to_gated(backbone: nn.Module) -> None:
    """Initialise every gated-branch BN twin from its dense BN (parameters and running stats)."""
    with torch.no_grad():
        for name, mod in backbone.named_modules():
            if name.endswith("_g") and isinstance(mod, nn.modules.batchnorm._BatchNorm):
                parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
                base = name.rsplit(".", 1)[-1][:-2]
                src = parent.downsample[1] if base == "downsample_bn" else getattr(parent, base)
                mod.load_state_dict(src.state_dict())


def set_mode(backbone: nn.Module, mode: str, gates_open: bool = False) -> None:
    """Route every following forward of ``backbone`` through the ``dense`` or ``gated`` branch."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    backbone.ss_mode = mode
    for _, blk in gated_blocks(backbone):
        blk.ss_mode = mode
        blk.ss_gates_open = gates_open


def start_recording(backbone: nn.Module) -> List:
    """Make gated blocks append ``(F^R (B,), F^O)`` of each training forward to the returned list."""
    rec: List = []
    for _, blk in gated_blocks(backbone):
        blk.ss_record = rec
    return rec


def flops_ratio(records: Sequence[Tuple[torch.Tensor, float]]) -> Optional[torch.Tensor]:
    """Batch mean of Σ_l F_l^R / Σ_l F_l^O over the gated blocks of one forward (differentiable)."""
    if not records:
        return None
    fr = sum(r[0] for r in records)
    fo = sum(r[1] for r in records)
    return (fr / fo).mean()


@torch.no_grad()
def measure(backbone: nn.Module, X: torch.Tensor, batch_size: int = 256) -> Dict[str, object]:
    """Gated-path statistics on data, eval mode: budget-style FLOPs ratio over the gated blocks
    (exact per-sample count, gates included), whole-network MACs ratio (stem and FC included), and
    per-block kept-channel share."""
    from solo_sparse.engine.flops import count_macs

    was_mode, was_train = backbone.ss_mode, backbone.training
    backbone.eval()
    set_mode(backbone, "gated")
    blocks = gated_blocks(backbone)
    fr_sum = fo_sum = 0.0
    eff = dense = 0.0
    per_block = {n: 0.0 for n, _ in blocks}
    n_seen = 0
    for i in range(0, len(X), batch_size):
        xb = X[i: i + batch_size]
        rec = start_recording(backbone)
        backbone.train()   # record costs: the gate must run its eval path, so switch gates only
        for _, blk in blocks:
            blk.gate.eval()
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        backbone(xb)
        backbone.eval()
        for fr, fo in rec[:len(blocks)]:
            fr_sum += float(fr.sum())
            fo_sum += fo * len(xb)
        rep = count_macs(backbone, xb)
        eff += rep.effective
        dense += rep.dense
        for n, blk in blocks:
            per_block[n] += blk._ss_rho * len(xb)
        n_seen += len(xb)
    for _, blk in blocks:
        blk.ss_record = None
    set_mode(backbone, was_mode)
    backbone.train(was_train)
    return {"gated_blocks_flops_ratio": fr_sum / fo_sum if fo_sum else 1.0,
            "network_macs_ratio": eff / dense if dense else 1.0,
            "kept_channels": {n: v / n_seen for n, v in per_block.items()}}

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

Batch-1 inference executes only what the gates keep. Per block and image, with k kept channels:
``skip`` (k = 0: the block adds the constant bn2(0) -- Bottleneck: bn3(conv3(relu(bn2(0)))) -- to its
shortcut, no conv runs), ``gather`` (conv1 on the k kept output channels, conv2 reading only them, BN
folded into the convs, each gathered weight one contiguous copy) or
``masked`` (the dense convs times the mask). Which of gather / masked runs is chosen by a measured
cost model (:func:`attach_latency_table`: a small batch-1 timing table per network shape -- every gated
block timed inside the network at each forced kept share, :func:`time_network` -- cached on disk per
machine, threads and torch version, :mod:`solo_sparse.engine.costmodel`); without a table the rule is
``k / C <= GATHER_MAX_KEEP``. The same table gives ``budget: latency`` its per-block latency curves and the
network's ungated time, so that budget is a whole-network latency ratio
(:meth:`_GatedMixin._append_record`). All paths give the masked outputs within fp tolerance.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.engine.costmodel import LatencyTable, interp, machine_key, summary, time_modules

#: without a measured plan (:func:`attach_latency_table`), batch-1 inference gathers the kept channels'
#: weights only when at most this share is kept: above it the weight copy costs more than the skipped
#: channels save (a one-off one-thread
#: microbenchmark of conv pairs at ResNet-18's 224 px shapes, not kept as a script: at 512 channels /
#: 7x7 the gathered pair breaks even near 0.7 kept and is 1.3-1.4x slower than the dense pair above
#: 0.9; at 64 channels / 56x56 gathering wins up to 0.95).
GATHER_MAX_KEEP = 0.8

MODES = ("dense", "gated")
#: what gates the gated branch: "none" (the DGNet gate, data-dependent) or "static" (:class:`StaticGate`)
CONTROLS = ("none", "static")
#: input size (px) at which :func:`set_static_keep` counts MACs: the ratio is the same at every size whose stage
#: maps halve exactly (32, 64, 96, 224 ... px on torchvision ResNets, both stems)
STATIC_SIZE = 224


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


class StaticGate(nn.Module):
    """The static control of a DGNet gate (``control: static``): the same first ``k`` of the block's ``C_1`` gated
    channels kept for every input -- the block of a narrower ResNet, no parameters, no data dependence, no gate
    cost. ``k`` is set by :func:`set_static_keep` (from the FLOPs budget) and saved as the buffer ``keep``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.register_buffer("keep", torch.ones(out_channels))

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    def set_kept(self, k: int) -> None:
        if not 1 <= k <= self.out_channels:
            raise ValueError(f"kept channels must be in [1, {self.out_channels}], got {k}")
        with torch.no_grad():
            self.keep.zero_()[:k] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keep.to(x.dtype).expand(x.shape[0], -1)

    def cost(self, h: int, w: int) -> float:
        return 0.0


def _conv_dense(conv: nn.Conv2d, out: torch.Tensor) -> float:
    return float(out.shape[-2] * out.shape[-1] * conv.weight.numel())


#: ATen runs a batch-1 3x3 fp32 conv on its native im2col kernel, not oneDNN, when the input has at most this many
#: elements (``use_mkldnn`` in ATen's Convolution.cpp: "for some case, native is faster")
ATEN_NATIVE_CONV_MAX_NUMEL = 20480


def conv_like_dense(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], conv: nn.Conv2d, dense_in: int
                    ) -> torch.Tensor:
    """``conv2d(x, w, b)`` with ``conv``'s stride / padding / dilation, on the kernel family ATen would pick for the
    dense conv (input of ``dense_in`` elements): a gathered conv reads fewer input channels and can fall under
    ATen's native-kernel threshold where the dense conv does not -- measured 1.5x slower at 292 -> 512 channels
    on a 7x7 map, 4x at 2x2, one thread. On CPU fp32 with oneDNN, such a conv calls oneDNN directly."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and dense_in > ATEN_NATIVE_CONV_MAX_NUMEL
            and x.numel() <= ATEN_NATIVE_CONV_MAX_NUMEL and x.shape[0] == 1 and torch.backends.mkldnn.is_available()
            and conv.groups == 1 and conv.padding_mode == "zeros"):
        try:
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), w, b, list(conv.padding), list(conv.stride),
                                                     list(conv.dilation), 1)
        except (RuntimeError, AttributeError):   # a build without the op: the ordinary dispatch
            pass
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation)


def _fold(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one conv, eval-mode statistics."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale[:, None, None, None], bias


class _GatedMixin:
    """Shared state of gated blocks: mode, cost records, the gated-cost reporting of conv1/conv2."""

    def _gated_init(self, gate: ChannelGate, separate_bn: bool) -> None:
        self.gate = gate
        self.ss_mode = "dense"
        self.ss_gates_open = False     # warm-up: gated branch (its BNs) with every gate open
        self.ss_gather = True          # batch-1 inference computes only the kept channels ...
        self.ss_gather_max_keep = GATHER_MAX_KEEP   # ... when at most this share is kept
        self.ss_last_path: Optional[str] = None     # "skip", "gather", "full" or "masked": what the last forward did
        #: batch-1 execution plan from the measured cost model (:func:`attach_latency_table`): per kept
        #: count k, the cheaper of gather / masked ("skip" at k = 0); None: the GATHER_MAX_KEEP rule
        self.ss_plan: Optional[List[str]] = None
        #: with a plan: per kept count k, how many channels the gather computes -- the cheapest timed width >= k;
        #: the extra channels are dead (their conv2 weights zeroed), so only widths the table timed ever run
        self.ss_plan_width: Optional[List[int]] = None
        #: latency curve for the budget loss (``budget: latency``): (kept shares, gated ms, dense ms)
        self.ss_latency: Optional[Tuple[List[float], List[float], float]] = None
        #: with ``ss_latency``: milliseconds outside the gated blocks (stem, pool, head) added to this block's
        #: F^R and F^O, so the budget ratio is the whole network's (set on the first gated block only)
        self.ss_fixed_ms = 0.0
        self._ss_force: Optional[Tuple[Optional[int], Optional[str]]] = None   # timing: (kept count, path)
        self._ss_exec_key = None
        self._ss_exec_w: Optional[Dict[str, torch.Tensor]] = None
        self.ss_separate_bn = separate_bn
        self.ss_record: Optional[List] = None   # list to append (F^R (B,), F^O) to, set by the backbone
        self._ss_rho = 1.0
        self._ss_dense: Optional[Tuple[float, float]] = None   # (d12, rest) MACs of the last recorded forward
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

    def _use_gather(self, x: torch.Tensor, m: torch.Tensor) -> bool:
        """Batch-1 inference runs the executable form (:meth:`_forward_exec`, BatchNorm folded into the convs):
        ``skip`` (no channel kept), ``full`` (every channel kept: the folded dense convs, no gather and no mask --
        both would only add work), ``gather`` (the kept channels only) or ``masked`` (the folded dense convs
        times the mask); between gather and masked the measured cheaper one for this kept count with an
        execution plan (:func:`attach_latency_table`), else gather when at most ``ss_gather_max_keep`` is kept.
        Training, batches of several images and ``ss_gather = False`` run the module form with the mask (same
        outputs within fp tolerance). Returns whether the executable form runs."""
        path = None
        if not self.training and x.shape[0] == 1 and self.ss_gather and self.conv2.groups == 1:
            k = int(m.sum())
            if self._ss_force is not None and self._ss_force[1] is not None:
                path = self._ss_force[1]
            elif k == m.shape[1]:
                path = "full"
            elif self.ss_plan is not None:
                path = self.ss_plan[k]
            else:
                path = "gather" if self._ss_rho <= self.ss_gather_max_keep else "masked"
            if path == "gather" and k == 0:
                path = "skip"
        self.ss_last_path = path or "masked"
        return path is not None

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        m = self.gate(x)
        if self.ss_gates_open:
            m = torch.ones_like(m)
        if self._ss_force is not None and self._ss_force[0] is not None:
            m = torch.zeros_like(m)
            m[:, : self._ss_force[0]] = 1
        self._ss_rho = float(m.detach().mean())
        self._ss_gate_cost = self.gate.cost(x.shape[-2], x.shape[-1]) * x.shape[0]     # the batch's, as ``dense``
        return m

    def _append_record(self, m: torch.Tensor, d12: float, rest: float, gate: float) -> None:
        """(F^R (B,), F^O) of this forward: MACs, or with ``ss_latency`` (``budget: latency``) the
        measured batch-1 latency of the gated block at each sample's kept share (piecewise linear in
        it, so differentiable) over the dense block's, the first gated block carrying the network's ungated
        milliseconds on both sides (``ss_fixed_ms``). Keeps ``_ss_dense = (d12, rest)``, the dense MACs of the
        gated convs and of the rest, for :func:`block_dense_macs`."""
        self._ss_dense = (d12, rest)
        if self.ss_latency is not None:
            xs, ys, dense_ms = self.ss_latency
            fixed = getattr(self, "ss_fixed_ms", 0.0)
            self.ss_record.append((interp(m.mean(1), xs, ys) + fixed, dense_ms + fixed))
            return
        self.ss_record.append((m.mean(1) * d12 + rest + gate, d12 + rest))

    # ------------------------------------------------------------------ batch-1 execution
    def _exec_tensors(self) -> List[torch.Tensor]:
        ts = [getattr(self, c).weight for c in ("conv1", "conv2", "conv3") if hasattr(self, c)]
        for name in self._bn_names:
            bn = self._bn(name)
            ts += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
        return ts

    def _exec_weights(self) -> Dict[str, torch.Tensor]:
        """Eval-mode weights of the gated branch with BatchNorm folded into the convs (``w1 b1``, ``w2 b2``,
        Bottleneck ``w3 b3``, ``skip``: the block's constant when every gate is off), cached until a parameter
        or running statistic changes."""
        key = (self.ss_mode, self.ss_separate_bn, tuple((t.data_ptr(), t._version) for t in self._exec_tensors()))
        if self._ss_exec_key == key and self._ss_exec_w is not None:
            return self._ss_exec_w
        with torch.no_grad():
            w1, b1 = _fold(self.conv1, self._bn("bn1"))
            w2, b2 = _fold(self.conv2, self._bn("bn2"))
            ws = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
            if hasattr(self, "conv3"):
                ws["w3"], ws["b3"] = _fold(self.conv3, self._bn("bn3"))
                # gate fully off: conv2's output is bn2(0) = b2 everywhere, so the block adds a constant
                ws["skip"] = F.conv2d(F.relu(b2)[None, :, None, None], ws["w3"], ws["b3"]).flatten()
            else:
                ws["skip"] = b2
        self._ss_exec_key, self._ss_exec_w = key, ws
        return ws

    def _forward_exec(self, x: torch.Tensor, m: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """Batch-1 executable form with folded weights (see :meth:`_use_gather`, :meth:`_exec_weights`)."""
        ws = self._exec_weights()
        if self.ss_last_path == "skip":
            return F.relu(identity + ws["skip"][None, :, None, None])
        c1, c2 = self.conv1, self.conv2
        if self.ss_last_path in ("full", "masked"):
            out = F.relu(F.conv2d(x, ws["w1"], ws["b1"], c1.stride, c1.padding, c1.dilation))
            if self.ss_last_path == "masked":
                out = out * m[:, :, None, None]
            out = F.conv2d(out, ws["w2"], ws["b2"], c2.stride, c2.padding, c2.dilation)
            if hasattr(self, "conv3"):
                out = F.conv2d(F.relu(out), ws["w3"], ws["b3"])
            return F.relu(out + identity)
        idx = m[0].nonzero().flatten()
        k = idx.numel()
        width = self.ss_plan_width[k] if self.ss_plan_width is not None and self.ss_plan is not None else k
        if width > k:      # pad with closed channels to a timed width; their conv2 weights are zeroed below
            idx = torch.cat([idx, (m[0] == 0).nonzero().flatten()[: width - k]])
        out = F.relu(F.conv2d(x, ws["w1"].index_select(0, idx), ws["b1"].index_select(0, idx), c1.stride,
                              c1.padding, c1.dilation))
        # one copy into a contiguous weight: a transposed view of contiguous rows would be copied again by the
        # conv (or, non-contiguous, sent down ATen's slow im2col path -- measured); the gathered conv runs on
        # the kernel family the dense conv of this layer gets (see conv_like_dense)
        w2 = ws["w2"].index_select(1, idx)
        if width > k:
            w2[:, k:] = 0
        out = conv_like_dense(out, w2, ws["b2"], c2,
                              dense_in=x.shape[0] * c2.in_channels * out.shape[-2] * out.shape[-1])
        if hasattr(self, "conv3"):
            out = F.conv2d(F.relu(out), ws["w3"], ws["b3"])
        return F.relu(out + identity)


def _reported_macs(block, first: bool, inputs, output, dense: float) -> float:
    """``effective_macs`` protocol of solo_sparse.engine.flops for a gated block's conv1 / conv2: batch totals (the
    gate's cost counted once per image)."""
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
        if self._use_gather(x, m):
            return self._forward_exec(x, m, identity)
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
        self._append_record(m, d12, d_ds, self.gate.cost(x.shape[-2], x.shape[-1]))


class GatedBottleneck(_GatedMixin, Bottleneck):
    _gated_convs = ("conv1", "conv2")
    _bn_names = ("bn1", "bn2", "bn3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ss_mode == "dense":
            return Bottleneck.forward(self, x)
        m = self._mask(x)
        identity = self._shortcut(x)
        if self._use_gather(x, m):
            return self._forward_exec(x, m, identity)
        out = F.relu(self._bn("bn1")(self.conv1(x))) * m[:, :, None, None]
        c1 = out
        out = F.relu(self._bn("bn2")(self.conv2(out)))
        c2 = out
        out = self._bn("bn3")(self.conv3(out))
        if self.ss_record is not None and self.training:
            d12 = _conv_dense(self.conv1, c1) + _conv_dense(self.conv2, c2)
            rest = _conv_dense(self.conv3, out) + (_conv_dense(self.downsample[0], identity)
                                                   if self.downsample is not None else 0.0)
            self._append_record(m, d12, rest, self.gate.cost(x.shape[-2], x.shape[-1]))
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
                   separate_bn: bool = True, stages: Sequence[int] = (1, 2, 3, 4), control: str = "none") -> nn.Module:
    """Turn a torchvision ResNet into a DGNet-gated one, in place (parameters kept, gates added).
    ``control="static"``: :class:`StaticGate` instead of the DGNet gate (every channel kept until
    :func:`set_static_keep` narrows the blocks).

    Raises ConfigError for a non-ResNet module, a stage outside 1..4 or a reduction that does not
    divide a gated block's input channels (checked for every block before anything changes).
    """
    import torchvision

    if not isinstance(backbone, torchvision.models.ResNet):
        raise ConfigError(f"DGNet gating needs a torchvision ResNet backbone (backbone.name resnet18/resnet50), "
                          f"got {type(backbone).__name__}")
    if is_gated(backbone):
        raise ConfigError("backbone is already gated")
    if control not in CONTROLS:
        raise ConfigError(f"{PREFIX}.control={control!r}: expected one of {list(CONTROLS)}")
    stages = tuple(stages)
    bad = [s for s in stages if s not in (1, 2, 3, 4)]
    if bad or not stages:
        raise ConfigError(f"{PREFIX}.stages={list(stages)}: expected a non-empty subset of [1, 2, 3, 4]")
    blocks = [blk for s in stages for blk in getattr(backbone, f"layer{s}")]
    for blk in blocks if control != "static" else ():      # the static control has no gate to reduce
        if blk.conv1.in_channels % reduction:
            raise ConfigError(f"{PREFIX}.reduction={reduction}: does not divide the input channels "
                              f"({blk.conv1.in_channels}) of a gated block")
    for blk in blocks:
        cls = GatedBasicBlock if isinstance(blk, BasicBlock) else GatedBottleneck
        blk.__class__ = cls
        if control == "static":
            gate = StaticGate(blk.conv1.in_channels, blk.conv1.out_channels)
        else:
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


def is_static(backbone: nn.Module) -> bool:
    """Whether the gated blocks of ``backbone`` carry the static control (:class:`StaticGate`)."""
    blocks = gated_blocks(backbone)
    return bool(blocks) and all(isinstance(blk.gate, StaticGate) for _, blk in blocks)


def set_static_keep(backbone: nn.Module, target: float, size: int = STATIC_SIZE) -> float:
    """Narrow every static-gated block of ``backbone`` to the same share rho of its gated channels (the first
    ``round(rho C_1)``, at least one), rho solved so that the gated blocks' MAC ratio -- the budget's own,
    Σ F^R / Σ F^O of the module docstring -- is ``target`` at ``size`` px:

        rho = (target Σ F^O - Σ rest) / Σ (D(conv1) + D(conv2)),   rest = the convs the gates leave dense

    with the per-block MACs the blocks themselves record for the budget (:func:`block_dense_macs`). Returns the
    ratio reached after rounding. Raises ConfigError when ``target`` is below what the ungated convs alone cost
    (rho <= 0)."""
    if not is_static(backbone):
        raise ValueError("set_static_keep needs a backbone converted with control='static'")
    costs = block_dense_macs(backbone, size)
    d12 = [costs[n][0] for n, _ in gated_blocks(backbone)]
    rest = sum(costs[n][1] for n, _ in gated_blocks(backbone))
    total = sum(d12) + rest
    rho = (target * total - rest) / sum(d12)
    if rho <= 0:
        raise ConfigError(f"{PREFIX}.target={target}: below what the convolutions the gates leave dense cost "
                          f"({rest / total:.3f} of the gated blocks' MACs); the static control needs a larger "
                          f"target")
    kept = []
    for (_, blk), d in zip(gated_blocks(backbone), d12):
        c1 = blk.gate.out_channels
        k = min(c1, max(1, round(rho * c1)))
        blk.gate.set_kept(k)
        kept.append(k / c1 * d)
    return (sum(kept) + rest) / total


@torch.no_grad()
def to_plain_resnet(backbone: nn.Module) -> nn.Module:
    """A copy of a static-control backbone (:func:`is_static`), or of any gated backbone routed to its dense path,
    as the plain torchvision ResNet it computes on its routed path: no gate, the gated branch's BatchNorms in place
    of the dense ones (gated path, separate BN), and on the gated path conv2's input columns of every channel the
    block does not keep zeroed -- so :func:`solo_sparse.engine.compact.removable` finds them unread and
    :func:`~solo_sparse.engine.compact.compact` removes them: the narrower ResNet the static control is. Outputs
    equal the routed backbone's (eval mode)."""
    if not is_static(backbone) and backbone.ss_mode != "dense":
        raise ValueError("to_plain_resnet needs a backbone converted with control='static' or routed to its dense "
                         "path (a DGNet gate picks channels per input: no plain network computes it)")
    net = copy.deepcopy(backbone)
    gated = net.ss_mode == "gated"
    swap = gated and net.ss_separate_bn
    for _, blk in gated_blocks(net):
        if swap:
            for name in blk._bn_names:
                setattr(blk, name, getattr(blk, name + "_g"))
            if blk.downsample is not None:
                blk.downsample[1] = blk.downsample_bn_g
        if gated:
            blk.conv2.weight[:, blk.gate.keep == 0] = 0
        for name in list(vars(blk)) + list(blk._modules):
            if name == "gate" or name.endswith("_g") or name.startswith(("ss_", "_ss_")):
                delattr(blk, name)
        for conv_name in blk._gated_convs:
            del getattr(blk, conv_name).effective_macs
        blk.__class__ = BasicBlock if isinstance(blk, BasicBlock) else Bottleneck
    if swap:
        net.bn1 = net.bn1_g
    if hasattr(net, "bn1_g"):
        del net.bn1_g
    for name in [n for n in vars(net) if n.startswith("ss_")]:
        delattr(net, name)
    base = next((b for b, gated in _GATED_RESNET_CLASSES.items() if gated is type(net)), None)
    if base is None:
        raise ValueError(f"to_plain_resnet: {type(net).__name__} is not a class convert_resnet made")
    net.__class__ = base
    return net.eval()


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


@contextlib.contextmanager
def _state_kept(backbone: nn.Module):
    """Restore on exit what the measuring and timing helpers change: the branch the backbone and each gated block
    are routed to, whether the block's gates are held open (warm-up), the cost-record list it appends to (a training
    plugin's), its batch-1 gather switch and forced kept count, and every module's train/eval flag."""
    blocks = [blk for _, blk in gated_blocks(backbone)]
    names = ("ss_mode", "ss_gates_open", "ss_record", "ss_gather", "_ss_force")
    mode = backbone.ss_mode
    per_block = [[getattr(blk, n) for n in names] for blk in blocks]
    training = [(m, m.training) for m in backbone.modules()]
    try:
        yield
    finally:
        backbone.ss_mode = mode
        for blk, values in zip(blocks, per_block):
            for n, v in zip(names, values):
                setattr(blk, n, v)
        for m, t in training:
            m.training = t


def _recorded_forward(backbone: nn.Module, x: torch.Tensor) -> List:
    """One forward of ``x`` in the current branch with eval behaviour (BN running statistics, the gates' eval
    path) that still appends each gated block's cost record (blocks record only in training mode); the backbone's
    state is left as it was. Returns the records."""
    with _state_kept(backbone):
        rec = start_recording(backbone)
        backbone.train()
        for _, blk in gated_blocks(backbone):
            blk.gate.eval()
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        backbone(x)
    return rec


@torch.no_grad()
def block_dense_macs(backbone: nn.Module, size: int) -> Dict[str, Tuple[float, float]]:
    """{gated block name: (dense MACs of its gated convs conv1 + conv2, dense MACs of the rest -- conv3 and the
    downsample)} for one ``size`` x ``size`` image, as the blocks record them for the budget (one gated forward)."""
    with _state_kept(backbone):
        set_mode(backbone, "gated")
        _recorded_forward(backbone, torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
    return {n: blk._ss_dense for n, blk in gated_blocks(backbone)}


@torch.no_grad()
def budget_ratio_from_network(backbone: nn.Module, network_ratio: float, size: int) -> float:
    """The gated blocks' budget ratio Σ F^R / Σ F^O (what t_d constrains, :func:`measure`'s
    ``gated_blocks_flops_ratio``) from the whole network's MACs ratio (its ``network_macs_ratio``) of a gated
    ``backbone`` at ``size`` px. Exact, because both count the same effective MACs (the gates' own cost included) and
    differ only by the convolutions outside the gated blocks S (the stem), dense on every input:

        network = (Σ F^R + S) / (Σ F^O + S)   =>   Σ F^R / Σ F^O = (network (Σ F^O + S) - S) / Σ F^O

    For rows whose backbone is gone (only the whole-network ratio was recorded). Only the architecture of
    ``backbone`` is read."""
    from solo_sparse.engine.flops import count_macs

    fo = sum(d12 + rest for d12, rest in block_dense_macs(backbone, size).values())
    with _state_kept(backbone):
        set_mode(backbone, "dense")
        total = count_macs(backbone, torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device)).dense
    outside = total - fo
    return (network_ratio * total - outside) / fo


def _count_module_form(backbone: nn.Module, x: torch.Tensor):
    """count_macs of ``backbone`` on ``x`` through the module form: a batch-1 gather runs folded weights through
    F.conv2d, past the conv hooks a MAC counter reads (it would count the gated blocks as 0 MACs, a ratio of 1)."""
    from solo_sparse.engine.flops import count_macs

    with _state_kept(backbone):
        for _, blk in gated_blocks(backbone):
            blk.ss_gather = False
        return count_macs(backbone, x)


@torch.no_grad()
def measure(backbone: nn.Module, X: torch.Tensor, batch_size: int = 256) -> Dict[str, object]:
    """Gated-path statistics on data, eval mode: budget-style FLOPs ratio over the gated blocks
    (exact per-sample count, gates included), whole-network MACs ratio (stem and FC included), and
    per-block kept-channel share."""
    blocks = gated_blocks(backbone)
    fr_sum = fo_sum = 0.0
    eff = dense = 0.0
    per_block = {n: 0.0 for n, _ in blocks}
    n_seen = 0
    with _state_kept(backbone):
        backbone.eval()
        set_mode(backbone, "gated")
        for i in range(0, len(X), batch_size):
            xb = X[i: i + batch_size]
            rec = _recorded_forward(backbone, xb)
            for fr, fo in rec[:len(blocks)]:
                fr_sum += float(fr.sum())
                fo_sum += fo * len(xb)
            rep = _count_module_form(backbone, xb)
            eff += rep.effective
            dense += rep.dense
            for n, blk in blocks:
                per_block[n] += blk._ss_rho * len(xb)
            n_seen += len(xb)
    return {"gated_blocks_flops_ratio": fr_sum / fo_sum if fo_sum else 1.0,
            "network_macs_ratio": eff / dense if dense else 1.0,
            "kept_channels": {n: v / n_seen for n, v in per_block.items()}}


# ---------------------------------------------------------------------------------------------------------
# measured cost model: batch-1 latency of each gated block along each execution path

#: kept shares at which a block's gather path is timed (0 = the block skipped)
#: 33 shares, every 1/32: a gather runs at the next timed width (see :func:`plan_from_entry`), so at 512 channels the
#: widths must lie 16 apart (the fp32 vector width of AVX-512) -- at the ten shares of cost-model v4 (64 apart at
#: 512 channels) the padding cost more than the plan saved (measured: plan 1.52-1.60x vs the fixed rule 1.71-1.77x
#: at 64 px, batch 1)
KEEP_GRID = tuple(j / 32 for j in range(33))


def block_input_shapes(backbone: nn.Module, size: int) -> Dict[str, Tuple[int, int, int]]:
    """{block name: (C, H, W) of its input} for one ``size`` x ``size`` image."""
    shapes: Dict[str, Tuple[int, int, int]] = {}
    hooks = [blk.register_forward_pre_hook(lambda m, i, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:])))
             for n, blk in gated_blocks(backbone)]
    try:
        with _state_kept(backbone), torch.no_grad():
            backbone.eval()
            set_mode(backbone, "dense")
            backbone(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def block_signature(blk: nn.Module, shape: Sequence[int]) -> str:
    """What a gated block's batch-1 latency depends on: kind, widths, stride, downsample, input map."""
    kind = "bottleneck" if hasattr(blk, "conv3") else "basic"
    out = (blk.conv3 if hasattr(blk, "conv3") else blk.conv2).out_channels
    stride = max(blk.conv1.stride[0], blk.conv2.stride[0])     # torchvision: conv1 (Basic) or conv2 (Bottleneck)
    return (f"dgnet-{kind}|in{shape[0]}|mid{blk.conv1.out_channels}|out{out}|s{stride}"
            f"|ds{int(blk.downsample is not None)}|{shape[1]}x{shape[2]}")


def _forced_keep(c1: int, grid: Sequence[float]) -> List[int]:
    """Kept counts timed for a block of ``c1`` gated channels: 0 (skipped) and max(1, round(f c1)) per share."""
    return sorted({0, *(max(1, round(f * c1)) for f in grid if f > 0)})


def network_signature(backbone: nn.Module, size: int) -> str:
    """What a gated network's batch-1 latency table depends on: every gated block's signature in order, the
    stem and the input size (the in-network timings of a block depend on its neighbours: cache, memory)."""
    import hashlib

    shapes = block_input_shapes(backbone, size)
    sigs = [f"{n}:{block_signature(blk, shapes[n])}" for n, blk in gated_blocks(backbone)]
    stem = backbone.conv1
    sigs.append(f"stem:{stem.in_channels}-{stem.out_channels}-k{stem.kernel_size[0]}-s{stem.stride[0]}"
                f"-pool{type(backbone.maxpool).__name__}")
    digest = hashlib.sha1("|".join(sigs).encode()).hexdigest()[:16]
    return f"dgnet-net|{len(sigs) - 1}blocks|{size}px|{digest}"


@torch.inference_mode()
def time_network(backbone: nn.Module, size: int, reps: int = 15, grid: Sequence[float] = KEEP_GRID,
                 progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Batch-1 latency of every gated block **inside the network** (one random ``size`` px image): the whole
    network runs dense, gated along the masked path, and gated with every block forced to each kept share of
    ``grid`` (0: every block skipped); forward hooks time each block, gate and index computation included, with
    its neighbours' weights and activations passing through the caches as in deployment. Timing a block alone
    on a warm input (the previous table) under-priced gated blocks by 0.5-2.4 ms in the network (measured,
    docs/speed.md). ``ungated_ms``: the rest of the dense forward (stem conv, BN, max-pool, head).

    Every variant runs once per repetition, interleaved; entries hold the minimum over the repetitions
    (contention only adds time), medians beside it."""
    import time

    blocks = gated_blocks(backbone)
    variants: List[Tuple[str, Optional[float]]] = [("dense", None), ("masked", None)]
    variants += [(f"f{f:g}", float(f)) for f in grid]
    keeps = {n: _forced_keep(blk.conv1.out_channels, grid) for n, blk in blocks}
    x = torch.randn(1, 3, size, size, device=next(backbone.parameters()).device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    cur: Dict[str, float] = {}
    hooks = time_modules(blocks, cur.__setitem__, sync)
    times: Dict[str, Dict[str, List[float]]] = {v: {n: [] for n, _ in blocks} for v, _ in variants}
    rest: List[float] = []
    start = time.perf_counter()
    with _state_kept(backbone):
        try:
            backbone.eval()
            for r in range(reps + 2):                      # the first two rounds are warm-up
                if progress and r in (2, 2 + reps // 2):
                    done = time.perf_counter() - start
                    eta = f", ETA {done / r * (reps + 2 - r):.0f} s" if r else ""
                    progress(f"latency table: timing {len(blocks)} gated blocks in the network at batch 1, {size} px, "
                             f"round {r - 1}/{reps}{eta}")
                for name, f in variants:
                    set_mode(backbone, "dense" if name == "dense" else "gated")
                    for _, b in blocks:
                        b.ss_gather = True
                        if name == "dense":
                            b._ss_force = None
                        elif name == "masked":
                            b._ss_force = (b.conv1.out_channels, "masked")
                        else:
                            k = 0 if f == 0 else max(1, round(f * b.conv1.out_channels))
                            b._ss_force = (k, "skip" if k == 0 else "gather")
                    cur.clear()
                    sync()
                    t0 = time.perf_counter()
                    backbone(x)
                    sync()
                    total = 1e3 * (time.perf_counter() - t0)
                    if r >= 2:
                        for n, _ in blocks:
                            times[name][n].append(cur[n])
                        if name == "dense":
                            rest.append(total - sum(cur.values()))
        finally:
            for h in hooks:
                h.remove()
    out: Dict[str, object] = {"size": size, "reps": reps, "statistic": "min", "timing": "network",
                              "ungated_ms": min(rest), "ungated_median_ms": summary(rest)["median_ms"], "blocks": {}}
    for n, b in blocks:
        keep = keeps[n]
        by_k = {}
        for name, f in variants[2:]:
            k = 0 if f == 0 else max(1, round(f * b.conv1.out_channels))
            by_k.setdefault(k, []).extend(times[name][n])
        out["blocks"][n] = {
            "channels": b.conv1.out_channels, "keep": keep,
            "dense_ms": min(times["dense"][n]), "masked_ms": min(times["masked"][n]),
            "gather_ms": [min(by_k[k]) for k in keep],
            "median_ms": {"dense": summary(times["dense"][n])["median_ms"],
                          "masked": summary(times["masked"][n])["median_ms"],
                          **{f"k{k}": summary(by_k[k])["median_ms"] for k in keep}}}
    return out


def plan_from_entry(entry: Mapping) -> Tuple[List[str], Tuple[List[float], List[float], float], List[int]]:
    """Per kept count k = 0..C: the measured cheapest path ("skip" at 0, then "gather" or "masked"), the width each
    gather computes, and the latency curve (kept shares, ms, dense ms) of the budget loss.

    A gather of k channels runs at the cheapest *timed* width k' >= k (the extra channels dead): gathered-conv time
    is not monotone in the channel count on oneDNN (measured, one thread: 150 -> 152 channels of a 3x3 conv pair at
    14x14 2.9 -> 5.0 ms), so an interpolation between the timed widths can mispredict by 2x, while a padded gather
    runs exactly what the table timed. Masked wins where it is cheaper than every timed width >= k.

    The loss curve is the skip time at 0 and a least-squares line through the gather timings (k > 0), its
    slope kept positive -- not the runtime's min(gather, masked): that one is flat wherever masked wins (a few
    closed channels save nothing there), so with every gate open, where training starts, the budget would
    have no gradient (measured: the latency ratio stayed at 1.03 for 100 steps); and a line is robust to a
    single noisy timing. Where the budget drives the gates (low kept shares) gather is the path that runs."""
    c1, keep, gather, masked = entry["channels"], entry["keep"], entry["gather_ms"], entry["masked_ms"]
    timed = sorted((int(k), float(t)) for k, t in zip(keep, gather) if k > 0)
    plan, width = ["skip"], [0]
    for k in range(1, c1 + 1):
        cands = [(t, kk) for kk, t in timed if kk >= k]
        t, kk = min(cands) if cands else (float("inf"), k)
        plan.append("gather" if t < masked else "masked")
        width.append(kk if t < masked else k)
    xs = [k / c1 for k in keep]
    pts = [(x, y) for x, y in zip(xs, gather) if x > 0]
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / var if var > 0 else 0.0
    slope = max(slope, 1e-3 * float(entry["dense_ms"]))
    ys = [gather[0]] + [max(my + slope * (x - mx), gather[0]) for x in xs[1:]]
    return plan, (xs, ys, float(entry["dense_ms"])), width


def attach_latency_table(backbone: nn.Module, size: int, *, reps: int = 15, table: Optional[LatencyTable] = None,
                         rebuild: bool = False, progress: Optional[Callable[[str], None]] = None,
                         threads: Optional[int] = None) -> Dict[str, object]:
    """Give every gated block of ``backbone`` its measured batch-1 execution plan and latency curve at
    ``size`` px (inputs of one image), for ``threads`` torch threads (default: this process's): the entry of
    this network shape (:func:`network_signature`) comes from the on-disk table of this machine
    (:class:`solo_sparse.engine.costmodel.LatencyTable`); a missing one (or, ``rebuild``, any) is timed first
    in the network (:func:`time_network`), with progress lines. The first gated block's curve also carries
    the network's ungated time (``ss_fixed_ms``: stem, max-pool, head), so the latency budget is a ratio of
    whole-network latencies -- what a user times -- not of the gated blocks alone. Returns {"path": cache
    file, "built": [signatures timed], "signature": the network's, "blocks": {name: signature},
    "ungated_ms": ...}."""
    import time

    if threads and threads != torch.get_num_threads():
        # the table of the deployment's thread count, timed at it (this process's count restored after)
        was = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return attach_latency_table(backbone, size, reps=reps, table=table, rebuild=rebuild, progress=progress)
        finally:
            torch.set_num_threads(was)
    dev = next(backbone.parameters()).device
    table = table or LatencyTable(machine_key(str(dev)))
    shapes = block_input_shapes(backbone, size)
    blocks = gated_blocks(backbone)
    sigs = {n: block_signature(blk, shapes[n]) for n, blk in blocks}
    net_sig = network_signature(backbone, size)
    built = []
    if rebuild or net_sig not in table:
        t0 = time.perf_counter()
        table.put(net_sig, time_network(backbone, size, reps, progress=progress))
        built.append(net_sig)
        table.save()
        if progress:
            progress(f"latency table: {len(blocks)} gated blocks timed in the network in "
                     f"{time.perf_counter() - t0:.1f} s, saved to {table.path}")
    entry = table.get(net_sig)
    for i, (n, blk) in enumerate(blocks):
        blk.ss_plan, blk.ss_latency, blk.ss_plan_width = plan_from_entry(entry["blocks"][n])
        blk.ss_fixed_ms = float(entry["ungated_ms"]) if i == 0 else 0.0
    return {"path": str(table.path), "built": built, "signature": net_sig, "blocks": sigs,
            "ungated_ms": float(entry["ungated_ms"])}


def detach_latency_table(backbone: nn.Module) -> None:
    """Back to the GATHER_MAX_KEEP rule and the MACs budget."""
    for _, blk in gated_blocks(backbone):
        blk.ss_plan, blk.ss_latency, blk.ss_fixed_ms, blk.ss_plan_width = None, None, 0.0, None


def untrained_gates(backbone: nn.Module) -> Optional[str]:
    """Why a DGNet-gated backbone's gates look never trained (every gate's output bias still one value, as
    :class:`ChannelGate` initialises it), or None. Exporting or timing such a gated path measures nothing:
    its gates keep every channel (or, at a hand-set bias, a data-independent share)."""
    blocks = [(n, blk) for n, blk in gated_blocks(backbone) if isinstance(blk.gate, ChannelGate)]
    if not blocks:
        return None      # no DGNet gate (or the static control, whose mask is fixed by design)
    b2 = torch.cat([blk.gate.b2.detach().flatten() for _, blk in blocks])
    if bool((b2 == b2[0]).all()):
        return (f"the gates were never trained: every DGNet gate bias is still {float(b2[0]):g} (the value they are "
                f"initialised to), so the gated path keeps what the initialisation keeps, not what a budget taught it")
    return None

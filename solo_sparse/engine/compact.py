"""Compact export: physically remove the block-internal channels of a ResNet that carry nothing, giving
a smaller dense ResNet with the same outputs.

Which channels. A ResNet block's *internal* channels are the outputs of a conv that only the next conv
of the same block reads (BasicBlock: ``conv1 -> bn1 -> relu -> conv2``; Bottleneck: that and
``conv2 -> bn2 -> relu -> conv3``). Channel ``c`` of such a pair (conv_a, bn_a, conv_b) is removed,
exactly, when

* conv_b never reads it: ``conv_b.weight[:, c] == 0`` (channel-structured weight sparsity, or a mask), or
* it is always 0: ``conv_a.weight[c] == 0`` and ``relu(bn_a(0)) == 0``, i.e. eval-mode
  ``beta - gamma * mean / sqrt(var + eps) <= 0``.

Residual-stream channels (the outputs of ``conv2``/``conv3``, the downsample and the stem) are kept:
a stream channel is read and written by every block of a stage and the identity path carries it
unchanged, so removing one is exact only when it is dead in all of them at once; the internal channels
are where channel-structured pruning and DGNet's gates act, and removing them is consistent with the
residual connections by construction (no residual shape changes). One channel is kept where a pair
would otherwise have none (it is dead, so the output is unchanged).

Gated backbones (DGNet, CDG/CGNet/FBS) choose channels per input, so no static removal is exact; their
runtime counterpart is DGNet's batch-1 gather path (``solo_sparse.gating.dgnet``). They are refused here;
DGNet's static control keeps the same channels for every input and converts to the plain narrower ResNet it is
(``solo_sparse.gating.dgnet.to_plain_resnet``, closed channels unread), which compacts like any other.

``channel_prune(net, density)`` is one-shot channel-structured pruning of the internal channels (score
``|gamma_c| * ||conv_b.weight[:, c]||_1``, top ``round(density * C)`` per pair): it masks conv_b's
input columns, after which :func:`compact` removes them. Used for the zoo's speed benchmark.

**Inference form** (:func:`optimise`, what ``solo-sparse speed`` measures): after removal, every
BatchNorm is folded into the conv before it (eval statistics: ``w * gamma / sqrt(var + eps)``, bias
``beta - mean * gamma / sqrt(var + eps)``; the BN becomes an identity), the weights and the input go
channels-last (NHWC, the layout oneDNN's CPU convolutions run natively; a contiguous NCHW input is
converted at the entry and the output of the global pool is a plain (B, C) tensor), and kept widths
can be rounded up to a multiple of the CPU's vector width (:func:`round_keep`: removed channels are put
back, which is exact -- they are unread or dead). Outputs equal the masked dense network's within
1e-5 relative (tested). The same folding and layout applied to the *uncompacted* network is the fair
reference of a speed-up (``solo-sparse speed`` reports both).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from solo_sparse.engine.maskio import MASK


def _blocks(net: nn.Module):
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for name, mod in net.named_modules():
        if isinstance(mod, BasicBlock):
            yield name, mod, [("conv1", "bn1", "conv2")]
        elif isinstance(mod, Bottleneck):
            yield name, mod, [("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")]


def _refuse_gated(net: nn.Module) -> None:
    for name, mod in net.named_modules():
        if hasattr(mod, "ss_mode") or hasattr(mod, "ss_branch") or type(mod).__name__.startswith(("Gated", "CDG")):
            raise ValueError(f"compact export: {name or 'the backbone'} ({type(mod).__name__}) is gated; gates pick "
                             f"channels per input, so static channel removal is not exact. Use DGNet's batch-1 "
                             f"gather path (eval_path: gated) for the runtime speed-up; a gated backbone whose "
                             f"plugin has a plain form (Plugin.plain_backbone, e.g. DGNet's static control) "
                             f"converts to it first")


def pairs(net: nn.Module) -> List[Tuple[str, nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]]:
    """(key, conv_a, bn_a, conv_b) of every internal channel set; key = ``<block>.<conv_a>``."""
    out = []
    for name, blk, ps in _blocks(net):
        for a, bn, b in ps:
            out.append((f"{name}.{a}", getattr(blk, a), getattr(blk, bn), getattr(blk, b)))
    return out


def _bn_at_zero(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BN output for a zero input, (C,)."""
    return bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps)


@torch.no_grad()
def removable(net: nn.Module) -> Dict[str, torch.Tensor]:
    """{pair key: bool (C,) channels to keep} (see the module docstring for the exact rule)."""
    _refuse_gated(net)
    keep = {}
    for key, ca, bn, cb in pairs(net):
        unread = cb.weight.eq(0).flatten(2).all(2).all(0)                      # (C,)
        dead = ca.weight.eq(0).flatten(1).all(1) & (_bn_at_zero(bn) <= 0)
        if ca.bias is not None:
            dead &= ca.bias.eq(0)
        keep[key] = ~(unread | dead)
    return keep


@torch.no_grad()
def channel_prune(net: nn.Module, density: float) -> Dict[str, torch.Tensor]:
    """Mask conv_b's input columns of the lowest-scoring internal channels in place (weights zeroed and
    a ``weight_mask`` buffer set); returns {pair key: bool (C,) kept}."""
    if not 0 < density <= 1:
        raise ValueError(f"channel density must be in (0, 1], got {density}")
    _refuse_gated(net)
    kept = {}
    for key, _ca, bn, cb in pairs(net):
        score = bn.weight.abs() * cb.weight.abs().sum(dim=(0, 2, 3))
        k = max(1, int(round(density * score.numel())))
        keep = torch.zeros_like(score, dtype=torch.bool)
        keep[score.topk(k).indices] = True
        m = keep.view(1, -1, 1, 1).expand_as(cb.weight)
        old = getattr(cb, MASK, None)
        m = m & old.bool() if old is not None else m.clone()
        cb.weight.mul_(m)
        if old is not None:
            old.copy_(m.to(old.dtype))
        else:
            cb.register_buffer(MASK, m.contiguous(), persistent=True)
        kept[key] = keep
    return kept


def _slice_conv(conv: nn.Conv2d, out_idx: Optional[torch.Tensor], in_idx: Optional[torch.Tensor]) -> nn.Conv2d:
    w = conv.weight.detach()
    m = getattr(conv, MASK, None)
    if out_idx is not None:
        w = w.index_select(0, out_idx)
        m = m.index_select(0, out_idx) if m is not None else None
    if in_idx is not None:
        w = w.index_select(1, in_idx)
        m = m.index_select(1, in_idx) if m is not None else None
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach().index_select(0, out_idx))
    if m is not None:
        new.register_buffer(MASK, m.contiguous().clone(), persistent=True)
    return new.to(conv.weight.device)


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(idx.numel(), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        for n in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, n).copy_(getattr(bn, n).detach().index_select(0, idx))
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.to(bn.weight.device)


@torch.no_grad()
def compact(net: nn.Module, keep: Optional[Mapping[str, torch.Tensor]] = None) -> nn.Module:
    """A copy of ``net`` with the internal channels not in ``keep`` (default: :func:`removable`)
    physically removed. Outputs equal ``net``'s (eval mode) within fp tolerance when every removed
    channel is unread or dead; ``keep`` given by hand is trusted."""
    keep = dict(removable(net) if keep is None else keep)
    out = copy.deepcopy(net)
    for name, blk, ps in _blocks(out):
        for a, bn, b in ps:
            key = f"{name}.{a}"
            if key not in keep:
                continue
            k = keep[key].bool()
            if not k.any():
                k = k.clone()
                k[0] = True
            idx = k.nonzero().flatten()
            # conv_b may have been sliced as the conv_a of the next pair: read it back from blk
            setattr(blk, a, _slice_conv(getattr(blk, a), idx, None))
            setattr(blk, bn, _slice_bn(getattr(blk, bn), idx))
            setattr(blk, b, _slice_conv(getattr(blk, b), None, idx))
    return out.eval()


def round_keep(net: nn.Module, keep: Mapping[str, torch.Tensor], multiple: int) -> Dict[str, torch.Tensor]:
    """``keep`` with each pair's kept count rounded up to a multiple of ``multiple`` (capped at the
    width) by putting back removed channels (highest |gamma| * ||conv_b[:, c]||_1 first). Exact:
    a removed channel is unread or dead, so keeping it changes no output."""
    out = {}
    with torch.no_grad():
        for key, _ca, bn, cb in pairs(net):
            if key not in keep:
                continue
            k = keep[key].bool().clone()
            want = min(k.numel(), -(-max(int(k.sum()), 1) // multiple) * multiple)
            if want > int(k.sum()):
                score = bn.weight.abs() * cb.weight.abs().sum(dim=(0, 2, 3))
                score = torch.where(k, torch.full_like(score, -float("inf")), score)
                k[score.topk(want - int(k.sum())).indices] = True
            out[key] = k
    return out


def vector_width() -> int:
    """fp32 lanes of the CPU's widest vector unit torch uses (AVX-512: 16, AVX2: 8, else 4)."""
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    return 16 if "AVX512" in cap else 8 if "AVX2" in cap else 4


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, True, conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        w = conv.weight
        if getattr(conv, MASK, None) is not None:
            w = w * getattr(conv, MASK).to(w.dtype)
        new.weight.copy_(w * scale[:, None, None, None])
        new.bias.copy_(bias)
    return new


@torch.no_grad()
def fold_bn(net: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet (eval) with every BatchNorm folded into the conv before it: the stem,
    each block's convs, the downsample; the BNs become identities. Mask buffers are applied to the
    folded weights (the folded net is a plain dense one)."""
    _refuse_gated(net)
    out = copy.deepcopy(net).eval()
    if isinstance(getattr(out, "conv1", None), nn.Conv2d) and isinstance(getattr(out, "bn1", None), nn.BatchNorm2d):
        out.conv1, out.bn1 = _fold_into(out.conv1, out.bn1), nn.Identity()
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for mod in out.modules():
        if isinstance(mod, (BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                if hasattr(mod, f"conv{i}"):
                    setattr(mod, f"conv{i}", _fold_into(getattr(mod, f"conv{i}"), getattr(mod, f"bn{i}")))
                    setattr(mod, f"bn{i}", nn.Identity())
            if mod.downsample is not None and len(mod.downsample) == 2:
                mod.downsample = nn.Sequential(_fold_into(mod.downsample[0], mod.downsample[1]))
    return out


class ChannelsLast(nn.Module):
    """Runs ``net`` (weights already channels-last) on a channels-last copy of the input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


#: the inference-form steps of :func:`optimise`, in order
OPTIMISATIONS = ("fold_bn", "channels_last")


def optimise(net: nn.Module, steps=OPTIMISATIONS) -> nn.Module:
    """The inference form of a (compacted or dense) ResNet: ``fold_bn`` then ``channels_last`` (see the module
    docstring); ``steps`` picks a subset. Returns a new module in eval mode."""
    bad = [s for s in steps if s not in OPTIMISATIONS]
    if bad:
        raise ValueError(f"unknown optimisation(s) {bad}; known: {', '.join(OPTIMISATIONS)}")
    out = fold_bn(net) if "fold_bn" in steps else copy.deepcopy(net).eval()
    if "channels_last" in steps:
        out = ChannelsLast(out)
    return out.eval()


def widths(net: nn.Module) -> Dict[str, int]:
    """{pair key: number of internal channels} (stored in compact zoo files to rebuild the shapes)."""
    if isinstance(net, ChannelsLast):
        net = net.net
    return {key: ca.out_channels for key, ca, _, _ in pairs(net)}


def shrink_to(net: nn.Module, w: Mapping[str, int]) -> nn.Module:
    """Replace ``net``'s internal convs/BNs by uninitialised ones of widths ``w`` (then load a state)."""
    for name, blk, ps in _blocks(net):
        for a, bn, b in ps:
            key = f"{name}.{a}"
            if key in w:
                idx = torch.arange(int(w[key]))
                setattr(blk, a, _slice_conv(getattr(blk, a), idx, None))
                setattr(blk, bn, _slice_bn(getattr(blk, bn), idx))
                setattr(blk, b, _slice_conv(getattr(blk, b), None, idx))
    return net


def macs(net: nn.Module, size: int = 32) -> float:
    """Dense MACs of one ``size``×``size`` image through ``net`` (convs and linears)."""
    from solo_sparse.engine.flops import count_macs

    return float(count_macs(net, torch.zeros(1, 3, size, size)).dense)


@torch.inference_mode()
def latency(nets: Mapping[str, nn.Module], batch: int, size: int, reps: int, warmup: int = 3,
            progress: bool = False) -> Dict[str, Dict[str, float]]:
    """CPU latency of each net on a (batch, 3, size, size) input: {name: {median_ms, p10_ms, p90_ms, ms}} (``ms``:
    the time of each repetition, in order, for ratios paired by repetition).

    The nets run interleaved (one call each per repetition, their order rotating by one each repetition), so
    background load hits all of them alike; the statistics are over ``reps`` repetitions in this process."""
    import statistics
    import time

    x = torch.randn(batch, 3, size, size)
    for net in nets.values():
        net.eval()
        for _ in range(warmup):
            net(x)
    ts: Dict[str, List[float]] = {n: [] for n in nets}
    it = range(reps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"latency b={batch} {size}px", leave=False)
    items = list(nets.items())
    for r in it:
        k = r % len(items)
        for n, net in items[k:] + items[:k]:
            t0 = time.perf_counter()
            net(x)
            ts[n].append(1e3 * (time.perf_counter() - t0))
    out = {}
    for n, v in ts.items():
        q = statistics.quantiles(v, n=10) if len(v) >= 2 else [v[0]] * 9
        out[n] = {"median_ms": statistics.median(v), "p10_ms": q[0], "p90_ms": q[-1], "ms": v}
    return out

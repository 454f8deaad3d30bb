"""An execution path for trained CDG / CGNet convolutions (:class:`solo_sparse.gating.cgnet.CGNetConv2d`) that
skips conditional compute where the gate is off, at a granularity dense CPU kernels can execute.

The trained conv computes (branch a1, evaluation)::

    Y_base = conv(x_{b(o)}, W[o, b(o)])            grouped conv, 1/G of the MACs
    M      = gate(Y_base)                          (B, C_out, H, W) in {0, 1}; structured (cg > 1): equal
                                                   within each block of cg consecutive output channels
    Y      = Y_base + s * M * (conv(x, W) - Y_base)    s: the conv's ``cond_scale`` if it has one, else 1

The gate is decided **per output position**. A dense convolution kernel produces whole output maps, so
positions cannot be skipped one by one; the executable granularities are:

* ``block`` -- per (sample, block of cg output channels): a block whose mask is 0 at *every* position of
  the map is skipped; the conditional conv runs for the other blocks' channels only (their weights
  gathered: one dense conv on fewer output channels). Executes
  ``D/G + D * (share of (sample, block) pairs with any position on)`` MACs.
* ``tile`` -- per (sample, block, T x T tile of output positions): im2col of the input once, then for each
  block one matrix product over the columns of the tiles where the block is on anywhere. Executes
  ``D/G + D * (share of (sample, block, tile) triples on)`` MACs, but as C_out / cg small GEMMs
  (a Python loop over blocks), not one conv.

Outputs equal the trained conv's (tested on convs built by :func:`solo_sparse.gating.cgnet.convert_resnet`).
The gate decision itself is the trained conv's own (its ``_mask`` applied to Y_base), so it follows
whatever normalisation / pooling the conv uses. :func:`executed_share` reports, from the masks of a batch,
the share of the conditional MACs each granularity executes -- the limit a kernel at that granularity
could reach -- next to the per-position share (eq. 13's count).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.gating.cgnet import CGNetConv2d, base_assignment
from solo_sparse.gating.channel import gated_convs

GRANULARITIES = ("block", "tile")


def _cond_scale(conv: nn.Module) -> torch.Tensor:
    s = getattr(conv, "cond_scale", None)
    if s is None:
        return torch.ones((), device=conv.weight.device)
    s = torch.as_tensor(s, device=conv.weight.device).detach().float()
    return s.reshape(-1)[:, None, None] if s.numel() > 1 else s.reshape(())


class CDGExecConv(nn.Module):
    """The evaluation (branch a1) form of a trained :class:`CGNetConv2d` that skips gated-off conditional
    compute at ``granularity`` ``block`` or ``tile`` (``tile`` x ``tile`` output positions); see the
    module docstring. ``stats`` (if set to a list) receives per forward the executed shares."""

    def __init__(self, conv: CGNetConv2d, granularity: str = "block", tile: int = 4):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("CDG execution supports dense zero-padded convs only")
        self.granularity, self.tile = granularity, int(tile)
        self.G, self.cg = int(conv.ss_G), max(1, int(conv.ss_cg))
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size = conv.kernel_size
        w = conv.weight.detach().clone()
        c_out, c_in, kh, kw = w.shape
        G = self.G
        assign = base_assignment(G, "a1")
        self.assign = assign
        blocks = w.view(G, c_out // G, G, c_in // G, kh, kw)
        base = blocks[torch.arange(G), :, torch.tensor(assign)].reshape(c_out, c_in // G, kh, kw)
        off = blocks.clone()
        off[torch.arange(G), :, torch.tensor(assign)] = 0            # the conditional path's weights
        self.register_buffer("w_base", base.contiguous())
        self.register_buffer("w_cond", off.reshape(c_out, c_in, kh, kw).contiguous())
        self.register_buffer("w_cond_flat", self.w_cond.flatten(1).contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.register_buffer("scale", _cond_scale(conv))
        #: a ``base_only`` control conv has no conditional path at all
        self.base_only = getattr(conv, "ss_control", "none") == "base_only"
        # the trained conv's own gate decision (not a submodule: its parameters are not ours)
        self.__dict__["_gate_src"] = conv
        self.stats: Optional[List[Dict[str, float]]] = None

    def _apply(self, fn, *args, **kwargs):
        # the trained conv whose gate decides is not a submodule: move it along (device, dtype)
        self._gate_src._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self.assign != list(range(self.G)):
            b, c, h, w = x.shape
            x = x.view(b, self.G, c // self.G, h, w)[:, torch.tensor(self.assign, device=x.device)].reshape(b, c, h, w)
        return F.conv2d(x, self.w_base, None, self.stride, self.padding, self.dilation, self.G)

    @torch.no_grad()
    def gate(self, y_base: torch.Tensor) -> torch.Tensor:
        src = self._gate_src
        return (src._mask(y_base) > 0).to(y_base.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        if self.base_only:
            return y if self.bias is None else y + self.bias[None, :, None, None]
        m = self.gate(y)
        b, c_out, h, w = m.shape
        nb = c_out // self.cg
        blk = m.view(b, nb, self.cg, h, w)[:, :, 0]                    # (B, blocks, H, W): shared within a block
        if self.granularity == "block":
            active = blk.flatten(2).amax(2) > 0                         # (B, blocks)
            self._record(m, active.float().mean())
            return self._block(x, y, m, active)
        return self._tile(x, y, m, blk)

    def _record(self, m: torch.Tensor, executed: torch.Tensor) -> None:
        if self.stats is not None:
            self.stats.append({"position": float(m.mean()), "executed": float(executed)})

    def _block(self, x, y, m, active):
        cg = self.cg
        if x.shape[0] == 1:
            idx = active[0].nonzero().flatten()
            if idx.numel() == 0:
                return y
            ch = (idx[:, None] * cg + torch.arange(cg, device=x.device)).flatten()
            yc = F.conv2d(x, self.w_cond.index_select(0, ch), self._bias(ch), self.stride, self.padding, self.dilation)
            s = self.scale if self.scale.dim() == 0 else self.scale.index_select(0, ch)
            y = y.clone()
            y[:, ch] += s * m[:, ch] * yc
            return y
        # batches: the union of the samples' active blocks in one conv (a per-sample loop loses more in
        # dispatch than it saves; with per-position gates the union is nearly every block anyway)
        union = active.any(0).nonzero().flatten()
        if union.numel() == 0:
            return y
        ch = (union[:, None] * cg + torch.arange(cg, device=x.device)).flatten()
        yc = F.conv2d(x, self.w_cond.index_select(0, ch), self._bias(ch), self.stride, self.padding, self.dilation)
        s = self.scale if self.scale.dim() == 0 else self.scale.index_select(0, ch)
        y = y.clone()
        y[:, ch] += s * m[:, ch] * yc
        return y

    def _bias(self, ch: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.bias is None else self.bias.index_select(0, ch)

    def _tile(self, x, y, m, blk):
        b, c_out, h, w = m.shape
        t, cg = self.tile, self.cg
        on = F.max_pool2d(blk, t, t, ceil_mode=True)                   # (B, blocks, Ht, Wt): tile has any on
        self._record(m, on.mean())
        pos = on.repeat_interleave(t, 2).repeat_interleave(t, 3)[:, :, :h, :w].flatten(2) > 0   # (B, blocks, HW)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)           # (B, K, HW)
        out = y.flatten(2).clone()
        for i in range(b):
            for j in pos[i].any(1).nonzero().flatten().tolist():
                p = pos[i, j].nonzero().flatten()
                rows = slice(j * cg, (j + 1) * cg)
                yc = self.w_cond_flat[rows] @ cols[i].index_select(1, p)                 # (cg, n_pos)
                if self.bias is not None:
                    yc = yc + self.bias[rows, None]
                mm = m[i, rows].flatten(1).index_select(1, p)
                s = self.scale if self.scale.dim() == 0 else self.scale[rows].flatten()[:, None]
                out[i, rows] = out[i, rows].index_add(1, p, s * mm * yc)
        return out.view(b, c_out, h, w)


def convertible(backbone: nn.Module) -> List[Tuple[str, CGNetConv2d]]:
    """The CDG/CGNet-gated convs of ``backbone`` (empty: nothing to execute)."""
    return [(n, c) for n, c in gated_convs(backbone) if isinstance(c, CGNetConv2d)]


def make_executable(backbone: nn.Module, granularity: str = "block", tile: int = 4) -> nn.Module:
    """A copy of a CDG/CGNet-gated backbone (evaluation: branch a1) with every gated conv replaced by its
    :class:`CDGExecConv`; the original is left unchanged. Raises ValueError when there is none."""
    convs = convertible(backbone)
    if not convs:
        raise ValueError("no CDG/CGNet-gated convolution in this backbone")
    out = copy.deepcopy(backbone).eval()
    for name, conv in convertible(out):
        conv.ss_mode, conv.ss_branch = "gated", "a1"
        parent = out.get_submodule(name.rsplit(".", 1)[0]) if "." in name else out
        setattr(parent, name.rsplit(".", 1)[-1], CDGExecConv(conv, granularity, tile))
    return out


@torch.no_grad()
def executed_share(backbone: nn.Module, x: torch.Tensor, tile: int = 4) -> Dict[str, Dict[str, float]]:
    """Per gated conv of a CDG/CGNet backbone (evaluation, branch a1) on images ``x``: the share of its
    conditional-path MACs that is on per position (eq. 13's count, the limit), and what the ``block``
    and ``tile`` granularities execute; plus the MAC-weighted totals over the convs (key ``"total"``)."""
    rows: Dict[str, Dict[str, float]] = {}
    masks: Dict[str, torch.Tensor] = {}
    dense: Dict[str, float] = {}
    hooks = []
    for name, conv in convertible(backbone):
        def hook(mod, inp, out, name=name):
            ex = CDGExecConv(mod)
            masks[name] = ex.gate(ex._base(inp[0]))
            dense[name] = float(out.shape[-2] * out.shape[-1] * mod.weight.numel())
        hooks.append(conv.register_forward_hook(hook))
    was = backbone.training
    try:
        backbone.eval()
        backbone(x)
    finally:
        backbone.train(was)
        for h in hooks:
            h.remove()
    tot = {"position": 0.0, "block": 0.0, "tile": 0.0}
    wsum = 0.0
    for name, m in masks.items():
        conv = backbone.get_submodule(name)
        cg = max(1, int(conv.ss_cg))
        b, c, h, w = m.shape
        blk = m.view(b, c // cg, cg, h, w)[:, :, 0]
        r = {"position": float(m.mean()), "block": float((blk.flatten(2).amax(2) > 0).float().mean()),
             "tile": float(F.max_pool2d(blk, tile, tile, ceil_mode=True).mean()), "map": [h, w]}
        rows[name] = r
        wt = dense[name] * (1 - 1 / conv.ss_G)
        for k in tot:
            tot[k] += wt * r[k]
        wsum += wt
    rows["total"] = {k: v / wsum for k, v in tot.items()} if wsum else {}
    return rows


def untrained_gates(backbone: nn.Module) -> Optional[str]:
    """Why a CDG/CGNet backbone's gates look never trained (every threshold tau still one value, as
    :func:`solo_sparse.gating.cgnet.convert_resnet` initialises them), or None."""
    convs = convertible(backbone)
    if not convs:
        return None
    tau = torch.cat([c.tau.detach().flatten() for _, c in convs])
    if bool((tau == tau[0]).all()):
        return (f"the gates were never trained: every CDG threshold tau is still {float(tau[0]):g} (its initial "
                f"value)")
    return None

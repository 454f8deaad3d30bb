"""Channel gating for torchvision ResNets: CDG / CGNet conditional paths and FBS saliency gates.

One engine for three plugins (``cdg``, ``cgnet``, ``fbs``). Convolutions are class-swapped in
place to :class:`GatedConv2d` (a ``nn.Conv2d``: the ``weight`` keeps its torchvision name) and
their blocks to :class:`CDGBasicBlock` / :class:`CDGBottleneck` (same attributes, the forward adds
FBS's post-BN channel scaling). Stem and downsample convs stay dense.

**CGNet / CDG gated convolution** (Hua et al. 2019; CDG seed eq. 1-3, 7-12). A conv W: C_in -> C_out
(k x k) with G groups of input and output channels. Output group o's *base path* reads input group
b(o) only; the *conditional path* is every other input group::

    Y_base = conv(x_{b(o)}, W[o, b(o)])            (B, C_out, H, W)  -- grouped conv, 1/G of the MACs
    Y_cond = conv(x, W) - Y_base                   the off-base weights
    z      = normal(Y_base) - tau                  tau: learnable, shape (C_out,)
    M      = step(z)                               forward exactly 0/1
    Y      = Y_base + M * Y_cond

* ``normal`` (our choice; the seed does not pin it): **per-sample** normalisation over (C, H, W),
  no affine parameters, eps 1e-5. No statistic crosses samples, so the two views never share one
  (batch normalisation would mix them), and it stays defined on 1x1 maps (instance norm is 0 there).
  Normalised values are ~N(0, 1), so a threshold tau gives a conditional sparsity ~Phi(tau); the
  plugins take the seed's target threshold s as a target sparsity eta* and use s = Phi^-1(eta*).
* **Gradient smoothing**: straight-through past the step, through an alpha-scaled sigmoid:
  dM/dz = alpha * sigmoid(alpha z) * (1 - sigmoid(alpha z)) (``alpha`` default 2).
* **Structured** (seed §structured CDG): with ``cg`` > 1 the mask is decided per group of cg
  consecutive output channels at each position (z averaged over the cg channels, repeated back).
* **Base paths**: branch ``a1`` uses the diagonal, b(o) = o; branch ``a2`` the inverse diagonal,
  b(o) = G - 1 - o (disjoint from a1 for even G, the seed's assignment); for odd G, where the
  inverse diagonal meets the diagonal in the middle group, a2 uses the cyclic shift
  b(o) = (o + G // 2) mod G. Both are permutations: every input group is the base of exactly one
  output group (unbiased), and a1 and a2 never share a (o, b(o)) block (disjoint).
* ``follow`` (CGNet's unified gating): reuse the last mask computed on branch a1 by the same module
  (same shape), with a1's base path.

**FBS** (Gao et al. 2019, feature boosting and suppression): saliency
``s = ReLU(phi · mean_hw |x| + rho)`` (B, C_out) from the conv's pooled input, winner-take-all keeps
the ceil(d · C_out) largest per sample (the rest 0); the conv's BN output is multiplied by the
kept saliencies (suppressed channels are exactly 0 before the activation; with the ReLU they stay
0, so the next conv of the block can skip those input channels). Loss: L1 on s.

**FLOPs**, per sample, MACs. D(conv) = H_out W_out C_out C_in k^2.

* CDG / CGNet:  exact = D/G + (1 - 1/G) D * mean(M) + gate, gate = 6 C_out H W (per-sample mean and
  variance: 2, normalise: 1, subtract tau and compare: 2, mask-multiply-add of Y_cond: 1;
  + C_out H W for the group average when cg > 1). The seed's eq. 13, D_red = 1 / (1/G + (1 - eta)(1 - 1/G))
  with eta = 1 - mean(M) over all gated layers, counts conv MACs only and weighs every layer
  equally per output element; the exact count weighs layers by their MACs and adds the gates'
  own cost.
* FBS: exact = D * kept_out * kept_in + gate, kept_in < 1 when the conv's input is the output of an
  FBS-gated conv of the same block; gate = C_in H_in W_in (|x| mean) + C_in C_out (FC) + C_out (WTA).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, PREFIX

KINDS = ("cdg", "cgnet", "fbs")
BRANCHES = ("a1", "a2", "follow")


class _SmoothStep(torch.autograd.Function):
    """Forward: [z > 0] exactly; backward: d sigmoid(alpha z) / dz."""

    @staticmethod
    def forward(ctx, z, alpha):
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.alpha * z)
        return grad * ctx.alpha * s * (1 - s), None


def smooth_step(z: torch.Tensor, alpha: float) -> torch.Tensor:
    return _SmoothStep.apply(z, float(alpha))


class _GateMix(torch.autograd.Function):
    """Fused unstructured CDG gate: Y = Y_base + M (Y_full - Y_base), M = step(normal(Y_base) - tau).

    Same values and gradients as the composition of :func:`per_sample_normal`, the tau shift,
    :func:`smooth_step` and the mix (tested against it), in fewer passes over the (B, C, H, W)
    maps. Returns (Y, M).
    """

    @staticmethod
    def forward(ctx, full, base, tau, alpha, eps):
        dims = (1, 2, 3)
        mu = base.mean(dims, keepdim=True)
        rstd = torch.rsqrt(base.var(dims, keepdim=True, unbiased=False) + eps)
        n = (base - mu) * rstd
        z = n - tau[None, :, None, None]
        m = (z > 0).to(base.dtype)
        diff = full - base
        out = torch.addcmul(base, m, diff)
        ctx.save_for_backward(n, z, m, diff, rstd)
        ctx.alpha = alpha
        return out, m

    @staticmethod
    def backward(ctx, g, _gm):
        n, z, m, diff, rstd = ctx.saved_tensors
        a = ctx.alpha
        g_full = g * m
        s = torch.sigmoid(z.mul_(a))                 # z is not needed afterwards
        g_z = g * diff * s * (1 - s) * a
        g_tau = -g_z.sum((0, 2, 3))
        # per-sample normalisation backward: rstd * (g_n - mean(g_n) - n * mean(g_n * n))
        k = n[0].numel()
        mean_g = g_z.sum((1, 2, 3), keepdim=True) / k
        mean_gn = (g_z * n).sum((1, 2, 3), keepdim=True) / k
        g_base = (g_z - mean_g - n * mean_gn) * rstd + (g - g_full)
        return g_full, g_base, g_tau, None, None


def base_assignment(groups: int, branch: str) -> List[int]:
    """b(o) for o in 0..G-1: the input group read by output group o's base path."""
    if branch in ("a1", "follow") or groups == 1:
        return list(range(groups))
    if groups % 2 == 0:
        return [groups - 1 - o for o in range(groups)]
    return [(o + groups // 2) % groups for o in range(groups)]


def per_sample_normal(y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) normalised per sample over (C, H, W), no affine."""
    dims = tuple(range(1, y.dim()))
    mu = y.mean(dims, keepdim=True)
    var = y.var(dims, keepdim=True, unbiased=False)
    return (y - mu) * torch.rsqrt(var + eps)


def target_threshold(target_sparsity: float) -> float:
    """s = Phi^-1(eta*), clamped to Phi^-1(1e-3) for eta* = 0 (normalised values ~N(0, 1))."""
    p = min(max(float(target_sparsity), 1e-3), 1 - 1e-3)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p)))


class GatedConv2d(nn.Conv2d):
    """A ``nn.Conv2d`` (same ``weight``) with a CDG/CGNet conditional path or an FBS saliency gate.

    Created by class swap (:func:`convert_resnet`); ``ss_mode`` ``dense`` runs the plain conv.
    Records, per training or measuring forward, ``_ss_stats`` = dict(mask (B, C_out, H, W) bool or
    None, kept (B,) share of the conditional path / of the output channels, cost (B,) exact MACs,
    dense MACs).
    """

    def _gate_init(self, kind: str, groups: int, cg: int, alpha: float, init_tau: float, density: float) -> None:
        self.ss_kind, self.ss_G, self.ss_cg, self.ss_alpha = kind, int(groups), int(cg), float(alpha)
        self.ss_density = float(density)
        self.ss_mode, self.ss_branch = "gated", "a1"
        self.ss_record = False
        self.ss_in_kept: Optional[torch.Tensor] = None     # FBS: kept input channels (B, C_in) of this forward
        self._ss_stats: Optional[Dict] = None
        self._ss_cache: Optional[torch.Tensor] = None      # CGNet: a1's last mask
        self._ss_last: Dict[str, torch.Tensor] = {}        # last mask per branch (detached) for S_c
        self._ss_pi: Optional[torch.Tensor] = None
        c_out, c_in = self.weight.shape[:2]
        if kind in ("cdg", "cgnet"):
            self.tau = nn.Parameter(torch.full((c_out,), float(init_tau)))
        else:
            self.phi = nn.Parameter(torch.empty(c_out, c_in))
            self.rho = nn.Parameter(torch.ones(c_out))
            nn.init.kaiming_uniform_(self.phi, a=math.sqrt(5))

    # ----------------------------------------------------------------- CDG / CGNet
    def _base_weight(self, assign: List[int]) -> torch.Tensor:
        G = self.ss_G
        c_out, c_in, kh, kw = self.weight.shape
        w = self.weight.view(G, c_out // G, G, c_in // G, kh, kw)
        idx = torch.tensor(assign, device=w.device)
        # block (o, b(o)) for every output group o
        wb = w[torch.arange(G, device=w.device), :, idx]          # (G, C_out/G, C_in/G, kh, kw)
        return wb.reshape(c_out, c_in // G, kh, kw)

    def _base(self, x: torch.Tensor, assign: List[int]) -> torch.Tensor:
        G = self.ss_G
        b, c_in, h, w = x.shape
        xs = x
        if assign != list(range(G)):
            xs = x.view(b, G, c_in // G, h, w)[:, torch.tensor(assign, device=x.device)].reshape(b, c_in, h, w)
        return F.conv2d(xs, self._base_weight(assign), None, self.stride, self.padding, self.dilation, G)

    def _mask(self, y_base: torch.Tensor) -> torch.Tensor:
        z = per_sample_normal(y_base) - self.tau[None, :, None, None]
        if self.ss_cg > 1:
            b, c, h, w = z.shape
            z = z.view(b, c // self.ss_cg, self.ss_cg, h, w).mean(2).repeat_interleave(self.ss_cg, 1)
        return smooth_step(z, self.ss_alpha)

    def _forward_cdg(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.ss_branch
        assign = base_assignment(self.ss_G, "a2" if branch == "a2" else "a1")
        full = self._conv_forward(x, self.weight, self.bias)
        y_base = self._base(x, assign)
        cached = self._ss_cache
        if branch == "follow" and cached is not None and cached.shape == y_base.shape:
            m = cached
            out = y_base + m * (full - y_base)
        elif self.ss_cg == 1 and self.ss_kind == "cdg":   # cgnet: crop 1 reuses m, keep its graph
            out, m = _GateMix.apply(full, y_base, self.tau, self.ss_alpha, 1e-5)
        else:
            m = self._mask(y_base)
            out = y_base + m * (full - y_base)
        if branch == "a1" and self.ss_kind == "cgnet":
            self._ss_cache = m
        if self.ss_record:
            self._ss_last[branch] = m.detach() > 0
            self._ss_stats = self._cdg_stats(m.detach(), y_base.shape)
        return out

    def _cdg_stats(self, m: torch.Tensor, shape) -> Dict:
        b, c_out, h, w = shape
        dense = float(h * w * self.weight.numel())
        kept = m.flatten(1).mean(1)
        gate = (6 + (1 if self.ss_cg > 1 else 0)) * c_out * h * w
        cost = dense / self.ss_G + (1 - 1 / self.ss_G) * dense * kept + gate
        return {"kept": kept, "cost": cost, "dense": dense}

    # ----------------------------------------------------------------- FBS
    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> winner-take-all saliency (B, C_out); also stores the raw s for the L1 loss."""
        s = F.relu(F.linear(x.abs().mean((2, 3)), self.phi, self.rho))
        k = max(1, math.ceil(self.ss_density * s.shape[1]))
        if k < s.shape[1]:
            thr = s.topk(k, dim=1).indices
            keep = torch.zeros_like(s, dtype=torch.bool).scatter_(1, thr, True)
            pi = s * keep
        else:
            pi = s
        self._ss_s = s
        return pi

    def _forward_fbs(self, x: torch.Tensor) -> torch.Tensor:
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

    def post_bn(self, y: torch.Tensor) -> torch.Tensor:
        """FBS: scale the BN output by the kept saliencies (identity for other kinds / dense mode)."""
        if self.ss_kind != "fbs" or self.ss_mode == "dense" or self._ss_pi is None:
            return y
        pi, self._ss_pi = self._ss_pi, None
        return y * pi[:, :, None, None]

    # -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._ss_stats = None
        if self.ss_mode == "dense":
            self._ss_pi = None
            return self._conv_forward(x, self.weight, self.bias)
        if self.ss_kind == "fbs":
            return self._forward_fbs(x)
        return self._forward_cdg(x)

    def effective_macs(self, inputs, output, dense: float) -> float:
        """``solo_sparse.flops`` protocol: batch-mean exact cost of the last forward."""
        st = self._ss_stats
        if st is None:
            return dense
        cost = torch.as_tensor(st["cost"]).float()
        return float(cost.sum()) if cost.dim() else float(cost) * output.shape[0]


# --------------------------------------------------------------------- blocks
def _torchvision_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


BasicBlock, Bottleneck = _torchvision_blocks()


def _post(conv: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return conv.post_bn(y) if isinstance(conv, GatedConv2d) else y


def _pass_kept(src: nn.Module, dst: nn.Module) -> None:
    """FBS: tell ``dst`` which of its input channels ``src`` suppressed (for the exact FLOPs)."""
    if isinstance(dst, GatedConv2d):
        pi = getattr(src, "_ss_pi", None) if isinstance(src, GatedConv2d) and src.ss_kind == "fbs" \
            and src.ss_mode != "dense" else None
        dst.ss_in_kept = (pi.detach() > 0).float() if (pi is not None and src.ss_record) else None


class CDGBasicBlock(BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        _pass_kept(self.conv1, self.conv2)
        out = F.relu(_post(self.conv1, self.bn1(out)))
        out = _post(self.conv2, self.bn2(self.conv2(out)))
        return F.relu(out + identity)


class CDGBottleneck(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        _pass_kept(self.conv1, self.conv2)
        out = F.relu(_post(self.conv1, self.bn1(out)))
        out2 = self.conv2(out)
        _pass_kept(self.conv2, self.conv3)
        out = F.relu(_post(self.conv2, self.bn2(out2)))
        out = _post(self.conv3, self.bn3(self.conv3(out)))
        return F.relu(out + identity)


# --------------------------------------------------------------------- conversion
def is_cdg(backbone: nn.Module) -> bool:
    return getattr(backbone, "ss_cdg_kind", None) is not None


def gated_convs(backbone: nn.Module) -> List[Tuple[str, GatedConv2d]]:
    return [(n, m) for n, m in backbone.named_modules() if isinstance(m, GatedConv2d)]


def _selected(block: nn.Module, convs: str) -> List[str]:
    names = ["conv1", "conv2"] + (["conv3"] if hasattr(block, "conv3") else [])
    if convs == "block":
        return names
    return [n for n in names if getattr(block, n).kernel_size == (3, 3)]


def convert_resnet(backbone: nn.Module, *, kind: str = "cdg", groups: int = 4, cg: int = 1, alpha: float = 2.0,
                   init_tau: float = 0.0, density: float = 0.5, stages: Tuple[int, ...] = (1, 2, 3, 4),
                   convs: str = "3x3") -> nn.Module:
    """Gate a torchvision ResNet in place (see the module docstring). Refuses, naming the key and the
    layer, a group count G or a structure size cg that does not divide a gated conv's channels."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if not all(hasattr(backbone, a) for a in ("conv1", "bn1", "layer1", "layer4")):
        raise ConfigError(f"{PREFIX}: channel gating needs a torchvision-style ResNet backbone "
                          f"(got {type(backbone).__name__})")
    if is_cdg(backbone):
        raise ValueError("backbone is already gated")
    todo = []
    for s in stages:
        for i, blk in enumerate(getattr(backbone, f"layer{s}")):
            if not isinstance(blk, (BasicBlock, Bottleneck)):
                raise ConfigError(f"{PREFIX}: layer{s}.{i} is a {type(blk).__name__}, not a torchvision ResNet block")
            for cname in _selected(blk, convs):
                conv = getattr(blk, cname)
                name = f"layer{s}.{i}.{cname}"
                c_out, c_in = conv.weight.shape[:2]
                if kind != "fbs":
                    if conv.groups != 1:
                        raise ConfigError(f"{PREFIX}: {name} is a grouped conv; CDG gates dense convs only")
                    if c_in % groups or c_out % groups:
                        raise ConfigError(f"{PREFIX}.groups={groups}: does not divide the channels of gated conv "
                                          f"{name} (in {c_in}, out {c_out})")
                    if c_out % cg:
                        raise ConfigError(f"{PREFIX}.cg={cg}: does not divide the output channels of gated conv "
                                          f"{name} ({c_out})")
                todo.append((blk, conv))
    for blk, conv in todo:
        conv.__class__ = GatedConv2d
        conv._gate_init(kind, groups, cg, alpha, init_tau, density)
        if isinstance(blk, Bottleneck):
            blk.__class__ = CDGBottleneck
        else:
            blk.__class__ = CDGBasicBlock
    backbone.ss_cdg_kind = kind
    return backbone


def set_branch(backbone: nn.Module, branch: str, mode: str = "gated") -> None:
    """Route every following forward: ``mode`` gated|dense, base path / mask policy ``branch``."""
    if branch not in BRANCHES or mode not in ("gated", "dense"):
        raise ValueError(f"branch must be one of {BRANCHES}, mode gated|dense")
    for _, c in gated_convs(backbone):
        c.ss_branch, c.ss_mode = branch, mode


def set_recording(backbone: nn.Module, on: bool) -> None:
    for _, c in gated_convs(backbone):
        c.ss_record = on
        if not on:
            c._ss_stats, c.ss_in_kept = None, None


def clear_cache(backbone: nn.Module) -> None:
    for _, c in gated_convs(backbone):
        c._ss_cache = None
        c._ss_last = {}
        c._ss_s = None


def forward_stats(backbone: nn.Module) -> Dict[str, Dict]:
    """Per gated conv: the last recorded forward's stats (see :class:`GatedConv2d`)."""
    return {n: c._ss_stats for n, c in gated_convs(backbone) if c._ss_stats is not None}


def reduction_eq13(sparsity: float, groups: int) -> float:
    """The seed's eq. 13: D = 1 / (1/G + (1 - eta)(1 - 1/G))."""
    return 1.0 / (1.0 / groups + (1.0 - sparsity) * (1.0 - 1.0 / groups))


def mask_similarity(backbone: nn.Module) -> Dict[str, float]:
    """S_c per gated conv: share of mask elements on which branch a1 and a2 (or follow) agree,
    1 - mean(M_a1 XOR M_a2), from the last recorded forwards of each branch (same shapes only)."""
    out = {}
    for n, c in gated_convs(backbone):
        a = c._ss_last.get("a1")
        b = c._ss_last.get("a2", c._ss_last.get("follow"))
        if a is not None and b is not None and a.shape == b.shape:
            out[n] = 1.0 - float((a ^ b).float().mean())
    return out


def threshold_loss(backbone: nn.Module, s: float) -> Optional[torch.Tensor]:
    """CDG/CGNet: Σ_l ||s - tau_l||_2 (seed eq. 11, without lambda)."""
    taus = [c.tau for _, c in gated_convs(backbone) if hasattr(c, "tau")]
    if not taus:
        return None
    return sum(torch.linalg.vector_norm(s - t) for t in taus)


def saliency_l1(backbone: nn.Module, clear: bool = True) -> Optional[torch.Tensor]:
    """FBS: Σ_l mean_b ||s_l||_1 of the last forward (the saliencies before winner-take-all);
    ``clear`` drops them so that a forward is counted once."""
    terms = []
    for _, c in gated_convs(backbone):
        if c.ss_kind == "fbs" and getattr(c, "_ss_s", None) is not None:
            terms.append(c._ss_s.abs().sum(1).mean())
            if clear:
                c._ss_s = None
    return sum(terms) if terms else None


@torch.no_grad()
def measure(backbone: nn.Module, X: torch.Tensor, batch_size: int = 256, branch: str = "a1") -> Dict[str, object]:
    """Gated-path statistics on data (eval mode, branch ``branch``): conditional sparsity per conv
    and overall, the seed's eq. 13 reduction, the exact reduction over the gated convs (gates'
    cost included) and over the whole network (stem, downsample, FC included)."""
    from .flops import count_macs

    was = backbone.training
    backbone.eval()
    convs = gated_convs(backbone)
    set_branch(backbone, branch, "gated")
    set_recording(backbone, True)
    kept = {n: 0.0 for n, _ in convs}
    cost = dense = eff = net_dense = 0.0
    n_seen = 0
    try:
        for i in range(0, len(X), batch_size):
            xb = X[i: i + batch_size]
            rep = count_macs(backbone, xb)
            eff += rep.effective
            net_dense += rep.dense
            for n, c in convs:
                st = c._ss_stats
                kept[n] += float(st["kept"].sum())
                cost += float(torch.as_tensor(st["cost"]).sum())
                dense += st["dense"] * len(xb)
            n_seen += len(xb)
    finally:
        set_recording(backbone, False)
        backbone.train(was)
    per = {n: 1.0 - v / n_seen for n, v in kept.items()}
    kind = backbone.ss_cdg_kind
    eta = sum(per.values()) / len(per) if per else 0.0
    out = {"sparsity": per, "mean_sparsity": eta, "exact_gated_reduction": dense / cost if cost else 1.0,
           "network_reduction": net_dense / eff if eff else 1.0}
    if kind != "fbs":
        out["eq13_reduction"] = reduction_eq13(eta, convs[0][1].ss_G)
    return out

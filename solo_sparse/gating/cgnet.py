"""CGNet / CDG channel gating for torchvision ResNets: a conditional path per output position.

Convolutions are class-swapped in place to :class:`CGNetConv2d` (a ``nn.Conv2d``: the ``weight``
keeps its torchvision name; blocks are untouched). Stem and downsample convs stay dense. Routing,
recording and measurement: :mod:`solo_sparse.gating.channel`.

**CGNet / CDG gated convolution** (Hua et al. 2019; CDG seed eq. 1-3, 7-12). A conv W: C_in -> C_out
(k x k) with G groups of input and output channels. Output group o's *base path* reads input group
b(o) only; the *conditional path* is every other input group::

    Y_base = conv(x_{b(o)}, W[o, b(o)])            (B, C_out, H, W)  -- grouped conv, 1/G of the MACs
    Y_cond = conv(x, W) - Y_base                   the off-base weights
    z      = normal(Y_base) - tau                  tau: learnable, shape (C_out,)
    M      = step(z)                               forward exactly 0/1
    Y      = Y_base + gamma * M * Y_cond           gamma: learnable scale (C_out,), or absent (the paper's form)

* ``cond_scale`` (our choice, not in the seed): a learnable per-output-channel scale gamma on the
  conditional path, initialised at 0 by default. The paper's form (``cond_scale=None``) makes the
  network discontinuous: at gate-on positions the conditional path carries most of the energy, so tiny
  changes of the input or the weights reorder the gates and scramble the features (measured at random
  init: a 1-px shift moves the pooled features by 1 - cos 0.06-0.07, dense <= 0.002; a 1e-3 relative
  weight change flips 10% of the gates). With gamma = 0 training starts from the smooth base-path
  network and adds conditional compute where the loss pays for it. gamma folds into the conditional
  weights (:func:`fold_cond_scale`), so the deployed a1 network is exactly the paper's form.
* ``control`` (static controls, no data-dependent gate): ``base_only`` — the base path alone (a G-grouped
  conv, 1/G of the MACs, no conditional path); ``random`` — the mask compares a fixed, data-independent
  N(0, 1) pattern per (channel, position) with tau instead of the normalised base output (same sparsity
  schedule and thresholds as the gated network, no dependence on the input).

* ``normal``: ``norm="channel"`` (default) normalises each sample's channel over (H, W) — instance
  normalisation, no affine, eps 1e-5, as the CGNet authors' code does (``Conv2d_CG``:
  ``cg_bn = instance_norm``); the seed does not pin it. ``norm="sample"`` (our earlier choice, kept as
  an option) normalises per sample over (C, H, W). No statistic crosses samples either way. On a 1x1
  map the per-channel statistic is degenerate (every value normalises to 0, so M = [tau < 0] for a whole
  channel): the plugins refuse it and warn on 2x2 maps. Normalised values are ~N(0, 1), so a threshold
  tau gives a conditional sparsity ~Phi(tau); the plugins take the seed's target threshold s as a
  target sparsity eta* and use s = Phi^-1(eta*).
* **Gradient smoothing**: straight-through past the step, through an alpha-scaled sigmoid:
  dM/dz = alpha * sigmoid(alpha z) * (1 - sigmoid(alpha z)) (``alpha`` default 2).
* **Structured** (seed §structured CDG, Alg. 1 lines 9-15): with ``cg`` > 1 the mask is decided per
  group of cg consecutive output channels at each position: Y_base is averaged over the cg channels of
  the group *before* the normalisation, the pooled map is normalised and compared with the group's
  threshold (the mean of its channels' tau), and the decision is repeated back over the group. (Averaging
  the normalised scores instead, as an earlier version did, shrinks their spread and gates almost
  everything off: 0.969 at cg 8, 0.999 at cg 32 for a 0.75 target.)
* **Base paths**: branch ``a1`` uses the diagonal, b(o) = o; branch ``a2`` the inverse diagonal,
  b(o) = G - 1 - o (disjoint from a1 for even G, the seed's assignment); for odd G, where the
  inverse diagonal meets the diagonal in the middle group, a2 uses the cyclic shift
  b(o) = (o + G // 2) mod G. Both are permutations: every input group is the base of exactly one
  output group (unbiased), and a1 and a2 never share a (o, b(o)) block (disjoint).
* ``follow`` (CGNet's unified gating, ``unified=True``): reuse the last mask computed on branch a1 by
  the same module (same shape), with a1's base path.

**FLOPs**, per sample, MACs. D(conv) = H_out W_out C_out C_in k^2.

* CDG / CGNet:  exact = D/G + (1 - 1/G) D * mean(M) + gate, gate = 6 C_out H W (per-sample mean and
  variance: 2, normalise: 1, subtract tau and compare: 2, mask-multiply-add of Y_cond: 1;
  + C_out H W for the group average when cg > 1); gamma folds into the weights (no cost). Controls:
  ``base_only`` = D/G; ``random`` = D/G + (1 - 1/G) D * mean(M) + C_out H W (the mask-multiply-add).
  The seed's eq. 13, D_red = 1 / (1/G + (1 - eta)(1 - 1/G))
  with eta = 1 - mean(M) over all gated layers, counts conv MACs only and weighs every layer
  equally per output element; the exact count weighs layers by their MACs and adds the gates'
  own cost.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.engine.resnet import check_resnet
from solo_sparse.gating.channel import GatedConvBase, gated_convs


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


#: normalisation of the base-path output before the threshold: statistics over these dims of (B, C, H, W)
NORM_DIMS = {"channel": (2, 3), "sample": (1, 2, 3)}


class _GateMix(torch.autograd.Function):
    """Fused CDG gate after the normalisation: Y = Y_base + gamma M (Y_full - Y_base), M = step(n - tau) with
    ``n`` the normalised base output (computed by :func:`normalise`, whose own backward autograd runs: the
    native instance/layer-norm kernels), ``scale`` gamma (C_out,) or None for the paper's form (gamma = 1).

    Same values and gradients as the composition of the tau shift, :func:`smooth_step` and the mix (tested
    against it), in fewer passes over the (B, C, H, W) maps. Returns (Y, M).
    """

    @staticmethod
    def forward(ctx, full, base, n, tau, scale, alpha):
        z = n - tau[None, :, None, None]
        m = (z > 0).to(base.dtype)
        diff = full - base
        ms = m if scale is None else m * scale[None, :, None, None]
        out = torch.addcmul(base, ms, diff)
        ctx.save_for_backward(z, m, diff, scale)
        ctx.has_scale = scale is not None
        ctx.alpha = alpha
        return out, m

    @staticmethod
    def backward(ctx, g, _gm):
        z, m, diff, scale = ctx.saved_tensors
        a = ctx.alpha
        g_scale = None
        if ctx.has_scale:
            gd = g * diff
            g_scale = (gd * m).sum((0, 2, 3))
            g_s = g * scale[None, :, None, None]
            gd = gd * scale[None, :, None, None]
        else:
            g_s, gd = g, g * diff
        g_full = g_s * m
        s = torch.sigmoid(z.mul_(a))                 # z is not needed afterwards
        g_n = gd.mul_(s).mul_(s.neg_().add_(1)).mul_(a)
        g_tau = -g_n.sum((0, 2, 3))
        return g_full, g - g_full, g_n, g_tau, g_scale, None


def base_assignment(groups: int, branch: str) -> List[int]:
    """b(o) for o in 0..G-1: the input group read by output group o's base path."""
    if branch in ("a1", "follow") or groups == 1:
        return list(range(groups))
    if groups % 2 == 0:
        return [groups - 1 - o for o in range(groups)]
    return [(o + groups // 2) % groups for o in range(groups)]


def normalise(y: torch.Tensor, norm: str = "channel", eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) normalised without affine: ``channel`` per sample and channel over (H, W) (instance
    norm, as CGNet's code), ``sample`` per sample over (C, H, W)."""
    if norm not in NORM_DIMS:
        raise ValueError(f"norm must be one of {tuple(NORM_DIMS)}")
    # the native kernels (one pass for the statistics, a fused backward): 3x faster on CPU than mean/var/rsqrt
    if norm == "channel":
        if y.shape[-1] * y.shape[-2] == 1:
            return y - y                # one position: every value normalises to 0 (the kernel refuses 1x1)
        return F.instance_norm(y, eps=eps)
    return F.layer_norm(y, y.shape[1:], eps=eps)


def target_threshold(target_sparsity: float) -> float:
    """s = Phi^-1(eta*), clamped to Phi^-1(1e-3) for eta* = 0 (normalised values ~N(0, 1))."""
    p = min(max(float(target_sparsity), 1e-3), 1 - 1e-3)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p)))


#: static controls of the gated conv: "none" (the data-dependent gate), "base_only", "random"
CONTROLS = ("none", "base_only", "random")


class CGNetConv2d(GatedConvBase):
    """A ``nn.Conv2d`` (same ``weight``) with a CGNet/CDG conditional path, a learnable threshold
    ``tau`` (C_out,) and, unless the paper's form is asked for, a learnable conditional-path scale
    ``cond_scale`` (C_out,). Created by class swap (:func:`convert_resnet`); ``ss_mode`` ``dense`` runs
    the plain conv. Records per forward (see :mod:`solo_sparse.gating.channel`) the mask (B, C_out, H, W)."""

    def _gate_init(self, groups: int, cg: int, alpha: float, init_tau: float, unified: bool = False,
                   norm: str = "channel", cond_scale: Optional[float] = None, control: str = "none",
                   seed: int = 0) -> None:
        self._gate_base_init()
        self.ss_G, self.ss_cg, self.ss_alpha = int(groups), int(cg), float(alpha)
        self.ss_unified = bool(unified)
        if norm not in NORM_DIMS:
            raise ValueError(f"norm must be one of {tuple(NORM_DIMS)}")
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}")
        self.ss_norm = norm
        self.ss_control = control
        self.eq13_groups = self.ss_G
        self._ss_cache: Optional[torch.Tensor] = None      # unified gating: a1's last mask
        self._ss_pattern: Optional[torch.Tensor] = None    # control "random": the fixed N(0, 1) pattern
        c_out = self.weight.shape[0]
        self.tau = nn.Parameter(torch.full((c_out,), float(init_tau)))
        if cond_scale is None:
            self.cond_scale = None
        else:
            self.cond_scale = nn.Parameter(torch.full((c_out,), float(cond_scale)))
        if control == "random":
            # the pattern is a function of this seed and the map shape: saved with the checkpoint
            self.register_buffer("pattern_seed", torch.tensor(int(seed), dtype=torch.int64))

    def clear(self) -> None:
        super().clear()
        self._ss_cache = None

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

    def _paths(self, x: torch.Tensor, assign: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Y_full, Y_base) as a split of one conv: the G partial sums P_b = conv(x_b, W[:, b]) over the input
        groups b, Y_full = sum_b P_b and Y_base's output group o = P_{b(o)}'s group o: the dense conv's MACs
        once, where a dense conv plus a separate grouped base conv runs 1 + 1/G of them. Measured on 2 idle
        CPU threads at batch 128, 64 px: one conv alone 1.09-1.26x a dense
        conv's forward + backward (vs 1.35-1.60x); a whole gated ResNet-18 1.47-1.63x dense either way (the
        slices' gradient copies and the gate's elementwise passes eat the difference), so the gain is MACs, not
        CPU time. One grouped conv producing all G partial sums measured slower (1.89x)."""
        G = self.ss_G
        c_out = self.weight.shape[0]
        cg = c_out // G
        xs, ws = x.chunk(G, 1), self.weight.chunk(G, 1)
        parts = [F.conv2d(xs[b], ws[b], None, self.stride, self.padding, self.dilation) for b in range(G)]
        full = parts[0]
        for q in parts[1:]:
            full = full + q
        if self.bias is not None:
            full = full + self.bias[None, :, None, None]
        base = torch.cat([parts[assign[o]][:, o * cg:(o + 1) * cg] for o in range(G)], 1)
        return full, base

    def _group_tau(self) -> torch.Tensor:
        """tau per mask decision: (C_out,) or, structured, the mean over each group of cg channels."""
        if self.ss_cg == 1:
            return self.tau
        return self.tau.view(-1, self.ss_cg).mean(1)

    def _pattern(self, shape) -> torch.Tensor:
        """Control ``random``: a fixed N(0, 1) pattern (1, C_out / cg, H, W), a function of the saved seed."""
        c, h, w = shape[1] // self.ss_cg, shape[2], shape[3]
        pat, seed = self._ss_pattern, int(self.pattern_seed)
        # keyed by the seed too: a checkpoint loaded after a forward brings its own seed
        if pat is None or pat.shape[1:] != (c, h, w) or pat.device != self.tau.device \
                or getattr(self, "_ss_pattern_seed", None) != seed:
            gen = torch.Generator().manual_seed(seed)
            pat = torch.randn(1, c, h, w, generator=gen).to(device=self.tau.device, dtype=self.tau.dtype)
            self._ss_pattern, self._ss_pattern_seed = pat, seed
        return pat

    def _mask(self, y_base: torch.Tensor) -> torch.Tensor:
        """M (B, C_out, H, W) from the base output: pooled over groups of cg channels first (Alg. 1), then
        normalised, shifted by tau and thresholded (straight-through)."""
        b, c, h, w = y_base.shape
        if self.ss_control == "random":
            z = self._pattern(y_base.shape).expand(b, -1, -1, -1)
        else:
            pooled = y_base if self.ss_cg == 1 else y_base.view(b, c // self.ss_cg, self.ss_cg, h, w).mean(2)
            z = normalise(pooled, self.ss_norm)
        m = smooth_step(z - self._group_tau()[None, :, None, None], self.ss_alpha)
        return m if self.ss_cg == 1 else m.repeat_interleave(self.ss_cg, 1)

    def _mix(self, y_base: torch.Tensor, full: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        ms = m if self.cond_scale is None else m * self.cond_scale[None, :, None, None]
        return y_base + ms * (full - y_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._ss_stats = None
        if self.ss_mode == "dense":
            return self._conv_forward(x, self.weight, self.bias)
        branch = self.ss_branch
        assign = base_assignment(self.ss_G, "a2" if branch == "a2" else "a1")
        if self.ss_control == "base_only":
            y_base = self._base(x, assign)
            if self.ss_record:
                self._ss_stats = self._stats(None, y_base.shape)
            return y_base if self.bias is None else y_base + self.bias[None, :, None, None]
        full, y_base = self._paths(x, assign)
        cached = self._ss_cache
        if branch == "follow" and cached is not None and cached.shape == y_base.shape:
            m = cached
            out = self._mix(y_base, full, m)
        elif self.ss_cg == 1 and not self.ss_unified and self.ss_control == "none":
            # unified: crop 1 reuses m, keep its graph
            out, m = _GateMix.apply(full, y_base, normalise(y_base, self.ss_norm), self.tau, self.cond_scale,
                                    self.ss_alpha)
        else:
            m = self._mask(y_base)
            out = self._mix(y_base, full, m)
        if branch == "a1" and self.ss_unified:
            self._ss_cache = m
        if self.ss_record:
            self._ss_last[branch] = m.detach() > 0
            self._ss_stats = self._stats(m.detach(), y_base.shape)
        return out

    def _stats(self, m: Optional[torch.Tensor], shape) -> Dict:
        b, c_out, h, w = shape
        dense = float(h * w * self.weight.numel())
        if m is None:                                   # control base_only: no conditional path, no gate
            kept = torch.zeros(b)
            return {"kept": kept, "cost": torch.full((b,), dense / self.ss_G), "dense": dense}
        kept = m.flatten(1).mean(1)
        if self.ss_control == "random":
            gate = c_out * h * w
        else:
            gate = (6 + (1 if self.ss_cg > 1 else 0)) * c_out * h * w
        cost = dense / self.ss_G + (1 - 1 / self.ss_G) * dense * kept + gate
        return {"kept": kept, "cost": cost, "dense": dense}


@torch.no_grad()
def fold_cond_scale(backbone: nn.Module) -> int:
    """Fold every gated conv's ``cond_scale`` gamma into its conditional weights for the deployed a1 path
    (W[o, b] *= gamma_o for every input group b other than a1's base group o) and drop the parameter, so
    the network is exactly the paper's form. Outputs on branch a1 are unchanged (tested); branch a2, a
    training-only route whose base blocks are a1's conditional ones, is not preserved. Returns the number of
    convs folded."""
    n = 0
    for _, c in gated_convs(backbone):
        if not isinstance(c, CGNetConv2d) or c.cond_scale is None:
            continue
        G = c.ss_G
        c_out, c_in, kh, kw = c.weight.shape
        w = c.weight.view(G, c_out // G, G, c_in // G, kh, kw)
        gamma = c.cond_scale.view(G, c_out // G)
        for o in range(G):
            for b in range(G):
                if b != o:
                    w[o, :, b] *= gamma[o].view(-1, 1, 1, 1)
        c.cond_scale = None
        n += 1
    return n


def _selected(block: nn.Module, convs: str) -> List[str]:
    names = ["conv1", "conv2"] + (["conv3"] if hasattr(block, "conv3") else [])
    if convs == "block":
        return names
    return [n for n in names if getattr(block, n).kernel_size == (3, 3)]


def block_convs(backbone: nn.Module, stages: Tuple[int, ...], convs: str) -> List[Tuple[str, nn.Module, nn.Conv2d]]:
    """(name, block, conv) of the convs to gate: ``convs`` "3x3" (the 3x3 convs of each block) or
    "block" (every conv of each block) in ``stages``; stem and downsample never."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    check_resnet(backbone, "channel gating", needs=("conv1", "bn1", "layer1", "layer4"))
    out = []
    for s in stages:
        for i, blk in enumerate(getattr(backbone, f"layer{s}")):
            if not isinstance(blk, (BasicBlock, Bottleneck)):
                raise ConfigError(f"{PREFIX}: layer{s}.{i} is a {type(blk).__name__}, not a torchvision ResNet block")
            for cname in _selected(blk, convs):
                out.append((f"layer{s}.{i}.{cname}", blk, getattr(blk, cname)))
    return out


def _divisors(ds: List[int]) -> str:
    return ", ".join(map(str, ds)) if len(ds) <= 8 else ", ".join(map(str, ds[:6])) + ", ..., " + str(ds[-1])


def convert_resnet(backbone: nn.Module, *, groups: int = 4, cg: int = 1, alpha: float = 2.0, init_tau: float = 0.0,
                   stages: Tuple[int, ...] = (1, 2, 3, 4), convs: str = "3x3", unified: bool = False,
                   norm: str = "channel", cond_scale: Optional[float] = None, control: str = "none",
                   seed: int = 0) -> nn.Module:
    """Gate a torchvision ResNet in place (see the module docstring). Refuses, naming the key and the
    layer, a group count G or a structure size cg that does not divide a gated conv's channels.
    ``control`` ``random``: conv i draws its fixed pattern from seed ``seed + i``."""
    if getattr(backbone, "ss_gating", None) is not None:
        raise ValueError("backbone is already gated")
    todo = block_convs(backbone, stages, convs)
    for name, _, conv in todo:
        c_out, c_in = conv.weight.shape[:2]
        if conv.groups != 1:
            raise ConfigError(f"{PREFIX}: {name} is a grouped conv; CDG gates dense convs only")
        if c_in % groups or c_out % groups:
            ok = [d for d in range(1, math.gcd(c_in, c_out) + 1) if c_in % d == 0 and c_out % d == 0]
            raise ConfigError(f"{PREFIX}.groups={groups}: does not divide the channels of gated conv "
                              f"{name} (in {c_in}, out {c_out}); allowed: a common divisor ({_divisors(ok)})")
        if c_out % cg:
            ok = [d for d in range(1, c_out + 1) if c_out % d == 0]
            raise ConfigError(f"{PREFIX}.cg={cg}: does not divide the output channels of gated conv {name} ({c_out}); "
                              f"allowed: a divisor of {c_out} ({_divisors(ok)})")
    for i, (_, _, conv) in enumerate(todo):
        conv.__class__ = CGNetConv2d
        conv._gate_init(groups, cg, alpha, init_tau, unified, norm, cond_scale, control, seed + i)
    backbone.ss_gating = "cgnet"
    return backbone


def threshold_loss(backbone: nn.Module, s: float) -> Optional[torch.Tensor]:
    """CDG/CGNet: Σ_l ||s - tau_l||_2 (seed eq. 11, without lambda)."""
    taus = [c.tau for _, c in gated_convs(backbone) if isinstance(c, CGNetConv2d)]
    if not taus:
        return None
    return sum(torch.linalg.vector_norm(s - t) for t in taus)

"""Intermediate contrastive loss (seed 5): auxiliary heads after ResNet stages, partial
back-propagation (one loss drawn per step, the forward stops at its block) and block-wise hard-pair
selection. Plain torch; the method objectives that use solo-learn's loss functions are in
``solo_sparse.binding.objectives``.

Shapes: images (B, 3, H, W); stage-j feature maps (B, C_j, H_j, W_j); pooled features (B, C_j).

Choices where the paper is vague (README, "Intermediate contrastive loss"):

* **Aux head i** = a fresh copy of the method's own projector (same layers, widths and norms) whose
  first Linear takes C_i inputs, after global average pooling of stage i; BYOL adds a fresh copy of
  its predictor; momentum methods keep an EMA copy of each head (same tau as the encoder).
* **Drawing the loss**: depth d ∈ {heads..., final} with the configured weights (uniform by default),
  from a generator seeded by (seed, optimizer step) — every DDP rank draws the same depth.
* **Hard pairs**: after each listed block, M random crops (per image, per view) of ``crop_fraction``
  of the map's height and width (rounded, ≥ 1); for every image the M×M positive pairs (crop a of
  view 1, crop b of view 2) are scored with their head-j embeddings (no gradient). The paper keeps the
  pair with the largest contrastive loss, negatives included (its eq. 4): InfoNCE of the pair against
  every view-2 crop of the other images of the batch (:func:`pair_losses`; ``by="loss"``, the
  default). ``by="cosine"`` keeps the pair with the lowest positive cosine instead (our earlier rule).
  Only the chosen crops go on; the momentum encoder crops its maps at the same places. Selection
  needs head j, so hard-pair blocks must have heads.
* **Hard pairs against a key encoder** (:func:`select_hard_pair_keys`, momentum methods): the query
  crops come from the online encoder and head, the key crops from the momentum (key) encoder and its
  momentum head, the negatives from the depth's queue where the method keeps one (MoCo v2+), else the
  other images' keys — the paper's L_info (query, key encoder, queue). Pair (a, c) of an image is scored
  with the symmetric loss the method trains: ½ [ℓ(q1_a, k2_c, N1) + ℓ(q2_c, k1_a, N2)] (MoCo v2+
  contrasts view-1 queries with view-2 keys against ``queue[1]`` and the reverse against ``queue[0]``).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

STAGES = ("layer1", "layer2", "layer3", "layer4")


# ----------------------------------------------------------------------------- backbone pieces
def check_backbone(backbone: nn.Module) -> None:
    """A torchvision-style ResNet (stem + layer1..4 + avgpool) is required."""
    missing = [n for n in ("conv1", "bn1", "relu", "maxpool", *STAGES) if not hasattr(backbone, n)]
    if missing:
        raise ValueError(f"interloss needs a ResNet backbone with spatial stages (layer1..layer4); "
                         f"{type(backbone).__name__} lacks {', '.join(missing)}")


def stage_channels(backbone: nn.Module) -> List[int]:
    """Output channels of layer1..layer4."""
    out = []
    for s in STAGES:
        last = list(getattr(backbone, s).children())[-1]
        conv = getattr(last, "conv3", None) or last.conv2
        out.append(conv.out_channels)
    return out


def stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))


def pool(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C)."""
    return torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1)


# ----------------------------------------------------------------------------- crops
def crop_size(h: int, w: int, fraction: float) -> Tuple[int, int]:
    return max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))


def random_offsets(b: int, m: int, h: int, w: int, ch: int, cw: int, gen: torch.Generator
                   ) -> torch.Tensor:
    """(M, B, 2) top-left corners of M random (ch, cw) crops per image in an (h, w) map."""
    top = torch.randint(0, h - ch + 1, (m, b), generator=gen)
    left = torch.randint(0, w - cw + 1, (m, b), generator=gen)
    return torch.stack([top, left], -1)


def take_crops(x: torch.Tensor, offsets: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """x (B, C, H, W), offsets (B, 2) -> (B, C, ch, cw): one crop per image at its own place."""
    b = x.shape[0]
    dev = x.device
    rows = offsets[:, 0].to(dev)[:, None] + torch.arange(ch, device=dev)            # (B, ch)
    cols = offsets[:, 1].to(dev)[:, None] + torch.arange(cw, device=dev)            # (B, cw)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]             # (B, ch, cw, C)
    out = out.permute(0, 3, 1, 2)                # channels_last strides: kept for a channels_last input
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out if channels_last else out.contiguous()


def pair_losses(e1: torch.Tensor, e2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The contrastive loss of every crop pair, (B, M, M), from normalised embeddings e1, e2 (M, B, D).

    Pair (a, c) of image b: -log exp(s_p / T) / (exp(s_p / T) + Σ_neg exp(s_n / T)) with s_p the cosine
    of view 1's crop a and view 2's crop c of image b, and the negatives every view-2 crop of every other
    image (InfoNCE, the paper's eq. 4 with negatives)."""
    m, b, _ = e1.shape
    sim = torch.einsum("abd,ckd->bakc", e1, e2) / temperature             # (B, M1, B, M2): image b crop a vs k, c
    pos = sim[torch.arange(b), :, torch.arange(b), :]                       # (B, M1, M2)
    other = ~torch.eye(b, dtype=torch.bool, device=sim.device)              # (B, B): k != b
    neg = sim.masked_fill(~other[:, None, :, None], float("-inf")).flatten(2).logsumexp(2)   # (B, M1)
    return torch.logaddexp(pos, neg[:, :, None]) - pos


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: Optional[torch.Tensor], temperature: float
             ) -> torch.Tensor:
    """InfoNCE of every (query crop a, key crop c) pair of every image, (B, M, M), from normalised query
    embeddings ``q`` and key embeddings ``k`` (M, B, D): -log e^{q·k/T} / (e^{q·k/T} + Σ_n e^{q·n/T}).

    ``negatives``: a (D, K) bank of normalised keys (MoCo's queue: the same for every query), or None — then
    every key crop of every other image of the batch."""
    m, b, _ = q.shape
    pos = torch.einsum("abd,cbd->bac", q, k) / temperature                          # (B, M_q, M_k)
    if negatives is not None:
        neg = (torch.einsum("abd,dn->ban", q, negatives) / temperature).logsumexp(2)     # (B, M_q)
    else:
        sim = torch.einsum("abd,ckd->bakc", q, k) / temperature                     # (B, M_q, B, M_k)
        other = ~torch.eye(b, dtype=torch.bool, device=sim.device)
        neg = sim.masked_fill(~other[:, None, :, None], float("-inf")).flatten(2).logsumexp(2)
    return torch.logaddexp(pos, neg[:, :, None]) - pos


@torch.no_grad()
def select_hard_pair_keys(y1: torch.Tensor, y2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, embed_q,
                          embed_k, m: int, fraction: float, gen: torch.Generator, by: str = "loss",
                          temperature: float = 0.2, negatives: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int], torch.Tensor]:
    """Choose, per image, the hardest of the M×M crop pairs scored against a key encoder.

    ``y1, y2``: the online encoder's maps of the two views (queries, ``embed_q``: the online head); ``k1, k2``:
    the momentum (key) encoder's maps at the same block (keys, ``embed_k``: its momentum head), (B, C, H, W).
    Crop a of view 1 and crop c of view 2 are taken at the same places in both encoders. ``by="loss"``: the
    pair with the largest symmetric InfoNCE ½ [ℓ(q1_a, k2_c, N1) + ℓ(q2_c, k1_a, N2)] (``negatives`` = (N1, N2),
    (D, K) each: MoCo's ``queue[1]``, ``queue[0]``; None: the other images' keys); ``by="cosine"``: the pair with
    the lowest ½ [cos(q1_a, k2_c) + cos(q2_c, k1_a)]. The offsets are drawn exactly as
    :func:`select_hard_pair` draws them. Returns the chosen offsets of view 1 and view 2 (B, 2), the crop size
    and the chosen pairs' query-key cosine (the mean of both directions) (B,)."""
    b, _, h, w = y1.shape
    ch, cw = crop_size(h, w, fraction)
    o1 = random_offsets(b, m, h, w, ch, cw, gen)
    o2 = random_offsets(b, m, h, w, ch, cw, gen)

    def emb(x, offs, fn):
        c = torch.cat([take_crops(x, offs[i], ch, cw) for i in range(m)])
        with torch.autocast(x.device.type, enabled=False):
            return F.normalize(fn(c.float()).float(), dim=-1).view(m, b, -1)

    q1, q2 = emb(y1, o1, embed_q), emb(y2, o2, embed_q)
    e1, e2 = emb(k1, o1, embed_k), emb(k2, o2, embed_k)
    # (B, M1, M2): crop a of view 1 with crop c of view 2, both directions
    sim = (torch.einsum("abd,cbd->bac", q1, e2) + torch.einsum("cbd,abd->bac", q2, e1)) / 2
    if by == "loss":
        n1, n2 = (None, None) if negatives is None else (negatives[0].float(), negatives[1].float())
        score = (info_nce(q1, e2, n1, temperature) + info_nce(q2, e1, n2, temperature).transpose(1, 2)) / 2
        flat = score.reshape(b, -1).argmax(1)
    else:
        flat = sim.reshape(b, -1).argmin(1)
    a, c = flat // m, flat % m
    bi = torch.arange(b)
    return o1[a.cpu(), bi], o2[c.cpu(), bi], (ch, cw), sim.reshape(b, -1)[bi.to(sim.device), flat]


@torch.no_grad()
def select_hard_pair(x1: torch.Tensor, x2: torch.Tensor, embed, m: int, fraction: float,
                     gen: torch.Generator, by: str = "loss", temperature: float = 0.2
                     ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int], torch.Tensor]:
    """Choose, per image, the hardest of the M×M crop pairs of two views' maps.

    ``by="loss"`` (the paper): the pair with the largest contrastive loss, negatives included
    (:func:`pair_losses`); ``by="cosine"``: the pair with the lowest positive cosine (no negatives).
    x1, x2: (B, C, H, W); ``embed``: (N, C, h, w) -> (N, D). Returns the chosen offsets of view 1 and
    view 2, (B, 2) each, the crop size, and the chosen pairs' cosine similarity (B,)."""
    b, _, h, w = x1.shape
    ch, cw = crop_size(h, w, fraction)
    o1 = random_offsets(b, m, h, w, ch, cw, gen)
    o2 = random_offsets(b, m, h, w, ch, cw, gen)
    c1 = torch.cat([take_crops(x1, o1[i], ch, cw) for i in range(m)])             # (M*B, C, ch, cw)
    c2 = torch.cat([take_crops(x2, o2[i], ch, cw) for i in range(m)])
    # scored in fp32 outside autocast: ranking near-equal similarities is not left to bf16 rounding
    with torch.autocast(x1.device.type, enabled=False):
        e1 = F.normalize(embed(c1.float()).float(), dim=-1).view(m, b, -1)
        e2 = F.normalize(embed(c2.float()).float(), dim=-1).view(m, b, -1)
    sim = torch.einsum("abd,cbd->bac", e1, e2)                                      # (B, M, M)
    if by == "loss":
        flat = pair_losses(e1, e2, temperature).reshape(b, -1).argmax(1)
    else:
        flat = sim.reshape(b, -1).argmin(1)
    a, c = flat // m, flat % m
    bi = torch.arange(b)
    return o1[a.cpu(), bi], o2[c.cpu(), bi], (ch, cw), sim.reshape(b, -1)[bi.to(sim.device), flat]


def forward_maps(backbone: nn.Module, x: torch.Tensor, stop: int,
                 crops: Optional[Dict[int, Tuple[torch.Tensor, Tuple[int, int]]]] = None) -> Dict[int, torch.Tensor]:
    """Stem and stages 1..stop (1-based) of one view, cropping after block j where ``crops[j]`` =
    (offsets (B, 2), (ch, cw)) is given. Returns {j: stage-j map (B, C_j, h_j, w_j)}, after crops."""
    x = stem(backbone, x)
    out = {}
    for j in range(1, stop + 1):
        x = getattr(backbone, STAGES[j - 1])(x)
        if crops and j in crops:
            off, (ch, cw) = crops[j]
            x = take_crops(x, off, ch, cw)
        out[j] = x
    return out


def two_view_forward(backbone: nn.Module, x1: torch.Tensor, x2: torch.Tensor, stop: int,
                     hard_blocks: Sequence[int] = (), embed_at=None, m: int = 4, fraction: float = 0.75,
                     gen: Optional[torch.Generator] = None, by: str = "loss", temperature: float = 0.2,
                     key_backbone: Optional[nn.Module] = None, key_embed_at=None, negatives_at=None,
                     switch=None):
    """Both views through stages 1..stop with hard-pair selection after ``hard_blocks`` (≤ stop).

    Returns (maps1, maps2, crops1, crops2, sims): {j: stage-j map after any crop} per view, the crops
    taken ({block: (offsets (B, 2), (ch, cw))}, to replay on a momentum encoder with
    :func:`forward_maps`) and the chosen pairs' similarities {block: (B,)}. ``embed_at(j)`` maps
    (N, C_j, h, w) crops to (N, D) embeddings.

    With ``key_backbone`` (a momentum encoder) both views also run through it, stage by stage and without
    gradient, and pairs are scored against its keys (:func:`select_hard_pair_keys`: ``key_embed_at(j)`` its
    head, ``negatives_at(j)`` the (N1, N2) banks or None); the key maps, cropped at the same places, come back
    as two more dicts: (maps1, maps2, crops1, crops2, sims, keys1, keys2). ``switch(encoder)`` ("online" /
    "momentum") is called before each encoder's stage runs (the host's branch context)."""
    keyed = key_backbone is not None
    sw = switch or (lambda _enc: None)
    sw("online")
    y1, y2 = stem(backbone, x1), stem(backbone, x2)
    if keyed:
        sw("momentum")
        with torch.no_grad():
            k1, k2 = stem(key_backbone, x1), stem(key_backbone, x2)
    maps1: Dict[int, torch.Tensor] = {}
    maps2: Dict[int, torch.Tensor] = {}
    keys1: Dict[int, torch.Tensor] = {}
    keys2: Dict[int, torch.Tensor] = {}
    crops1: Dict[int, tuple] = {}
    crops2: Dict[int, tuple] = {}
    sims: Dict[int, torch.Tensor] = {}
    for j in range(1, stop + 1):
        sw("online")
        layer = getattr(backbone, STAGES[j - 1])
        y1, y2 = layer(y1), layer(y2)
        if keyed:
            sw("momentum")
            with torch.no_grad():
                klayer = getattr(key_backbone, STAGES[j - 1])
                k1, k2 = klayer(k1), klayer(k2)
        if j in hard_blocks:
            if keyed:
                o1, o2, size, s = select_hard_pair_keys(y1, y2, k1, k2, embed_at(j), key_embed_at(j), m, fraction,
                                                        gen, by, temperature, negatives_at(j) if negatives_at
                                                        else None)
                k1, k2 = take_crops(k1, o1, *size), take_crops(k2, o2, *size)
            else:
                o1, o2, size, s = select_hard_pair(y1, y2, embed_at(j), m, fraction, gen, by, temperature)
            crops1[j], crops2[j], sims[j] = (o1, size), (o2, size), s
            y1, y2 = take_crops(y1, o1, *size), take_crops(y2, o2, *size)
        maps1[j], maps2[j] = y1, y2
        if keyed:
            keys1[j], keys2[j] = k1, k2
    sw("online")
    if keyed:
        return maps1, maps2, crops1, crops2, sims, keys1, keys2
    return maps1, maps2, crops1, crops2, sims


# ----------------------------------------------------------------------------- heads
def _first_linear(mod: nn.Module) -> Tuple[str, nn.Linear]:
    for name, m in mod.named_modules():
        if isinstance(m, nn.Linear):
            return name, m
    raise ValueError(f"{type(mod).__name__} has no Linear layer to adapt")


def _reset(mod: nn.Module) -> nn.Module:
    for m in mod.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return mod


def adapt_head(template: nn.Module, in_features: int) -> nn.Module:
    """A freshly initialised copy of ``template`` (the method's projector) whose first Linear takes
    ``in_features`` inputs; preceded by global average pooling: (B, C, H, W) -> (B, D)."""
    head = _reset(copy.deepcopy(template))
    name, lin = _first_linear(head)
    new = nn.Linear(in_features, lin.out_features, bias=lin.bias is not None)
    parent = head.get_submodule(name.rsplit(".", 1)[0]) if "." in name else head
    if parent is head and name == "":
        head = new
    else:
        setattr(parent, name.rsplit(".", 1)[-1], new)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), head)


def fresh_copy(template: nn.Module) -> nn.Module:
    return _reset(copy.deepcopy(template))


def frozen_copy(module: nn.Module) -> nn.Module:
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad = False
    return m


@torch.no_grad()
def ema_(online: nn.Module, momentum: nn.Module, tau: float) -> None:
    """momentum <- tau * momentum + (1 - tau) * online (parameters; buffers copied)."""
    for po, pm in zip(online.parameters(), momentum.parameters()):
        pm.mul_(tau).add_(po.detach(), alpha=1 - tau)
    for bo, bm in zip(online.buffers(), momentum.buffers()):
        bm.copy_(bo)


# ----------------------------------------------------------------------------- drawing the loss
def draw_depth(depths: Sequence[int], weights: Sequence[float], seed: int, step: int) -> int:
    """One depth from ``depths`` with probabilities ∝ ``weights``, identical on every rank."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    w = torch.tensor([float(x) for x in weights])
    return int(depths[int(torch.multinomial(w / w.sum(), 1, generator=g))])

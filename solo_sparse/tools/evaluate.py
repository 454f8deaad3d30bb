"""Backbone evaluation without solo-learn: load a checkpoint's backbone, extract frozen features,
weighted kNN (cosine) and a linear probe.

kNN follows solo-learn's ``WeightedKNNClassifier`` with cosine similarity: the k nearest training
features vote with weight exp(sim / T), T = 0.07; k = 1 is plain nearest neighbour. The linear probe
is multinomial logistic regression on standardised frozen features, trained full-batch with L-BFGS
(deterministic; no augmentation) — a cheap stand-in for solo-learn's ``main_linear.py``, which on
the ``custom`` dataset resizes to 224 px and costs hours on a CPU.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.checkpoint import state_mismatch
from solo_sparse.core.config import ConfigError
from solo_sparse.core.registry import evaluates_masked, rebuild_backbone
from solo_sparse.engine.maskio import apply_masks, counts, split_state
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools.inputs import read_checkpoint

__all__ = ["DivergedCheckpoint", "NonFiniteFeatures", "backbone_macs", "backbone_state", "build_resnet", "describe",
           "evaluate_backbone", "extract_features", "knn_accuracy", "linear_probe", "load_backbone", "load_images",
           "load_splits"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: images a gated backbone's MACs are measured on (the first of the val split; as the bench and the zoo do)
MEASURE_IMAGES = 2000


def backbone_state(checkpoint: Dict, prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """``backbone.*`` tensors of a solo-learn checkpoint (prefix stripped)."""
    sd = checkpoint.get("state_dict", checkpoint)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


class DivergedCheckpoint(ConfigError):
    """A checkpoint whose backbone holds non-finite weights (its run diverged): nothing to evaluate."""


class NonFiniteFeatures(ConfigError):
    """Finite weights whose evaluation path gives non-finite features (float32 overflowed there): accuracies
    computed from them would be meaningless, so none is reported."""


def load_backbone(path: str, name: str = "resnet18", cifar_stem: bool = False,
                  gated_path: Optional[str] = None, prefix: str = "backbone.") -> Tuple[nn.Module, Dict]:
    """Build ``name`` and load a solo-learn checkpoint's online backbone (``prefix`` ``momentum_backbone.``: its
    momentum encoder); masks are applied.

    Loads with ``weights_only=True``. A checkpoint trained with a plugin that rewrites the backbone
    (gates; read from its ``solo_sparse`` entry) is rebuilt by that plugin first and evaluated
    through the plugin's path (``gated_path`` overrides). Raises on any missing or unexpected key and on
    any shape mismatch (naming the first few: :func:`~solo_sparse.core.checkpoint.state_mismatch`) and on
    non-finite weights (a diverged run); mask
    buffers (``*.weight_mask``) are applied to their weights. Returns the module and
    ``{"masked_layers", "density", "gating"}``.
    """
    ck = read_checkpoint(path)
    state = backbone_state(ck, prefix)
    if not state:
        raise ConfigError(f"{path}: no '{prefix}*' tensors — not a solo-learn pre-training checkpoint")
    net = build_resnet(name, cifar_stem)
    _, gname, gcfg = rebuild_backbone(net, ck.get("solo_sparse"), gated_path)
    weights, masks = split_state(state, str(path))
    nonfinite = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise DivergedCheckpoint(f"{path}: {len(nonfinite)} of {len(weights)} backbone tensors are not finite (first: "
                          f"{', '.join(nonfinite[:3])}): the run diverged; nothing to evaluate")
    bad = state_mismatch(net.state_dict(), weights, file="the checkpoint", model=f"the rebuilt {name}")
    if bad:
        raise ConfigError(f"{path}: backbone {bad} — wrong --backbone ({name}) or --cifar-stem?")
    net.load_state_dict(weights, strict=True)
    if not evaluates_masked(ck.get("solo_sparse")):
        masks = {}                       # the masks damaged a training branch only: the result is dense
    apply_masks(net, masks)
    kept, total = counts(masks)
    info = {"masked_layers": len(masks), "density": (kept / total) if total else 1.0, "gating": gname,
            "gating_config": gcfg}
    return net.eval(), info


def backbone_macs(net: nn.Module, info: Dict, X: torch.Tensor) -> Dict[str, float]:
    """Inference cost of a backbone from :func:`load_backbone`: a gated one's MACs measured from its gates on the
    images ``X`` (the rewriting plugin's :meth:`~solo_sparse.core.plugin.Plugin.measure_backbone`), otherwise
    counted from its (masked) weights. ``{"macs_ratio"}`` plus ``"gate_sparsity"`` for gated backbones."""
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.engine.flops import count_macs

    if info.get("gating"):
        m = get_plugin(info["gating"]).measure_backbone(net, X)
        if m is not None:
            return {"macs_ratio": float(m["network_macs_ratio"]), "gate_sparsity": float(m["gate_sparsity"])}
    return {"macs_ratio": count_macs(net, (1, *X.shape[1:]), from_weights=True).ratio}


def describe(info: Dict) -> str:
    """``density 0.100`` for weight-sparse / dense backbones, ``cdg-gated (...)`` for gated ones."""
    if not info.get("gating"):
        return f"density {info['density']:.3f}"
    return f"{info['gating']}-gated" + (f", weight density {info['density']:.3f}" if info.get("masked_layers") else "")


def _read_image(path: str):
    """An RGB PIL image; a file that does not decode is a one-line error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise ConfigError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:120]})") from None


def image_folder(path, size: int = 32, allow_empty: bool = False):
    """``path/<class>/<image>`` as a torchvision ImageFolder of ``(3, size, size)`` tensors: the shorter side
    resized to ``size``, then the centre ``size`` × ``size`` crop (so a non-square image is cropped as
    solo-learn's evaluation transform crops it, not a batch of mismatched shapes)."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{p}: no such folder (expected {p}/<class>/<image> folders)")
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        return ImageFolder(str(p), tf, loader=_read_image, allow_empty=allow_empty)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: {str(exc).splitlines()[0]}") from None


def _tensors(ds) -> Tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(ds, batch_size=512, num_workers=0)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def load_images(path, size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """A whole image folder as ``(X (N, 3, size, size), y (N,))`` tensors (small data sets only), labels by its
    own sorted class folders — for images alone; a train/val pair is :func:`load_splits`."""
    return _tensors(image_folder(path, size))


def load_splits(root, size: int = 32, log: Optional[Callable[[str], None]] = None
                ) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """``root/train`` and ``root/val`` as ``((X, y), (X, y))``, both labelled with **train's** class index (two
    ImageFolders would each number their own sorted folders: a val folder missing or renaming one class would
    shift every label after it). Refused, one line: fewer than two train classes, a val class folder train
    lacks (named). Said, one line through ``log`` (default: stderr): val has no images of some train classes."""
    root = Path(root)
    tr = image_folder(root / "train", size)
    if len(tr.classes) < 2:
        raise ConfigError(f"{root / 'train'}: one class folder ({tr.classes[0]!r}); kNN and linear-probe accuracy "
                          "need at least two classes")
    va = image_folder(root / "val", size, allow_empty=True)
    extra = [c for c in va.classes if c not in tr.class_to_idx]
    if extra:
        raise ConfigError(f"{root / 'val'}: class folder {extra[0]!r} is not a class of {root / 'train'} "
                          f"({len(extra)} such; train's: {', '.join(tr.classes[:10])}"
                          f"{', ...' if len(tr.classes) > 10 else ''}); val must use train's class names")
    present = {va.classes[t] for _, t in va.samples}
    if not present:
        raise ConfigError(f"{root / 'val'}: no images")
    va.samples = [(p, tr.class_to_idx[va.classes[t]]) for p, t in va.samples]
    va.targets = [t for _, t in va.samples]
    missing = [c for c in tr.classes if c not in present]
    if missing:
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
            f"solo-sparse: note: {root / 'val'} has no images of {len(missing)} of train's {len(tr.classes)} classes "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); accuracies are over the other "
            f"{len(tr.classes) - len(missing)}")
    return _tensors(tr), _tensors(va)


@torch.no_grad()
def extract_features(net: nn.Module, X: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """(N, 3, H, W) -> (N, D) features of ``net`` in eval mode; raises :class:`NonFiniteFeatures` when any is
    not finite."""
    net.eval()
    out = []
    rng = range(0, len(X), batch_size)
    if progress:
        from tqdm import tqdm

        rng = tqdm(rng, desc="features", leave=False)
    for i in rng:
        out.append(net(X[i: i + batch_size]).flatten(1))
    f = torch.cat(out)
    bad = ~torch.isfinite(f).all(1)
    if bool(bad.any()):
        fin = f[torch.isfinite(f)]
        big = f"{float(fin.abs().max()):.3g}" if fin.numel() else "none"
        raise NonFiniteFeatures(f"{int(bad.sum())} of {len(f)} images give non-finite features on the network's "
                                f"evaluation path (first: image {int(bad.nonzero()[0])}; largest finite |feature| "
                                f"{big}): it overflows float32 there, so no accuracy is reported")
    return f


@torch.no_grad()
def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, T: float = 0.07, chunk: int = 1024) -> float:
    """Weighted cosine kNN top-1 accuracy (solo-learn's rule); k = 1 is nearest neighbour."""
    k = min(k, len(train_f))
    tr = F.normalize(train_f.float(), dim=1)
    te = F.normalize(test_f.float(), dim=1)
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for i in range(0, len(te), chunk):
        sim = te[i: i + chunk] @ tr.T
        s, idx = sim.topk(k, dim=1)
        lab = train_y[idx]
        w = (s / T).exp()
        votes = torch.zeros(len(s), n_cls).scatter_add_(1, lab, w)
        correct += int((votes.argmax(1) == test_y[i: i + chunk]).sum())
    return correct / len(te)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 weight_decay: float = 1e-4, max_iter: int = 300, seed: int = 0) -> float:
    """Logistic regression on standardised frozen features (L-BFGS, full batch); test top-1."""
    torch.manual_seed(seed)
    mu, sd = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    lin = nn.Linear(xtr.shape[1], n_cls)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xtr), train_y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xte).argmax(1) == test_y).float().mean())


def evaluate_backbone(net: nn.Module, train: Tuple[torch.Tensor, torch.Tensor], test: Tuple[torch.Tensor, torch.Tensor],
                      progress: bool = False) -> Dict[str, float]:
    """kNN (k = 20 and k = 1) and linear-probe accuracy of ``net`` on (X, y) splits."""
    ftr = extract_features(net, train[0], progress=progress)
    fte = extract_features(net, test[0], progress=progress)
    return {
        "knn20": knn_accuracy(ftr, train[1], fte, test[1], k=20),
        "knn1": knn_accuracy(ftr, train[1], fte, test[1], k=1),
        "linear": linear_probe(ftr, train[1], fte, test[1]),
    }

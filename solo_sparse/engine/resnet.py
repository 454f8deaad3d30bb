"""torchvision ResNets as solo-learn builds them: construction, the stage-list rule every plugin uses,
the structure check and the spatial size of each stage's maps.

Shapes: a ResNet maps (B, 3, H, W) images to stage maps layer<i>: (B, C_i, H_i, W_i) and pooled
features (B, C_4). With the ImageNet stem (7x7 stride-2 conv + max-pool) H_1 = H / 4 and each later
stage halves it (H_4 = H / 32: 1x1 at 32 px, 2x2 at 64 px); with solo-learn's CIFAR stem (3x3
stride-1 conv, no max-pool) H_1 = H (H_4 = 4x4 at 32 px).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Tuple

import torch
import torch.nn as nn

from solo_sparse.core.config import PREFIX, ConfigError, key_error

STAGES = ("layer1", "layer2", "layer3", "layer4")


def build_resnet(name: str = "resnet18", cifar_stem: bool = False) -> nn.Module:
    """A torchvision ResNet as solo-learn builds it: ``fc`` = Identity; with ``cifar_stem`` a 3x3
    stride-1 ``conv1`` and no max-pool (solo-learn's cifar10/100 stem)."""
    import torchvision

    if name not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        raise ConfigError(f"backbone {name!r}: solo-sparse builds torchvision ResNets only "
                          "(resnet18, resnet34, resnet50, resnet101, resnet152)")
    net = getattr(torchvision.models, name)()
    net.fc = nn.Identity()
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        net.maxpool = nn.Identity()
    return net


def parse_stages(key: str, value: Any, allowed: Iterable[int] = (1, 2, 3, 4), allow_empty: bool = False
                 ) -> Tuple[int, ...]:
    """A list of ResNet stage indices from a config (an int or a list): distinct, each in ``allowed``,
    returned sorted; errors name ``solo_sparse.<key>``, the value and what is allowed."""
    allowed = tuple(allowed)
    vals = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value or [])
    bad = (any(isinstance(v, bool) or not isinstance(v, int) or v not in allowed for v in vals)
           or len(set(vals)) != len(vals) or (not vals and not allow_empty))
    if bad:
        raise key_error(key, value, f"distinct ResNet stage indices from {list(allowed)}"
                                    + ("" if allow_empty else ", at least one"))
    return tuple(sorted(vals))


def check_resnet(backbone: nn.Module, who: str,
                 needs: Iterable[str] = ("conv1", "bn1", "relu", "maxpool", *STAGES)) -> None:
    """Refuse, naming what is missing, a backbone that is not a torchvision-style ResNet."""
    missing = [n for n in needs if not hasattr(backbone, n)]
    if missing:
        raise ConfigError(f"{PREFIX}: {who} needs a torchvision-style ResNet backbone (stem + layer1..layer4); "
                          f"{type(backbone).__name__} lacks {', '.join(missing)}")


@torch.no_grad()
def stage_sizes(backbone: nn.Module, input_size: int) -> Dict[str, Tuple[int, int]]:
    """``{"layer1": (H_1, W_1), ...}``: the spatial size of each stage's output maps for square
    inputs of ``input_size`` pixels (one eval-mode forward of a zero image; running stats untouched)."""
    sizes: Dict[str, Tuple[int, int]] = {}
    hooks = [getattr(backbone, s).register_forward_hook(
        lambda m, i, o, s=s: sizes.__setitem__(s, (int(o.shape[-2]), int(o.shape[-1])))) for s in STAGES]
    was = backbone.training
    try:
        backbone.eval()
        p = next(backbone.parameters())
        backbone(torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was)
    return sizes

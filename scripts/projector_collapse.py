#!/usr/bin/env python
"""Whether a momentum method's projection head collapsed: for solo-learn MoCo v2+ / BYOL checkpoints, the cosine of
the online and momentum embeddings (projector outputs) of the same image and of different images, and the
effective rank of the backbone features and of the embeddings, on validation images.

A healthy MoCo v2+ run here: same image ~0.98, different images ~0.75. Equal values mean every image maps to about
the same direction (the InfoNCE loss then sits at ln(queue + 1)).

    python scripts/projector_collapse.py results/interloss/runs/moco-pb/seed0/mocov2plus/0/*.ckpt \
        --data data/fmnist5k --size 64
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def mlp(sd, prefix):
    """solo-learn's projector (Linear, [BN,] ReLU, Linear) from a state dict, as a function (eval)."""
    lin = sorted({k.rsplit(".", 2)[1] for k in sd if k.startswith(prefix + ".") and k.endswith(".weight")
                  and sd[k].dim() == 2}, key=int)
    if len(lin) != 2:
        raise SystemExit(f"{prefix}: expected two Linear layers, found {lin}")
    (a, b) = lin

    def f(x):
        h = F.linear(x, sd[f"{prefix}.{a}.weight"], sd.get(f"{prefix}.{a}.bias"))
        bn = f"{prefix}.{int(a) + 1}"
        if f"{bn}.running_mean" in sd:
            h = F.batch_norm(h, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"])
        return F.linear(F.relu(h), sd[f"{prefix}.{b}.weight"], sd.get(f"{prefix}.{b}.bias"))
    return f


def main(argv=None) -> int:
    from solo_sparse.engine.probes import effective_rank, other_images_cos
    from solo_sparse.tools.evaluate import load_backbone, load_splits

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", required=True, help="image folder with train/ and val/")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=512, help="validation images")
    args = ap.parse_args(argv)
    X = load_splits(args.data, args.size)[1][0][: args.n]
    for ck in args.checkpoints:
        sd = torch.load(ck, map_location="cpu", weights_only=False)["state_dict"]
        on, _ = load_backbone(ck, "resnet18")
        mo, _ = load_backbone(ck, "resnet18", prefix="momentum_backbone.")
        with torch.no_grad():
            fo, fm = on.eval()(X), mo.eval()(X)
            zo, zm = mlp(sd, "projector")(fo), mlp(sd, "momentum_projector")(fm)
            same = float((F.normalize(zo, dim=1) * F.normalize(zm, dim=1)).sum(1).mean())
        print(json.dumps({"checkpoint": ck, "same_image_cos": round(same, 4),
                          "other_images_cos": round(other_images_cos(zo, zm), 4),
                          "feature_erank": round(effective_rank(fo), 1),
                          "embedding_erank": round(effective_rank(zo), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

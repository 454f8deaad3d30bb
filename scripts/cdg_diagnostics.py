#!/usr/bin/env python
"""Two diagnostics of CGNet/CDG channel gating (README, CDG: why the gated runs lose accuracy here).

``init``: kNN and linear-probe accuracy of *randomly initialised* ResNet-18 features, dense and
CDG-gated (branch a1, G = 4) at fixed conditional sparsities (tau = s = Phi^-1(target)). Target 0
is the dense conv, target 0.999 is the base path alone (a grouped conv); in between every position
mixes the two, which is what a fresh CDG network trains from at the seed's tau = s.

``shortcut``: on trained checkpoints, two augmented views (random 24 px crop resized to 32, flip)
of the first N val images; view 0 runs branch a1, view 1 each of the other routes (``follow`` =
view 0's masks, CGNet's unified gating; ``a2`` = CDG's second branch; ``a1`` = its own masks on
a1's base path). Reported: top-1 retrieval of the positive among the N images by cosine of the
backbone features, mean positive cosine and mean cosine over all pairs. If view 1 is retrieved only
when it carries view 0's masks, the features encode the masks, not the image.

    python scripts/cdg_diagnostics.py init --data data/fmnist5k --out history/results/fmnist_cdg/diag_init.json
    python scripts/cdg_diagnostics.py shortcut --data data/fmnist5k --out history/results/fmnist_cdg/diag_shortcut.json \\
        --checkpoints simclr_cgnet=RUN/...ckpt simclr_cdg=RUN/...ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from solo_sparse.gating.cgnet import convert_resnet, target_threshold
from solo_sparse.gating.channel import clear_cache, set_branch
from solo_sparse.tools.evaluate import (
    NonFiniteFeatures,
    build_resnet,
    evaluate_backbone,
    load_backbone,
    load_images,
    load_splits,
)

TARGETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.999)


def views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(N, 3, 32, 32) -> one random 24 px crop per image, resized to 32, flipped with p = 0.5."""
    n = x.shape[0]
    ij = torch.randint(0, x.shape[-1] - 24 + 1, (n, 2), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = []
    for img, (i, j), f in zip(x, ij.tolist(), flip.tolist()):
        c = F.interpolate(img[None, :, i:i + 24, j:j + 24], size=x.shape[-1], mode="bilinear",
                          align_corners=False)[0]
        out.append(c.flip(-1) if f else c)
    return torch.stack(out)


def run_init(args) -> dict:
    train, test = load_splits(args.data, 32)
    rows = {}
    for t in (None,) + TARGETS:
        torch.manual_seed(args.seed)
        net = build_resnet("resnet18")
        if t is not None:
            convert_resnet(net, groups=4, init_tau=target_threshold(t))
            set_branch(net, "a1")
        name = "dense" if t is None else f"cdg target {t}"
        try:
            rows[name] = evaluate_backbone(net.eval(), train, test)
        except NonFiniteFeatures as e:   # the other targets go on; this row says why it has no accuracy
            rows[name] = {"error": str(e)}
        print(name, rows[name], flush=True)
    return {"seed": args.seed, "rows": rows}


def run_shortcut(args) -> dict:
    x = load_images(str(Path(args.data) / "val"), 32)[0][: args.n]
    gen = torch.Generator().manual_seed(args.seed)
    x0, x1 = views(x, gen), views(x, gen)
    rows = {}
    for spec in args.checkpoints:
        name, ck = spec.split("=", 1)
        net, info = load_backbone(ck)
        net.eval()
        routes = ["follow", "a1"] if info["gating"] == "cgnet" else ["a2", "a1"]
        res = {}
        with torch.no_grad():
            clear_cache(net)
            set_branch(net, "a1")
            f0 = F.normalize(net(x0), dim=1)
            for r in routes:
                set_branch(net, r)
                sim = f0 @ F.normalize(net(x1), dim=1).T
                res[f"view1 {r}"] = {"top1_retrieval": float((sim.argmax(1) == torch.arange(len(x))).float().mean()),
                                     "positive_cosine": float(sim.diag().mean()), "mean_cosine": float(sim.mean())}
        rows[name] = {"checkpoint": ck, "plugin": info["gating"], **res}
        print(name, json.dumps(res), flush=True)
    return {"n_images": len(x), "seed": args.seed, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("init", "shortcut"))
    ap.add_argument("--data", required=True, help="image folder root with train/ and val/")
    ap.add_argument("--out", required=True, help="JSON file")
    ap.add_argument("--checkpoints", nargs="*", default=[], help="shortcut: NAME=CKPT ...")
    ap.add_argument("--n", type=int, default=256, help="shortcut: images per retrieval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.what == "shortcut" and not args.checkpoints:
        ap.error("shortcut needs --checkpoints NAME=CKPT ...")
    res = run_init(args) if args.what == "init" else run_shortcut(args)
    res["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if argv is None else " ".join(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

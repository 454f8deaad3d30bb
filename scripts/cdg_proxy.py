#!/usr/bin/env python
"""A one-minute proxy of the CDG suite: the channel-gating plugins trained through the plugin contract (no
solo-learn), small enough to compare variants at 3 seeds before spending hours on the real suite.

Width-16 ResNet-18 (ImageNet stem: torchvision's layout, every width / 4), 64 px Fashion-MNIST (the suite's
regime, ``data/fmnist5k``), SimCLR (NT-Xent, T 0.2) or MoCo v2+ (symmetric InfoNCE, queue 1024, EMA 0.99),
batch 128, SGD (lr 0.3, momentum 0.9, weight decay 1e-5, 8 warm-up steps then cosine), ``--steps`` steps
(default 80), augmentations as ``grey64.yaml`` (crops 0.35-1, flips, brightness/contrast). The plugin is
driven by a :class:`~solo_sparse.core.plugin.PluginHost` with the hooks the solo-learn binding calls (crop
routing, extra loss, after the optimizer step, after the EMA update, epoch ends every 20 steps), gate
parameters in their own optimizer group.

Per run: linear probe on frozen features (train 5,000 images, test the first 2,000 val images, 64 px), the
shift sensitivity (1 - cos under a 1-px shift, eval path, 256 val images), for MoCo the online/momentum
feature cosine, and for gated runs the conditional sparsity and eq. 13 reduction on the eval path.

    python scripts/cdg_proxy.py --method simclr --variants dense cdg cdg-paper base-only --seeds 0 1 2 \\
        --out results/cdg-proxy/simclr.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_sparse.core.plugin import Branch, ModelView, ModuleGroup, PluginHost
from solo_sparse.core.registry import get_plugin
from solo_sparse.engine.probes import shift_sensitivity, twin_agreement
from solo_sparse.tools.evaluate import NonFiniteFeatures, extract_features, linear_probe, load_splits

#: variant -> (plugin, params); None = dense
VARIANTS: Dict[str, Optional[tuple]] = {
    "random-init": None,                                                    # the dense network, 0 steps
    "dense": None,
    "cdg": ("cdg", {"target": 0.75}),                                      # learnable scale from 0 (default)
    "cdg-paper": ("cdg", {"target": 0.75, "cond_scale": "none"}),           # the paper's form
    "cdg-shared": ("cgnet", {"target": 0.75}),                             # gamma, one shared base path
    "cgnet": ("cgnet", {"target": 0.75, "cond_scale": "none"}),            # the paper's CGNet baseline
    "cgnet-unified": ("cgnet", {"target": 0.75, "cond_scale": "none", "unified": True}),
    "base-only": ("cgnet", {"control": "base_only"}),                     # G = 4 grouped conv, 1/4 of the MACs
    "static-g2": ("cgnet", {"control": "base_only", "groups": 2}),         # ~ the gated MACs, static
    "random": ("cgnet", {"target": 0.75, "control": "random"}),            # data-independent mask, gamma
    "cdg-cg8": ("cdg", {"target": 0.75, "cg": 8}),
}


def narrow_resnet18(width: int = 16) -> nn.Module:
    """torchvision's ResNet-18 layout (attribute names, BasicBlocks) with stage widths w, 2w, 4w, 8w."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [2, 2, 2, 2])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(BasicBlock, width, 2)
    net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
    net.fc = nn.Identity()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net.inplanes = 8 * width
    return net


def augment(x: torch.Tensor, gen: torch.Generator, solarize: float = 0.0) -> torch.Tensor:
    """grey64.yaml on a batch of normalised 64 px images: random resized crop (scale 0.35-1, ratio 3/4-4/3),
    flip 0.5, brightness/contrast 0.4 with p 0.8, solarisation with p ``solarize``."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.35, 1.0, generator=gen)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = logr.exp()
    cw = (area * ratio).sqrt().clamp(max=1.0)
    ch = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - cw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = cw * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = ch, cy
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jit = (torch.rand(n, generator=gen) < 0.8).float().view(n, 1, 1, 1)
    b = 1 + jit * torch.empty(n, 1, 1, 1).uniform_(-0.4, 0.4, generator=gen)
    c = 1 + jit * torch.empty(n, 1, 1, 1).uniform_(-0.4, 0.4, generator=gen)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * c + mean * b
    if solarize:
        s = (torch.rand(n, generator=gen) < solarize).view(n, 1, 1, 1)
        out = torch.where(s & (out > 0), -out, out)
    return out


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, t: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / t
    n = len(z0)
    sim.fill_diagonal_(-1e9)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float = 0.2) -> torch.Tensor:
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], 1) / t
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def mlp(d_in: int, d_hidden: int = 256, d_out: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


def train(method: str, variant: str, seed: int, X: torch.Tensor, steps: int, batch: int = 128,
          width: int = 16, log=print) -> Dict:
    torch.manual_seed(seed)
    if variant == "random-init":
        steps = 0                  # the floor trained features must clear (same init as every variant's seed)
    online = narrow_resnet18(width)
    proj = mlp(8 * width)
    mom = copy.deepcopy(online) if method == "mocov2plus" else None
    mproj = copy.deepcopy(proj) if mom is not None else None
    spec = VARIANTS[variant]
    host = plugin = None
    logs: Dict[str, float] = {}
    if spec is not None:
        plugin = get_plugin(spec[0]).from_params(spec[1])
        view = ModelView({"backbone": ModuleGroup("backbone", online, mom)}, "momentum" if mom is not None
                         else "shared", method=method, num_large_crops=2, input_size=X.shape[-1],
                         method_kwargs={"queue_size": 1024}, batch_size=batch, log=logs.update)
        host = PluginHost([plugin])
        host.setup(view)
        host.set_schedule_info(20, steps)
        host.on_train_start()
    lr = 0.3
    gate_groups = host.param_groups(lr) if host else []
    taken = {id(p) for g in gate_groups for p in g["params"]}
    main = [p for p in list(online.parameters()) + list(proj.parameters()) if id(p) not in taken]
    opt = torch.optim.SGD([{"params": main, "lr": lr, "weight_decay": 1e-5}] + gate_groups, lr=lr, momentum=0.9)
    base_lrs = [g["lr"] for g in opt.param_groups]
    queue = F.normalize(torch.randn(1024, 64), dim=1) if mom is not None else None
    qptr = 0
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(X), generator=gen)
    pos = 0
    t0 = time.time()
    for step in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(X), generator=gen), 0
        xb = X[order[pos: pos + batch]]
        pos += batch
        x0, x1 = augment(xb, gen), augment(xb, gen, solarize=0.2)
        f = min(1.0, (step + 1) / 8) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, b in zip(opt.param_groups, base_lrs):
            g["lr"] = b * f
        if host:
            host.on_step_start()
        zs = []
        for crop, xc in enumerate((x0, x1)):
            if host:
                host.on_crop(Branch(crop=crop))
            zs.append(proj(online(xc)))
        if mom is not None:
            ks = []
            with torch.no_grad():
                for crop, xc in enumerate((x0, x1)):
                    if host:
                        host.on_crop(Branch(crop=crop, encoder="momentum"))
                    ks.append(mproj(mom(xc)))
            loss = (info_nce(zs[0], ks[1], queue) + info_nce(zs[1], ks[0], queue)) / 2
        else:
            loss = nt_xent(zs[0], zs[1])
        extra = host.extra_loss() if host else None
        total = loss + (extra if extra is not None else 0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if host:
            host.after_backward()
        opt.step()
        if host:
            host.after_optimizer_step(opt)
        if mom is not None:
            with torch.no_grad():
                for a, b in zip(list(mom.parameters()) + list(mproj.parameters()),
                                list(online.parameters()) + list(proj.parameters())):
                    a.mul_(0.99).add_(b.detach(), alpha=0.01)
                for a, b in zip(list(mom.buffers()) + list(mproj.buffers()),
                                list(online.buffers()) + list(proj.buffers())):
                    a.copy_(b)
                k = F.normalize(ks[1], dim=1)
                n = len(k)
                idx = (torch.arange(n) + qptr) % len(queue)
                queue[idx] = k
                qptr = (qptr + n) % len(queue)
            if host:
                host.after_momentum_update()
        if host and (step + 1) % 20 == 0:
            host.on_epoch_end(step // 20)
        if (step + 1) % 20 == 0:
            log(f"  {variant} seed {seed} step {step + 1}/{steps} loss {float(loss):.3f} "
                f"({time.time() - t0:.0f} s)")
    return {"online": online, "momentum": mom, "plugin": plugin, "logs": logs, "train_s": time.time() - t0}


def evaluate(run: Dict, train_set, test_set, probe_x: torch.Tensor) -> Dict:
    net, plugin = run["online"], run["plugin"]
    route = plugin.route_eval if plugin is not None and hasattr(plugin, "route_eval") else None
    if route is not None:
        route(net)
    try:
        ftr = extract_features(net, train_set[0])
        fte = extract_features(net, test_set[0])
        out = {"linear": 100 * linear_probe(ftr, train_set[1], fte, test_set[1])}
    except NonFiniteFeatures as e:       # the sweep goes on: this variant's row says why it has no accuracy
        out = {"linear": None, "error": str(e)}
    out["shift"] = shift_sensitivity(net, probe_x, 1, route)
    if run["momentum"] is not None:
        out["online_momentum_cos"] = twin_agreement(net, run["momentum"], probe_x, route)
    if plugin is not None and hasattr(plugin, "measure_backbone"):
        m = type(plugin).measure_backbone(net, probe_x)
        if m:
            out["gate_sparsity"] = m.get("gate_sparsity")
            out["eq13"] = m.get("eq13_reduction")
            out["network_macs_ratio"] = m.get("network_macs_ratio")
    out["cond_scale"] = run["logs"].get("solo_sparse/cond_scale")
    out["train_s"] = run["train_s"]
    return out


#: the suite's comparisons, decided on the proxy as the bench decides claims (a - b, paired by seed, 95% interval)
COMPARISONS = [("cdg", "dense"), ("cdg", "static-g2"), ("cdg", "base-only"), ("cdg", "random"),
               ("cdg", "cdg-paper"), ("cdg-paper", "cgnet"), ("cdg-cg8", "cdg"), ("dense", "random-init")]


def summary(res: Dict, method: str, steps: int) -> str:
    """Markdown: per variant mean ± std over seeds (linear probe, shift sensitivity, gate sparsity, eq. 13, whole-
    network MACs, online/momentum cosine), then the comparisons paired by seed with their 95% t-intervals."""
    from solo_sparse.tools.stats import fmt, paired, verdict

    by: Dict[str, Dict[int, Dict]] = {}
    for key, row in res["rows"].items():
        m, v, s, st = key.split("/")
        if m == method and (st == f"steps{steps}" or v == "random-init"):
            by.setdefault(v, {})[int(s[4:])] = row

    def ms(v: str, k: str, scale: float = 1.0, nd: int = 2) -> str:
        vals = [r[k] * scale for r in by[v].values() if r.get(k) is not None]
        if not vals:
            return "-"
        sd = f" ± {statistics.stdev(vals):.{nd}f}" if len(vals) > 1 else ""
        return f"{statistics.mean(vals):.{nd}f}{sd}"

    lines = [f"{method}, {steps} steps (width-16 ResNet-18, 64 px, batch 128); mean ± std over seeds", "",
             "| variant | seeds | linear probe | shift sensitivity | gate sparsity | eq. 13 | network MACs |"
             " online/momentum cos |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = [v for v in VARIANTS if v in by]
    for v in order:
        lines.append(f"| {v} | {len(by[v])} | {ms(v, 'linear')} | {ms(v, 'shift', nd=4)} | "
                     f"{ms(v, 'gate_sparsity', nd=3)} | {ms(v, 'eq13')} | {ms(v, 'network_macs_ratio', nd=3)} | "
                     f"{ms(v, 'online_momentum_cos', nd=3)} |")
    lines += ["", "| a − b | per-seed (pt) | mean ± std [95% interval] | verdict (a ≥ b) |", "|---|---|---|---|"]

    def acc(v: str) -> Dict[int, float]:          # seeds whose features were finite
        return {s: r["linear"] for s, r in by[v].items() if r.get("linear") is not None}

    for a, b in COMPARISONS:
        if a in by and b in by:
            p = paired(acc(a), acc(b))
            per = ", ".join(f"{d:+.2f}" for d in p["diffs"]) if p else "-"
            lines.append(f"| {a} − {b} | {per} | {fmt(p)} | {verdict(p)} |")
    failed = [f"{v} seed {s}: {r['error']}" for v in order for s, r in sorted(by[v].items()) if r.get("error")]
    if failed:
        lines += ["", "No linear probe (non-finite features; left out of the means and the pairs):", "",
                  *[f"- {f}" for f in failed]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("simclr", "mocov2plus"), default="simclr")
    ap.add_argument("--variants", nargs="+", default=["dense", "cdg", "cdg-paper", "base-only"],
                    choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--data", default="data/fmnist5k")
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--out", required=True, help="JSON file (rows are added; finished rows are kept)")
    ap.add_argument("--summary", default=None, help="also write the summary table (markdown) to this file")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.test_images < 1:
        ap.error("--steps and --test-images must be >= 1")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    res["setup"] = {"method": args.method, "steps": args.steps, "width": 16, "batch": 128, "size": 64,
                    "data": Path(args.data).name, "test_images": args.test_images}
    (Xtr, ytr), (Xte, yte) = load_splits(args.data, 64)
    test_set = (Xte[: args.test_images], yte[: args.test_images])
    probe_x = Xte[-256:]
    for seed in args.seeds:
        for v in args.variants:
            key = f"{args.method}/{v}/seed{seed}/steps{args.steps}"
            if key in res["rows"]:
                continue
            run = train(args.method, v, seed, Xtr, args.steps, log=lambda m: print(m, flush=True))
            row = evaluate(run, (Xtr, ytr), test_set, probe_x)
            res["rows"][key] = row
            print(f"{key}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1) + "\n")
            tmp.replace(out)
    md = summary(res, args.method, args.steps)
    print("\n" + md)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``solo-sparse speed``: every exported fast path against dense, side by side in one run, with the MACs
limit beside each measured ratio.

    solo-sparse speed scripts/speed/suite.yaml --out results/speed --docs docs/speed.md

A suite (YAML, data -- it may name plugins; this module never does) lists *paths*::

    sizes: [32, 64, 224]          # input sizes (px)
    batches: [1, 64]
    reps: 20                      # timed repetitions per variant after warm-up
    images: data/fmnist5k/val     # real images (gated paths decide per input); random inputs if absent
    paths:
      - id: compact-d50
        zoo: <entry>              # or checkpoint: <file.ckpt>, or plugin: <name> + params: {...}
        channel_density: 0.5      # compactable entries: prune the block-internal channels first
      - id: dgnet-t30
        zoo: <gated entry>
      - id: cdg-cg8
        plugin: <name>
        params: {cg: 8, ramp: 0}  # built on a fresh backbone
        synthetic: true           # gates at their initial thresholds on random weights (speed only)

What each path measures is decided by what the backbone *is*, never by a plugin name: a backbone whose
plugin is ``compactable`` (or none), or whose fast path is a plain network (the plugin's ``plain_backbone``:
DGNet's static control is a narrower ResNet), is compacted (:mod:`solo_sparse.engine.compact`) and measured eager
and in its inference form (BN folded, channels-last), next to the uncompacted network in the same form
(the fair reference); a plugin with ``speed_paths`` (fast, dense) is routed to each, and DGNet-gated
blocks get their measured batch-1 execution plan (:func:`solo_sparse.gating.dgnet.attach_latency_table`);
CDG/CGNet-gated convs get :mod:`solo_sparse.gating.cdg_exec`'s executable forms next to the training-time
computation. Gates that were never trained are refused with the reason unless the suite says
``synthetic: true``.

Timing: for each (batch, size), every variant of every path runs once per repetition, interleaved
(background load hits them alike), after 3 warm-up calls each; batch-1 repetitions cycle through the
images. Reported per variant: median and inter-quartile range (ms); per ratio: the median and IQR of the
per-repetition ratios dense / fast (paired; the ratio of the two medians is kept beside them in the results
file). The MACs limit is dense MACs / the path's MACs at that size (gated paths: measured on the same images
through the plugin's ``measure_backbone``). Threads, the
machine key and the load average before and after are recorded.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from solo_sparse.core.config import ConfigError

DOC_BEGIN, DOC_END = "<!-- speed -->", "<!-- /speed -->"


@dataclass
class Variant:
    name: str
    module: nn.Module
    what: str
    batches: Optional[Tuple[int, ...]] = None       # None: every batch size
    skip: Tuple[Tuple[int, int], ...] = ()           # (batch, size) groups where it is not timed
    #: called with (input size, progress) before each group that runs the variant
    prepare: Optional[Callable[[int, Callable[[str], None]], None]] = None


@dataclass
class SpeedPath:
    id: str
    kind: str
    description: str
    dense: nn.Module
    variants: List[Variant]
    #: (fast variant, reference variant or "dense") pairs whose ratio is reported, with the MACs limit of the fast one
    ratios: List[Tuple[str, str]]
    limit: Callable[[int, torch.Tensor], Dict[str, float]]
    info: Dict[str, Any] = field(default_factory=dict)
    skip: Tuple[Tuple[int, int], ...] = ()           # (batch, size) groups where the whole path is not timed

    def runs(self, batch: int, size: int) -> List[Variant]:
        """The variants timed at (batch, size) (the dense reference first), none when the path skips it."""
        if (batch, size) in self.skip:
            return []
        vs = [v for v in self.variants if (v.batches is None or batch in v.batches) and (batch, size) not in v.skip]
        return [Variant("dense", self.dense, "reference"), *vs] if vs else []


# --------------------------------------------------------------------------------------------- building paths
def _say(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def _macs(net: nn.Module, size: int) -> float:
    from solo_sparse.engine.flops import count_macs

    with torch.no_grad():
        return float(count_macs(net, torch.zeros(1, 3, size, size, device=_device(net))).dense)


def _load(spec: Mapping[str, Any], root: Optional[Path]) -> Tuple[nn.Module, Optional[str], Dict[str, Any]]:
    """The path's backbone (eval mode) and its backbone-rewriting plugin (name, saved config) if any."""
    from solo_sparse import zoo
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.tools.evaluate import build_resnet, load_backbone

    if "zoo" in spec:
        e = zoo.entry(spec["zoo"], root)
        net, meta = zoo.load_with_meta(spec["zoo"], "solo", root)
        gating = meta.get("gating") or {}       # the plugin that rebuilt the backbone (weight-mask plugins of the
        plugin = gating.get("plugin")           # entry left nothing of theirs in the module)
        return net.eval(), plugin, dict((e.get("plugins") or {}).get(plugin) or gating.get("config") or {})
    if "checkpoint" in spec:
        from solo_sparse.tools.inputs import read_checkpoint

        ck = resolve_checkpoint(spec["checkpoint"])
        net, info = load_backbone(str(ck), spec.get("backbone", "resnet18"))
        cfg = ((read_checkpoint(str(ck)).get("solo_sparse") or {}).get(info["gating"]) or {})
        return net.eval(), info["gating"], dict(cfg.get("config", cfg)) if info["gating"] else {}
    if "plugin" in spec:
        cls = get_plugin(spec["plugin"])
        torch.manual_seed(int(spec.get("seed", 0)))
        net = build_resnet(spec.get("backbone", "resnet18"))
        params = dict(spec.get("params") or {})
        if cls.rewrites_backbone:
            cls.rebuild_backbone(net, params)
        return net.eval(), spec["plugin"] if cls.rewrites_backbone else None, params
    if "backbone" in spec:
        torch.manual_seed(int(spec.get("seed", 0)))
        return build_resnet(spec["backbone"]).eval(), None, {}
    raise ConfigError(f"speed suite path {spec.get('id')!r}: give one of zoo, checkpoint, plugin, backbone")


def resolve_checkpoint(pattern: str) -> Path:
    """A checkpoint file, or the newest file matching a glob pattern (``runs/x/**/*.ckpt``)."""
    import glob

    hits = sorted(glob.glob(str(pattern), recursive=True), key=os.path.getmtime)
    if not hits:
        raise FileNotFoundError(f"no checkpoint matches {pattern!r}")
    return Path(hits[-1])


def _compact_path(pid: str, net: nn.Module, spec: Mapping[str, Any]) -> SpeedPath:
    from solo_sparse.engine import compact as C

    net = copy.deepcopy(net).eval()
    density = spec.get("channel_density")
    if density is not None:
        C.channel_prune(net, float(density))
    keep = C.removable(net)
    rounded = bool(spec.get("round_to_vector", True))
    if rounded:
        keep = C.round_keep(net, keep, C.vector_width())
    small = C.compact(net, keep)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fast = C.optimise(small)
    with torch.no_grad():
        ref = net(x)
        err = float((fast(x) - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
    widths = [sum(C.widths(small).values()), sum(C.widths(net).values())]
    variants = [Variant("dense+opt", C.optimise(net), "uncompacted, BN folded, channels-last"),
                Variant("compact", small, "compact export, eager"),
                Variant("compact+opt", fast, "compact export, BN folded, channels-last")]

    def limit(size: int, X: torch.Tensor) -> Dict[str, float]:
        return {"compact+opt": _macs(net, size) / _macs(small, size), "compact": _macs(net, size) / _macs(small, size)}

    what = f"compact export at internal channel density {density}" if density is not None else "compact export"
    how = f"widths rounded to {C.vector_width()} lanes" if rounded else "widths as they are, not rounded to the lanes"
    return SpeedPath(pid, "compact", f"{what} ({widths[0]}/{widths[1]} internal channels, {how})", net, variants,
                     [("compact+opt", "dense"), ("compact+opt", "dense+opt"), ("compact", "dense")], limit,
                     {"internal_channels": widths, "max_rel_diff": err, "vector_width": C.vector_width()})


def _speed_paths_path(pid: str, net: nn.Module, plugin: str, pcfg: Mapping[str, Any], spec: Mapping[str, Any],
                      reps_table: int) -> SpeedPath:
    """A plugin with ``speed_paths``: its fast and dense evaluation paths (DGNet-gated blocks with their measured
    batch-1 plan, and the fixed kept-share rule for comparison)."""
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.gating import dgnet

    cls = get_plugin(plugin)
    fast_path, dense_path = cls.speed_paths
    dense = copy.deepcopy(net)
    cls.route_backbone(dense, pcfg, dense_path)
    fast = copy.deepcopy(net)
    cls.route_backbone(fast, pcfg, fast_path)
    variants = []
    info: Dict[str, Any] = {"plugin_paths": [fast_path, dense_path]}
    if dgnet.is_gated(fast):
        rule = copy.deepcopy(fast)
        dgnet.detach_latency_table(rule)
        tables: Dict[int, Dict[str, Any]] = {}

        def prepare(size: int, progress: Callable[[str], None]) -> None:
            rebuild = bool(spec.get("rebuild_table")) and size not in tables
            rep = cls.prepare_fast_path(fast, size, progress, reps=reps_table, rebuild=rebuild)
            if isinstance(rep, dict) and isinstance(rep.get("path"), str):   # a machine's cache file: no local path
                rep = {**rep, "path": f"<latency cache>/{Path(rep['path']).name}"}
            tables[size] = rep
        variants.append(Variant(f"{fast_path}", fast, f"{fast_path} path, batch-1 plan from the measured cost "
                                                      f"model (gather / masked / skip per block)", prepare=prepare))
        variants.append(Variant(f"{fast_path} (fixed rule)", rule, f"{fast_path} path, gather when <= "
                                f"{dgnet.GATHER_MAX_KEEP:g} of a block is kept (no cost model)", batches=(1,)))
        info["tables"] = tables
    else:
        variants.append(Variant(fast_path, fast, f"{fast_path} path"))

    def limit(size: int, X: torch.Tensor) -> Dict[str, float]:
        m = cls.measure_backbone(copy.deepcopy(fast), X) or {}
        r = float(m.get("network_macs_ratio", 1.0))
        info.setdefault("measured", {})[size] = {k: v for k, v in m.items() if k != "kept_channels"}
        if "kept_channels" in m:
            info["measured"][size]["kept_channels"] = m["kept_channels"]
        return {v.name: 1.0 / r for v in variants}

    ratios = [(v.name, "dense") for v in variants]
    return SpeedPath(pid, "speed_paths", f"{plugin}: {fast_path} path vs {dense_path} path", dense, variants, ratios,
                     limit, info)


def _cdg_path(pid: str, net: nn.Module, plugin: Optional[str], pcfg: Mapping[str, Any], spec: Mapping[str, Any]
              ) -> SpeedPath:
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.gating import cdg_exec
    from solo_sparse.gating.channel import set_branch

    set_branch(net, "a1", "gated")
    dense = copy.deepcopy(net)
    set_branch(dense, "a1", "dense")
    tile = int(spec.get("tile", 4))
    grans = tuple(spec.get("granularities", cdg_exec.GRANULARITIES))
    variants = [Variant("training form", net, "the gated conv as trained: full conv + base conv + mask (a1)",
                        batches=tuple(spec.get("emulation_batches", (1,))))]
    for g in grans:
        unit = "(sample, block)" if g == "block" else f"(sample, block, {tile}x{tile} tile)"
        variants.append(Variant(f"exec-{g}", cdg_exec.make_executable(net, g, tile),
                                f"executable: skip conditional compute per {unit}",
                                batches=None if g == "block" else (1,)))
    info: Dict[str, Any] = {"tile": tile}

    def limit(size: int, X: torch.Tensor) -> Dict[str, float]:
        cls = get_plugin(plugin) if plugin else None
        m = (cls.measure_backbone(copy.deepcopy(net), X) if cls else None) or {}
        share = cdg_exec.executed_share(net, X, tile)
        info.setdefault("measured", {})[size] = {"network_reduction": m.get("network_reduction"),
                                                 "eq13_reduction": m.get("eq13_reduction"),
                                                 "mean_sparsity": m.get("mean_sparsity"),
                                                 "executed_share": share["total"]}
        # the training form's limit is the per-position ideal (the plugin's exact whole-network count, gates
        # included); each executable form's is the MACs it runs: the base path (D/G) plus, for every executed
        # (sample, block[, tile]), the block's full rows -- a dense kernel computing an output channel reads
        # every input channel, its base group (already in Y_base) included, so an executed share a costs a * D
        d_net = _macs(dense, size)
        per_conv = _conv_out_positions(net, size)
        conv_dense = sum(float(c.weight.numel()) * o for c, o in per_conv)
        base = sum(float(c.weight.numel()) * o / c.ss_G for c, o in per_conv)
        out = {"training form": float(m.get("network_reduction", 1.0))}
        for g in grans:
            ran = d_net - conv_dense + base + conv_dense * share["total"][g]
            out[f"exec-{g}"] = d_net / ran
        info["measured"][size]["gated_conv_share_of_network_macs"] = conv_dense / d_net
        return out

    ratios = [(v.name, "dense") for v in variants]
    desc = f"{plugin or 'channel gating'} (cg {int(next(iter(cdg_exec.convertible(net)))[1].ss_cg)}): executable " \
           f"forms vs the dense network"
    return SpeedPath(pid, "channel_gating", desc, dense, variants, ratios, limit, info)


def _conv_out_positions(net: nn.Module, size: int) -> List[Tuple[nn.Module, int]]:
    """(gated conv, output positions) at ``size`` px."""
    from solo_sparse.gating import cdg_exec

    convs = [c for _, c in cdg_exec.convertible(net)]
    sizes: Dict[int, int] = {}
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.__setitem__(id(m), o.shape[-2] * o.shape[-1]))
             for c in convs]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size, device=_device(net)))
    finally:
        for h in hooks:
            h.remove()
    return [(c, sizes[id(c)]) for c in convs]


def plain_fast_path(cls, net: nn.Module, pcfg: Mapping[str, Any]) -> Optional[nn.Module]:
    """The plugin's plain network for the fast one of its ``speed_paths`` (or the path the backbone is routed to),
    where its work does not depend on the input (:meth:`~solo_sparse.core.plugin.Plugin.plain_backbone`)."""
    from solo_sparse.core.plugin import Plugin

    if cls is None or getattr(cls.plain_backbone, "__func__", None) is Plugin.plain_backbone.__func__:
        return None                    # the contract's default: no plain form (no copy of the backbone needed)
    fast = copy.deepcopy(net).eval()
    if cls.speed_paths:
        cls.route_backbone(fast, pcfg, cls.speed_paths[0])
    plain = cls.plain_backbone(fast)
    if plain is not None:              # what is timed must compute the path: checked, not trusted
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = fast(x)
            err = float((plain(x) - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)
        if not err < 1e-4:
            raise ConfigError(f"plugin {cls.name!r}: its plain_backbone differs from the path it stands for (max "
                              f"relative difference {err:.2e}); not timed")
    return plain


def build_path(spec: Mapping[str, Any], root: Optional[Path] = None, reps_table: int = 15) -> SpeedPath:
    from solo_sparse.core.registry import get_plugin
    from solo_sparse.gating import cdg_exec, dgnet

    pid = str(spec["id"])
    net, plugin, pcfg = _load(spec, root)
    cls = get_plugin(plugin) if plugin else None
    if not spec.get("synthetic"):
        reason = dgnet.untrained_gates(net) or cdg_exec.untrained_gates(net)
        if reason:
            raise ConfigError(f"speed path {pid!r}: refused: {reason}. Train the gates first, or mark the path "
                              f"`synthetic: true` to time initial gates (a speed measurement, not an exported model)")
    plain = plain_fast_path(cls, net, pcfg)
    if plain is not None:          # the fast path is a static network (a narrower ResNet): its compact export
        p = _compact_path(pid, plain, spec)
        p.info["plain_backbone_of"] = plugin
    elif cls is not None and cls.speed_paths:
        p = _speed_paths_path(pid, net, plugin, pcfg, spec, reps_table)
    elif cdg_exec.convertible(net):
        p = _cdg_path(pid, net, plugin, pcfg, spec)
    elif cls is None or cls.compactable:
        p = _compact_path(pid, net, spec)
    else:
        raise ConfigError(f"speed path {pid!r}: plugin {plugin!r} is neither compactable nor declares speed_paths, "
                          f"and its gates have no executable form here")
    p.skip = tuple(tuple(int(v) for v in g) for g in spec.get("skip") or ())
    for name, groups in (spec.get("skip_variants") or {}).items():
        v = next((v for v in p.variants if v.name == name), None)
        if v is None:
            raise ConfigError(f"speed path {pid!r}: skip_variants names {name!r}, not one of "
                              f"{', '.join(v.name for v in p.variants)}")
        v.skip = tuple(tuple(int(x) for x in g) for g in groups)
    if p.skip or spec.get("skip_variants"):
        sv = spec.get("skip_variants") or {}
        p.info["skipped"] = {"path": [list(g) for g in p.skip],
                             "variants": {k: [list(g) for g in v] for k, v in sv.items()},
                             "why": spec.get("skip_reason", "")}
    p.info["synthetic"] = bool(spec.get("synthetic"))
    if spec.get("note"):
        p.info["note"] = spec["note"]
    return p


# --------------------------------------------------------------------------------------------- inputs
def load_inputs(folder: Optional[str], n: int, size: int) -> Tuple[torch.Tensor, str]:
    """``n`` images of ``folder`` (evenly spaced over it) at ``size`` px, or N(0, 1) noise when there is no folder."""
    if folder and Path(folder).is_dir():
        from solo_sparse.tools.evaluate import image_folder

        ds = image_folder(folder, size)
        idx = torch.linspace(0, len(ds) - 1, n).long().tolist()
        return torch.stack([ds[i][0] for i in idx]), f"{n} images of {folder}"
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), "N(0, 1) noise"


# --------------------------------------------------------------------------------------------- timing
def _stats(ts: Sequence[float]) -> Dict[str, float]:
    from solo_sparse.engine.costmodel import summary

    return summary(list(ts))


@torch.inference_mode()
def time_group(paths: Sequence[SpeedPath], batch: int, size: int, X: torch.Tensor, reps: int, warmup: int = 3,
               progress: Callable[[str], None] = _say) -> Dict[str, Dict[str, List[float]]]:
    """{path id: {variant: [ms per repetition]}} (the dense reference under "dense"), all interleaved (CUDA:
    synchronised around each call). The order of the variants rotates by one each repetition, so that no variant is
    always the one that runs first (after the input changes) or right after a given other."""
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    runs: List[Tuple[str, str, nn.Module]] = [(p.id, v.name, v.module) for p in paths for v in p.runs(batch, size)]
    for _, _, m in runs:
        m.eval()
    n = len(X)

    def inp(i: int) -> torch.Tensor:
        if batch == 1:
            return X[i % n: i % n + 1]
        return X[torch.arange(i, i + batch) % n]

    for w in range(warmup):
        for _, _, m in runs:
            m(inp(w))
    sync()
    t0 = time.perf_counter()
    for _, _, m in runs:
        m(inp(warmup))
    sync()
    per_rep = time.perf_counter() - t0
    progress(f"batch {batch}, {size} px: {len(runs)} variants x {reps} repeats, ~{per_rep * reps:.0f} s")
    out: Dict[str, Dict[str, List[float]]] = {p.id: {} for p in paths}
    if not runs:
        return out
    start = time.perf_counter()
    for r in range(reps):
        x = inp(r)
        k = r % len(runs)
        for pid, name, m in runs[k:] + runs[:k]:
            sync()
            t0 = time.perf_counter()
            m(x)
            sync()
            out[pid].setdefault(name, []).append(1e3 * (time.perf_counter() - t0))
        if r and r % max(1, reps // 4) == 0:
            el = time.perf_counter() - start
            progress(f"  batch {batch}, {size} px: repeat {r}/{reps}, ETA {el / r * (reps - r):.0f} s")
    return out


def _ratio_stats(num: Sequence[float], den: Sequence[float]) -> Dict[str, float]:
    """Speed-up ``num / den`` (reference ms / fast ms): the median and quartiles of the per-repetition ratios. A
    repetition times every variant back to back, so each ratio sees one load, and a machine whose speed drifts
    between repetitions moves both of its terms: the paired median stays inside its own IQR where the ratio of the
    two medians (kept as ``ratio_of_medians``) need not (measured: 1.37x against a per-repeat IQR of 1.45-1.56)."""
    rs = [a / b for a, b in zip(num, den)]
    st = _stats(rs)
    return {"median": st["median_ms"], "q1": st["q1_ms"], "q3": st["q3_ms"], "iqr": st["iqr_ms"],
            "ratio_of_medians": statistics.median(num) / statistics.median(den)}


def upgrade(res: Dict[str, Any]) -> Dict[str, Any]:
    """A results dict in the current schema, in place. Files written before 2026-12-07 kept the ratio of the medians
    under ``median`` and the paired median under ``per_repeat_median``; the headline is now the paired median."""
    for p in res.get("paths", {}).values():
        for row in p.get("rows", ()):
            for r in row.get("ratios", ()):
                if "per_repeat_median" in r:
                    r["ratio_of_medians"] = r["median"]
                    r["median"] = r.pop("per_repeat_median")
    return res


def run(suite: Mapping[str, Any], *, out: Optional[Path] = None, sizes=None, batches=None, reps=None,
        only: Sequence[str] = (), root: Optional[Path] = None, note: str = "", rebuild_table: bool = False,
        device: str = "cpu", progress: Callable[[str], None] = _say) -> Dict[str, Any]:
    """Measure every path of ``suite`` (see the module docstring); returns the results (and writes them to
    ``out``/results.json + results.md when given)."""
    from solo_sparse.engine.costmodel import machine_key

    sizes = [int(s) for s in (sizes or suite.get("sizes", (32, 64, 224)))]
    batches = [int(b) for b in (batches or suite.get("batches", (1, 64)))]
    reps = int(reps or suite.get("reps", 20))
    specs = [dict(s) for s in suite["paths"] if not only or s["id"] in only]
    missing = []
    for s in list(specs):          # optional paths whose checkpoint is not on this machine are left out, said
        if s.get("optional") and "checkpoint" in s:
            try:
                resolve_checkpoint(s["checkpoint"])
            except FileNotFoundError:
                specs.remove(s)
                missing.append(s["id"])
                progress(f"path {s['id']}: left out, no checkpoint matches {s['checkpoint']!r} (optional)")
    if not specs:
        raise ConfigError(f"speed: no path selected (ids: {', '.join(s['id'] for s in suite['paths'])})")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    progress(f"building {len(specs)} path(s): {', '.join(s['id'] for s in specs)}")
    paths = []
    for s in specs:
        if rebuild_table:
            s["rebuild_table"] = True
        paths.append(build_path(s, root, int(suite.get("table_reps", 15))))
    for p in paths:
        p.dense.to(device)
        for v in p.variants:
            v.module.to(device)
    n_img = max(max(batches), int(suite.get("n_images", 64)))
    res: Dict[str, Any] = {"suite": suite.get("suite", "speed"), "machine": machine_key(device), "device": device,
                           "threads": torch.get_num_threads(), "torch": torch.__version__, "sizes": sizes,
                           "batches": batches, "reps": reps, "warmup": 3, "note": note,
                           "load_before": list(load_before),
                           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "paths": {},
                           "left_out": missing}
    for p in paths:
        res["paths"][p.id] = {"kind": p.kind, "description": p.description, "variants": {
            v.name: v.what for v in p.variants}, "rows": [], "info": p.info}
    groups = [(b, s) for s in sizes for b in batches]
    limits: Dict[str, Dict[int, Dict[str, float]]] = {}
    for gi, (b, size) in enumerate(groups):
        X, src = load_inputs(suite.get("images"), n_img, size)
        X = X.to(device)
        res["inputs"] = src
        for p in paths:
            for v in p.runs(b, size):
                if v.prepare is not None:
                    v.prepare(size, progress)
        el = time.perf_counter() - t_start
        eta = f", ETA {el / gi * (len(groups) - gi):.0f} s for the rest" if gi else ""
        progress(f"group {gi + 1}/{len(groups)}{eta}")
        times = time_group(paths, b, size, X, reps, progress=progress)
        for p in paths:
            if not p.runs(b, size):
                continue
            if size not in limits.setdefault(p.id, {}):
                limits[p.id][size] = p.limit(size, X[:n_img])
            lim = limits[p.id][size]
            t = times[p.id]
            row = {"batch": b, "size": size, "ms": {k: _stats(v) for k, v in t.items()}, "ratios": []}
            for fast, ref in p.ratios:
                if fast in t and ref in t:
                    row["ratios"].append({"fast": fast, "reference": ref, **_ratio_stats(t[ref], t[fast]),
                                          "macs_limit": lim.get(fast) if ref == "dense" else None})
            res["paths"][p.id]["rows"].append(row)
        # written after every group: an interrupted run keeps what it measured
        res["load_after"] = list(os.getloadavg())
        res["seconds"] = time.perf_counter() - t_start
        res["complete"] = gi + 1 == len(groups)
        _save(res, paths, out)
    return res


def _save(res: Dict[str, Any], paths: Sequence[SpeedPath], out: Optional[Path]) -> None:
    for p in paths:
        _jsonable(res["paths"][p.id]["info"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "results.json", portable(json.dumps(res, indent=1, default=str)))
        _write(out / "results.md", portable(to_markdown(res)) + "\n")


def portable(text: str) -> str:
    """Results hold no machine paths: the working directory becomes relative, the home directory ``~``."""
    cwd = os.getcwd().rstrip("/")
    return text.replace(cwd + "/", "").replace(cwd, ".").replace(str(Path.home()), "~")


def _write(path: Path, text: str) -> None:
    """Atomic: a temp file in the same folder, renamed."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        for k, v in list(d.items()):
            d[k] = _jsonable(v)
        return d
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if torch.is_tensor(d):
        return d.tolist()
    return d


# --------------------------------------------------------------------------------------------- reporting
def to_markdown(res: Mapping[str, Any]) -> str:
    res = upgrade(copy.deepcopy(dict(res)))
    m = res["machine"]
    lb, la = res["load_before"], res.get("load_after", ["?"] * 3)
    dev = f"GPU `{m['gpu']}`, host " if m.get("gpu") else ""
    lines = [f"{dev}CPU `{m['cpu']}` ({m['cores']} logical cores), **{res['threads']} threads**, torch {res['torch']}; "
             f"{res['reps']} timed repeats per variant after {res['warmup']} warm-up calls, all variants of one "
             f"(batch, size) interleaved; inputs: {res.get('inputs', '?')}. Load average (1/5/15 min) before "
             f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}."
             + (f" {res['note']}" if res.get("note") else "")
             + ("" if res.get("complete", True) else " **Interrupted run: only the rows below were measured.**"), "",
             "| path | fast variant | vs | batch | size | reference ms (IQR) | fast ms (IQR) | speed-up | "
             "per-repeat IQR | MACs limit |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for pid, p in res["paths"].items():
        for row in p["rows"]:
            for r in row["ratios"]:
                ref, fast = row["ms"][r["reference"]], row["ms"][r["fast"]]
                lim = "-" if r.get("macs_limit") is None else f"{r['macs_limit']:.2f}×"
                lines.append(f"| {pid} | {r['fast']} | {r['reference']} | {row['batch']} | {row['size']} | "
                             f"{ref['median_ms']:.2f} ({ref['iqr_ms']:.2f}) | {fast['median_ms']:.2f} "
                             f"({fast['iqr_ms']:.2f}) | **{r['median']:.2f}×** | {r['q1']:.2f}–{r['q3']:.2f} | "
                             f"{lim} |")
    lines += ["", "Paths:"]
    for pid, p in res["paths"].items():
        syn = " Synthetic: random weights (gates, where the path has them, at their initial thresholds), a speed " \
              "measurement only." \
            if p["info"].get("synthetic") else ""
        note = f" {p['info']['note']}" if p["info"].get("note") else ""
        lines.append(f"- `{pid}`: {p['description']}.{syn}{note}")
        for name, what in p["variants"].items():
            lines.append(f"  - {name}: {what}")
        for size, m in sorted((p["info"].get("measured") or {}).items(), key=lambda kv: int(kv[0])):
            if m.get("executed_share"):
                e = m["executed_share"]
                lines.append(f"  - {size} px: share of the conditional-path MACs on per position {e['position']:.3f}, "
                             f"executed per (sample, block, tile) {e['tile']:.3f}, per (sample, block) "
                             f"{e['block']:.3f} (MAC-weighted over the gated convs)")
            elif m.get("kept_channels"):
                kept = ", ".join(f"{k} {v:.2f}" for k, v in m["kept_channels"].items())
                lines.append(f"  - {size} px: network MACs ratio {m.get('network_macs_ratio', float('nan')):.3f}; "
                             f"kept share per block: {kept}")
        sk = p["info"].get("skipped")
        if sk:
            groups = [f"batch {b} / {sz} px" for b, sz in sk["path"]]
            groups += [f"{k} at batch {b} / {sz} px" for k, v in sk["variants"].items() for b, sz in v]
            lines.append(f"  - not timed: {', '.join(groups)}" + (f" ({sk['why']})" if sk.get("why") else ""))
    return "\n".join(lines)


def update_doc(doc: Path, res: Mapping[str, Any]) -> bool:
    """Replace the block between ``<!-- speed -->`` and ``<!-- /speed -->`` of ``doc`` (appended if absent)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{DOC_BEGIN}\n{portable(to_markdown(res))}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        a, b = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
        new = text[:a] + block + text[b:]
    else:
        new = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    if new != text:
        _write(doc, new)
        return True
    return False


def load_suite(path: Path) -> Dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such speed suite")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data.get("paths"), list) or not data["paths"]:
        raise ConfigError(f"{p}: a speed suite needs a non-empty 'paths' list")
    ids = [s.get("id") for s in data["paths"]]
    if None in ids or len(set(ids)) != len(ids):
        raise ConfigError(f"{p}: every path needs a unique 'id' (got {ids})")
    return data


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(a) -> None:
    a.add_argument("suite", nargs="?", default="scripts/speed/suite.yaml", help="speed suite YAML")
    a.add_argument("--out", default=None, help="results folder (default: results/speed)")
    a.add_argument("--docs", nargs="*", default=None, metavar="MD",
                   help="rewrite the <!-- speed --> block of these markdown files")
    a.add_argument("--sizes", type=int, nargs="+", default=None)
    a.add_argument("--batches", type=int, nargs="+", default=None)
    a.add_argument("--reps", type=int, default=None, help="timed repeats per variant (>= 20 for the report)")
    a.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a.add_argument("--only", nargs="*", default=None, help="path ids to measure (default: all)")
    a.add_argument("--rebuild-table", action="store_true", help="re-time the DGNet batch-1 cost-model tables")
    a.add_argument("--note", default="", help="a sentence recorded with the results (e.g. what else was running)")
    a.add_argument("--zoo", default=None, help="zoo directory")
    a.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    a.add_argument("--render", default=None, metavar="RESULTS_JSON",
                   help="time nothing: re-render the markdown beside RESULTS_JSON (results.md for results.json, X.md "
                        "for X.json) and the --docs blocks with this version's report")


def render(path: Path, docs: Sequence[str] = ()) -> Dict[str, Any]:
    """Re-render a results file's ``results.md`` (beside it) and the ``<!-- speed -->`` block of ``docs`` without
    timing anything; the results file itself is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"speed --render={path}: no such results file")
    missing = [d for d in docs if not Path(d).is_file()]
    if missing:
        raise ConfigError(f"speed --docs: {', '.join(missing)}: no such file (nothing was written)")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"speed --render={path}: not JSON ({e})") from None
    if not isinstance(res, dict) or "paths" not in res or "machine" not in res:
        raise ConfigError(f"speed --render={path}: not a solo-sparse speed results file (no 'paths' / 'machine')")
    _write(path.with_suffix(".md") if path.name != "results.json" else path.parent / "results.md",
           portable(to_markdown(res)) + "\n")
    for d in docs:
        if update_doc(Path(d), res):
            print(f"updated {d}")
    return res


def main(args) -> int:
    if args.render:
        render(Path(args.render), args.docs or ())
        print(f"rendered {args.render}")
        return 0
    if args.threads:
        torch.set_num_threads(int(args.threads))
    suite = load_suite(Path(args.suite))
    out = Path(args.out or "results/speed")
    res = run(suite, out=out, sizes=args.sizes, batches=args.batches, reps=args.reps, only=args.only or (),
              root=Path(args.zoo) if args.zoo else None, note=args.note, rebuild_table=args.rebuild_table,
              device=args.device)
    print(to_markdown(res))
    for d in args.docs or ():
        if update_doc(Path(d), res):
            print(f"updated {d}")
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


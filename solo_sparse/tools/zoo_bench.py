"""``solo-sparse zoo bench``: CPU latency of a zoo entry's compact export (inference form: BN folded,
channels-last) vs the uncompacted network, or of a gated entry's fast evaluation path vs its dense path
(plugins that declare ``speed_paths``, each path prepared by the plugin: DGNet-gated blocks get their measured
batch-1 plan). Every path of
the zoo at once, with the MACs limits: ``solo-sparse speed``."""
from __future__ import annotations

import copy
import statistics
from typing import Dict, Optional

import torch

from solo_sparse import zoo
from solo_sparse.core.registry import get_plugin
from solo_sparse.engine.compact import channel_prune, compact, latency, macs, optimise, widths
from solo_sparse.tools.speed import plain_fast_path


def bench_entry(name: str, channel_density: Optional[float] = None, sizes=(32,), batches=(1, 64), reps: int = 30,
                root=None, progress: bool = True) -> Dict[str, object]:
    """Latency of a zoo entry's compact export vs the same network uncompacted (dense kernels), at
    each batch × size; DGNet entries: the gated path (batch-1 gather) vs the dense path instead.
    Also checks the outputs agree and reports MACs."""
    e = zoo.entry(name, root)
    net, meta = zoo.load_with_meta(name, "solo", root)
    gating = meta.get("gating") or {}     # the plugin that rebuilt the backbone; weight-mask plugins left nothing
    plugin = gating.get("plugin")         # of theirs in the module (and need not be installed)
    pcfg = (e.get("plugins") or {}).get(plugin, gating.get("config"))
    res: Dict[str, object] = {"entry": name, "channel_density": channel_density, "reps": reps,
                              "threads": torch.get_num_threads(), "rows": []}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cls = get_plugin(plugin) if plugin else None
    plain = plain_fast_path(cls, net, pcfg) if cls is not None else None
    if plain is not None:          # the fast path is a plain network (a static control): timed as one
        net, cls = plain, None
    prepare = None
    if cls is not None and cls.speed_paths:
        fast_path, dense_path = cls.speed_paths
        dense = copy.deepcopy(net)
        cls.route_backbone(dense, pcfg, dense_path)
        cls.route_backbone(net, pcfg, fast_path)
        nets, batches = {"dense": dense, "fast": net}, (1,)
        res["kind"] = f"{plugin} {fast_path} path (batch 1) vs {dense_path} path"

        def prepare(size):
            cls.prepare_fast_path(net, size, progress=print if progress else None)
    elif cls is not None:
        raise ValueError(f"zoo entry {name!r} is {plugin}-gated: its gates choose per input what to compute, which "
                         f"dense CPU kernels cannot skip; no latency comparison is meaningful")
    else:
        if channel_density is not None:
            channel_prune(net, channel_density)
        small = compact(net)
        fast = optimise(small)
        with torch.no_grad():
            res["max_abs_diff"] = float((fast(x) - net(x)).abs().max())
        res["internal_channels"] = [sum(widths(small).values()), sum(widths(net).values())]
        res["macs_32px"] = [macs(small), macs(net)]
        nets = {"dense": net, "fast": fast}
        res["kind"] = "compact export (BN folded, channels-last) vs uncompacted network"
    for size in sizes:
        if prepare is not None:
            prepare(size)
        for b in batches:
            lat = latency(nets, b, size, reps, progress=progress)
            d, f = lat["dense"], lat["fast"]
            res["rows"].append({"batch": b, "size": size, "dense_ms": d["median_ms"], "fast_ms": f["median_ms"],
                                # as solo-sparse speed: the median of the ratios paired by repetition
                                "speedup": statistics.median(a / c for a, c in zip(d["ms"], f["ms"])),
                                "ratio_of_medians": d["median_ms"] / f["median_ms"], "detail": lat})
    return res

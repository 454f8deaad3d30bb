"""``solo-sparse bench SUITE.yaml``: the one benchmark harness.

A suite is data (``scripts/suites/*.yaml``)::

    suite: synccp                      # results go to results/<suite>/ unless --out
    description: BYOL dense vs ...     # one line for the tables
    data: fmnist5k                     # image folder under --data-root (train/ val/), made by
                                       # scripts/prepare_fashion_mnist.py; its meta.json is recorded
    size: 64                           # evaluation images, pixels (the training crop is the config's
                                       # augmentation file: set it in overrides, e.g. augmentations=grey64.yaml)
    seeds: 3                           # seeds 0..n-1 (``--seeds`` overrides)
    overrides: ["max_epochs=15"]       # Hydra overrides of every run
    random_init: true                  # a random-init row per seed (the floor every table needs)
    window: {start: "10%", end: "75%"} # one pruning window for every sparse run (each plugin says which of its
                                       # keys set it; a run contradicting it is refused)
    runs:
      - id: dense
        config: scripts/configs/fmnist/byol.yaml
      - id: synccp
        config: scripts/configs/fmnist/byol_synccp10.yaml
        overrides: ["++solo_sparse.momentum_mask=own"]
        eval_paths: [gated, dense]     # backbone-rewriting plugins: one row per evaluation path
        seeds: 1                       # at most one seed for this run
      - id: imp
        kind: rounds                   # IMP rounds (``solo-sparse imp``) + the controls (Bench.run_imp)
        plugin: imp                    # the fixed-mask plugin the rounds train with
        config: scripts/configs/fmnist/mocov2plus_imp.yaml
        rounds: 5
        rate: 0.2
        controls: [global_random, layer_permutation]
        control_rounds: [1, 2, 3, 4, 5]
        retrain_epochs: 12             # label re-training rows beside the linear-probe rows

Every run trains through solo-learn's unchanged ``main_pretrain.py`` (``solo_sparse.tools.runner``),
then the final checkpoint's online backbone is evaluated on the val split: weighted kNN (k=20, k=1) and
a linear probe on frozen features (``solo_sparse.tools.evaluate``). One row schema for every suite
(:data:`ROW_KEYS`). Rows are keyed ``<id>/seed<k>``; a row whose fingerprint (config file content +
overrides + seed + size) is already in ``results.json`` is skipped, a trained run whose evaluation is
missing is only evaluated — re-running a suite after an interruption continues where it stopped.

Outputs in the suite's folder: ``results.json`` (rows + meta), ``results.md`` (mean ± std over seeds per
id, with the random-init and dense margins), ``<suite>.png`` (linear probe vs inference MACs, error bars,
random-init and dense lines). No machine path is written: configs are repository-relative, data is
named by its folder, commands use ``<repo>``, ``<solo-learn>``, ``<data>`` and ``<out>`` placeholders.
"""
from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from solo_sparse.core.config import ConfigError
from solo_sparse.core.files import PLAIN_NAME_RULE, is_plain_name, write_atomic
from solo_sparse.core.registry import get_plugin
from solo_sparse.engine.flops import count_macs, training_macs_ratio
from solo_sparse.engine.maskio import counts, encoder_masks, split_state
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools import stats
from solo_sparse.tools.evaluate import evaluate_backbone, load_backbone, load_splits
from solo_sparse.tools.inputs import read_checkpoint
from solo_sparse.tools.runner import (
    config_digest,
    lightning_command,
    newest_checkpoint,
    pretrain_command,
    resolve_host,
    run_command,
    solo_learn_dir,
)


def suite_root(suite_file: Path) -> Path:
    """The folder that a suite's config paths are relative to: the repository holding ``scripts/suites/``
    (the suite file's grandparent's parent), else the current directory."""
    p = Path(suite_file).resolve()
    if p.parent.name == "suites" and p.parent.parent.name == "scripts":
        return p.parents[2]
    return Path.cwd()
#: the columns of every row (absent values are None)
ROW_KEYS = ("id", "seed", "kind", "config", "overrides", "method", "plugins", "epochs", "image_size", "path",
            "density_online", "density_momentum", "inference_macs_ratio", "training_macs_ratio", "gate_sparsity",
            "trigger_step", "wall_clock_s", "knn20", "knn1", "linear", "shift_sensitivity", "online_momentum_cos",
            "status", "error", "command", "reused_from")
KINDS = ("pretrain", "rounds")
#: the controls of an IMP ticket (kind: rounds): global random pruning at its density, the layer-wise permutation of
#: its mask (ours), its mask from a fresh init
CONTROLS = ("global_random", "layer_permutation", "random_reinit")


def _int_in(lo, hi):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_claim(c) -> bool:
    """A claim of a suite: ``a − b ≥ margin`` in linear-probe points (:mod:`solo_sparse.tools.stats`)."""
    return (isinstance(c, dict) and set(c) <= {"claim", "source", "a", "b", "margin"}
            and {"claim", "a", "b"} <= set(c) and isinstance(c["claim"], str) and is_plain_name(c["a"])
            and is_plain_name(c["b"]) and isinstance(c.get("source", ""), str)
            and isinstance(c.get("margin", 0.0), (int, float)) and not isinstance(c.get("margin", 0.0), bool))


def _is_window(w) -> bool:
    """A suite's one pruning window: ``{start: S, end: E}`` (steps, ``'Nep'`` or ``'P%'``)."""
    from solo_sparse.core.config import StepSpec

    if not isinstance(w, dict) or set(w) != {"start", "end"}:
        return False
    try:
        a, b = StepSpec.parse("window.start", w["start"]), StepSpec.parse("window.end", w["end"])
    except ConfigError:
        return False
    return not a.comparable(b) or b.value > a.value


#: {key: (check, what is allowed)} of a suite's top level and of one run — a suite is data from a file: every
#: value is checked before it names a folder or a Hydra override (ids and names become paths under --out)
SUITE_KEYS = {
    "suite": (is_plain_name, f"a plain name ({PLAIN_NAME_RULE})"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "data": (is_plain_name, "a folder name under --data-root (a plain name)"),
    "size": (_int_in(8, 1024), "an integer in [8, 1024] (pixels)"),
    "seeds": (_int_in(1, 1000), "an integer in [1, 1000]"),
    "overrides": (_str_list, "a list of strings (Hydra overrides)"),
    "random_init": (lambda v: isinstance(v, bool), "true or false"),
    "window": (lambda v: _is_window(v), "{start: S, end: E}, each steps (an int), 'Nep' or 'P%' (every sparse "
                                        "run prunes over these steps; its plugin says which of its keys set them)"),
    "claims": (lambda v: isinstance(v, list) and all(_is_claim(c) for c in v),
               "a list of {claim: text, source: text, a: run id, b: run id, margin: number (points)}"),
}
RUN_KEYS = {
    "id": (is_plain_name, f"a plain name ({PLAIN_NAME_RULE})"),
    "config": (lambda v: isinstance(v, str) and v != "", "a config path (a string)"),
    "kind": (lambda v: v in KINDS, " or ".join(KINDS)),
    "plugin": (lambda v: v is None or is_plain_name(v), "a plugin name"),
    "seeds": (lambda v: v is None or _int_in(1, 1000)(v), "an integer in [1, 1000] or null"),
    "overrides": (_str_list, "a list of strings (Hydra overrides)"),
    "eval_paths": (lambda v: isinstance(v, list) and v != [] and all(x is None or is_plain_name(x) for x in v),
                   "a non-empty list of evaluation path names"),
    "rounds": (_int_in(0, 100), "an integer in [0, 100]"),
    "rate": (lambda v: isinstance(v, float) and 0.0 < v < 1.0, "a number in (0, 1)"),
    "rewind": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "steps or 'Nep'"),
    "controls": (lambda v: isinstance(v, list) and all(c in CONTROLS for c in v), f"a list of {', '.join(CONTROLS)}"),
    "control_rounds": (lambda v: v is None or (isinstance(v, list) and all(_int_in(1, 100)(x) for x in v)),
                       "a list of pruned round numbers (1..rounds) or null"),
    "retrain_epochs": (_int_in(0, 1000), "an integer in [0, 1000] (0: no label re-training)"),
    "baseline": (lambda v: v is None or is_plain_name(v), "the id of another run of the suite"),
}


def _check_keys(p: Path, where: str, raw: Dict[str, Any], spec: Dict[str, tuple]) -> None:
    """Unknown keys and ill-typed values of a suite mapping: one line naming the file, the key and the value."""
    bad = sorted(str(k) for k in raw if k not in spec)
    if bad:
        raise ConfigError(f"{p}: {where or 'unknown suite key(s) '}{'unknown run key(s) ' if where else ''}"
                          f"{', '.join(bad)}; allowed: {', '.join(sorted(spec))}")
    for k, v in raw.items():
        check, allowed = spec[k]
        if not check(v):
            shown = repr(v) if len(repr(v)) <= 80 else repr(v)[:77] + "..."
            raise ConfigError(f"{p}: {where}{k}={shown}: expected {allowed}")


# ------------------------------------------------------------------------------------------ suites
@dataclass
class RunSpec:
    id: str
    config: Optional[str] = None
    kind: str = "pretrain"
    plugin: Optional[str] = None
    #: at most this many seeds for this run (a costly row or a diagnostic), None = the suite's
    seeds: Optional[int] = None
    overrides: List[str] = field(default_factory=list)
    eval_paths: List[Optional[str]] = field(default_factory=lambda: [None])
    #: the run this one is compared with per seed ("vs baseline" column), beside its dense row
    baseline: Optional[str] = None
    rounds: int = 3
    rate: float = 0.2
    rewind: str = "1ep"
    controls: List[str] = field(default_factory=lambda: ["global_random", "layer_permutation", "random_reinit"])
    #: rounds whose masks get the controls (None: the last round only)
    control_rounds: Optional[List[int]] = None
    #: epochs of label re-training of every ticket and control (0: none)
    retrain_epochs: int = 0

    def row_ids(self) -> List[str]:
        """The row ids a ``kind: rounds`` run writes (what claims and baselines may name)."""
        if self.kind != "rounds":
            return []
        ids = [f"{self.id}:ticket-r{k}" for k in range(self.rounds + 1)]
        ids += [f"{self.id}:{c}-r{k}" for k in (self.control_rounds or [self.rounds]) for c in self.controls]
        if self.retrain_epochs:
            ids += [f"{self.id}:retrain-{x.split(':', 1)[1]}" for x in ids]
        return ids


@dataclass
class Suite:
    suite: str
    runs: List[RunSpec]
    description: str = ""
    data: str = "fmnist5k"
    size: int = 32
    seeds: int = 1
    overrides: List[str] = field(default_factory=list)
    random_init: bool = True
    #: paper claims decided by this suite's rows (:mod:`solo_sparse.tools.stats`)
    claims: List[Dict[str, Any]] = field(default_factory=list)
    #: one pruning window for every sparse run, ``{start, end}`` (:meth:`Bench.window_overrides`)
    window: Optional[Dict[str, Any]] = None
    path: Optional[Path] = None
    #: config paths are relative to this folder (:func:`suite_root`)
    root: Path = field(default_factory=Path.cwd)

    @classmethod
    def load(cls, path) -> "Suite":
        from omegaconf import OmegaConf

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such suite file")
        try:
            raw = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
        except Exception as exc:  # noqa: BLE001 - YAML/OmegaConf errors: one line naming the file
            raise ConfigError(f"{p}: not a readable suite YAML ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''})") from None
        if not isinstance(raw, dict) or "suite" not in raw or not isinstance(raw.get("runs"), list) \
                or not raw["runs"]:
            raise ConfigError(f"{p}: a suite needs 'suite' and a non-empty 'runs' list")
        root = suite_root(p)
        _check_keys(p, "", {k: v for k, v in raw.items() if k != "runs"}, SUITE_KEYS)
        runs = []
        for i, r in enumerate(raw["runs"]):
            if not isinstance(r, dict) or "id" not in r:
                raise ConfigError(f"{p}: runs[{i}] is {str(r)[:80]!r}; a run is a mapping with an 'id'")
            _check_keys(p, f"run {str(r['id'])[:80]!r}: ", r, RUN_KEYS)   # repr: no control character prints raw
            spec = RunSpec(**r)
            if spec.kind == "rounds" and not spec.plugin:
                raise ConfigError(f"{p}: run {spec.id!r} (kind rounds) needs 'plugin', the fixed-mask plugin "
                                  "of the rounds")
            late = [k for k in (spec.control_rounds or []) if k > spec.rounds]
            if spec.kind == "rounds" and late:
                raise ConfigError(f"{p}: run {spec.id!r} control_rounds={spec.control_rounds}: round {late[0]} is "
                                  f"beyond rounds={spec.rounds}; allowed: 1..{spec.rounds}")
            if spec.config and not (root / spec.config).is_file():
                raise ConfigError(f"{p}: run {spec.id!r} config {spec.config!r} not found under {root} (paths are "
                                  "relative to the repository holding scripts/suites/)")
            runs.append(spec)
        ids = [r.id for r in runs]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{p}: run ids must be unique, got {ids}")
        known = (set(ids) | {f"{r.id}:{x}" for r in runs for x in r.eval_paths if x} | {"random-init"}
                 | {x for r in runs for x in r.row_ids()})
        for r in runs:
            if r.baseline is not None and r.baseline not in known:
                raise ConfigError(f"{p}: run {r.id!r} baseline={r.baseline!r}: not a run of the suite "
                                  f"({', '.join(sorted(known))})")
        for c in raw.get("claims") or []:
            for k in ("a", "b"):
                if c[k] not in known:
                    raise ConfigError(f"{p}: claim {c['claim'][:60]!r} {k}={c[k]!r}: not a run of the suite "
                                      f"({', '.join(sorted(known))})")
        return cls(**{k: v for k, v in raw.items() if k != "runs"}, runs=runs, path=p, root=root)


# ------------------------------------------------------------------------------------------ helpers
class _Paths:
    """Placeholders for machine paths in what is written to results."""

    def __init__(self, **roots: Path):
        self.roots = sorted(((k, str(Path(v).resolve())) for k, v in roots.items()), key=lambda kv: -len(kv[1]))

    def __call__(self, s: str) -> str:
        for k, v in self.roots:
            s = s.replace(v, f"<{k}>")
        return s.replace(sys.executable, "python")


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def _mean_std(vals: Sequence[float]):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def checkpoint_stats(ck: Dict[str, Any], size: int, X: Optional[torch.Tensor], net: torch.nn.Module,
                     path: Optional[str]) -> Dict[str, Any]:
    """Densities, inference/training MACs, trigger step and gate statistics of a trained checkpoint, asked
    of the plugins that trained it (no plugin is named here)."""
    state = ck.get("state_dict", ck)
    per = encoder_masks(state)
    on, mo = per.get("online", {}), per.get("momentum", {})
    on_bb = {k: v for k, v in on.items() if k.startswith("backbone.")}
    mo_bb = {k: v for k, v in mo.items() if k.startswith("backbone.")}
    out: Dict[str, Any] = {
        "density_online": (counts(on_bb)[0] / counts(on_bb)[1]) if on_bb else 1.0,
        "density_momentum": (counts(mo_bb)[0] / counts(mo_bb)[1]) if mo_bb else (1.0 if any(
            k.startswith("momentum_backbone.") for k in state) else None),
    }
    plugin_state = ck.get("solo_sparse") or {}
    out["plugins"] = sorted(plugin_state)
    g = 0.0
    for name, st in plugin_state.items():
        cls = get_plugin(name)
        g = max(g, cls.dense_gradient_share(st.get("config") or {}))
        out.update(cls.run_summary(st.get("extra") or {}))
        if cls.rewrites_backbone and X is not None:
            m = cls.measure_backbone(net, X)
            if m is not None:
                out["inference_macs_ratio"] = m["network_macs_ratio"]
                out["gate_sparsity"] = m["gate_sparsity"]
    if "inference_macs_ratio" not in out:
        out["inference_macs_ratio"] = count_macs(net, (1, 3, size, size), from_weights=True).ratio
    gated = any(get_plugin(name).rewrites_backbone for name in plugin_state)
    reports = []
    for prefix in ("backbone.", "momentum_backbone."):
        st = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not st or gated:
            reports.append(None)      # gated backbones: their cost is input-dependent (inference column)
            continue
        weights, masks = split_state(st)
        rnet = build_resnet("resnet18")
        rnet.load_state_dict(weights, strict=False)
        for layer, m in masks.items():
            rnet.get_submodule(layer).register_buffer("weight_mask", m)
        reports.append(count_macs(rnet, (1, 3, size, size)))
    if reports[0] is not None:
        out["training_macs_ratio"] = training_macs_ratio(reports[0], reports[1], g)
    return out


def compose_plugins(config: Path, overrides: Sequence[str]) -> list:
    """The plugins (validated configs) a YAML + overrides compose to, composed with Hydra as solo-learn's scripts
    compose it (the solo_sparse/ group is on the search path); [] without a plugin."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from solo_sparse.core.registry import build_plugins

    config = Path(config).resolve()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config.parent), version_base="1.2"):
            cfg = compose(config.stem, overrides=[o for o in overrides if not o.startswith("hydra.")])
    except Exception as exc:  # noqa: BLE001 - Hydra raises many types: one line naming the config
        raise ConfigError(f"{config.name} with {list(overrides)}: does not compose ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
    finally:
        GlobalHydra.instance().clear()
    section = OmegaConf.to_container(cfg, resolve=False).get("solo_sparse")
    return build_plugins(section) if section else []


def plugin_digest(config: Path, overrides: Sequence[str]) -> Optional[str]:
    """First 12 hex digits of the sha256 of the plugin configs a YAML + overrides compose to (None: no plugin)."""
    import hashlib

    from solo_sparse.core.config import config_to_state

    plugins = compose_plugins(config, overrides)
    if not plugins:
        return None
    state = {p.name: config_to_state(p.config) for p in plugins}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:12]


def probe_stats(ck_path: str, net: torch.nn.Module, X: torch.Tensor, path: Optional[str]) -> Dict[str, Any]:
    """Smoothness and twin agreement of a trained backbone on images ``X``: the shift sensitivity (1 - cos of the
    pooled features under a 1-px shift) and, where the checkpoint holds a momentum encoder, the online/momentum
    feature cosine (both on the evaluation path) — :mod:`solo_sparse.engine.probes`."""
    from solo_sparse.engine.probes import shift_sensitivity, twin_agreement

    out: Dict[str, Any] = {"shift_sensitivity": shift_sensitivity(net, X, 1)}
    try:
        mom, _ = load_backbone(ck_path, "resnet18", gated_path=path, prefix="momentum_backbone.")
    except ConfigError:
        mom = None                      # no momentum encoder in this checkpoint
    out["online_momentum_cos"] = None if mom is None else twin_agreement(net, mom, X)
    return out


# ------------------------------------------------------------------------------------------ the harness
class Bench:
    def __init__(self, suite: Suite, *, data_root: Path, out: Optional[Path] = None, seeds: Optional[int] = None,
                 solo_dir: Optional[Path] = None, only: Sequence[str] = (), eval_only: bool = False,
                 extra_overrides: Sequence[str] = (), log=print, host: str = "auto"):
        self.suite = suite
        self.data = Path(data_root) / suite.data
        if not (self.data / "train").is_dir() or not (self.data / "val").is_dir():
            raise ConfigError(f"data folder {self.data} lacks train/ and val/: run scripts/prepare_fashion_mnist.py "
                              f"--out {self.data} (see the suite's header)")
        self.out = Path(out) if out else suite.root / "results" / suite.suite
        self.out.mkdir(parents=True, exist_ok=True)
        self.seeds = list(range(seeds if seeds is not None else suite.seeds))
        self.only = set(only)
        self.eval_only = eval_only
        self.extra = list(extra_overrides)
        self.log = log
        self.solo_dir = solo_dir
        # the training host: solo-learn's main_pretrain.py (also whenever --solo-learn names a checkout), or the
        # Lightning binding's trainer on the same YAML; 'auto' takes solo-learn where it is installed
        self._host_error: Optional[str] = None
        self.host = "solo-learn" if solo_dir is not None and host == "auto" else host
        if self.host == "auto":
            try:
                self.host = resolve_host("auto")
            except ConfigError as e:           # refused when a run would train, not for --dry-run/--eval-only
                self.host, self._host_error = "solo-learn", str(e)
        elif self.host != "solo-learn" or solo_dir is None:
            resolve_host(self.host)
        self.path = self.out / "results.json"
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {"rows": {}}
        self._eval = None
        self.paths = None
        import warnings

        with warnings.catch_warnings():       # import solo-learn once, quietly (timm registry warnings)
            warnings.simplefilter("ignore")
            try:
                import solo  # noqa: F401
            except ImportError:
                pass
        for spec in suite.runs if suite.window else ():   # a run contradicting the one window: refused now
            self.window_overrides(spec)

    # ------------------------------------------------------------------ bookkeeping
    def save(self) -> None:
        meta = {"suite": self.suite.suite, "description": self.suite.description,
                "suite_file": (str(self.suite.path.resolve().relative_to(self.suite.root))
                               if self.suite.path and self.suite.path.resolve().is_relative_to(self.suite.root)
                               else (self.suite.path.name if self.suite.path else None)),
                "data": self.suite.data, "image_size": self.suite.size, "torch": torch.__version__, "host": self.host,
                "threads": torch.get_num_threads(), "claims": self.suite.claims, "window": self.suite.window,
                "baselines": {r.id: r.baseline for r in self.suite.runs if r.baseline}}
        if (self.data / "meta.json").exists():
            meta["data_meta"] = json.loads((self.data / "meta.json").read_text())
        self.results["meta"] = meta
        for key, row in self.results["rows"].items():        # one schema: every column in every row
            self.results["rows"][key] = {**{k: None for k in ROW_KEYS}, **row}
        write_atomic(self.path, json.dumps(self.results, indent=2))
        write_atomic(self.out / "results.md", to_markdown(self.results))
        try:
            plot(self.results, self.out / f"{self.suite.suite}.png")
            plot_monitors(self.results, self.out / "monitor.png")
        except ImportError:   # matplotlib is an extra
            pass

    def eval_data(self):
        if self._eval is None:
            self.log(f"[bench {self.suite.suite}] loading {self.suite.data} at {self.suite.size} px ...")
            self._eval = load_splits(self.data, self.suite.size, log=self.log)
        return self._eval

    def fingerprint(self, spec: RunSpec, seed: int) -> str:
        cfg = config_digest(self.suite.root / spec.config) if spec.config else "-"
        fp = [cfg, self.suite.overrides, spec.overrides, self.extra, seed, self.suite.size,
              spec.kind, spec.rounds if spec.kind == "rounds" else None, spec.rate if spec.kind == "rounds" else None]
        if self.host != "solo-learn":      # solo-learn rows keep the fingerprints they always had
            fp.append(f"host={self.host}")
        plugins = self.plugin_digest(spec) if spec.kind == "pretrain" and spec.config else None
        if plugins is not None:            # dense rows keep theirs; a changed plugin default retrains the row
            fp.append(f"plugins={plugins}")
        if self.window_overrides(spec):   # runs outside a window keep theirs
            fp.append(f"window={self.window_overrides(spec)}")
        return json.dumps(fp)

    def plugin_digest(self, spec: RunSpec) -> Optional[str]:
        """Digest of the run's effective plugin configs (every key, defaults included, as the run will save them),
        or None without a plugin: a row trained before a plugin's default changed is not taken for this one."""
        win = self.window_overrides(spec)
        key = (spec.config, tuple(self.suite.overrides), tuple(spec.overrides), tuple(win), tuple(self.extra))
        cache = self.__dict__.setdefault("_plugin_digests", {})
        if key not in cache:
            cache[key] = plugin_digest(self.suite.root / spec.config,
                                       [*self.suite.overrides, *spec.overrides, *win, *self.extra])
        return cache[key]

    def window_overrides(self, spec: RunSpec) -> List[str]:
        """The suite's one window (``window: {start, end}``) as Hydra overrides of the run's plugin keys — which
        keys, each plugin says (:meth:`~solo_sparse.core.plugin.Plugin.window_overrides`; None: no window, e.g.
        a fixed density from step 0). A run whose own overrides set one of those keys to another value is
        refused: every sparse row of the suite prunes over the same steps."""
        if not self.suite.window or spec.kind != "pretrain" or not spec.config:
            return []
        cache = self.__dict__.setdefault("_windows", {})
        if spec.id not in cache:
            from solo_sparse.core.config import PREFIX

            start, end = str(self.suite.window["start"]), str(self.suite.window["end"])
            explicit = [*self.suite.overrides, *spec.overrides, *self.extra]
            plugins = compose_plugins(self.suite.root / spec.config, explicit)
            out = []
            for p in plugins:
                keys = type(p).window_overrides(start, end, p.config)
                path = PREFIX if len(plugins) == 1 else f"{PREFIX}.{p.name}"
                for k, v in (keys or {}).items():
                    want = "null" if v is None else str(v)
                    for o in explicit:
                        name, _, val = o.lstrip("+").partition("=")
                        if name == f"{path}.{k}" and val.strip().strip("'\"") != want:
                            raise ConfigError(f"{self.suite.path}: run {spec.id!r} sets {name}={val} but the suite's "
                                              f"window (start={start}, end={end}) sets it to {want}: remove the "
                                              "run's override (one window for every sparse run)")
                    out.append(f"++{path}.{k}={want}")
            cache[spec.id] = out
        return cache[spec.id]

    def plan(self) -> List[tuple]:
        """The (run, seed) pairs still to do, seed-major: every run's seed 0 first, then seed 1, ... — an
        interrupted suite has its rows at comparable seed counts."""
        todo = []
        for seed in self.seeds:
            for spec in self.suite.runs:
                if self.only and spec.id not in self.only:
                    continue
                if seed not in (self.seeds[: spec.seeds] if spec.seeds else self.seeds):
                    continue
                key = f"{spec.id}/seed{seed}"
                row = self.results["rows"].get(key)
                fp = self.fingerprint(spec, seed)
                if row and row.get("fingerprint") == fp and row.get("status") == "ok":
                    continue
                if spec.eval_paths != [None] and all(
                        (self.results["rows"].get(f"{spec.id}:{pth}/seed{seed}") or {}).get("fingerprint") == fp
                        for pth in spec.eval_paths):
                    continue
                for k in [key] + [f"{spec.id}:{pth}/seed{seed}" for pth in spec.eval_paths if pth]:
                    old = self.results["rows"].get(k)
                    if old and old.get("status") == "ok" and old.get("fingerprint") != fp:
                        old["status"] = "stale"   # another config (e.g. a plugin default changed): out of the tables
                todo.append((spec, seed))
        return todo

    # ------------------------------------------------------------------ running
    def backfill(self) -> None:
        """Fill per-run curves a row lacks (rows written by an older harness) from the run's own logs, and
        re-read CSI curves (an older harness took them from the CSV logger, one point per 50 steps)."""
        from solo_sparse.tools.report import read_csi, read_monitor

        for row in self.results["rows"].values():
            if row.get("kind") != "pretrain" or row.get("status") != "ok" or row.get("reused_from"):
                continue
            # runs/<run id>/seed<k>/...: from the checkpoint (a run id may itself contain ':', as in 'synccp-2:4';
            # evaluated paths are 'id:path' rows of one run)
            ck = Path(row.get("checkpoint") or "")
            run_dir = self.out / Path(*ck.parts[:3]) if len(ck.parts) > 3 and ck.parts[0] == "runs" \
                else self.out / "runs" / str(row["id"]).split(":")[0] / f"seed{row['seed']}"
            if "monitor" not in row:
                row["monitor"] = read_monitor(run_dir) or None
            ck_file = self.out / ck if row.get("checkpoint") else None
            if row.get("shift_sensitivity") is None and ck_file is not None and ck_file.is_file():
                net, _ = load_backbone(str(ck_file), "resnet18", gated_path=row.get("path"))
                row.update(probe_stats(str(ck_file), net, self.eval_data()[1][0][-256:], row.get("path")))
                self.log(f"[bench] {row['id']}/seed{row['seed']}: probes backfilled (shift "
                         f"{row['shift_sensitivity']:.4f})")
            if row.get("csi") and run_dir.is_dir():
                csi = read_csi(run_dir)
                if csi:
                    row["csi"] = {"steps": csi["steps"], "I": csi["I"], "r": csi["r"], "timed_out": csi["timed_out"]}

    def run(self) -> Dict[str, Any]:
        self.backfill()
        if self.suite.random_init:
            self.random_init_rows()
        todo = self.plan()
        total = len(todo)
        done_s: List[float] = []
        t0 = time.time()
        if not total:
            self.log(f"[bench {self.suite.suite}] every row is done already ({len(self.results['rows'])} rows)")
        elif not self.eval_only:
            if self._host_error:
                raise ConfigError(self._host_error)
            self.log(f"[bench {self.suite.suite}] host: {self.host} ("
                     + ("solo-learn's unchanged main_pretrain.py" if self.host == "solo-learn" else
                        "Lightly's building blocks + the solo_sparse.lightning.Sparsify callback, same YAML") + ")")
        for i, (spec, seed) in enumerate(todo):
            eta = (statistics.fmean(done_s) * (total - i)) if done_s else None
            self.log(f"[bench {self.suite.suite}] run {i + 1}/{total}: {spec.id} seed {seed} — elapsed "
                     f"{_fmt_time(time.time() - t0)}" + (f", ETA {_fmt_time(eta)}" if eta is not None else ""))
            t1 = time.time()
            if spec.kind == "rounds":
                self.run_imp(spec, seed)
            else:
                self.run_pretrain(spec, seed)
            done_s.append(time.time() - t1)
            self.save()
        self.save()
        return self.results

    def _overrides(self, spec: RunSpec, seed: int) -> List[str]:
        return [*self.suite.overrides, *spec.overrides, *self.window_overrides(spec), f"++seed={seed}", *self.extra]

    def sibling_row(self, spec: RunSpec, seed: int) -> Optional[tuple]:
        """A finished row of another suite (a results.json beside this suite's output folder) that is the same
        training — same config content, the same override list (suite + run + extra), seed, image size — so
        it is not trained twice (the cdg suite's moco-dense is the synccp suite's dense). ``("suite/key",
        row)`` or None."""
        if spec.kind != "pretrain" or spec.eval_paths != [None] or not spec.config:
            return None
        host = self.host
        mine = [config_digest(self.suite.root / spec.config),
                [*self.suite.overrides, *spec.overrides, *self.window_overrides(spec), *self.extra],
                seed, self.suite.size]
        for res in sorted(self.out.resolve().parent.glob("*/results.json")):
            if res.parent == self.out.resolve():
                continue
            try:
                rows = json.loads(res.read_text()).get("rows", {})
            except (OSError, ValueError):
                continue
            for k, r in rows.items():
                if r.get("status") != "ok" or r.get("kind") != "pretrain" or r.get("path") or r.get("reused_from") \
                        or (r.get("host") or "solo-learn") != host:
                    continue
                try:
                    digest = json.loads(r["fingerprint"])[0]
                except (KeyError, TypeError, ValueError, IndexError):
                    continue
                if [digest, list(r.get("overrides") or []), r.get("seed"), r.get("image_size")] == mine:
                    return f"{res.parent.name}/{k}", r
        return None

    def run_pretrain(self, spec: RunSpec, seed: int) -> None:
        key = f"{spec.id}/seed{seed}"
        run_dir = self.out / "runs" / spec.id / f"seed{seed}"
        if self.host == "lightning":
            self.paths = _Paths(repo=self.suite.root, data=self.data, out=self.out)
            cmd = lightning_command(self.suite.root / spec.config, name=f"{self.suite.suite}-{spec.id}-s{seed}",
                                    run_dir=run_dir, train_path=self.data / "train",
                                    overrides=self._overrides(spec, seed))
        else:
            solo = solo_learn_dir(self.solo_dir)
            self.paths = _Paths(repo=self.suite.root, **{"solo-learn": solo}, data=self.data, out=self.out)
            cmd = pretrain_command(self.suite.root / spec.config, solo_dir=solo,
                                   name=f"{self.suite.suite}-{spec.id}-s{seed}", run_dir=run_dir,
                                   train_path=self.data / "train", overrides=self._overrides(spec, seed))
        prev = self.results["rows"].get(key) or {}
        base = {"id": spec.id, "seed": seed, "kind": spec.kind, "config": spec.config,
                "overrides": [*self.suite.overrides, *spec.overrides, *self.window_overrides(spec), *self.extra],
                "image_size": self.suite.size,
                "fingerprint": self.fingerprint(spec, seed),
                "command": self.paths(shlex.join(cmd))}
        if self.host != "solo-learn":
            base["host"] = self.host
        ck_path = None
        sibling = self.sibling_row(spec, seed)
        if sibling is not None:
            where, row = sibling
            self.results["rows"][key] = {**row, "id": spec.id, "fingerprint": base["fingerprint"], "reused_from": where,
                                         "checkpoint": f"../{where.split('/')[0]}/{row['checkpoint']}"
                                         if row.get("checkpoint") else None}
            self.log(f"[bench] {key}: the same training (config, overrides, seed, size) is {where}: reused, "
                     f"linear {100 * row['linear']:.2f}")
            return
        if prev.get("fingerprint") == base["fingerprint"] and prev.get("trained") and newest_checkpoint(run_dir):
            ck_path, seconds = newest_checkpoint(run_dir), prev.get("wall_clock_s")
        elif self.eval_only:
            ck_path, seconds = newest_checkpoint(run_dir), prev.get("wall_clock_s")
            if ck_path is None:
                self.log(f"[bench] {key}: --eval-only but no checkpoint in {run_dir}; skipped")
                return
        if ck_path is None:
            run = run_command(cmd, run_dir, log=run_dir / "train.log", cwd=run_dir)
            seconds = run.seconds
            if not run.ok:
                tail = run.log.read_text(errors="replace").strip().splitlines()[-1:] if run.log.exists() else []
                self.results["rows"][key] = {**base, "status": "failed", "wall_clock_s": seconds,
                                             "error": self.paths(f"{run.error}: {tail[0][:300] if tail else ''}")}
                who = "main_pretrain.py" if self.host == "solo-learn" else f"the {self.host} trainer"
                self.log(f"[bench] {key}: {who} failed ({run.error}); log: {run.log}")
                return
            ck_path = run.checkpoint
            self.results["rows"][key] = {**base, "trained": True, "wall_clock_s": seconds, "status": "trained"}
            self.save()
        from solo_sparse.tools.report import read_csi, read_monitor

        csi = read_csi(run_dir)
        monitor = read_monitor(run_dir) or None
        ck = read_checkpoint(ck_path)
        args_json = next(Path(ck_path).parent.glob("args.json"), None)
        method = json.loads(args_json.read_text()).get("method") if args_json else None
        train, test = self.eval_data()
        for path in spec.eval_paths:
            rkey = key if path is None else f"{spec.id}:{path}/seed{seed}"
            net, info = load_backbone(str(ck_path), "resnet18", gated_path=path)
            acc = evaluate_backbone(net, train, test)
            stats = checkpoint_stats(ck, self.suite.size, test[0][:2000], net, path)
            stats.update(probe_stats(str(ck_path), net, test[0][-256:], path))
            row = {**base, "id": spec.id if path is None else f"{spec.id}:{path}", "path": path, "trained": True,
                   "epochs": int(ck.get("epoch", -1)) + 1, "method": method,
                   **stats, **acc, "wall_clock_s": seconds, "status": "ok",
                   "csi": ({"steps": csi["steps"], "I": csi["I"], "r": csi["r"], "timed_out": csi["timed_out"]}
                           if csi else None),
                   "monitor": monitor,
                   "checkpoint": str(Path(ck_path).resolve().relative_to(self.out.resolve()))}
            self.results["rows"][rkey] = row
            self.log(f"[bench] {rkey}: linear {100 * acc['linear']:.2f}  kNN20 {100 * acc['knn20']:.2f}  "
                     f"kNN1 {100 * acc['knn1']:.2f}  density {row['density_online']:.3f}  "
                     f"MACs x{row['inference_macs_ratio']:.3f}  ({_fmt_time(seconds or 0)})")
        if spec.eval_paths != [None] and key in self.results["rows"]:
            del self.results["rows"][key]      # the per-path rows replace the training row

    def random_init_rows(self) -> None:
        train, test = None, None
        for seed in self.seeds:
            key = f"random-init/seed{seed}"
            fp = json.dumps(["random-init", seed, self.suite.size])
            if (self.results["rows"].get(key) or {}).get("fingerprint") == fp:
                continue
            if train is None:
                train, test = self.eval_data()
            torch.manual_seed(seed)
            net = build_resnet("resnet18").eval()
            acc = evaluate_backbone(net, train, test)
            self.results["rows"][key] = {"id": "random-init", "seed": seed, "kind": "random-init", "fingerprint": fp,
                                         "image_size": self.suite.size, "density_online": 1.0,
                                         "inference_macs_ratio": 1.0, **acc, "status": "ok", "wall_clock_s": 0.0}
            self.log(f"[bench] random-init seed {seed}: linear {100 * acc['linear']:.2f}  kNN20 "
                     f"{100 * acc['knn20']:.2f}")
            self.save()

    def run_imp(self, spec: RunSpec, seed: int) -> None:
        """IMP rounds through ``solo-sparse imp`` (its driver), then, at each round's density, the ticket and its
        controls, each evaluated twice:

        - **linear probe** of its self-supervised training (rows ``<id>:ticket-r<k>``, ``<id>:<control>-r<k>``):
          the ticket is round k's training; a control trains its mask with the same self-supervised config;
        - **label re-training** (``spec.retrain_epochs`` > 0; rows ``<id>:retrain-ticket-r<k>``,
          ``<id>:retrain-<control>-r<k>``, the top-1 after re-training in the ``linear`` column, ``path``
          ``label-retrain``): the mask trained on the labels of the training split from its init
          (:func:`solo_sparse.tools.retrain.retrain_supervised`).

        Controls (``spec.controls`` at ``spec.control_rounds``, default the last round): ``global_random`` — as
        many kept weights as the ticket, drawn uniformly over every layer; ``layer_permutation`` — each layer's
        mask shuffled (our control); ``random_reinit`` — the ticket's mask from the method's fresh init at the
        run's seed. The first two start from the ticket's own init (the rewind point with ``reset: rewind``), so
        they differ from the ticket in the mask only (our choice). Every row is resumable: a finished one (same
        fingerprint) is skipped, a control whose training finished is only evaluated."""
        from solo_sparse.engine.imp import load_state
        from solo_sparse.engine.maskio import global_random_masks, load_masks, permuted_masks, save_masks
        from solo_sparse.tools.imp_driver import IMPDriver, IMPRun
        from solo_sparse.tools.retrain import retrain_supervised

        if self.host != "solo-learn":
            raise ConfigError(f"run {spec.id!r} (kind rounds) trains through `solo-sparse imp`, which runs "
                              f"solo-learn's main_pretrain.py; the {self.host} host trains kind: pretrain runs only")
        plugin = spec.plugin
        d = self.out / "runs" / spec.id / f"seed{seed}"
        over = [*self._overrides(spec, seed), f"++data.train_path={self.data / 'train'}"]
        run = IMPRun(config=str(self.suite.root / spec.config), out=str(d / "rounds"), rounds=spec.rounds,
                     rate=spec.rate, rewind=spec.rewind, overrides=over, seed=seed)
        drv = IMPDriver(run, solo_learn_dir(self.solo_dir), plugin, log=self.log)
        train, test = self.eval_data()
        t0 = time.time()
        st = drv.run_all()
        self.paths = _Paths(repo=self.suite.root, **{"solo-learn": solo_learn_dir(self.solo_dir)}, data=self.data,
                            out=self.out)
        fp = self.fingerprint(spec, seed)
        rows = self.results["rows"]
        base = {"kind": "rounds", "config": spec.config, "seed": seed, "image_size": self.suite.size,
                "overrides": [*self.suite.overrides, *spec.overrides, *self.extra], "status": "ok"}
        init = drv.rewind_path if run.reset == "rewind" and drv.rewind_path.exists() else None
        init_state = load_state(init)[0] if init is not None and spec.retrain_epochs else None
        init_name = "rewind" if init is not None else "fresh"

        def done(rid: str, fpx: str, status: str = "ok") -> bool:
            row = rows.get(f"{rid}/seed{seed}") or {}
            return row.get("fingerprint") == fpx and row.get("status") == status

        def probe(rid: str, ck: Path, fpx: str, **extra) -> None:
            net, info = load_backbone(str(ck))
            acc = evaluate_backbone(net, train, test)
            rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": fpx, "density_online": info["density"],
                                         **acc, **extra,
                                         "checkpoint": str(Path(ck).resolve().relative_to(self.out.resolve()))}
            self.log(f"[bench] {rid}/seed{seed}: linear {100 * acc['linear']:.2f}  density {info['density']:.4f}")
            self.save()

        def retrain(what: str, k: int, mfile: Optional[Path], state) -> None:
            rid = f"{spec.id}:retrain-{what}-r{k}"
            rfp = json.dumps([fp, "retrain", what, spec.retrain_epochs, "init=" + ("fresh" if state is None
                                                                                     else init_name)])
            if not spec.retrain_epochs or done(rid, rfp):
                return
            t1 = time.time()
            res = retrain_supervised(load_masks(mfile)[0] if mfile else None, state, train, test,
                                     epochs=spec.retrain_epochs, seed=seed)
            rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": rfp, "path": "label-retrain",
                                         "linear": res["accuracy"], "density_online": res["density"],
                                         "epochs": spec.retrain_epochs, "wall_clock_s": time.time() - t1}
            self.log(f"[bench] {rid}/seed{seed}: label re-training top-1 {100 * res['accuracy']:.2f} at density "
                     f"{res['density']:.4f} ({spec.retrain_epochs} epochs, init "
                     f"{'fresh' if state is None else init_name})")
            self.save()

        for k in range(spec.rounds + 1):
            r = st["rounds"][str(k)]
            rid = f"{spec.id}:ticket-r{k}"
            if not done(rid, fp):
                probe(rid, drv.out / r["checkpoint"], fp, wall_clock_s=r.get("train_seconds"),
                      command=self.paths(str(r.get("command", ""))))
            retrain("ticket", k, drv.masks_path(k) if k > 0 else None, init_state)
        for k in (spec.control_rounds or [spec.rounds]):
            masks = load_masks(drv.masks_path(k))[0]
            for control in spec.controls:
                rid = f"{spec.id}:{control}-r{k}"
                cd = d / "controls" / f"{control}_{k}"
                own_init = None if control == "random_reinit" else init
                cfp = json.dumps([fp, control, "init=" + ("rewind" if own_init is not None else "fresh")])
                if control == "random_reinit":
                    mfile = drv.masks_path(k)
                else:
                    mfile = cd / "masks.safetensors"
                    if not mfile.exists():
                        m = permuted_masks(masks, seed=seed * 100 + k) if control == "layer_permutation" else \
                            global_random_masks(masks, seed=seed * 100 + k)
                        save_masks(mfile, m, control=control, round=k)
                if not done(rid, cfp):
                    ck = newest_checkpoint(cd) if done(rid, cfp, "trained") else None
                    cmd = pretrain_command(
                        self.suite.root / spec.config, solo_dir=solo_learn_dir(self.solo_dir), name=f"{rid}-s{seed}",
                        run_dir=cd, train_path=self.data / "train",
                        overrides=[*([f"+solo_sparse={plugin}"] if drv.add_group else []),
                                   *self._overrides(spec, seed), "++auto_resume.enabled=False",
                                   f"++solo_sparse.masks='{mfile}'",
                                   *([f"++solo_sparse.init='{own_init}'"] if own_init is not None else [])])
                    seconds = (rows.get(f"{rid}/seed{seed}") or {}).get("wall_clock_s")
                    if ck is None:
                        res = run_command(cmd, cd, log=cd / "train.log", cwd=cd)
                        if not res.ok:
                            rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": cfp, "status": "failed",
                                                         "error": self.paths(str(res.error))}
                            self.save()
                            continue
                        ck, seconds = res.checkpoint, res.seconds
                        rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": cfp, "status": "trained",
                                                     "wall_clock_s": seconds}
                        self.save()
                    probe(rid, ck, cfp, wall_clock_s=seconds, command=self.paths(shlex.join(cmd)))
                retrain(control, k, mfile, None if control == "random_reinit" else init_state)
        self.log(f"[bench] {spec.id} seed {seed}: IMP, controls and evaluations done in {_fmt_time(time.time() - t0)}")


# ------------------------------------------------------------------------------------------ outputs
def aggregate(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per id (in first-seen order): n, mean ± std of the accuracies, mean of the rest."""
    groups: Dict[str, List[Dict]] = {}
    for r in results["rows"].values():
        if r.get("status") == "ok":
            groups.setdefault(r["id"], []).append(r)
    out = []
    for rid, rows in groups.items():
        agg = {"id": rid, "n": len(rows), "seeds": sorted(r.get("seed") for r in rows)}
        for k in ("linear", "knn20", "knn1"):
            m, s, _ = _mean_std([r.get(k) for r in rows])
            agg[k] = None if m is None else 100 * m
            agg[k + "_std"] = None if s is None else 100 * s
        for k in ("density_online", "density_momentum", "inference_macs_ratio", "training_macs_ratio",
                  "gate_sparsity", "wall_clock_s", "shift_sensitivity", "online_momentum_cos"):
            m, _, _ = _mean_std([r.get(k) for r in rows])
            agg[k] = m
        trig = [r.get("trigger_step") for r in rows if r.get("trigger_step") is not None]
        agg["trigger_step"] = trig or None
        out.append(agg)
    return out


def dense_of(rid: str, by: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The dense row a run is compared with: ``<prefix>-dense`` for ``<prefix>-...``, else ``dense``."""
    if rid == "dense" or rid.endswith("-dense") or rid == "random-init":
        return None
    prefix = rid.split("-")[0]
    return by.get(f"{prefix}-dense") or by.get("dense")


def versus(a: Dict[str, Any], other: Optional[Dict[str, Any]], results: Dict[str, Any]) -> str:
    """The linear-probe difference to ``other``, paired by seed: ``mean ± std [95% interval]`` of the per-seed
    differences, ``*`` where the interval excludes 0 (:mod:`solo_sparse.tools.stats`)."""
    if other is None or a["linear"] is None or other["linear"] is None:
        return "-"
    rows = list(results.get("rows", {}).values())
    return stats.fmt(stats.paired(stats.by_seed(rows, a["id"]), stats.by_seed(rows, other["id"])))


def versus_dense(a: Dict[str, Any], by: Dict[str, Dict[str, Any]], results: Dict[str, Any]) -> str:
    return versus(a, dense_of(a["id"], by), results)


def _f(v, fmt=".3f", dash="-"):
    return dash if v is None else format(v, fmt)


def to_markdown(results: Dict[str, Any]) -> str:
    meta = results.get("meta", {})
    agg = aggregate(results)
    by = {a["id"]: a for a in agg}
    lines = [f"Suite `{meta.get('suite')}` ({meta.get('suite_file')}): {meta.get('description', '')}",
             f"Data `{meta.get('data')}` {json.dumps(meta.get('data_meta', {}))}, {meta.get('image_size')} px; "
             f"torch {meta.get('torch')}, {meta.get('threads')} threads. Mean ± std over seeds."
             + (f" Trained through the {meta['host']} host." if meta.get("host") not in (None, "solo-learn") else ""),
             "",
             "| run | seeds | linear probe | vs dense | vs baseline | kNN k=20 | kNN k=1 | online density "
             "| momentum density | inference MACs | training MACs | gate sparsity | shift 1−cos | online/momentum cos "
             "| trigger step | train wall-clock |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    baselines = meta.get("baselines") or {}
    for a in agg:
        acc = [("-" if a[k] is None else f"{a[k]:.2f}" if a["n"] == 1 else f"{a[k]:.2f} ± {a[k + '_std']:.2f}")
               for k in ("linear", "knn20", "knn1")]
        trig = "-" if not a["trigger_step"] else ", ".join(str(t) for t in a["trigger_step"])
        base_id = baselines.get(a["id"].split(":")[0])
        vb = versus(a, by.get(base_id), results) if base_id else "-"
        lines.append(f"| {a['id']} | {a['n']} | {acc[0]} | {versus_dense(a, by, results)} | "
                     f"{vb + f' ({base_id})' if base_id and vb != '-' else vb} | {acc[1]} | {acc[2]} | "
                     f"{_f(a['density_online'])} | "
                     f"{_f(a['density_momentum'])} | {_f(a['inference_macs_ratio'])} | "
                     f"{_f(a['training_macs_ratio'])} | "
                     f"{_f(a['gate_sparsity'])} | {_f(a.get('shift_sensitivity'), '.4f')} | "
                     f"{_f(a.get('online_momentum_cos'), '.3f')} | {trig} | "
                     f"{'-' if not a['wall_clock_s'] else format(a['wall_clock_s'] / 60, '.1f') + ' min'} |")
    ri = by.get("random-init")
    for dense in (a for a in agg if a["id"] == "dense" or a["id"].endswith("-dense")):
        if ri and ri["linear"] is not None and dense["linear"] is not None:
            gap = dense["linear"] - ri["linear"]
            spread = [f"±{a['linear_std']:.2f} over {a['n']} seeds" if a["n"] > 1 else "one seed: spread unmeasured"
                      for a in (dense, ri)]
            lines += ["", f"Regime: {dense['id']} − random-init linear probe = {gap:+.2f} pt "
                          f"({dense['id']} {spread[0]}; random-init {spread[1]})."]
    reused = sorted({(r["id"], r["reused_from"].rsplit("/", 1)[0]) for r in results["rows"].values()
                     if r.get("reused_from")})
    if reused:
        lines += ["", "Same training as another suite's row, reused (not trained twice): "
                  + "; ".join(f"{i} = {w}" for i, w in reused) + "."]
    lines += ["", "vs dense / vs baseline: linear-probe difference to the run's dense row (`dense`, or "
                  "`<prefix>-dense` for `<prefix>-...`) / to the baseline the suite names, paired by seed (runs of "
                  "one seed share initialisation and data order): mean ± std of the per-seed differences [95% "
                  "t-interval]; `*` where the interval excludes 0 — only those differences are called. Shift "
                  "1−cos: 1 − cosine of the pooled features under a 1-px shift (256 val images, evaluation path); "
                  "online/momentum cos: the two encoders' feature cosine on the same images."]
    claims = stats.claim_rows(results)
    if claims:
        lines += ["", "Claims decided by this suite:", "", stats.claims_markdown([results]).rstrip()]
    failed = [r for r in results["rows"].values() if r.get("status") == "failed"]
    for r in failed:
        lines.append(f"- failed: {r['id']} seed {r.get('seed')}: {r.get('error')}")
    return "\n".join(lines) + "\n"


def regime_markdown(results: Dict[str, Any]) -> str:
    """The random-init and dense rows of a suite (every id starting with ``dense`` or ending in ``-dense``), per seed
    and mean ± std, with the margin: what docs/regime.md shows."""
    rows = [r for r in results["rows"].values() if r.get("status") == "ok" and (
        r["id"] == "random-init" or r["id"] == "dense" or r["id"].endswith("-dense"))]
    ids = list(dict.fromkeys(r["id"] for r in rows))
    lines = ["| run | linear probe per seed | mean ± std | kNN k=20 mean |", "|---|---|---:|---:|"]
    stats = {}
    for rid in ids:
        rs = sorted((r for r in rows if r["id"] == rid), key=lambda r: r.get("seed", 0))
        lin = [100 * r["linear"] for r in rs]
        m, sd, _ = _mean_std(lin)
        k, _, _ = _mean_std([100 * r["knn20"] for r in rs])
        stats[rid] = (m, sd, len(lin))
        ms = f"{m:.2f} ± {sd:.2f}" if len(lin) > 1 else f"{m:.2f} (one seed)"
        lines.append(f"| {rid} | {', '.join(f'{v:.2f}' for v in lin)} | {ms} | {k:.2f} |")
    if "random-init" in stats:
        for rid, (m, sd, n) in stats.items():
            if rid != "random-init":
                spread = f"seed-to-seed spread ±{sd:.2f} over {n} seeds" if n > 1 else "one seed: spread unmeasured"
                lines.append(f"\n{rid}: {m - stats['random-init'][0]:+.2f} pt over random-init features ({spread}).")
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """Linear probe vs inference MACs (error bars: std over seeds), random-init and dense lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [a for a in aggregate(results) if a["linear"] is not None]
    if not agg:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for a in agg:
        if a["id"] in ("random-init", "dense"):
            continue
        x = a["inference_macs_ratio"] if a["inference_macs_ratio"] is not None else a.get("density_online") or 1.0
        ax.errorbar([x], [a["linear"]], yerr=[a["linear_std"] or 0], fmt="o", capsize=3, label=a["id"])
    for rid, style in (("dense", "-"), ("random-init", "--")):
        a = next((b for b in agg if b["id"] == rid), None)
        if a:
            ax.axhline(a["linear"], ls=style, color="k" if rid == "dense" else "gray", lw=1,
                       label=f"{rid} ({a['linear']:.1f})")
            if a["linear_std"]:
                ax.axhspan(a["linear"] - a["linear_std"], a["linear"] + a["linear_std"],
                           color="k" if rid == "dense" else "gray", alpha=0.08)
    meta = results.get("meta", {})
    ax.set_xlim(0.0, 1.05)
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)
    ax.set_xlabel("inference MACs vs dense")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(f"{meta.get('suite')}: {meta.get('data')} at {meta.get('image_size')} px, mean ± std over seeds",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    from solo_sparse.tools.report import _save

    return _save(fig, path)


def plot_monitors(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """The collapse/momentum monitor of every run that has one (seed 0, else the lowest seed)."""
    from solo_sparse.tools.report import plot_monitor

    best: Dict[str, Dict[str, Any]] = {}
    for row in results.get("rows", {}).values():
        if row.get("monitor") and (row["id"] not in best or row["seed"] < best[row["id"]]["seed"]):
            best[row["id"]] = row
    meta = results.get("meta", {})
    return plot_monitor({f"{k} (seed {r['seed']})": r["monitor"] for k, r in sorted(best.items())}, path,
                        f"{meta.get('suite')}: collapse / momentum monitor")


def update_docs(results_paths: Sequence[Path], docs: Sequence[Path]) -> List[Path]:
    """Rewrite ``<!-- bench:<suite> -->`` ... ``<!-- /bench:<suite> -->`` blocks of ``docs`` with the tables of
    the suites' results.json (the README's result tables are generated, never typed)."""
    tables = {}
    seen: Dict[str, Path] = {}
    for p in results_paths:
        if not Path(p).is_file():
            raise ConfigError(f"{p}: no such results file")
        res = json.loads(Path(p).read_text())
        suite = (res.get("meta") or {}).get("suite") if isinstance(res, dict) else None
        if not suite or "rows" not in res:
            print(f"skipped {p}: not a bench results file (no meta.suite / rows)", flush=True)
            continue
        if suite in seen:
            raise ConfigError(f"{seen[suite]} and {p} are both results of suite {suite!r}: their doc blocks would "
                              "overwrite each other; give one (e.g. the suite's own folder, not a --host copy)")
        seen[suite] = Path(p)
        tables[f"bench:{res['meta']['suite']}"] = to_markdown(res)
        tables[f"bench-regime:{res['meta']['suite']}"] = regime_markdown(res)
        tables[f"bench-claims:{res['meta']['suite']}"] = stats.claims_markdown([res])
    changed = []
    for d in docs:
        text = Path(d).read_text()
        new = text
        for name, table in tables.items():
            start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
            i, j = new.find(start), new.find(end)
            if i >= 0 and j > i:
                new = new[:i + len(start)] + "\n" + table + new[j:]
        if new != text:
            write_atomic(d, new)
            changed.append(Path(d))
    return changed

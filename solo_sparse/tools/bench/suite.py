"""A benchmark suite: the YAML file (top-level keys, its runs, claims, the one pruning window), every value
checked before it names a folder or a Hydra override (:class:`Suite`, :class:`RunSpec`), and what a run's config
composes to with Hydra (:func:`compose_plugins`, :func:`plugin_digest`). The file format:
:mod:`solo_sparse.tools.bench`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from solo_sparse.core.config import ConfigError
from solo_sparse.core.files import PLAIN_NAME_RULE, is_plain_name


def suite_root(suite_file: Path) -> Path:
    """The folder that a suite's config paths are relative to: the repository holding ``scripts/suites/``
    (the suite file's grandparent's parent), else the current directory."""
    p = Path(suite_file).resolve()
    if p.parent.name == "suites" and p.parent.parent.name == "scripts":
        return p.parents[2]
    return Path.cwd()


#: what a run trains: one pre-training (``pretrain``) or IMP rounds with their controls (``rounds``)
KINDS = ("pretrain", "rounds")
#: the controls of an IMP ticket (kind: rounds): global random pruning at its density, the layer-wise permutation of
#: its mask (ours), its mask from a fresh init
CONTROLS = ("global_random", "layer_permutation", "random_reinit")


def _int_in(lo, hi):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


#: numeric row columns a claim may name (``metric``; default ``linear``)
CLAIM_METRICS = ("linear", "knn20", "knn1", "density_online", "density_momentum", "inference_macs_ratio",
                 "training_macs_ratio", "gate_sparsity", "shift_sensitivity", "online_momentum_cos", "wall_clock_s")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: the keys a claim may have
CLAIM_KEYS = ("claim", "source", "a", "b", "margin", "metric", "at_least", "at_most", "family", "post_hoc")
#: what a claim may be (the end of every refusal of one)
CLAIM_ALLOWED = ("{claim: text, source: text, a: run id, b: run id, margin: number (points)}; or, on a row column "
                 f"(metric: one of {', '.join(CLAIM_METRICS)}), {{claim, source, a, [b,] at_least | at_most: "
                 "number} (a bound on a's values or on the ratio a / b); either may name a family: plain name (the "
                 "claims sweeping one hypothesis, decided on Bonferroni intervals); a difference claim may name "
                 "lists a: [run ids], b: [as many run ids] (at least 2 distinct pairs, no family, not on "
                 "wall_clock_s): the mean of the paired differences over a sweep; post_hoc: true marks a claim "
                 "declared after its rows were seen")


def _sweep_problem(c: Dict[str, Any]) -> Optional[str]:
    """Why a sweep-mean claim (``a`` and ``b`` lists) is refused, None when it is one: as many run ids in each
    (at least 2), distinct pairs of two different runs, no bound, no family (it is one claim on a whole sweep), not on
    the wall-clock (its pairs are per machine); rows of ``kind: rounds`` runs paired within one round and one
    evaluation, the whole list of one evaluation (a linear-probe difference is not averaged with a re-trained one)."""
    a, b = c.get("a"), c.get("b")
    if not (isinstance(a, list) and isinstance(b, list)):
        return f"a={a!r}, b={b!r}: a sweep mean gives both as lists (a single difference both as run ids)"
    if len(a) != len(b) or len(a) < 2:
        return f"a has {len(a)} run ids and b {len(b)}: a sweep mean takes as many in each, at least 2"
    bad = [x for x in a + b if not is_plain_name(x)]
    if bad:
        return f"{bad[0]!r} in a / b: not a run id ({PLAIN_NAME_RULE})"
    for k in ("at_least", "at_most"):
        if k in c:
            return f"{k}={c[k]!r}: a sweep mean is a difference claim (margin), not a bound"
    if c.get("metric") == "wall_clock_s":
        return "metric='wall_clock_s': not averaged over a sweep (its pairs are per machine)"
    if "family" in c:
        return (f"family={c['family']!r}: a sweep mean is one claim on the whole sweep, not a member of a family "
                "(it would change the members' correction)")
    pairs = list(zip(a, b))
    for x, y in pairs:
        if x == y:
            return f"pair {x} − {y}: a run against itself"
        if pairs.count((x, y)) > 1:
            return f"pair {x} − {y} appears twice"
        px, py = parse_round_row_id(x), parse_round_row_id(y)
        if px and py and (px["evaluation"], px["round"]) != (py["evaluation"], py["round"]):
            return f"pair {x} − {y}: rows of two rounds or two evaluations (a pair compares at one density)"
    evals = {q["evaluation"] for q in map(parse_round_row_id, a + b) if q}
    if len(evals) > 1:
        return f"a / b mix the evaluations {sorted(evals)}: one sweep mean per evaluation"
    return None if _num(c.get("margin", 0.0)) else f"margin={c['margin']!r}: expected a number (points)"


def claim_problem(c: Any) -> Optional[str]:
    """Why a suite's claim (:mod:`solo_sparse.tools.stats`) is refused, None when it is one: ``a − b ≥ margin`` in
    points of ``metric`` (default the linear probe), or a bound ``at_least`` / ``at_most`` on run a's per-seed
    ``metric`` (no ``b``) or on the per-seed ratio a / b; ``family``: a plain name shared by the claims that sweep
    one hypothesis (decided on Bonferroni intervals); a difference claim on a whole sweep names lists (``a: [..],
    b: [..]``, :func:`_sweep_problem`); ``post_hoc: true``: declared after its rows were seen (its verdict is
    marked exploratory)."""
    if not isinstance(c, dict):
        return f"{c!r}: not a mapping"
    unknown = sorted(str(k) for k in c if k not in CLAIM_KEYS)
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} (keys: {', '.join(CLAIM_KEYS)})"
    if not isinstance(c.get("claim"), str) or not c["claim"]:
        return f"claim={c.get('claim')!r}: expected its text"
    if "a" not in c:
        return "a: missing (the run the claim is about)"
    if not isinstance(c.get("source", ""), str):
        return f"source={c['source']!r}: expected a text"
    if c.get("metric", "linear") not in CLAIM_METRICS:
        return f"metric={c['metric']!r}: expected one of {', '.join(CLAIM_METRICS)}"
    if "family" in c and not is_plain_name(c["family"]):
        return f"family={c['family']!r}: expected a plain name ({PLAIN_NAME_RULE})"
    if "post_hoc" in c and not isinstance(c["post_hoc"], bool):
        return f"post_hoc={c['post_hoc']!r}: expected true or false"
    if isinstance(c["a"], list) or isinstance(c.get("b"), list):
        return _sweep_problem(c)
    if not is_plain_name(c["a"]):
        return f"a={c['a']!r}: expected a run id ({PLAIN_NAME_RULE})"
    if "b" in c and not is_plain_name(c["b"]):
        return f"b={c['b']!r}: expected a run id ({PLAIN_NAME_RULE})"
    bounds = [k for k in ("at_least", "at_most") if k in c]
    if len(bounds) > 1:
        return "at_least and at_most: a bound claim gives one"
    if bounds:
        if "margin" in c:
            return f"margin={c['margin']!r} with {bounds[0]}: a claim is a difference (margin) or a bound, not both"
        return None if _num(c[bounds[0]]) else f"{bounds[0]}={c[bounds[0]]!r}: expected a number"
    if "b" not in c:
        return "b: missing (a difference claim compares a with b; a bound gives at_least / at_most)"
    return None if _num(c.get("margin", 0.0)) else f"margin={c['margin']!r}: expected a number (points)"


def _is_claim(c) -> bool:
    """Whether ``c`` is a claim of a suite (:func:`claim_problem` finds nothing)."""
    return claim_problem(c) is None


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
    "claims": (lambda v: isinstance(v, list), "a list of claims, each " + CLAIM_ALLOWED),
}
RUN_KEYS = {
    "id": (is_plain_name, f"a plain name ({PLAIN_NAME_RULE})"),
    "config": (lambda v: isinstance(v, str) and v != "", "a config path (a string)"),
    "kind": (lambda v: v in KINDS, " or ".join(KINDS)),
    "plugin": (lambda v: v is None or is_plain_name(v), "a plugin name"),
    "seeds": (lambda v: v is None or _int_in(1, 1000)(v), "an integer in [1, 1000] or null"),
    "overrides": (_str_list, "a list of strings (Hydra overrides)"),
    "eval_paths": (lambda v: isinstance(v, list) and (v == [None] or (v != [] and all(is_plain_name(x) for x in v))),
                   "a non-empty list of evaluation path names (null, the default path, only alone: its row would "
                   "take the training row's key)"),
    "rounds": (_int_in(0, 100), "an integer in [0, 100]"),
    "rate": (lambda v: isinstance(v, float) and 0.0 < v < 1.0, "a number in (0, 1)"),
    "rewind": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "steps or 'Nep'"),
    "controls": (lambda v: isinstance(v, list) and all(c in CONTROLS for c in v), f"a list of {', '.join(CONTROLS)}"),
    "control_rounds": (lambda v: v is None or (isinstance(v, list) and all(_int_in(1, 100)(x) for x in v)),
                       "a list of pruned round numbers (1..rounds) or null"),
    "retrain_epochs": (_int_in(0, 1000), "an integer in [0, 1000] (0: no label re-training)"),
    "rewind_tolerance": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0,
                         "a number in [0, 1): the largest relative difference of a tensor's norm accepted in a rewind "
                         "point replayed on another machine (0: bit-identical only)"),
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


#: the label-re-training evaluation of a ``kind: rounds`` run (its top-1 in the ``linear`` column)
RETRAIN = "retrain"
_ROUND_ID = re.compile(r"^(?P<run>[^:]+):(?P<retrain>retrain-)?(?P<what>.+)-r(?P<k>\d+)$")


def round_row_id(run: str, what: str, k: int, retrain: bool = False) -> str:
    """The row id of a ``kind: rounds`` run at round ``k``: ``<run>:<what>-r<k>`` (linear probe of the
    self-supervised training of the ticket or a control) or ``<run>:retrain-<what>-r<k>`` (label re-training)."""
    return f"{run}:{RETRAIN + '-' if retrain else ''}{what}-r{k}"


def parse_round_row_id(rid: str) -> Optional[Dict[str, Any]]:
    """The inverse of :func:`round_row_id`: ``{"run", "evaluation" ("linear" | "retrain"), "what", "round"}``, or
    None for an id of another kind."""
    m = _ROUND_ID.match(rid)
    if m is None:
        return None
    return {"run": m["run"], "evaluation": RETRAIN if m["retrain"] else "linear", "what": m["what"],
            "round": int(m["k"])}


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
    #: a rewind point replayed on another machine may differ by this much (:class:`~solo_sparse.tools.imp.driver.
    #: IMPRun`); not in the rows' fingerprints: rows trained from such a point record ``rewind_replay``
    rewind_tolerance: float = 0.0

    def row_ids(self) -> List[str]:
        """The row ids a ``kind: rounds`` run writes (what claims and baselines may name)."""
        if self.kind != "rounds":
            return []
        cells = [("ticket", k) for k in range(self.rounds + 1)]
        cells += [(c, k) for k in (self.control_rounds or [self.rounds]) for c in self.controls]
        return [round_row_id(self.id, what, k, retrain) for retrain in (False, True)[:1 + bool(self.retrain_epochs)]
                for what, k in cells]


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
        for i, c in enumerate(raw.get("claims") or []):
            if problem := claim_problem(c):
                text = c.get("claim") if isinstance(c, dict) else None
                raise ConfigError(f"{p}: claims[{i}]{f' {str(text)[:60]!r}' if text else ''}: {problem}; "
                                  f"allowed: {CLAIM_ALLOWED}")
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
        for i, c in enumerate(raw.get("claims") or []):
            for k in ("a", "b"):
                for x in (c[k] if isinstance(c.get(k), list) else [c[k]] if k in c else []):
                    if x not in known:
                        raise ConfigError(f"{p}: claims[{i}] {c['claim'][:60]!r}: {k}={x!r}: not a run of the "
                                          f"suite; allowed: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in raw.items() if k != "runs"}, runs=runs, path=p, root=root)


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


def plugin_digest(config: Path, overrides: Sequence[str], seed: Optional[int] = None,
                  plugins: Optional[Sequence[Any]] = None) -> Optional[str]:
    """First 12 hex digits of the sha256 of the plugin configs a YAML + overrides compose to (None: no plugin), a
    plugin's ``run_seed_keys`` left null resolved to the run's ``seed`` as the plugin resolves them. ``plugins``:
    what :func:`compose_plugins` gave for them already (one Hydra compose for every seed of a run)."""
    import hashlib

    from solo_sparse.core.config import config_to_state

    plugins = compose_plugins(config, overrides) if plugins is None else plugins
    if not plugins:
        return None
    state = {}
    for p in plugins:
        neutral = type(p).neutral_defaults
        cfg = config_to_state(p.config)
        cfg.update({k: seed for k in type(p).run_seed_keys if cfg.get(k) is None and seed is not None})
        state[p.name] = {k: v for k, v in cfg.items() if k not in neutral or v != neutral[k]}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:12]

"""The harness that turns a suite's runs into rows (:class:`Bench`): the plan (which run and seed is still to do,
by fingerprint), training through the host's trainer (solo-learn's unchanged ``main_pretrain.py`` or the Lightning
binding's), evaluation of the final checkpoint, rows reused from a sibling suite, random-init rows, resuming after
an interruption; ``kind: rounds`` runs are :mod:`.rounds`. Rows, tables and plots are written after every row
(:mod:`.results`)."""
from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from solo_sparse.core.config import ConfigError
from solo_sparse.core.files import write_atomic
from solo_sparse.engine.costmodel import machine_tag
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.tools.bench.measure import checkpoint_stats, probe_stats, stale_cost
from solo_sparse.tools.bench.results import ROW_KEYS, plot, plot_claims, plot_monitors, plot_rounds, to_markdown
from solo_sparse.tools.bench.suite import RunSpec, Suite, compose_plugins, plugin_digest
from solo_sparse.tools.evaluate import (
    DivergedCheckpoint,
    NonFiniteFeatures,
    evaluate_backbone,
    load_backbone,
    load_splits,
)
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



class Bench:
    """One suite's rows in ``out`` (default ``results/<suite>/``): :meth:`plan` lists what is still to do,
    :meth:`run` does it and writes ``results.json``, ``results.md`` and the plots after every row."""

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
            plot_rounds(self.results, self.out / f"{self.suite.suite}-rounds.png")
            plot_claims(self.results, self.out / f"{self.suite.suite}-claims.png")
            plot_monitors(self.results, self.out / "monitor.png")
        except ImportError:   # matplotlib is an extra
            pass
        except Exception as exc:  # noqa: BLE001 - a picture never stops a long suite: the results are saved above
            self.log(f"[bench {self.suite.suite}] plots not drawn: {type(exc).__name__}: {exc}")

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
        plugins = self.plugin_digest(spec, seed) if spec.kind == "pretrain" and spec.config else None
        if plugins is not None:            # dense rows keep theirs; a changed plugin default retrains the row
            fp.append(f"plugins={plugins}")
        if self.window_overrides(spec):   # runs outside a window keep theirs
            fp.append(f"window={self.window_overrides(spec)}")
        return json.dumps(fp)

    def plugin_digest(self, spec: RunSpec, seed: Optional[int] = None) -> Optional[str]:
        """Digest of the run's effective plugin configs (every key, defaults included, as the run will save them --
        except a key at its plugin's ``neutral_defaults`` value; a ``run_seed_keys`` key left null as the run's
        ``seed``), or None without a plugin: a row trained before a plugin's default changed is not taken for this
        one."""
        win = self.window_overrides(spec)
        key = (spec.config, tuple(self.suite.overrides), tuple(spec.overrides), tuple(win), tuple(self.extra))
        cache = self.__dict__.setdefault("_plugin_compositions", {})   # one Hydra compose per run, not per seed
        ov = [*self.suite.overrides, *spec.overrides, *win, *self.extra]
        if key not in cache:
            cache[key] = compose_plugins(self.suite.root / spec.config, ov)
        return plugin_digest(self.suite.root / spec.config, ov, seed, plugins=cache[key])

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

    def mark_stale(self) -> List[str]:
        """Every finished row of one of the suite's runs (any seed, whatever ``--only`` / ``--seeds`` select)
        whose fingerprint is not the one this suite and code give it now is marked ``stale``: out of the tables
        and the claims, so a re-trained row is never paired with a row of another configuration. The keys
        marked."""
        # a run's own row and its evaluated paths' rows ('id:path') carry the run's fingerprint; kind-rounds rows
        # (IMP) carry fingerprints derived per round and are checked by the rounds driver itself
        specs = {i: s for s in self.suite.runs if s.kind == "pretrain"
                 for i in [s.id, *(f"{s.id}:{p}" for p in s.eval_paths if p)]}
        marked = []
        for key, row in self.results["rows"].items():
            spec = specs.get(str(row.get("id", "")))
            if spec is None or row.get("status") != "ok" or row.get("seed") is None:
                continue
            if row.get("fingerprint") != self.fingerprint(spec, int(row["seed"])):
                row["status"] = "stale"   # another config (e.g. a plugin default changed)
                marked.append(key)
        return marked

    def plan(self) -> List[tuple]:
        """The (run, seed) pairs still to do, seed-major: every run's seed 0 first, then seed 1, ... — an
        interrupted suite has its rows at comparable seed counts. Rows of another configuration are marked
        stale first (:meth:`mark_stale`)."""
        self.mark_stale()
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
                        and self.results["rows"][f"{spec.id}:{pth}/seed{seed}"].get("status") == "ok"
                        for pth in spec.eval_paths):
                    continue
                todo.append((spec, seed))
        return todo

    # ------------------------------------------------------------------ running
    def backfill(self) -> None:
        """Fill per-run curves a row lacks (rows written by an older harness) from the run's own logs, re-read CSI
        curves (an older harness took them from the CSV logger, one point per 50 steps), and re-measure the cost
        columns of rows measured with an older cost count of one of their plugins (:meth:`remeasure_cost`)."""
        from solo_sparse.tools.report import read_csi, read_monitor

        for row in self.results["rows"].values():
            if row.get("kind") == "pretrain" and row.get("status") == "ok" and row.get("reused_from"):
                self.refresh_reused(row)
            if row.get("kind") != "pretrain" or row.get("status") != "ok" or row.get("reused_from"):
                continue
            # runs/<run id>/seed<k>/...: from the checkpoint (a run id may itself contain ':', as in 'synccp-2:4';
            # evaluated paths are 'id:path' rows of one run)
            ck = Path(row.get("checkpoint") or "")
            run_dir = self.out / Path(*ck.parts[:3]) if len(ck.parts) > 3 and ck.parts[0] == "runs" \
                else self.run_dir(str(row["id"]).split(":")[0], row["seed"])
            if "monitor" not in row:
                row["monitor"] = read_monitor(run_dir) or None
            ck_file = self.out / ck if row.get("checkpoint") else None
            if row.get("shift_sensitivity") is None and ck_file is not None and ck_file.is_file():
                try:
                    net, _ = load_backbone(str(ck_file), "resnet18", gated_path=row.get("path"))
                    row.update(probe_stats(str(ck_file), net, self.eval_data()[1][0][-256:], row.get("path")))
                    self.log(f"[bench] {row['id']}/seed{row['seed']}: probes backfilled (shift "
                             f"{row['shift_sensitivity']:.4f})")
                except Exception as e:      # one row's checkpoint must not stop the suite: said, and the row kept
                    self.log(f"[bench] {row['id']}/seed{row['seed']}: probes not backfilled ({type(e).__name__}: {e})")
            if stale_cost(row):
                self.remeasure_cost(row, ck_file)
            if row.get("csi") and run_dir.is_dir():
                csi = read_csi(run_dir)
                if csi:
                    row["csi"] = {"steps": csi["steps"], "I": csi["I"], "r": csi["r"], "timed_out": csi["timed_out"]}

    #: the columns :meth:`remeasure_cost` re-measures (and :meth:`refresh_reused` copies)
    COST_KEYS = ("inference_macs_ratio", "gate_sparsity", "cost_versions")

    def refresh_reused(self, row: Dict[str, Any]) -> None:
        """A row reused from a sibling suite's training takes that row's cost columns again once the sibling's
        were re-measured with a newer cost count (:meth:`remeasure_cost` runs on the sibling's own rows, which own
        the checkpoint); the accuracy columns are the same training's and stay."""
        where = str(row["reused_from"])
        suite, _, key = where.partition("/")
        try:
            src = json.loads((self.out.resolve().parent / suite / "results.json").read_text())["rows"][key]
        except (OSError, ValueError, KeyError, TypeError):
            return                       # the sibling's results are not here: the row keeps what it copied
        if src.get("linear") != row.get("linear") or src.get("checkpoint") is None:
            return          # the sibling was retrained since (or lost its run): not the training this row copied
        if stale_cost(src) or src.get("cost_versions") == row.get("cost_versions"):
            return
        old, new = row.get("inference_macs_ratio"), src.get("inference_macs_ratio")
        for k in self.COST_KEYS:
            row[k] = src.get(k)
        said = ["none" if v is None else f"x{v:.4f}" for v in (old, new)]
        self.log(f"[bench] {row['id']}/seed{row['seed']}: cost columns taken again from {where} (re-measured there "
                 f"with the current count): MACs {said[0]} -> {said[1]}")

    def remeasure_cost(self, row: Dict[str, Any], ck_file: Optional[Path]) -> None:
        """Re-measure a finished row's cost columns (inference MACs, gate sparsity) from its checkpoint, as the run
        measured them, after a plugin's cost count changed (:func:`~solo_sparse.tools.bench.measure.stale_cost`);
        the accuracy columns are kept (the trained network is the same)."""
        key = f"{row['id']}/seed{row['seed']}"
        if ck_file is None or not ck_file.is_file():
            self.log(f"[bench] {key}: cost measured with an older count, and its checkpoint is not here to "
                     f"re-measure it")
            return
        if (row.get("image_size") or self.suite.size) != self.suite.size:
            self.log(f"[bench] {key}: cost measured with an older count at {row['image_size']} px, not this suite's "
                     f"{self.suite.size} px: left for the row's retraining")
            return
        try:
            net, _ = load_backbone(str(ck_file), "resnet18", gated_path=row.get("path"))
            stats = checkpoint_stats(read_checkpoint(str(ck_file)), self.suite.size, self.eval_data()[1][0][:2000],
                                     net, row.get("path"))
        except Exception as e:          # one row's checkpoint must not stop the suite: said, and the row kept
            self.log(f"[bench] {key}: cost not re-measured ({type(e).__name__}: {e})")
            return
        old = row.get("inference_macs_ratio")
        for k in self.COST_KEYS:
            row[k] = stats.get(k)
        was = "none" if old is None else f"x{old:.4f}"
        self.log(f"[bench] {key}: cost re-measured with the current count: MACs {was} -> "
                 f"x{row['inference_macs_ratio']:.4f}")

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
            before = self._ok_rows(spec, seed)
            resumed = self._has_checkpoint(spec, seed)
            if spec.kind == "rounds":
                self.run_imp(spec, seed)
            else:
                self.run_pretrain(spec, seed)
            if before == 0 and not resumed and self._ok_rows(spec, seed) > 0:
                # only a run trained from its start times the next ones: a rounds run whose rows were all done
                # (0 s), or one resumed after some rows or inside its first (from a training checkpoint), would
                # shrink the ETA
                done_s.append(time.time() - t1)
            self.save()
        self.save()
        return self.results

    def run_dir(self, run_id: str, seed: int) -> Path:
        """Where run ``run_id`` trains at ``seed``: ``<out>/runs/<run id>/seed<k>``."""
        return self.out / "runs" / run_id / f"seed{seed}"

    def _has_checkpoint(self, spec: RunSpec, seed: int) -> bool:
        """Whether run ``spec`` at ``seed`` left a training checkpoint here (it resumes rather than starts)."""
        d = self.run_dir(spec.id, seed)
        return d.is_dir() and next(d.rglob("*.ckpt"), None) is not None

    def _ok_rows(self, spec: RunSpec, seed: int) -> int:
        """Finished rows of run ``spec`` at ``seed`` (its own id, an evaluation path ``id:path``, or a rounds
        run's ``id:<what>-r<k>`` rows)."""
        return sum(1 for r in self.results["rows"].values()
                   if r.get("seed") == seed and r.get("status") == "ok"
                   and (r.get("id") == spec.id or str(r.get("id", "")).startswith(spec.id + ":")))

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
                    fp = json.loads(r["fingerprint"])
                    digest = fp[0]
                except (KeyError, TypeError, ValueError, IndexError):
                    continue
                if [digest, list(r.get("overrides") or []), r.get("seed"), r.get("image_size")] == mine and \
                        self._plugins_part(fp) == self._my_plugins_part(spec, seed):
                    return f"{res.parent.name}/{k}", r
        return None

    @staticmethod
    def _plugins_part(fp: Sequence[Any]) -> Optional[str]:
        """The ``plugins=<digest>`` element of a fingerprint (None for a row without a plugin)."""
        return next((x for x in fp if isinstance(x, str) and x.startswith("plugins=")), None)

    def _my_plugins_part(self, spec: RunSpec, seed: int) -> Optional[str]:
        d = self.plugin_digest(spec, seed)
        return None if d is None else f"plugins={d}"

    def run_pretrain(self, spec: RunSpec, seed: int) -> None:
        key = f"{spec.id}/seed{seed}"
        run_dir = self.run_dir(spec.id, seed)
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
        ck_path, machine = None, None
        sibling = self.sibling_row(spec, seed)
        if sibling is not None:
            where, row = sibling
            self.results["rows"][key] = {**row, "id": spec.id, "fingerprint": base["fingerprint"], "reused_from": where,
                                         "checkpoint": f"../{where.split('/')[0]}/{row['checkpoint']}"
                                         if row.get("checkpoint") else None}
            self.log(f"[bench] {key}: the same training (config, overrides, seed, size) is {where}: reused, "
                     f"linear {100 * row['linear']:.2f}")
            return
        # the training's time and machine: its row, or (evaluated before, the per-path rows replaced it) a path row's
        timed = prev or next((self.results["rows"][k] for k in (f"{spec.id}:{p}/seed{seed}" for p in spec.eval_paths
                                                                if p is not None) if k in self.results["rows"]), {})
        if (prev.get("fingerprint") == base["fingerprint"] and prev.get("trained") and newest_checkpoint(run_dir)) \
                or self.eval_only:
            ck_path = newest_checkpoint(run_dir)
            seconds, machine = timed.get("wall_clock_s"), timed.get("train_machine")
            if ck_path is None:
                self.log(f"[bench] {key}: --eval-only but no checkpoint in {run_dir}; skipped")
                return
        if ck_path is None:
            run = run_command(cmd, run_dir, log=run_dir / "train.log", cwd=run_dir)
            seconds, machine = run.seconds, machine_tag()
            if not run.ok:
                self.results["rows"][key] = {**base, "status": "failed", "wall_clock_s": seconds,
                                             "train_machine": machine,
                                             "error": self.paths(run.error)}
                who = "main_pretrain.py" if self.host == "solo-learn" else f"the {self.host} trainer"
                self.log(f"[bench] {key}: {who} failed ({run.error}); log: {run.log}")
                return
            ck_path = run.checkpoint
            self.results["rows"][key] = {**base, "trained": True, "wall_clock_s": seconds, "train_machine": machine,
                                         "status": "trained"}
            self.save()
        from solo_sparse.tools.report import read_csi, read_monitor

        csi = read_csi(run_dir)
        monitor = read_monitor(run_dir) or None
        ck = read_checkpoint(ck_path)
        args_json = next(Path(ck_path).parent.glob("args.json"), None)
        method = json.loads(args_json.read_text()).get("method") if args_json else None
        train, test = self.eval_data()
        overflowed = False
        for path in spec.eval_paths:
            rkey = key if path is None else f"{spec.id}:{path}/seed{seed}"
            try:
                net, info = load_backbone(str(ck_path), "resnet18", gated_path=path)
            except DivergedCheckpoint as e:    # non-finite weights: a diverged run is a failed row
                self.results["rows"][key] = {**base, "status": "failed", "wall_clock_s": seconds,
                                             "train_machine": machine, "error": self.paths(str(e))}
                self.log(f"[bench] {key}: not evaluated: {self.paths(str(e))}")
                return
            try:
                acc = evaluate_backbone(net, train, test)
            except NonFiniteFeatures as e:
                # finite weights, an evaluation path that overflows: a failed row of this path, the other paths go
                # on, and the training row stays (a re-run evaluates the checkpoint again; it does not re-train)
                overflowed = True
                err = self.paths(f"evaluation path {path or '(default)'}: {e}")
                self.results["rows"][rkey] = {**base, "id": spec.id if path is None else f"{spec.id}:{path}",
                                              "path": path, "trained": True, "status": "failed",
                                              "wall_clock_s": seconds, "train_machine": machine, "error": err}
                self.log(f"[bench] {rkey}: not evaluated: {err}")
                continue
            stats = checkpoint_stats(ck, self.suite.size, test[0][:2000], net, path)
            stats.update(probe_stats(str(ck_path), net, test[0][-256:], path))
            row = {**base, "id": spec.id if path is None else f"{spec.id}:{path}", "path": path, "trained": True,
                   "epochs": int(ck.get("epoch", -1)) + 1, "method": method,
                   **stats, **acc, "wall_clock_s": seconds, "train_machine": machine, "status": "ok",
                   "csi": ({"steps": csi["steps"], "I": csi["I"], "r": csi["r"], "timed_out": csi["timed_out"]}
                           if csi else None),
                   "monitor": monitor,
                   "checkpoint": str(Path(ck_path).resolve().relative_to(self.out.resolve()))}
            self.results["rows"][rkey] = row
            self.log(f"[bench] {rkey}: linear {100 * acc['linear']:.2f}  kNN20 {100 * acc['knn20']:.2f}  "
                     f"kNN1 {100 * acc['knn1']:.2f}  density {row['density_online']:.3f}  "
                     f"MACs x{row['inference_macs_ratio']:.3f}  ({_fmt_time(seconds or 0)})")
        if spec.eval_paths != [None] and key in self.results["rows"] and not overflowed:
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
        """A ``kind: rounds`` run: IMP rounds, the tickets and their controls (:func:`.rounds.run_rounds`)."""
        from solo_sparse.tools.bench.rounds import run_rounds

        run_rounds(self, spec, seed)

"""``solo-sparse imp``: iterative magnitude pruning over solo-learn's unchanged ``main_pretrain.py``.

Round ``k`` (0 … R) trains under the masks of density ``(1 - rate) ** k`` with the ``imp`` plugin
(one ``main_pretrain.py`` process per round), then — for k < R — prunes ``rate`` of the remaining
weights globally by magnitude (:func:`solo_sparse.engine.imp.global_magnitude_prune`) and writes the next
round's masks. ``--rounds R`` counts pruning steps, so R + 1 trainings; the last one trains the
ticket at the final density. Survivors restart each round from

- ``--reset rewind`` (default): the state captured after ``--rewind`` of round 0 (late resetting,
  the winning ticket; default one epoch as in the seed's CIFAR setting), or
- ``--reset random``: a fresh random init (round k uses seed ``seed + k``; Liu et al. 2019).

Layout of ``--out``::

    imp.json                 run config, its fingerprint, per-round status/density/accuracy
    rewind.safetensors       the rewind point (reset=rewind)
    round_<k>/masks.safetensors   masks trained in round k (none for round 0)
    round_<k>/ …             solo-learn checkpoints and the round's log (train.log)

A crash at any point resumes at the round it was in (from the round's newest solo-learn checkpoint
that reads, when there is one: a half-written one is set aside with a line); re-running with a
different config is refused, naming the differing keys. A round's ``train_seconds`` is the training it
needed: the cut run's time up to the checkpoint resumed from (the work after it is redone and not counted)
plus the resumed run's; its ``train_machine`` names both machines (``A + B``) when they differ, so that
the time compares with neither.

**The schedule on rewinding (our choice: restart).** Every round is a fresh ``main_pretrain.py`` run of
the whole config: rounds k >= 1 load the rewind weights (online and momentum backbone, projector,
predictor) and then run the full ``max_epochs`` schedule from its start — warm-up, cosine learning rate
and the momentum encoder's tau schedule included — with a fresh optimizer (no SGD momentum buffers), a
fresh online classifier and, for MoCo, a fresh queue. The rewind weights are those after ``--rewind``
(one epoch) of round 0, so a round k >= 1 ticket has seen ``rewind + max_epochs`` epochs of updates with
the learning-rate schedule replayed, not resumed at the rewind step (Frankle et al.'s rewinding resumes
the schedule at the rewind iteration and trains the remaining ones). docs/plugins/imp.md says what the
paper states and what it does not.

Refused before round 0, one line naming the option, the value and what is allowed: ``--rate`` outside
(0, 1); ``--rounds`` so many that the final density ``(1 - rate) ** rounds`` would keep less than one
weight of the backbone's smallest pruned layer (:func:`check_rounds`); a rewind point beyond round 0.
A global prune that empties a layer anyway (global magnitude pruning may strip one layer faster than
the average) stops the run before the next round trains, naming the layer.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from solo_sparse.core.config import PREFIX, ConfigError, StepSpec
from solo_sparse.core.files import file_sha256, write_atomic
from solo_sparse.engine.costmodel import machine_tag
from solo_sparse.engine.imp import (
    fingerprint,
    global_magnitude_prune,
    machine_summary,
    norms_difference,
    state_summary,
)
from solo_sparse.engine.maskio import density as total_density
from solo_sparse.engine.maskio import encoder_masks, load_masks, load_packed_masks, save_masks, save_packed_masks
from solo_sparse.tools.inputs import read_checkpoint
from solo_sparse.tools.runner import newest_checkpoint, pretrain_command, run_command

STATE = "imp.json"
#: what a chain carries about its rewind point besides the masks (:meth:`IMPDriver.carry`): its content digest,
#: its tensors' norms, the digest of all but its float values and the machine round 0 ran on (what an inexact
#: replay is measured and reported against), and the largest inexact replay accepted so far in the chain (rows
#: computed after it, on any machine, record it: their masks or init descend from the replayed point)
CARRIED = ("rewind_sha256", "rewind_norms", "rewind_structure", "rewind_machine", "inexact_replay")


@dataclass
class IMPRun:
    config: str
    out: str
    rounds: int = 5
    rate: float = 0.2
    rewind: str = "1ep"
    reset: str = "rewind"
    overrides: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    eval_data: Optional[str] = None
    eval_size: int = 32
    #: a rewind point re-created on another machine (:meth:`IMPDriver.ensure_rewind`) whose content differs from
    #: the recorded one is accepted when no tensor's L2 norm differs by more than this relative amount (0: only a
    #: bit-identical replay); not part of the run's fingerprint — a policy for continuing, not a setting of it
    rewind_tolerance: float = 0.0

    def validate(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0.0 < self.rate < 1.0:
            raise ConfigError(f"imp --rate={self.rate!r}: allowed: a number in (0, 1), the share of the remaining "
                              "weights pruned per round (the paper: 0.2)")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise ConfigError(f"imp --rounds={self.rounds!r}: allowed: an integer >= 0")
        if self.reset not in ("rewind", "random"):
            raise ConfigError(f"imp --reset={self.reset!r}: allowed: rewind, random")
        tol = self.rewind_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= tol < 1.0:
            raise ConfigError(f"imp --rewind-tolerance={tol!r}: allowed: a number in [0, 1), the largest relative "
                              "difference of a tensor's norm accepted in a replayed rewind point (0: bit-identical)")
        spec = StepSpec.parse("rewind", self.rewind)
        if spec.unit == "percent":
            raise ConfigError(f"imp --rewind={self.rewind!r}: give steps (e.g. 200) or epochs ('1ep')")
        if not Path(self.config).is_file():
            raise ConfigError(f"imp --config={self.config!r}: no such file")

    def fingerprint_fields(self) -> Dict:
        d = asdict(self)
        d.pop("out")
        d.pop("eval_data")
        d.pop("eval_size")
        d.pop("rewind_tolerance")
        d["config_sha256"] = file_sha256(self.config)
        d["config"] = str(Path(self.config).resolve())
        return d


def _machine(m: Optional[Dict]) -> str:
    """A :func:`~solo_sparse.engine.imp.machine_summary` as one phrase."""
    if not m:
        return "not recorded"
    return f"torch {m.get('torch')}, {m.get('cpu_capability')} kernels, {m.get('threads')} threads, {m.get('cpu')}"


def _defaults_plugin(cfg_path: Path) -> Optional[str]:
    """The ``solo_sparse`` entry of the YAML's defaults list ('imp', another plugin, or None)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(cfg_path))
    for entry in raw.get("defaults", []) or []:
        if isinstance(entry, dict) and "solo_sparse" in entry:
            return str(entry["solo_sparse"])
    return None


def _config_value(cfg_path: Path, overrides: List[str], key: str):
    """``key`` (dotted) of the YAML, the last override of it winning; None when neither sets it."""
    from omegaconf import OmegaConf

    found = None
    for o in overrides:
        k, _, v = o.lstrip("+").partition("=")
        if k == key:
            found = v.strip("'\"")
    if found is not None:
        return found
    return OmegaConf.select(OmegaConf.load(cfg_path), key, default=None)


def _max_epochs(cfg_path: Path, overrides: List[str]) -> Optional[int]:
    v = _config_value(cfg_path, overrides, "max_epochs")
    return int(v) if v is not None else None


def smallest_layer(backbone: str) -> Optional[tuple]:
    """``(layer, weights)`` of the smallest conv / linear layer IMP may prune in ``backbone`` (a torchvision
    ResNet as solo-learn builds it, the stem included); None for a backbone solo-sparse does not build."""
    from solo_sparse.engine.resnet import build_resnet
    from solo_sparse.engine.sparsifier import select_layers

    try:
        net = build_resnet(backbone)
    except ConfigError:
        return None
    return min(((n, m.weight.numel()) for n, m in select_layers(net, exclude_stem=False)), key=lambda t: t[1])


def max_rounds(rate: float, weights: int) -> int:
    """The most rounds at ``rate`` after which a layer of ``weights`` weights pruned at the average rate keeps
    at least one: the largest R with ``(1 - rate) ** R * weights >= 1``."""
    r = int(math.floor(math.log(weights) / -math.log1p(-rate)))
    while r > 0 and (1.0 - rate) ** r * weights < 1.0:      # floating-point edge
        r -= 1
    return r


def check_rounds(rounds: int, rate: float, backbone: str, log=print) -> None:
    """Refuse ``rounds`` whose final density ``(1 - rate) ** rounds`` keeps less than one weight of the
    backbone's smallest prunable layer (one line: the option, the value, the layer, the allowed range). A backbone
    solo-sparse does not build (not a torchvision ResNet) is not checked here, and ``log`` says so: each round
    then checks its own layers before it trains (an emptied layer stops the run, naming it)."""
    small = smallest_layer(backbone)
    if small is None:
        if rounds > 0:
            log(f"[imp] --rounds={rounds} not checked before round 0: solo-sparse does not build backbone "
                f"{backbone!r} (its layer sizes are known once it trains); each round refuses a layer it would "
                "empty")
        return
    layer, n = small
    if (1.0 - rate) ** rounds * n < 1.0:
        raise ConfigError(f"imp --rounds={rounds}: at --rate={rate} the final density (1 - {rate})^{rounds} = "
                          f"{(1.0 - rate) ** rounds:.3g} keeps less than one weight per layer ({backbone}'s smallest "
                          f"pruned layer {layer!r} has {n} weights); allowed: --rounds 0..{max_rounds(rate, n)} "
                          "at this rate")


def checkpoint_masks(ckpt: Path):
    """``({layer: weight}, {layer: mask})`` of the online masked layers of a solo-learn checkpoint."""
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    masks = encoder_masks(sd, str(ckpt)).get("online", {})
    if not masks:
        raise RuntimeError(f"{ckpt}: no weight masks — was it trained with '- solo_sparse: imp'?")
    weights = {k: sd[k + ".weight"] for k in masks}
    return weights, masks


class IMPDriver:
    """Runs the rounds of ``run`` with ``plugin`` (the name of the fixed-mask plugin whose line each
    round trains with; the ``imp`` plugin passes its own name)."""

    def __init__(self, run: IMPRun, solo_dir: Path, plugin: str, python: str = sys.executable, log=print):
        run.validate()
        self.run = run
        self.plugin = plugin
        self.out = Path(run.out).resolve()
        self.solo_dir = Path(solo_dir)
        self.python = python
        self.log = log
        self.cfg_path = Path(run.config).resolve()
        line = _defaults_plugin(self.cfg_path)
        if line not in (None, plugin):
            raise ConfigError(f"imp --config={run.config!r} selects '- solo_sparse: {line}' in its defaults; "
                              f"IMP rounds need the '{plugin}' plugin (remove that line or use {plugin})")
        self.add_group = line is None
        ep = _max_epochs(self.cfg_path, run.overrides)
        spec = StepSpec.parse("rewind", run.rewind)
        if run.reset == "rewind" and spec.unit == "epoch" and ep is not None and spec.value > ep:
            raise ConfigError(f"imp --rewind={run.rewind!r} is beyond the first round's length ({ep} epochs)")
        check_rounds(run.rounds, run.rate, str(_config_value(self.cfg_path, run.overrides, "backbone.name")
                                               or "resnet18"), log=self.log)
        self.state = self._load_or_init_state()

    # ------------------------------------------------------------------ state
    def _load_or_init_state(self) -> Dict:
        p = self.out / STATE
        fp_fields = self.run.fingerprint_fields()
        fp = fingerprint(fp_fields)
        if p.exists():
            st = json.loads(p.read_text())
            if st.get("fingerprint") != fp:
                old = st.get("run", {})
                diff = sorted(k for k in set(old) | set(fp_fields) if old.get(k) != fp_fields.get(k))
                detail = "; ".join(f"{k}: was {old.get(k)!r}, now {fp_fields.get(k)!r}" for k in diff)
                raise ConfigError(f"{p} belongs to an IMP run with a different config ({detail}); "
                                  "use another --out or restore the original settings")
            return st
        self.out.mkdir(parents=True, exist_ok=True)
        st = {"fingerprint": fp, "run": fp_fields, "rounds": {}}
        self._save(st)
        return st

    def _save(self, st=None) -> None:
        write_atomic(self.out / STATE, json.dumps(st or self.state, indent=2))

    # ------------------------------------------------------------------ paths
    def round_dir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def masks_path(self, k: int) -> Path:
        return self.round_dir(k) / "masks.safetensors"

    @property
    def rewind_path(self) -> Path:
        return self.out / "rewind.safetensors"

    # ------------------------------------------------------------------ one round
    def command(self, k: int, resume: Optional[Path], rewind_out: Optional[Path] = None,
                stop_after_rewind: bool = False, capture: bool = True) -> List[str]:
        """Round ``k``'s ``main_pretrain.py`` command. ``capture`` False: round 0 writes no rewind point (it is
        trained again after its point was recorded; the point is only ever re-created by :meth:`ensure_rewind`)."""
        r = self.run
        d = self.round_dir(k) if not stop_after_rewind else self.out / "rewind_replay"
        ov = [f"+solo_sparse={self.plugin}"] if self.add_group else []
        ov += [f"++name=imp-r{k}", f"++checkpoint.dir={d}", "++auto_resume.enabled=False",
               f"++{PREFIX}.rewind={r.rewind}"]
        if k > 0:
            ov.append(f"++{PREFIX}.masks='{self.masks_path(k)}'")
        if r.reset == "rewind":
            if k == 0 and capture:
                ov.append(f"++{PREFIX}.rewind_out='{rewind_out or self.rewind_path}'")
                if stop_after_rewind:
                    ov.append(f"++{PREFIX}.stop_after_rewind=true")
            else:
                ov.append(f"++{PREFIX}.init='{self.rewind_path}'")
        if r.seed is not None or r.reset == "random":
            ov.append(f"++seed={(r.seed if r.seed is not None else 5) + (k if r.reset == 'random' else 0)}")
        if resume is not None:
            ov.append(f"++resume_from_checkpoint='{resume}'")
        return pretrain_command(self.cfg_path, solo_dir=self.solo_dir, python=self.python,
                                overrides=[*ov, *r.overrides])

    def resumable_checkpoint(self, k: int) -> Optional[Path]:
        """Round ``k``'s newest checkpoint that reads as a Lightning checkpoint, or None. One that does not (a
        round killed while writing it) is set aside as ``<name>.unreadable`` with a line saying so — else every
        rerun would resume from it and fail — and the next newest is tried."""
        while True:
            ck = newest_checkpoint(self.round_dir(k))
            if ck is None:
                return None
            try:
                if {"state_dict", "epoch"} <= set(read_checkpoint(ck)):
                    return ck
                why = "not a Lightning checkpoint (no state_dict / epoch)"
            except ConfigError as exc:
                why = str(exc).replace(f"{ck}: ", "", 1)
            aside = ck.with_name(ck.name + ".unreadable")
            ck.replace(aside)
            self.log(f"[imp] round {k}: {ck.name} does not read ({why[:160]}); set aside as {aside.name}, "
                     "not resumed from")

    def train_round(self, k: int) -> Path:
        if k > 0:                  # a round restarts from the rewind point: replayed first on a machine without it
            self.ensure_rewind()
        d = self.round_dir(k)
        d.mkdir(parents=True, exist_ok=True)
        resume = self.resumable_checkpoint(k)
        # round 0 trained again (its rows were lost with its machine) must not overwrite the recorded rewind point
        cmd = self.command(k, resume, capture=not self.state.get("rewind_sha256"))
        rs = self.state["rounds"].setdefault(str(k), {})
        machine = machine_tag()
        if resume is not None and rs.get("segment_started") is not None:
            # the cut run's work up to the checkpoint resumed from counts (that after it is redone): it was never
            # recorded, the process was killed with the session or crashed
            kept = min(resume.stat().st_mtime, time.time()) - rs["segment_started"]
            if kept > 0:
                rs["train_seconds"] = (rs.get("train_seconds") or 0.0) + kept
                if rs.get("train_machine") not in (None, machine):      # a time summed over two machines
                    machine = f"{rs['train_machine']} + {machine}"
        rs.update({"status": "training", "command": shlex.join(cmd), "train_machine": machine,
                   "segment_started": time.time()})
        self._save()
        self.log(f"[imp] round {k}/{self.run.rounds}: training at density {rs.get('density', 1.0):.4f}"
                 + (f" (resuming from {resume.name})" if resume else ""))
        res = run_command(cmd, d, append=True)
        if not res.ok:
            raise RuntimeError(f"round {k}: main_pretrain.py: {res.error}; see {res.log}")
        rs["train_seconds"] = (rs.get("train_seconds") or 0.0) + res.seconds
        rs.pop("segment_started", None)
        ck = res.checkpoint
        rs["checkpoint"] = str(ck.relative_to(self.out))
        return ck

    def evaluate(self, ck: Path) -> Dict[str, float]:
        from solo_sparse.tools.evaluate import evaluate_backbone, load_backbone, load_splits

        if not hasattr(self, "_eval"):
            self._eval = load_splits(self.run.eval_data, self.run.eval_size, log=self.log)
        net, _ = load_backbone(str(ck))
        return evaluate_backbone(net, *self._eval)

    def run_all(self, on_round: Optional[Callable[[int, Path], None]] = None) -> Dict:
        """Train the rounds not done yet. ``on_round(k, checkpoint)`` runs after each round this call trains
        (its next round's masks written, its state saved): the benchmark evaluates a ticket there, so that a
        run cut short keeps every finished round's rows."""
        R, rate = self.run.rounds, self.run.rate
        for k in range(R + 1):
            rs = self.state["rounds"].setdefault(str(k), {})
            rs.setdefault("density", 1.0 if k == 0 else total_density(load_masks(self.masks_path(k))[0]))
            if rs.get("status") != "done":
                if k > 0 and not self.masks_path(k).exists():
                    raise RuntimeError(f"round {k}: masks missing at {self.masks_path(k)}")
                ck = self.train_round(k)
                if k == 0 and self.run.reset == "rewind" and self.rewind_path.exists():
                    self._record_rewind(state_summary(self.rewind_path), machine=True)
                if self.run.eval_data:
                    from solo_sparse.tools.evaluate import NonFiniteFeatures

                    try:
                        rs["eval"] = self.evaluate(ck)
                        self.log(f"[imp] round {k}: " + ", ".join(f"{a} {v:.4f}" for a, v in rs["eval"].items()))
                    except NonFiniteFeatures as e:      # the pruning needs no evaluation: the chain goes on
                        rs["eval_error"] = str(e)
                        self.log(f"[imp] round {k}: not evaluated: {e}")
                if k < R:
                    weights, masks = checkpoint_masks(ck)
                    new = global_magnitude_prune(weights, masks, rate)
                    dead = [n for n, m in new.items() if not bool(m.any())]
                    if dead:
                        raise ConfigError(f"imp round {k}: the global prune at --rate={rate} removes every weight "
                                          f"of layer {dead[0]!r} ({new[dead[0]].numel()} weights): a dead backbone; "
                                          f"rounds {k + 1}..{R} not trained — use fewer --rounds or a smaller --rate")
                    save_masks(self.masks_path(k + 1), new, round=k + 1, rate=rate,
                               parent=str(ck.relative_to(self.out)), reset=self.run.reset)
                rs["status"] = "done"
                self._save()
                if on_round is not None:
                    on_round(k, ck)
            self.log(f"[imp] round {k}/{R} done: density {rs['density']:.4f}")
        return self.state

    # ------------------------------------------------------------------ continuing on another machine
    def ensure_rewind(self) -> None:
        """The rewind point exists, or is re-created: round 0 replayed until it writes the point
        (``stop_after_rewind``: the full run's schedule, cut short after ``--rewind``) and checked against the
        content digest recorded when round 0 trained (:func:`~solo_sparse.engine.imp.state_digest`). A different
        state (another torch build or CPU) is refused: the masks were pruned from a run that started elsewhere."""
        if self.run.reset != "rewind" or self.rewind_path.exists():
            return
        want = self.state.get("rewind_sha256")
        if not want:
            raise RuntimeError(f"rewind point {self.rewind_path} missing: round 0 did not reach "
                               f"--rewind={self.run.rewind}")
        d = self.out / "rewind_replay"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "rewind.safetensors"
        tmp.unlink(missing_ok=True)
        cmd = self.command(0, None, rewind_out=tmp, stop_after_rewind=True)
        self.log(f"[imp] rewind point missing: replaying round 0 up to --rewind={self.run.rewind} to re-create it")
        res = run_command(cmd, d, append=True)
        if not tmp.exists():
            raise RuntimeError(f"rewind replay: main_pretrain.py wrote no rewind point ({res.error or 'no error'}); "
                               f"see {res.log}")
        summary = state_summary(tmp)
        got = summary["sha256"]
        if got == want:
            self.state["rewind_replay"] = {"exact": True, "machine": machine_summary()}
            self.log(f"[imp] rewind point re-created, identical to round 0's (sha256 {got[:12]}…)")
        else:
            self._inexact_replay(summary, want)
        self._save()
        tmp.replace(self.rewind_path)

    def _inexact_replay(self, summary: Dict, want: str) -> None:
        """A replayed rewind point whose content differs. Accepted only when it differs in float values alone (the
        same tensors, dtypes, shapes, integer tensors and metadata — :func:`~solo_sparse.engine.imp.state_summary`)
        by at most ``rewind_tolerance`` > 0 in any tensor's relative L2 norm: recorded as ``rewind_replay`` and, the
        largest so far, ``inexact_replay`` (carried; rows computed after it say so). Else refused, saying why."""
        tol, got = self.run.rewind_tolerance, summary["sha256"]
        ref, struct = self.state.get("rewind_norms"), self.state.get("rewind_structure")
        here, there = machine_summary(), self.state.get("rewind_machine")
        diff, where = norms_difference(ref, summary["norms"]) if ref else (float("inf"), None)
        if not ref or not struct:
            measured = "no tensor norms or structure were recorded with round 0 to measure the difference"
            way = "no rewind tolerance applies to this chain"
        elif summary["structure"] != struct:
            measured = ("it differs in more than float values (tensor names, dtypes, shapes, integer tensors or the "
                        "metadata, e.g. the step it was taken at)")
            way = "no rewind tolerance applies to such a difference"
        else:
            measured = f"largest relative difference of a tensor's L2 norm {diff:.3g} ({where})"
            if 0.0 < tol and diff <= tol:
                rec = {"exact": False, "max_rel_norm_diff": diff, "tensor": where, "tolerance": tol,
                       "machine": here, "round0_machine": there}
                self.state["rewind_replay"] = rec
                if diff >= (self.state.get("inexact_replay") or {}).get("max_rel_norm_diff", -1.0):
                    self.state["inexact_replay"] = {a: rec[a] for a in ("max_rel_norm_diff", "tensor", "tolerance")}
                self.log(f"[imp] rewind point re-created NOT bit-identical to round 0's (sha256 {got[:12]}… vs "
                         f"{want[:12]}…): {measured} <= rewind tolerance {tol}; continuing from the replayed point "
                         "(rows computed from it record rewind_replay)")
                return
            way = (f"continue from the replayed point with a rewind tolerance above {diff:.3g} (--rewind-tolerance, "
                   f"a suite run's rewind_tolerance; rows then record it)")
        raise RuntimeError(f"rewind replay: the re-created rewind point differs from the one the masks were pruned "
                           f"from (sha256 {got[:12]}… vs {want[:12]}…; {measured}; rewind_tolerance={tol}; this "
                           f"machine: {_machine(here)}; round 0's: {_machine(there)}): this machine's training is not "
                           f"bit-identical to the first one's. To go on: {way}, or remove {self.out} and the carried "
                           f"state to start this chain again")

    def carry(self, keep: Path, fingerprint: str) -> None:
        """Write into ``keep`` what another machine needs to continue this chain — small and free of machine
        paths: each done round's density and training time, every round's masks written so far (bit-packed,
        1/8 of a mask file) and the rewind point's sha256 (the point itself is replayed: :meth:`ensure_rewind`).
        ``fingerprint`` names the run the state belongs to (:meth:`restore` refuses another)."""
        keep = Path(keep)
        keep.mkdir(parents=True, exist_ok=True)
        self._backfill_rewind_summary()
        rounds = {k: {"density": rs["density"], "train_seconds": rs.get("train_seconds"),
                      **({"train_machine": rs["train_machine"]} if rs.get("train_machine") else {})}
                  for k, rs in self.state["rounds"].items() if rs.get("status") == "done"}
        masks = {}
        for k in range(1, self.run.rounds + 1):
            src = self.masks_path(k)
            if not src.exists():
                continue
            dst = keep / f"round_{k}.masks.safetensors"
            m, meta = load_masks(src)
            if not dst.exists():
                save_packed_masks(dst, m, **{a: b for a, b in meta.items() if a not in ("format", "density")})
            masks[str(k)] = total_density(m)
        manifest = {"fingerprint": fingerprint, "rounds": rounds, "round_masks": masks,
                    **{k: self.state.get(k) for k in CARRIED}}
        write_atomic(keep / "chain.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def _backfill_rewind_summary(self) -> None:
        """A chain whose round 0 ran before norms, structure and machines were recorded gets them here, from the
        rewind point on this machine when its content is the recorded one."""
        have = self.state.get("rewind_norms") and self.state.get("rewind_structure")
        if have or not self.state.get("rewind_sha256") or not self.rewind_path.exists():
            return
        summary = state_summary(self.rewind_path)
        if summary["sha256"] == self.state["rewind_sha256"]:
            # round 0's machine is this one only where round 0 ran here (not where its point was replayed)
            here = "rewind_replay" not in self.state and "rewind_machine" not in self.state
            self._record_rewind(summary, machine=here)
            self._save()

    def _record_rewind(self, summary: Dict, machine: bool) -> None:
        """The rewind point's digests and norms (and this machine, as round 0's) in the state, for :meth:`carry`."""
        self.state.update({"rewind_sha256": summary["sha256"], "rewind_norms": summary["norms"],
                           "rewind_structure": summary["structure"]})
        if machine:
            self.state["rewind_machine"] = machine_summary()

    def restore(self, keep: Path, fingerprint: str) -> bool:
        """Continue a chain carried from another machine (:meth:`carry`) when this one has trained none of it:
        the done rounds are marked done (their checkpoints stayed behind: ``checkpoint`` is absent), the masks
        unpacked, the rewind sha256 kept for :meth:`ensure_rewind`. False when there is nothing to restore."""
        man = Path(keep) / "chain.json"
        if not man.exists() or any(rs.get("status") for rs in self.state["rounds"].values()):
            return False
        m = json.loads(man.read_text())
        if m.get("fingerprint") != fingerprint:
            raise ConfigError(f"{man} belongs to another run (fingerprint {str(m.get('fingerprint'))[:16]}…, this "
                              f"run {fingerprint[:16]}…); remove it to start this chain again")
        for k in m.get("round_masks", {}):
            masks, meta = load_packed_masks(Path(keep) / f"round_{k}.masks.safetensors")
            save_masks(self.masks_path(int(k)), masks, **{a: b for a, b in meta.items() if a not in ("format",
                                                                                                     "density")})
        for k, r in m.get("rounds", {}).items():
            self.state["rounds"][k] = {"status": "done", "density": r["density"],
                                       "train_seconds": r.get("train_seconds"), "restored": True,
                                       **({"train_machine": r["train_machine"]} if r.get("train_machine") else {})}
        self.state.update({k: m[k] for k in CARRIED if m.get(k)})
        self._save()
        done = sorted(int(k) for k in m.get("rounds", {}))
        self.log(f"[imp] restored from {man.parent.name}: rounds {done} done elsewhere (their checkpoints stayed "
                 f"there), masks of rounds {sorted(int(k) for k in m.get('round_masks', {}))}")
        return True

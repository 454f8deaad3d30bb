"""A ``kind: rounds`` run of a suite (:meth:`~solo_sparse.tools.bench.harness.Bench.run_imp`): IMP rounds through
the IMP driver (:mod:`solo_sparse.tools.imp.driver`, what ``solo-sparse imp`` runs), then the tickets and their
controls, each with a linear probe and, optionally, label re-training (:mod:`solo_sparse.tools.retrain`)."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Optional

from solo_sparse.core.config import ConfigError
from solo_sparse.engine.costmodel import machine_tag
from solo_sparse.tools.bench.harness import Bench, _fmt_time, _Paths
from solo_sparse.tools.bench.suite import RunSpec, round_row_id
from solo_sparse.tools.evaluate import NonFiniteFeatures, evaluate_backbone, load_backbone
from solo_sparse.tools.runner import newest_checkpoint, pretrain_command, run_command, solo_learn_dir


def run_rounds(bench: Bench, spec: RunSpec, seed: int) -> None:
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
    from solo_sparse.tools.imp.driver import IMPDriver, IMPRun
    from solo_sparse.tools.retrain import retrain_supervised

    if bench.host != "solo-learn":
        raise ConfigError(f"run {spec.id!r} (kind rounds) trains through `solo-sparse imp`, which runs "
                          f"solo-learn's main_pretrain.py; the {bench.host} host trains kind: pretrain runs only")
    plugin = spec.plugin
    d = bench.run_dir(spec.id, seed)
    # absolute: every round runs in its own folder (a relative --data root failed round 0 with FileNotFoundError)
    over = [*bench._overrides(spec, seed), f"++data.train_path={(bench.data / 'train').resolve()}"]
    run = IMPRun(config=str(bench.suite.root / spec.config), out=str(d / "rounds"), rounds=spec.rounds,
                 rate=spec.rate, rewind=spec.rewind, overrides=over, seed=seed,
                 rewind_tolerance=spec.rewind_tolerance)
    drv = IMPDriver(run, solo_learn_dir(bench.solo_dir), plugin, log=bench.log)
    train, test = bench.eval_data()
    t0 = time.time()
    bench.paths = _Paths(repo=bench.suite.root, **{"solo-learn": solo_learn_dir(bench.solo_dir)}, data=bench.data,
                         out=bench.out)
    fp = bench.fingerprint(spec, seed)
    rows = bench.results["rows"]
    base = {"kind": "rounds", "config": spec.config, "seed": seed, "image_size": bench.suite.size,
            "overrides": [*bench.suite.overrides, *spec.overrides, *bench.extra], "status": "ok"}
    # the chain's small state (masks, densities, the rewind point's sha256) beside the results, so that a suite
    # cut by the end of a session continues on the next machine instead of starting the seed again
    keep = chain_dir(bench, spec, seed)
    drv.restore(keep, fp)
    init = drv.rewind_path if run.reset == "rewind" else None
    init_name = "rewind" if init is not None else "fresh"
    loaded = {}

    def replayed(from_chain: bool) -> dict:
        """A row whose init or mask descends from a rewind point replayed within the tolerance, not bit-identically
        (here or on an earlier machine of the chain), says so: the largest such replay of the chain."""
        rep = drv.state.get("inexact_replay")
        return {"rewind_replay": dict(rep)} if from_chain and rep else {}

    def init_state():
        if "state" not in loaded:
            drv.ensure_rewind()
            loaded["state"] = load_state(init)[0]
        return loaded["state"]

    def done(rid: str, fpx: str, status: str = "ok") -> bool:
        row = rows.get(f"{rid}/seed{seed}") or {}
        return row.get("fingerprint") == fpx and row.get("status") == status

    def probe(rid: str, ck: Path, fpx: str, from_chain: bool = True, **extra) -> None:
        net, info = load_backbone(str(ck))
        try:
            acc = evaluate_backbone(net, train, test)
        except NonFiniteFeatures as e:
            # its training is kept (a re-run evaluates the checkpoint again) and the suite goes on
            err = bench.paths(f"{Path(ck).name}: {e}")
            rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": fpx, "status": "failed", "trained": True,
                                         "error": err, **extra}
            bench.log(f"[bench] {rid}/seed{seed}: not evaluated: {err}")
            bench.save()
            return
        rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": fpx, "density_online": info["density"],
                                     **acc, **extra, **replayed(from_chain),
                                     "checkpoint": str(Path(ck).resolve().relative_to(bench.out.resolve()))}
        bench.log(f"[bench] {rid}/seed{seed}: linear {100 * acc['linear']:.2f}  density {info['density']:.4f}")
        bench.save()

    def retrain(what: str, k: int, mfile: Optional[Path], fresh: bool) -> None:
        fresh = fresh or init is None
        rid = round_row_id(spec.id, what, k, retrain=True)
        rfp = json.dumps([fp, "retrain", what, spec.retrain_epochs, "init=" + ("fresh" if fresh else init_name)])
        if not spec.retrain_epochs or done(rid, rfp):
            return
        state = None if fresh else init_state()       # the rewind point is loaded (or replayed) only when needed
        t1 = time.time()
        res = retrain_supervised(load_masks(mfile)[0] if mfile else None, state, train, test,
                                 epochs=spec.retrain_epochs, seed=seed)
        rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": rfp, "path": "label-retrain",
                                     "linear": res["accuracy"], "density_online": res["density"],
                                     "epochs": spec.retrain_epochs, "wall_clock_s": time.time() - t1,
                                     "train_machine": machine_tag(),
                                     **replayed(state is not None or mfile is not None)}
        bench.log(f"[bench] {rid}/seed{seed}: label re-training top-1 {100 * res['accuracy']:.2f} at density "
                 f"{res['density']:.4f} ({spec.retrain_epochs} epochs, init "
                 f"{'fresh' if state is None else init_name})")
        bench.save()

    def ticket(k: int, ck: Optional[Path]) -> None:
        drv.carry(keep, fp)            # the round and the next one's masks, before its rows (a session may end there)
        r = drv.state["rounds"][str(k)]
        rid = round_row_id(spec.id, "ticket", k)
        if not done(rid, fp):
            if ck is None or not ck.exists():          # trained on another machine, evaluated nowhere: again
                bench.log(f"[bench] {rid}/seed{seed}: round {k}'s checkpoint is not on this machine; training the "
                          "round again under its masks (the next round's masks are kept)")
                before = r.get("train_seconds") or 0.0
                ck = drv.train_round(k)
                r = drv.state["rounds"][str(k)]
                r["status"], r["train_seconds"] = "done", r["train_seconds"] - before   # this training's time
                r["train_machine"] = machine_tag()
                drv._save()
            probe(rid, ck, fp, from_chain=k > 0, wall_clock_s=r.get("train_seconds"),
                  train_machine=r.get("train_machine"), command=bench.paths(str(r.get("command", ""))))
        retrain("ticket", k, drv.masks_path(k) if k > 0 else None, fresh=False)
        drv.carry(keep, fp)

    st = drv.run_all(on_round=ticket)
    drv.carry(keep, fp)
    for k in range(spec.rounds + 1):
        r = st["rounds"][str(k)]
        ticket(k, drv.out / r["checkpoint"] if r.get("checkpoint") else None)
    for k in (spec.control_rounds or [spec.rounds]):
        masks = load_masks(drv.masks_path(k))[0]
        for control in spec.controls:
            rid = round_row_id(spec.id, control, k)
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
                row = rows.get(f"{rid}/seed{seed}") or {}
                trained = row.get("fingerprint") == cfp and (row.get("status") == "trained" or row.get("trained"))
                ck = newest_checkpoint(cd) if trained else None
                cmd = pretrain_command(
                    bench.suite.root / spec.config, solo_dir=solo_learn_dir(bench.solo_dir), name=f"{rid}-s{seed}",
                    run_dir=cd, train_path=bench.data / "train",
                    overrides=[*([f"+solo_sparse={plugin}"] if drv.add_group else []),
                               *bench._overrides(spec, seed), "++auto_resume.enabled=False",
                               f"++solo_sparse.masks='{mfile}'",
                               *([f"++solo_sparse.init='{own_init}'"] if own_init is not None else [])])
                seconds, machine = row.get("wall_clock_s"), row.get("train_machine")
                if ck is None:
                    if own_init is not None:
                        drv.ensure_rewind()          # replayed on a machine that did not train round 0
                    res = run_command(cmd, cd, log=cd / "train.log", cwd=cd)
                    if not res.ok:
                        rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": cfp, "status": "failed",
                                                     "wall_clock_s": res.seconds, "train_machine": machine_tag(),
                                                     "error": bench.paths(str(res.error))}
                        bench.save()
                        continue
                    ck, seconds, machine = res.checkpoint, res.seconds, machine_tag()
                    rows[f"{rid}/seed{seed}"] = {**base, "id": rid, "fingerprint": cfp, "status": "trained",
                                                 "wall_clock_s": seconds, "train_machine": machine}
                    bench.save()
                probe(rid, ck, cfp, wall_clock_s=seconds, train_machine=machine, command=bench.paths(shlex.join(cmd)))
            retrain(control, k, mfile, fresh=control == "random_reinit")
    bench.log(f"[bench] {spec.id} seed {seed}: IMP, controls and evaluations done in {_fmt_time(time.time() - t0)}")


def chain_dir(bench: Bench, spec: RunSpec, seed: int) -> Path:
    """Where a ``kind: rounds`` run keeps its chain's carried state (committed with the results):
    ``<suite out>/chains/<id>/seed<k>`` (:meth:`~solo_sparse.tools.imp.driver.IMPDriver.carry`)."""
    return bench.out / "chains" / spec.id / f"seed{seed}"

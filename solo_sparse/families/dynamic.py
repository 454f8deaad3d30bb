"""Dynamic sparsity with prune-and-regrow for two encoders (the family of ``synccp`` and ``granet``).

Per mask update (cubic schedule from the start step t0 to the end, every ``every`` steps; for plugins that
say so — GraNet — also every ``every`` steps after the end, at the final density, until training ends):

1. online encoder: magnitude pruning to the scheduled density d_t (pruned weights stay pruned; the split
   over layers follows ``distribution``: one global threshold for GraNet, ERK for SyncCP), then
   prune-and-regrow: a share (the plugin's :meth:`death_rate`: constant for SyncCP, cosine-decayed for
   GraNet) of each layer's active units with the smallest magnitude die and as many inactive units with
   the largest gradient score grow back (at zero: masked weights are exact zeros). Score: the instant
   |gradient| (GraNet) or its EMA (SyncCP; :mod:`solo_sparse.engine.scores`).
2. momentum encoder, by policy (:meth:`momentum_policy`):

   - ``nested`` (SyncCP's SyncS as we read it): the online mask plus the momentum weights of largest
     magnitude outside it, at the momentum density — the online mask always lies inside the momentum
     mask and the gap is exactly Δs (:func:`solo_sparse.engine.regrow.nested_masks`);
   - ``own`` (SyncCP's ``momentum_mask: own``; our reading of the momentum encoder as a delayed online
     network): the top-d_m of |W_momentum|
     recomputed at every update, non-monotone — the momentum encoder is soft-masked (its stored weights
     stay the dense EMA of the online weights, its forward is masked), so a weight it dropped returns
     when the online encoder's regrowth makes it large again;
   - ``gradual`` (GraNet in SSL): the momentum encoder's own magnitude pruning on its own schedule,
     monotone (hard masks, like the online encoder's gradual pruning).

**Start.** An explicit step (``start``; the schedule then ends at ``end``), or the contrastive
sparsification indicator (``start: csi``), checked every ``every`` steps from the end of ``csi_warmup``:

- momentum methods: pseudo masks by magnitude at the *final* densities of both encoders (not applied);
  I = mean(M_online ⊕ M_momentum) (the paper's indicator) and r = |M_online \\ M_momentum| / |M_online|,
  the share of the online pseudo mask that left the momentum one — I on the scale of the masks
  (I = gap + 2 r d_online). ``csi_rule: literal`` (default; the paper's "starts when I equals Δs"):
  fires at the first check with r ≤ ``csi_fire``. solo-learn builds the momentum encoder as a copy of the
  online one, so r ≈ 0 at the first checks and the literal rule fires at its first check: the start is in
  effect a hyper-parameter (``csi_warmup``). ``csi_rule: resync`` (our option): arms once r ≥ ``csi_arm``
  and fires when r ≤ ``csi_fire`` again (hysteresis between the two). I and r are logged at every check,
  after the trigger too.
- shared-encoder methods: with ``csi_tau``, I between the online pseudo masks of two consecutive epochs,
  firing when I < ``csi_tau``; without it (one encoder, no pair to synchronise) the schedule starts at the
  first check after ``csi_warmup``, as the literal rule does on copy-initialised encoders.
- ``csi_timeout``: start anyway at that step (logged, one warning line).

Once started by CSI the cubic schedule runs for ``csi_ramp`` steps (a late trigger keeps that length,
capped by the end of training with a warning, never a silent compression), or with ``csi_ramp: null``
until ``end`` (what a suite's one window sets).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch

from solo_sparse.core import events
from solo_sparse.core.config import PREFIX, ConfigError, StepSpec, key_error
from solo_sparse.engine.density import allocate_by_spec
from solo_sparse.engine.regrow import nested_masks, nm_prune_and_regrow, prune_and_regrow
from solo_sparse.engine.schedule import cubic_density, is_update_step
from solo_sparse.engine.scores import GradientScore
from solo_sparse.families.weight import WeightSparsityPlugin

#: user-selectable momentum mask policies (SyncCP's ``momentum_mask``); "gradual" is GraNet-SSL's, internal
MOMENTUM_POLICIES = ("nested", "own")
CSI_RULES = ("literal", "resync")


class DynamicSparsityPlugin(WeightSparsityPlugin):
    momentum_follows_online = False

    # ------------------------------------------------------------------ describing itself
    @classmethod
    def dense_gradient_share(cls, config) -> float:
        """``dense_gradients="updates"``: one step in ``every`` (the mask-update period; 0 where ``every`` is not
        a plain step count, as the benchmark has always counted it)."""
        if cls.dense_gradients == "updates":
            every = (config or {}).get("every", 100)
            return 1.0 / float(every) if str(every).isdigit() else 0.0
        return super().dense_gradient_share(config)

    @classmethod
    def run_summary(cls, extra_state) -> Dict[str, object]:
        """The step the sparsity schedule started at (``trigger_step``), once it has."""
        trig = (extra_state or {}).get("trigger_step")
        return {} if trig is None else {"trigger_step": trig}

    # ------------------------------------------------------------------ policy (subclasses)
    def momentum_policy(self) -> str:
        """``nested`` | ``own`` (non-monotone, soft-masked momentum encoder) | ``gradual`` (monotone)."""
        return "gradual"

    def score_ema(self) -> Optional[float]:
        """Weight of the newest gradient in the score EMA; None = instant gradient before updates."""
        return None

    def momentum_density(self, online_density: float, step: int) -> float:
        raise NotImplementedError

    def uses_csi(self) -> bool:
        return False

    def death_rate(self, step: int) -> float:
        """Share of each layer's active units pruned by magnitude and regrown by score at update ``step``."""
        return self.config.regrow_fraction

    def regrow_after_window(self) -> bool:
        """Whether prune-and-regrow goes on every ``every`` steps after the schedule ends (GraNet: to the end
        of training)."""
        return False

    def init_scores(self) -> Dict[str, torch.Tensor]:
        """Scores the initial online mask keeps the largest of (default: weight magnitude)."""
        return self.magnitude_scores()

    # ------------------------------------------------------------------ setup
    def setup(self, view) -> None:
        self.trigger_step: Optional[int] = None
        self._csi_armed = False
        self._prev_pseudo: Optional[Dict[str, torch.Tensor]] = None
        self._resolved: Optional[Tuple[int, int, int]] = None
        self._csi: Dict[str, Optional[int]] = {}
        if self.momentum_policy() == "own" and view.family == "momentum":
            # the momentum encoder's stored weights stay the dense EMA of the online weights: a weight it
            # dropped can return when it grows again there
            self.soft_encoders = ("momentum",)
        super().setup(view)
        self.scores = GradientScore(self.sparsifier.layers, self.score_ema())

    def _alloc(self, scores, density, distribution: Optional[str] = None):
        return allocate_by_spec(self.config, scores, density, distribution)

    def init_masks(self) -> None:
        c = self.config
        if c.init_density < 1.0:
            self.sparsifier.set_masks(self._alloc(self.init_scores(), c.init_density,
                                                  getattr(c, "init_distribution", None)))
        if self.sparsifier.has_momentum:
            self._set_momentum_masks(self.momentum_density(c.init_density, 0))

    # ------------------------------------------------------------------ schedule
    def _lr_warmup_steps(self) -> int:
        """solo-learn's learning-rate warm-up (``scheduler.warmup_epochs`` of its ``warmup_cosine`` scheduler, the
        only one that warms up) in optimizer steps, 0 if unknown or without a warm-up."""
        model = getattr(self.view, "model", None)
        try:
            sched = model.cfg.scheduler if model is not None else None
            ep = float(sched.warmup_epochs) if sched is not None and str(sched.name) == "warmup_cosine" else 0.0
        except AttributeError:
            ep = 0.0
        return int(round(ep * (self.steps_per_epoch or 0)))

    def on_train_start(self) -> None:
        c = self.config
        start, end, every = self.steps_of(c)
        if self.uses_csi():
            tot = self.total_steps
            warm = self._lr_warmup_steps() if c.csi_warmup == "lr" else self.steps_of(c.csi_warmup)
            ramp = None if c.csi_ramp is None else max(1, self.steps_of(c.csi_ramp))
            timeout = self.steps_of(c.csi_timeout)
            if tot and warm >= tot:
                raise ConfigError(f"{PREFIX}.csi_warmup={c.csi_warmup} is step {warm}, at or after the last training "
                                  f"step ({tot}): CSI would never be checked")
            if tot and ramp is not None and ramp > tot:
                raise ConfigError(f"{PREFIX}.csi_ramp={c.csi_ramp} is {ramp} steps, longer than training ({tot})")
            if timeout < warm:
                raise ConfigError(f"{PREFIX}.csi_timeout={c.csi_timeout} (step {timeout}) is before the end of "
                                  f"{PREFIX}.csi_warmup (step {warm})")
            if ramp is None:
                c.check_fits(0, end, tot)
                if timeout >= end:
                    raise ConfigError(f"{PREFIX}.csi_timeout={c.csi_timeout} (step {timeout}) is not before "
                                      f"{PREFIX}.end={c.end} (step {end}): with csi_ramp: null the ramp ends at end, "
                                      "so the schedule must start before it")
            self._csi = {"warmup": warm, "first": max(warm, 1), "ramp": ramp, "timeout": timeout, "end": end}
            self.log({"csi/warmup_step": warm, "csi/timeout_step": timeout,
                      **({"csi/ramp_steps": ramp} if ramp is not None else {"csi/ramp_end_step": end})})
        else:
            c.check_fits(start, end, self.total_steps)
            if self.trigger_step is None:
                self.trigger_step = start
        self._resolved = (start, end, every)
        self.log({"schedule/end_step": end})

    def schedule(self) -> Tuple[int, int, int]:
        if self._resolved is None:
            self.on_train_start()
        return self._resolved

    def window(self) -> Optional[Tuple[int, int]]:
        """(t0, t_end) of the cubic schedule, or None before it started."""
        if self.trigger_step is None:
            return None
        t0 = self.trigger_step
        if self.uses_csi():
            if self._csi["ramp"] is None:
                return t0, max(self._csi["end"], t0)
            end = t0 + self._csi["ramp"]
            if self.total_steps:
                end = min(end, self.total_steps)
            return t0, max(end, t0)
        return t0, max(self.schedule()[1], t0)

    def is_update(self, step: int) -> bool:
        """Whether the masks change after optimizer step ``step``: the schedule's steps, and (GraNet) every
        ``every`` steps after its end until training ends."""
        w = self.window()
        if w is None:
            return False
        t0, t_end = w
        every = self.schedule()[2]
        if is_update_step(step, t0, t_end, every):
            return True
        return self.regrow_after_window() and step > t_end and (step - t0) % every == 0 \
            and (not self.total_steps or step <= self.total_steps)

    def online_density_at(self, step: int) -> float:
        c = self.config
        w = self.window()
        if w is None:
            return c.init_density
        return cubic_density(step, w[0], w[1], c.init_density, c.final_density)

    # ------------------------------------------------------------------ hooks
    def after_backward(self) -> None:
        if self.score_ema() is not None:
            self.scores.update()
        elif self.is_update(self.step + 1):
            self.scores.update()  # instant gradient, captured for the coming update step
        super().after_backward()

    def _csi_check_due(self) -> bool:
        first = self._csi["first"]
        return self.step >= first and (self.step - first) % self.schedule()[2] == 0

    def update_masks(self, optimizer) -> bool:
        self.schedule()
        if self.uses_csi() and self.step >= self._csi["warmup"]:
            due = self._csi_check_due()
            if self.sparsifier.has_momentum:
                if due:
                    self._csi_momentum(monitor=self.trigger_step is not None)
            elif self.trigger_step is None and getattr(self.config, "csi_tau", None) is None and due:
                self._report("CSI: no momentum encoder and no csi_tau; the schedule starts at the first check "
                             "after csi_warmup")
                self._fire()
            if self.trigger_step is None and self.step >= self._csi["timeout"]:
                self._fire(timed_out=True)
        if self.trigger_step is None or not self.is_update(self.step):
            return False
        d = self.online_density_at(self.step)
        sp = self.sparsifier
        masks = self._alloc(self.magnitude_scores(prune_only=True), d)
        died = grown = 0
        osc = []
        frac = self.death_rate(self.step)
        if frac > 0:
            weights = sp.weights("online")
            for k in list(masks):
                mag = torch.where(masks[k], weights[k].abs().float(), torch.zeros_like(weights[k], dtype=torch.float32))
                g = self.scores.get(k, weights[k])
                if self.config.granularity == "nm":
                    res = nm_prune_and_regrow(masks[k], mag, g, frac, self.config.n, self.config.m)
                else:
                    res = prune_and_regrow(masks[k], mag, g, frac, self.config.granularity, self.config.block)
                masks[k] = res.mask
                died += res.n_died
                grown += int(res.grown.sum())
                osc.append((res.n_died, res.oscillation, res.xor_share))
        sp.set_masks(masks)
        if sp.has_momentum:
            self._set_momentum_masks(self.momentum_density(d, self.step))
        tot = sum(o[0] for o in osc)
        self.log({
            "target_density": d, "regrow/death_rate": frac, "regrow/died": died, "regrow/grown": grown,
            "regrow/oscillation": (sum(o[0] * o[1] for o in osc) / tot) if tot else 0.0,
            "regrow/xor_share": (sum(o[2] for o in osc) / len(osc)) if osc else 0.0,
        })
        return True

    def on_epoch_end(self, epoch: int) -> None:
        if self.uses_csi() and self.trigger_step is None and not self.sparsifier.has_momentum \
                and getattr(self.config, "csi_tau", None) is not None and self.step >= self._csi.get("warmup", 0):
            self._csi_shared()
        super().on_epoch_end(epoch)

    def broadcast_state(self) -> None:
        super().broadcast_state()
        self.scores.broadcast()          # ranks that diverged continue from rank 0's scores too

    # ------------------------------------------------------------------ momentum masks
    def _set_momentum_masks(self, density: float) -> None:
        sp = self.sparsifier
        density = min(1.0, density)
        if density >= 1.0:
            sp.set_masks({L.name: torch.ones_like(L.mask("momentum")) for L in sp if L.momentum is not None},
                         "momentum")
            return
        mom_w = sp.weights("momentum")
        policy = self.momentum_policy()
        if policy == "nested":
            masks = nested_masks(sp.masks("online"), {k: w.abs() for k, w in mom_w.items()}, density, self._alloc)
        elif policy == "own":
            # top-d of |W_momentum| over every position: the stored momentum weights are dense (soft mask)
            masks = self._alloc({k: w.abs().float() for k, w in mom_w.items()}, density)
        else:
            current = sp.masks("momentum")
            prune_only = {k: torch.where(current[k], w.abs().float(),
                                         torch.full_like(w, float("-inf"), dtype=torch.float32))
                          for k, w in mom_w.items()}
            masks = self._alloc(prune_only, density)
        sp.set_masks(masks, "momentum")

    # ------------------------------------------------------------------ CSI
    def _pseudo(self, encoder: str, density: float) -> Dict[str, torch.Tensor]:
        w = self.sparsifier.weights(encoder)
        return self._alloc({k: v.abs().float() for k, v in w.items()}, min(1.0, density))

    @staticmethod
    def _xor_total(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
        diff = sum(int((a[k] ^ b[k]).sum()) for k in a)
        return diff / max(1, sum(a[k].numel() for k in a))

    def indicator(self) -> Tuple[float, float]:
        """(I, r) of the current weights: I = mean(M_online ⊕ M_momentum) of the pseudo masks at the final
        densities, r = share of the online pseudo mask outside the momentum one."""
        c = self.config
        on = self._pseudo("online", c.final_density)
        mo = self._pseudo("momentum", self.momentum_density(c.final_density, self.step))
        outside = sum(int((on[k] & ~mo[k]).sum()) for k in on)
        return self._xor_total(on, mo), outside / max(1, sum(int(on[k].sum()) for k in on))

    def _csi_momentum(self, monitor: bool = False) -> None:
        """One CSI check: log I and r; unless ``monitor`` (the schedule already started), fire by the rule."""
        c = self.config
        i, r = self.indicator()
        if c.csi_rule == "literal":
            fire = r <= c.csi_fire
        else:
            if r >= c.csi_arm:
                self._csi_armed = True
            fire = self._csi_armed and r <= c.csi_fire
        gap = self.momentum_density(c.final_density, self.step) - c.final_density
        self.log({"csi/I": i, "csi/r": r, "csi/armed": float(self._csi_armed), "csi/gap": gap})
        events.emit(self.name, "csi", self.step, I=i, r=r, gap=gap,
                    note=f" (rule {c.csi_rule}: "
                    + (f"arms at r >= {c.csi_arm}, fires at r <= {c.csi_fire}; armed={self._csi_armed})"
                       if c.csi_rule == "resync" else f"fires at r <= {c.csi_fire})")
                    + (" [monitor: the schedule started]" if monitor else ""))
        if fire and not monitor:
            self._fire()

    def _csi_shared(self) -> None:
        c = self.config
        cur = self._pseudo("online", c.final_density)
        if self._prev_pseudo is not None:
            i = self._xor_total(cur, self._prev_pseudo)
            self.log({"csi/I": i})
            self._report(f"CSI I={i:.4f} between consecutive epochs (fires at < {c.csi_tau})")
            if i < c.csi_tau:
                self._fire()
        self._prev_pseudo = cur

    def _report(self, msg: str) -> None:
        """A line for a person on stderr (rank 0): CSI is visible even when solo-learn runs without a logger."""
        events.emit(self.name, "message", self.step, note=msg)

    def _fire(self, timed_out: bool = False) -> None:
        self.trigger_step = self.step
        self._prev_pseudo = None
        t0, t_end = self.window()
        ramp = self._csi["ramp"]
        capped = ramp is not None and (t_end - t0) < ramp
        events.emit(self.name, "schedule_start", self.step,
                    cause="csi_timeout reached" if timed_out else "CSI fired",
                    note=f"; cubic ramp to the final density over steps {t0}..{t_end}")
        self.log({"csi/trigger_step": self.step, "csi/timed_out": float(timed_out),
                  "csi/ramp_end_step": t_end, "csi/ramp_capped": float(capped)})
        if timed_out:
            warnings.warn(f"solo-sparse {self.name}: CSI did not fire by {PREFIX}.csi_timeout="
                          f"{self.config.csi_timeout} (step {self.step}); the schedule starts there", stacklevel=2)
        if capped:
            warnings.warn(f"solo-sparse {self.name}: the schedule starts at step {t0}; {PREFIX}.csi_ramp={ramp} "
                          f"steps would end after training, so the ramp is cut to {t_end - t0} steps "
                          f"(ends at the last step {t_end})", stacklevel=2)

    # ------------------------------------------------------------------ state
    def extra_state(self):
        st = {**super().extra_state(), "trigger_step": self.trigger_step, "csi_armed": self._csi_armed,
              "scores": self.scores.state_dict()}
        if self._prev_pseudo is not None:
            st["prev_pseudo"] = {k: v.clone() for k, v in self._prev_pseudo.items()}
        return st

    def load_extra_state(self, state) -> None:
        self.trigger_step = state.get("trigger_step")
        self._csi_armed = bool(state.get("csi_armed", False))
        self.scores.load_state_dict(state.get("scores", {}))
        pp = state.get("prev_pseudo")
        self._prev_pseudo = {k: v.clone() for k, v in pp.items()} if pp else None


def parse_start(cfg, allow_csi: bool) -> None:
    """``start: csi`` or a StepSpec; sets ``cfg.use_csi``."""
    if isinstance(cfg.start, str) and cfg.start.strip().lower() == "csi":
        if not allow_csi:
            raise key_error("start", cfg.start, "this plugin needs an explicit start (steps, 'Nep' or 'P%')")
        cfg.use_csi = True
        cfg.start = 0
        return
    cfg.use_csi = False
    if allow_csi:
        try:
            StepSpec.parse("start", cfg.start)
        except ConfigError:
            allowed = ("expected 'csi' (the contrastive sparsification indicator), an int (optimizer steps), "
                       "'Nep' (epochs) or 'P%' (share of training)")
            raise key_error("start", cfg.start, allowed) from None

"""Dynamic sparsity with prune-and-regrow for two encoders (engine for ``synccp`` and ``granet``).

Per schedule step (cubic, from the start step t0 to ``end`` every ``every``):
1. online encoder: magnitude pruning to the scheduled density d_t (pruned weights stay pruned),
   then prune-and-regrow: ``regrow_fraction`` of the active units with the smallest magnitude die and
   as many inactive units with the largest gradient score grow back (their weights start at zero —
   they are zero already, masked weights are exact zeros). Score: instant |gradient| (GraNet) or its
   EMA (SyncCP; ``solo_sparse.scores``).
2. momentum encoder, by policy:
   - ``nested`` (SyncCP): density d_t + Δs; its mask = the online mask plus the momentum weights of
     largest magnitude outside it, so the online mask always lies inside the momentum mask and the
     gap between the two is exactly Δs ("synchronized").
   - ``independent`` (GraNet in SSL): its own cubic schedule and magnitude masks, no coupling.
Start: an explicit step, or the contrastive sparsification indicator (CSI):
   - momentum methods: every ``every`` steps, pseudo masks by magnitude at the *final* densities of
     both encoders (not applied), I = mean(M_online ⊕ M_momentum); start when I <= Δs + tolerance.
     (I >= Δs always, since the two pseudo masks differ in size by Δs; I = Δs when they are nested.)
     Choice: solo-learn builds the momentum encoder as a copy of the online one, so at step 0 the
     pseudo masks are trivially nested and I = Δs. The indicator is therefore *armed* only once the
     encoders have diverged (I > Δs + tolerance seen once) and fires when they re-synchronize.
   - shared-encoder methods: I between the online pseudo masks of two consecutive epochs; start when
     I < τ.
   - ``csi_timeout``: if the indicator has not fired by then, the schedule starts anyway (logged).
"""
from __future__ import annotations

import sys
import warnings
from typing import Dict, Optional

import torch

from .config import PREFIX, key_error
from .density import allocate_masks
from .regrow import nm_prune_and_regrow, prune_and_regrow
from .schedule import cubic_density, is_update_step
from .scores import GradientScore
from .weight_plugin import WeightSparsityPlugin


class DynamicSparsityPlugin(WeightSparsityPlugin):
    momentum_follows_online = False
    #: "nested" (SyncCP) or "independent" (GraNet)
    momentum_policy: str = "nested"

    # ------------------------------------------------------------------ config accessors
    def score_momentum(self) -> Optional[float]:
        """None = instant gradient."""
        return None

    def momentum_density(self, online_density: float, step: int) -> float:
        raise NotImplementedError

    def uses_csi(self) -> bool:
        return False

    # ------------------------------------------------------------------ setup
    def setup(self, view) -> None:
        self.trigger_step: Optional[int] = None
        self._csi_armed = False
        self._prev_pseudo: Optional[Dict[str, torch.Tensor]] = None
        self._resolved = None
        super().setup(view)
        self.scores = GradientScore(self.sparsifier.layers, self.score_momentum())

    def _alloc(self, scores, density):
        c = self.config
        return allocate_masks(scores, density, c.distribution, c.granularity, n=c.n, m=c.m, block=c.block)

    def init_masks(self) -> None:
        c = self.config
        if c.init_density < 1.0:
            self.sparsifier.set_masks(self._alloc(self.magnitude_scores(), c.init_density))
        if self.sparsifier.has_momentum:
            self._set_momentum_masks(self.momentum_density(c.init_density, 0))

    # ------------------------------------------------------------------ schedule
    def on_train_start(self) -> None:
        c = self.config
        start, end, every = c.resolve(self.steps_per_epoch, self.total_steps)
        self._timeout = c.csi_timeout.resolve(self.steps_per_epoch, self.total_steps) if self.uses_csi() else None
        self._resolved = (start, end, every)
        if not self.uses_csi() and self.trigger_step is None:
            self.trigger_step = start
        self.log({"schedule/end_step": end})

    def schedule(self):
        if self._resolved is None:
            self.on_train_start()
        return self._resolved

    def online_density_at(self, step: int) -> float:
        c = self.config
        if self.trigger_step is None:
            return c.init_density
        _, end, _ = self.schedule()
        return cubic_density(step, self.trigger_step, max(end, self.trigger_step), c.init_density, c.final_density)

    # ------------------------------------------------------------------ hooks
    def after_backward(self) -> None:
        if self.score_momentum() is not None:
            self.scores.update()
        elif self.trigger_step is not None:
            _, end, every = self.schedule()
            if is_update_step(self.step + 1, self.trigger_step, max(end, self.trigger_step), every):
                self.scores.update()  # instant gradient, captured for the coming update step
        super().after_backward()

    def update_masks(self, optimizer) -> bool:
        _, end, every = self.schedule()
        if self.trigger_step is None:
            if self.uses_csi() and self.sparsifier.has_momentum and self.step % every == 0:
                self._csi_momentum()
            if self.trigger_step is None and self._timeout is not None and self.step >= self._timeout:
                self._fire(timed_out=True)
            if self.trigger_step is None:
                return False
        t0 = self.trigger_step
        end = max(end, t0)
        if not is_update_step(self.step, t0, end, every):
            return False
        d = self.online_density_at(self.step)
        sp = self.sparsifier
        masks = self._alloc(self.magnitude_scores(prune_only=True), d)
        died = grown = 0
        osc = []
        frac = self.config.regrow_fraction
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
            "target_density": d, "regrow/died": died, "regrow/grown": grown,
            "regrow/oscillation": (sum(o[0] * o[1] for o in osc) / tot) if tot else 0.0,
            "regrow/xor_share": (sum(o[2] for o in osc) / len(osc)) if osc else 0.0,
        })
        return True

    def on_epoch_end(self, epoch: int) -> None:
        if self.uses_csi() and self.trigger_step is None and not self.sparsifier.has_momentum:
            self._csi_shared()
        super().on_epoch_end(epoch)

    # ------------------------------------------------------------------ momentum masks
    def _set_momentum_masks(self, density: float) -> None:
        sp = self.sparsifier
        density = min(1.0, density)
        if density >= 1.0:
            sp.set_masks({L.name: torch.ones_like(L.mask("momentum")) for L in sp if L.momentum is not None},
                         "momentum")
            return
        mom_w = sp.weights("momentum")
        if self.momentum_policy == "nested":
            online = sp.masks("online")
            boosted = {k: torch.where(online[k], torch.full_like(w, 1e30, dtype=torch.float32), w.abs().float())
                       for k, w in mom_w.items()}
            masks = self._alloc(boosted, density)
            masks = {k: m | online[k] for k, m in masks.items()}
        else:
            current = sp.masks("momentum")
            prune_only = {k: torch.where(current[k], w.abs().float(), torch.full_like(w, float("-inf"), dtype=torch.float32))
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

    def _csi_momentum(self) -> None:
        c = self.config
        on = self._pseudo("online", c.final_density)
        mo = self._pseudo("momentum", self.momentum_density(c.final_density, self.step))
        i = self._xor_total(on, mo)
        self.log({"csi/I": i, "csi/armed": float(self._csi_armed)})
        if i > c.density_gap + c.csi_tolerance:
            self._csi_armed = True
        elif self._csi_armed:
            self._fire()
        self._report(f"CSI I={i:.4f} (fires at <= {c.density_gap + c.csi_tolerance:.4f} once armed; "
                     f"armed={self._csi_armed})")

    def _csi_shared(self) -> None:
        c = self.config
        cur = self._pseudo("online", c.final_density)
        if self._prev_pseudo is not None:
            i = self._xor_total(cur, self._prev_pseudo)
            self.log({"csi/I": i})
            if i < c.csi_tau:
                self._fire()
            self._report(f"CSI I={i:.4f} between consecutive epochs (fires at < {c.csi_tau})")
        self._prev_pseudo = cur

    def _report(self, msg: str) -> None:
        """One line on stderr (rank 0): CSI is visible even when solo-learn runs without a logger."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0:
            print(f"solo-sparse {self.name} step {self.step}: {msg}", file=sys.stderr, flush=True)

    def _fire(self, timed_out: bool = False) -> None:
        self._report("schedule starts" + (" (csi_timeout reached)" if timed_out else " (CSI fired)"))
        self.trigger_step = self.step
        self._prev_pseudo = None
        self.log({"csi/trigger_step": self.step, "csi/timed_out": float(timed_out)})
        _, end, _ = self.schedule()
        if self.step >= end:
            warnings.warn(f"solo-sparse {self.name}: the schedule starts at step {self.step}, at or after "
                          f"{PREFIX}.end (step {end}): the final density is applied at once")

    # ------------------------------------------------------------------ state
    def extra_state(self):
        st = {"trigger_step": self.trigger_step, "csi_armed": self._csi_armed, "scores": self.scores.state_dict()}
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
    else:
        cfg.use_csi = False

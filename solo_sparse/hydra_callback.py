"""Hydra callback named by every ``solo_sparse/<plugin>.yaml`` group file.

``on_job_start`` runs before solo-learn's ``main(cfg)``: it validates ``cfg.solo_sparse`` and
patches solo-learn's registries in place (``solo_sparse.binding.install_from_config``). Hydra
deep-copies the task config before callbacks run, so nothing here edits the config.

Hydra catches ``Exception`` raised by callbacks and only warns — the job would then run *without*
the plugin, silently dense. So any failure here ends the process with ``SystemExit`` (which Hydra
does not catch) and the error message.
"""
from __future__ import annotations

import sys
import traceback

from hydra.experimental.callback import Callback


class SoloSparseCallback(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        try:
            from .binding import install_from_config

            install_from_config(config)
        except Exception as e:  # noqa: BLE001 - re-raised as SystemExit on purpose
            from .config import ConfigError

            if not isinstance(e, (ConfigError, ImportError)):
                traceback.print_exc()
            print(f"solo-sparse: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from e

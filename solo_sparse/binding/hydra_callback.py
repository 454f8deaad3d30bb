"""Hydra callback named by every ``solo_sparse/<plugin>.yaml`` group file.

``on_job_start`` runs before solo-learn's ``main(cfg)``: it validates ``cfg.solo_sparse`` (before
solo-learn is imported, so a config error is reported even where solo-learn is missing or broken)
and patches solo-learn's registries in place (``solo_sparse.binding.install.install_from_config``). Hydra
deep-copies the task config before callbacks run, so nothing here edits the config.

Hydra catches ``Exception`` raised by callbacks and only warns — the job would then run *without*
the plugin, silently dense. So any failure here ends the process with ``SystemExit`` (which Hydra
does not catch) and the error message.
"""
from __future__ import annotations

import sys
import traceback
from typing import Optional

from hydra.experimental.callback import Callback


class SoloSparseCallback(Callback):
    def __init__(self, line: Optional[str] = None) -> None:
        #: the plugin of the ``- solo_sparse: <plugin>`` line that registered this callback
        self.line = line

    def on_job_start(self, config, **kwargs) -> None:
        from solo_sparse.binding.guard import _load_raw, line_conflict, primary_config
        from solo_sparse.core.config import PREFIX, ConfigError
        from solo_sparse.core.registry import build_plugins

        try:
            if self.line:
                path = primary_config(config.hydra)
                raw = _load_raw(path) if path is not None else None
                overrides = list(config.hydra.overrides.get("task", []) or [])
                msg = line_conflict(self.line, raw, overrides, str(path or "the config"))
                if msg:
                    raise ConfigError(msg)
            build_plugins(config.get(PREFIX, None))           # validation first: no solo-learn needed
            try:
                from solo_sparse.binding.install import install_from_config
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] != "solo":
                    raise
                raise ImportError("the '- solo_sparse:' line needs solo-learn 1.0.6 (module 'solo'), which is not "
                                  "installed here (python -m solo_sparse.tools.doctor --ensure-solo-learn installs "
                                  "the pinned commit)") from e

            install_from_config(config)
        except Exception as e:  # noqa: BLE001 - re-raised as SystemExit on purpose
            if not isinstance(e, (ConfigError, ImportError)):
                traceback.print_exc()
            print(f"solo-sparse: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from e

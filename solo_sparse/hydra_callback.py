"""Hydra callback named by every ``solo_sparse/<plugin>.yaml`` group file.

``on_job_start`` runs before solo-learn's ``main(cfg)``: it validates ``cfg.solo_sparse`` and
patches solo-learn's registries in place (``solo_sparse.binding.install_from_config``). Hydra
deep-copies the task config before callbacks run, so nothing here edits the config.
"""
from __future__ import annotations

from hydra.experimental.callback import Callback


class SoloSparseCallback(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        from .binding import install_from_config

        install_from_config(config)

"""Installed as ``hydra_plugins.solo_sparse_searchpath`` (see setup.py).

Adds ``pkg://solo_sparse.configs`` to every Hydra app's search path, which makes the config group
``solo_sparse/`` (one YAML per plugin) visible to solo-learn's unchanged scripts.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SoloSparseSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="solo-sparse", path="pkg://solo_sparse.configs")

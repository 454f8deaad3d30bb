"""Installed as ``hydra_plugins.solo_sparse_searchpath`` (see setup.py).

Adds ``pkg://solo_sparse.configs`` to every Hydra app's search path, which makes the config group
``solo_sparse/`` (one YAML per plugin) visible to solo-learn's unchanged scripts, and warns (one line)
when the job's YAML or command line sets ``solo_sparse`` keys without selecting the group
(``solo_sparse.binding.guard``). An installed plugin that ships no group YAML (a third party's entry point)
gets a generated group entry (``solo_sparse.binding.groups``).

A real ``hydra_plugins/`` folder at the top of the repository: Hydra finds search-path plugins by
scanning the ``hydra_plugins`` namespace package with pkgutil, which sees directories on ``sys.path``
only — a package remapped from elsewhere is invisible in editable installs.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SoloSparseSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="solo-sparse", path="pkg://solo_sparse.configs")
        try:   # a plugin installed without a group YAML (a third party's entry point) gets a generated entry
            from solo_sparse.binding.groups import register_missing

            register_missing()
        except Exception:  # noqa: BLE001, S110 - never break a Hydra app over a plugin that does not load
            pass
        try:   # the one solo-sparse hook in every Hydra app: say so when solo_sparse keys would be ignored
            from solo_sparse.binding.guard import warn_unselected

            warn_unselected()
        except Exception:  # noqa: BLE001, S110 - never break a Hydra app over a warning
            pass

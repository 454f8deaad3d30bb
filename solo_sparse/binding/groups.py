"""The ``solo_sparse/`` config group entry of a plugin that ships no YAML: generated, so that a third-party plugin
works with its entry point alone.

solo-sparse's own plugins ship one YAML each in ``solo_sparse/configs/solo_sparse/`` (tested both ways). Any other
installed plugin (``solo_sparse.plugins`` entry point, or :func:`~solo_sparse.core.registry.register_plugin` in
this process) gets the same content as a node of Hydra's ConfigStore in the same group and package, registered by
the search-path plugin (``hydra_plugins/solo_sparse_searchpath``) when a Hydra app starts — so
``- solo_sparse: <name>`` in a solo-learn YAML selects it like a shipped one.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict, List

GROUP = "solo_sparse"
CALLBACK = "solo_sparse.binding.hydra_callback.SoloSparseCallback"


def group_node(name: str) -> Dict[str, Any]:
    """What a plugin's group YAML holds (``# @package _global_``): the plugin's name and the Hydra callback."""
    return {"solo_sparse": {"plugin": name},
            "hydra": {"callbacks": {"solo_sparse": {"_target_": CALLBACK, "line": name}}}}


def shipped() -> List[str]:
    """Plugins with a YAML in the package's config group."""
    folder = resources.files("solo_sparse.configs").joinpath(GROUP)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def missing() -> List[str]:
    """Installed plugins without a group YAML."""
    from solo_sparse.core.registry import available_plugins

    have = set(shipped())
    return [n for n in available_plugins() if n not in have]


def register_missing() -> List[str]:
    """Store a generated group entry for every installed plugin without a YAML; returns their names."""
    from hydra.core.config_store import ConfigStore

    names = missing()
    cs = ConfigStore.instance()
    for name in names:
        cs.store(name=name, node=group_node(name), group=GROUP, package="_global_", provider="solo-sparse")
    return names

"""Plugin discovery through the entry-point group ``solo_sparse.plugins``.

A third party ships a plugin the same way solo-sparse does, in its own ``setup.py``::

    entry_points={"solo_sparse.plugins": ["myplugin = mypkg.myplugin:MyPlugin"]}

That one line is all it needs: ``- solo_sparse: myplugin`` in a solo-learn YAML works without a YAML inside
solo-sparse (the group entry is generated when a Hydra app starts, :mod:`solo_sparse.binding.groups`).
``register_plugin`` adds one in-process (tests, notebooks).
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch

from solo_sparse.core.config import PREFIX, ConfigError, _to_plain, config_defaults
from solo_sparse.core.plugin import Plugin

GROUP = "solo_sparse.plugins"
_LOCAL: Dict[str, Type[Plugin]] = {}


def register_plugin(cls: Type[Plugin]) -> Type[Plugin]:
    """Register a plugin class in this process (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _LOCAL[cls.name] = cls
    return cls


def _entry_points() -> Dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def available_plugins(**capabilities: Any) -> List[str]:
    """Names of the installed plugins (entry points and in-process registrations), sorted; with keyword
    arguments only those whose class attributes match, e.g. ``available_plugins(rewrites_backbone=True)``,
    ``available_plugins(dense_gradients="every")``; ``True``/``False`` for a tuple attribute (``speed_paths``,
    ``commands``) asks whether it is non-empty. Tests, the GPU check and the docs derive their lists here."""
    names = sorted(set(_entry_points()) | set(_LOCAL))
    if not capabilities:
        return names
    for key in capabilities:
        if key.startswith("_") or not hasattr(Plugin, key):
            raise TypeError(f"available_plugins: {key!r} is not a Plugin capability")

    def value(cls, key):
        v = getattr(cls, key)
        return v() if key == "commands" else v

    def matches(cls) -> bool:
        for key, want in capabilities.items():
            have = value(cls, key)
            if isinstance(want, bool) and not isinstance(have, bool):
                have = bool(have)
            if have != want:
                return False
        return True

    return [n for n in names if matches(get_plugin(n))]


def get_plugin(name: str) -> Type[Plugin]:
    """The plugin class called ``name``; an unknown name lists the available ones."""
    if name in _LOCAL:
        return _LOCAL[name]
    eps = _entry_points()
    if name not in eps:
        avail = available_plugins()
        close = difflib.get_close_matches(str(name), avail, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"solo_sparse.plugin={name!r}: unknown plugin{hint}; available: {', '.join(avail) or 'none'}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise TypeError(f"entry point {name!r} in {GROUP} does not name a solo_sparse Plugin subclass")
    return cls


def describe_plugins() -> List[dict]:
    """One dict per plugin: name, description, what it supports, its capabilities, config keys with defaults."""
    out = []
    for name in available_plugins():
        cls = get_plugin(name)
        out.append({
            "name": name,
            "description": cls.description,
            "families": list(cls.families),
            "refused_methods": list(cls.refused_methods),
            "supported_methods": list(cls.supported_methods),
            "stackable_with_step_drivers": bool(cls.branch_independent),
            "rewrites_backbone": bool(cls.rewrites_backbone),
            "masks_weights": bool(cls.masks_weights),
            "eval_paths": list(cls.eval_paths()),
            "compactable": bool(cls.compactable),
            "dense_gradients": cls.dense_gradients,
            "commands": sorted(cls.commands()),
            "keys": config_defaults(cls.Config),
        })
    return out


# ----------------------------------------------------------------------------------------- checkpoints
def backbone_plugin(plugin_state: Optional[Mapping[str, Any]]) -> Tuple[Optional[str], Dict[str, Any]]:
    """``(name, config)`` of the plugin that rewrote the backbone of a run, from a checkpoint's
    ``solo_sparse`` entry (or a zoo file's ``gating`` record), or ``(None, {})`` when none did.
    A plugin this installation does not know is an error naming it."""
    for name, st in (plugin_state or {}).items():
        if get_plugin(name).rewrites_backbone:
            return name, dict((st or {}).get("config", {}))
    return None, {}


def rebuild_backbone(net: torch.nn.Module, plugin_state: Optional[Mapping[str, Any]],
                     path: Optional[str] = None) -> Tuple[torch.nn.Module, Optional[str], Dict[str, Any]]:
    """Convert ``net`` in place as the run's backbone-rewriting plugin did (gates, branch BNs), so a
    strict load finds every key; ``path`` picks the evaluation path. Returns ``(net, name, config)``."""
    name, cfg = backbone_plugin(plugin_state)
    if name is not None:
        get_plugin(name).rebuild_backbone(net, cfg, path)
    return net, name, cfg


def evaluates_masked(plugin_state: Optional[Mapping[str, Any]]) -> bool:
    """Whether the checkpoint's mask buffers belong to the evaluated network (see Plugin.evaluates_masked)."""
    return all(get_plugin(n).evaluates_masked(dict((st or {}).get("config", {})))
               for n, st in (plugin_state or {}).items())


def linear_lines(plugin_state: Optional[Mapping[str, Any]]) -> List[str]:
    """The ``- solo_sparse: <name>`` lines ``main_linear.py`` needs to load a run's backbone as trained
    (plugins that rewrite the backbone or keep weight masks)."""
    return [n for n in (plugin_state or {}) if get_plugin(n).rewrites_backbone or get_plugin(n).masks_weights]


# ----------------------------------------------------------------------------------------- config sections
def plugin_names(section: Mapping[str, Any]) -> List[str]:
    """The plugin(s) a ``solo_sparse:`` section asks for: ``plugin: x`` or ``plugins: [x, y]``.

    ``plugins: []`` (the ``solo_sparse/methods`` config) asks for none: only solo-sparse's extra
    methods (``rotnet``) are registered. A single name (``plugins: gmp``, ``++solo_sparse.plugins=gmp``) is a
    one-element list, never a string of one-letter names.
    """
    section = _to_plain(section) or {}
    if "plugins" in section and section["plugins"]:
        names = section["plugins"]
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{PREFIX}.plugins={names!r}: expected a plugin name or a list of plugin names")
    elif "plugins" in section and not section.get("plugin"):
        return []
    elif section.get("plugin"):
        names = [section["plugin"]]
    else:
        raise ConfigError(f"{PREFIX}: name a plugin ({PREFIX}.plugin: gmp), e.g. with '- solo_sparse: gmp' in defaults")
    return [str(n) for n in names]


#: keys of a ``solo_sparse:`` section that set the host, not a plugin (beside ``plugin`` / ``plugins``)
HOST_KEYS = ("nonfinite_patience",)


def host_options(section: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The section's host keys (:data:`HOST_KEYS`), validated: keyword arguments of
    :class:`~solo_sparse.core.plugin.PluginHost`."""
    from solo_sparse.core.plugin import check_patience

    section = dict(_to_plain(section) or {})
    return {"nonfinite_patience": check_patience(section["nonfinite_patience"])} \
        if "nonfinite_patience" in section else {}


def build_plugins(section: Optional[Mapping[str, Any]]) -> List[Plugin]:
    """Validate a ``solo_sparse:`` section and build its plugin(s).

    One plugin: its keys sit directly under ``solo_sparse:``. Several (``plugins: [a, b]``): each
    plugin's keys sit under ``solo_sparse.<name>:``; hooks run in list order.
    """
    section = dict(_to_plain(section) or {})
    names = plugin_names(section)
    host_options(section)
    if len(names) == 1:
        params = {k: v for k, v in section.items() if k not in ("plugin", "plugins", *HOST_KEYS)}
        return [get_plugin(names[0]).from_params(params)]
    stray = sorted(k for k in section if k not in ("plugin", "plugins", *HOST_KEYS, *names))
    if stray:
        raise ConfigError(f"{PREFIX}: with several plugins ({names}) keys go under {PREFIX}.<plugin>; "
                          f"unexpected top-level key(s): {', '.join(stray)}")
    return [get_plugin(n).from_params(section.get(n) or {}) for n in names]

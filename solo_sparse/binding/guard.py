"""Nothing silent about the one line: catch the two ways a ``solo_sparse:`` section can be ignored.

1. **A section without the line.** ``solo_sparse:`` keys in a YAML (or ``++solo_sparse.*`` overrides)
   but no ``- solo_sparse: <plugin>`` in its defaults: Hydra composes them, no callback runs, solo-learn
   trains dense. The only solo-sparse code that runs in every Hydra app is the search-path plugin, before
   the config is composed; it calls :func:`warn_unselected` with the command line, which reads the
   primary YAML named by ``--config-path``/``--config-name`` (without composing it) and prints one
   warning line when it holds a ``solo_sparse:`` section, or the command line sets ``solo_sparse.*``
   keys, while neither the YAML's defaults nor an override selects the group.
2. **A section that names another plugin than the line.** The group file sets ``solo_sparse.plugin`` and
   passes its plugin to the callback (``line``); Hydra merges the YAML's own ``solo_sparse.plugin`` under
   or over it depending on where ``_self_`` sits, so one of the two is silently dropped.
   :func:`line_conflict` compares the line with the primary YAML's raw section and with the
   command-line overrides; the callback refuses the job when they disagree.

Plain OmegaConf: no solo-learn import; every failure to read is ignored (the guard must never break a
Hydra app that is not ours).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from solo_sparse.core.config import PREFIX

_WARNED = False


def _load_raw(path: Path) -> Optional[Dict[str, Any]]:
    try:
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        return raw if isinstance(raw, dict) else None
    except Exception:  # noqa: BLE001 - not ours to judge
        return None


def defaults_line(raw: Dict[str, Any]) -> Optional[str]:
    """The plugin the YAML's defaults select for the ``solo_sparse`` group, or None."""
    for d in raw.get("defaults", []) or []:
        if isinstance(d, dict):
            for k, v in d.items():
                if str(k).split()[-1] in (PREFIX, f"/{PREFIX}"):
                    return str(v)
    return None


def section_plugins(section: Any) -> List[str]:
    """Plugin names a raw ``solo_sparse:`` section names itself (``plugin:`` or ``plugins:``)."""
    if not isinstance(section, dict):
        return []
    if section.get("plugins"):
        return [str(p) for p in section["plugins"]]
    return [str(section["plugin"])] if section.get("plugin") else []


def _override_plugins(overrides: Sequence[str]) -> List[str]:
    out = []
    for o in overrides:
        key, _, val = str(o).lstrip("+~").partition("=")
        if key == f"{PREFIX}.plugin" and val:
            out.append(val.strip("'\""))
    return out


def line_conflict(line: str, raw: Optional[Dict[str, Any]], overrides: Sequence[str], source: str) -> Optional[str]:
    """A message when the defaults line ``line`` and the YAML's section or the overrides name different
    plugins (the stacking form ``plugins: [a, b]`` must include the line's plugin)."""
    named = section_plugins((raw or {}).get(PREFIX))
    if named and line not in named:
        return (f"{source} selects '- {PREFIX}: {line}' in its defaults but its '{PREFIX}:' section names "
                f"{named if len(named) > 1 else named[0]!r}; Hydra would silently keep only one of them. "
                f"Use one plugin name (or list the line's plugin in '{PREFIX}.plugins')")
    for p in _override_plugins(overrides):
        if p != line:
            return (f"the command line sets {PREFIX}.plugin={p} but the defaults line selects '{line}'; "
                    f"select the plugin with {PREFIX}={p} instead")
    return None


def primary_config(hydra_cfg: Any) -> Optional[Path]:
    """The primary YAML of a Hydra job, from ``config.hydra`` (its config sources and config name)."""
    try:
        name = str(hydra_cfg.job.config_name)
        for src in hydra_cfg.runtime.config_sources:
            if src.get("provider") in ("main", "command-line") and str(src.get("schema")) == "file":
                p = Path(str(src["path"])) / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
                if p.is_file():
                    return p
    except Exception:  # noqa: BLE001
        return None
    return None


def _argv_config(argv: Sequence[str]) -> Optional[Path]:
    """The primary YAML named by ``--config-path``/``-cp`` and ``--config-name``/``-cn`` on a command line."""
    opts: Dict[str, str] = {}
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        for long, short in (("--config-path", "-cp"), ("--config-name", "-cn")):
            if a in (long, short) and i + 1 < len(argv):
                opts[long] = argv[i + 1]
            elif a.startswith(long + "="):
                opts[long] = a.split("=", 1)[1]
    if "--config-name" not in opts or "--config-path" not in opts:
        return None
    name = opts["--config-name"]
    name = name if name.endswith((".yaml", ".yml")) else name + ".yaml"
    cp = Path(opts["--config-path"])
    bases = [cp] if cp.is_absolute() else [Path(os.getcwd()) / cp, Path(argv[0]).resolve().parent / cp]
    for b in bases:
        if (b / name).is_file():
            return b / name
    return None


def unselected_message(raw: Optional[Dict[str, Any]], overrides: Sequence[str], source: str) -> Optional[str]:
    """A warning when solo_sparse keys are set but the group is not selected."""
    selected = raw is not None and defaults_line(raw) is not None
    selected = selected or any(str(o).lstrip("+~").split("=", 1)[0] == PREFIX for o in overrides)
    if selected:
        return None
    keys = [o for o in overrides if str(o).lstrip("+~").startswith(PREFIX + ".")]
    if raw is not None and isinstance(raw.get(PREFIX), dict):
        where = f"{source} has a '{PREFIX}:' section"
    elif keys:
        where = f"the command line sets {keys[0].split('=')[0].lstrip('+~')}"
    else:
        return None
    return (f"solo-sparse: warning: {where} but no '- {PREFIX}: <plugin>' line in its defaults (nor "
            f"{PREFIX}=<plugin> on the command line): no plugin runs and the job trains dense")


def warn_unselected(argv: Sequence[str] = ()) -> None:
    """Called by the search-path plugin in every Hydra app: one warning line, once per process."""
    global _WARNED
    if _WARNED:
        return
    try:
        argv = list(argv or sys.argv)
        path = _argv_config(argv)
        raw = _load_raw(path) if path is not None else None
        msg = unselected_message(raw, [a for a in argv[1:] if "=" in a and not a.startswith("-")],
                                 str(path) if path else "the config")
    except Exception:  # noqa: BLE001 - never break a Hydra app over a warning
        return
    if msg:
        _WARNED = True
        print(msg, file=sys.stderr, flush=True)

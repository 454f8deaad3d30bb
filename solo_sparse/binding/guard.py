"""Nothing silent about the one line: catch the ways a ``solo_sparse:`` section or a plugin's checkpoint can be
ignored.

1. **A section without the line.** ``solo_sparse:`` keys in a YAML (or ``++solo_sparse.*`` overrides)
   but no ``- solo_sparse: <plugin>`` in its defaults: Hydra composes them, no callback runs, solo-learn
   trains dense. The only solo-sparse code that runs in every Hydra app is the search-path plugin, before
   the config is composed; it calls :func:`warn_unselected` with the command line, which reads the
   primary YAML named by ``--config-path``/``--config-name`` and the files its defaults list includes
   (:func:`config_files`, without composing them) and prints one warning line when one of them holds a
   top-level ``solo_sparse:`` section, or the command line sets ``solo_sparse.*`` keys, while neither a
   defaults list nor an override selects the group.
2. **A section that names another plugin than the line.** The group file sets ``solo_sparse.plugin`` and
   passes its plugin to the callback (``line``); Hydra merges the YAML's own ``solo_sparse.plugin`` under
   or over it depending on where ``_self_`` sits, so one of the two is silently dropped.
   :func:`line_conflict` compares the line with the primary YAML's raw section and with the
   command-line overrides; the callback refuses the job when they disagree.
3. **A plugin's checkpoint without the line** (``main_linear.py``): the job's ``pretrained_feature_extractor``
   was trained with a plugin whose line the probe needs (gates, masks) and no line selects the group —
   solo-learn would load it with ``strict=False`` into a plain backbone. :func:`linear_message` reads the
   checkpoint's ``solo_sparse`` entry (memory-mapped, weights-only) and says which line to add.

Plain OmegaConf (and torch, lazily, to read a checkpoint): no solo-learn import; every failure to read is
ignored (the guard must never break a Hydra app that is not ours).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
        names = section["plugins"]
        return [names] if isinstance(names, str) else [str(p) for p in names] if isinstance(names, list) else []
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


def _global_package(path: Path) -> bool:
    """Whether a config file's header puts its keys at the top level (``# @package _global_``)."""
    try:
        with open(path) as f:
            head = [f.readline() for _ in range(5)]
    except OSError:
        return False
    return any(line.strip().replace(" ", "") == "#@package_global_" for line in head)


def config_files(primary: Path, limit: int = 64) -> List[Tuple[Path, Dict[str, Any], bool]]:
    """The primary YAML and the config files its defaults list includes, recursively (those found on disk:
    ``- name`` next to the including file, ``- group: option`` in its ``group/`` folder, a leading ``/`` from the
    primary's folder), as ``(path, raw content, top)``; ``top``: the file's keys land at the top level (the
    primary, what it includes by name, ``# @package _global_`` group files, ``group@_global_`` entries) — where a
    ``solo_sparse:`` section must sit to be read. Hydra's own groups (``hydra/...``) are skipped."""
    root = primary.parent
    out: List[Tuple[Path, Dict[str, Any], bool]] = []
    todo, seen = [(primary, True)], set()
    while todo and len(seen) < limit:
        path, top = todo.pop(0)
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        raw = _load_raw(path)
        if raw is None:
            continue
        top = top or _global_package(path)
        out.append((path, raw, top))
        for d in raw.get("defaults", []) or []:
            if isinstance(d, str) and d != "_self_":
                group, option, child_top = "", d, top
            elif isinstance(d, dict) and len(d) == 1:
                key, option = next(iter(d.items()))
                group, _, package = str(key).split()[-1].partition("@")
                child_top = package == "_global_"
            else:
                continue
            if not isinstance(option, str) or group.lstrip("/").startswith("hydra") or group.lstrip("/") == PREFIX:
                continue
            base = root if (group or option).startswith("/") else path.parent
            f = base / group.lstrip("/") / option.lstrip("/")
            todo.append((f if f.suffix in (".yaml", ".yml") else f.with_name(f.name + ".yaml"), child_top))
    return out


def _is_selected(files: Sequence[Tuple[Path, Dict[str, Any], bool]], overrides: Sequence[str]) -> bool:
    return any(defaults_line(raw) is not None for _, raw, _ in files) or any(
        str(o).lstrip("+~").split("=", 1)[0] == PREFIX for o in overrides)


def unselected_message(files: Sequence[Tuple[Path, Dict[str, Any], bool]], overrides: Sequence[str],
                       source: str) -> Optional[str]:
    """A warning when solo_sparse keys are set — in the primary YAML, in a file its defaults include, or on the
    command line — but no defaults line (in any of those files) or override selects the group."""
    if _is_selected(files, overrides):
        return None
    keys = [o for o in overrides if str(o).lstrip("+~").startswith(PREFIX + ".")]
    found = next((p for p, raw, top in files if top and isinstance(raw.get(PREFIX), dict)), None)
    if found is not None:
        where = f"{found} has a '{PREFIX}:' section" + (f" (included by {source})" if str(found) != source else "")
    elif keys:
        where = f"the command line sets {keys[0].split('=')[0].lstrip('+~')}"
    else:
        return None
    return (f"solo-sparse: warning: {where} but no '- {PREFIX}: <plugin>' line in its defaults (nor "
            f"{PREFIX}=<plugin> on the command line): no plugin runs and the job trains dense")


def _pretrained(files: Sequence[Tuple[Path, Dict[str, Any], bool]], overrides: Sequence[str]) -> Optional[str]:
    """The ``pretrained_feature_extractor`` a ``main_linear.py`` job loads (the command line wins), or None."""
    for o in reversed(list(overrides)):
        key, _, val = str(o).lstrip("+~").partition("=")
        if key == "pretrained_feature_extractor" and val:
            return val.strip("'\"")
    for _, raw, top in files:
        v = raw.get("pretrained_feature_extractor") if top else None
        if isinstance(v, str) and v and "${" not in v:
            return v
    return None


def linear_message(files: Sequence[Tuple[Path, Dict[str, Any], bool]], overrides: Sequence[str],
                   source: str) -> Optional[str]:
    """A warning when a ``main_linear.py`` job loads a checkpoint trained with plugins whose line it needs
    (gates, weight masks: ``solo-sparse sparsity`` names them) while no line selects the group: without it the
    probe trains on a plain backbone (gates dropped, silently — solo-learn loads with ``strict=False``)."""
    ck = _pretrained(files, overrides)
    if ck is None or _is_selected(files, overrides) or not Path(ck).is_file():
        return None
    import torch

    from solo_sparse.core.registry import linear_lines

    try:   # mmap: only the pickled structure is read, not the tensors
        state = torch.load(ck, map_location="cpu", weights_only=True, mmap=True).get("solo_sparse")
        lines = linear_lines(state if isinstance(state, dict) else None)
    except Exception:  # noqa: BLE001 - not a checkpoint we can judge: solo-learn will say what is wrong
        return None
    if not lines:
        return None
    add = " and ".join(f"'- {PREFIX}: {n}'" for n in lines)
    return (f"solo-sparse: warning: {ck} was trained with {', '.join(repr(n) for n in lines)} but {source} has no "
            f"'- {PREFIX}:' line in its defaults: main_linear.py would probe a plain backbone without the plugin's "
            f"gates/masks; add {add} to its defaults")


def warn_unselected(argv: Sequence[str] = ()) -> None:
    """Called by the search-path plugin in every Hydra app: at most one warning line per process."""
    global _WARNED
    if _WARNED:
        return
    try:
        argv = list(argv or sys.argv)
        path = _argv_config(argv)
        files = config_files(path) if path is not None else []
        overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
        source = str(path) if path else "the config"
        msg = unselected_message(files, overrides, source) or linear_message(files, overrides, source)
    except Exception:  # noqa: BLE001 - never break a Hydra app over a warning
        return
    if msg:
        _WARNED = True
        print(msg, file=sys.stderr, flush=True)

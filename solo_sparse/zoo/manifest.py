"""The zoo's manifest (``zoo/manifest.json``): entries, their files (local or https, verified by sha256
before use), loading and verification.
"""
from __future__ import annotations

import datetime
import difflib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from solo_sparse.core.files import PLAIN_NAME_RULE, atomic_path, file_sha256, is_plain_name, write_atomic
from solo_sparse.zoo.format import ARCHS, FORMAT, ZooError, build_module, read_backbone


def _default_zoo_dir() -> Path:
    """The zoo shipped with the package (``solo_sparse_zoo``), else a checkout's ``zoo/``."""
    try:
        import solo_sparse_zoo

        return Path(solo_sparse_zoo.__file__).resolve().parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "zoo"


ZOO_DIR = _default_zoo_dir()


def _env_dir(name: str) -> Optional[Path]:
    """A folder named by environment variable ``name``; unset, empty or blank all mean "not set" (an empty
    value must not silently mean the current directory)."""
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def manifest_path(root: Optional[Path] = None) -> Path:
    return Path(root or _env_dir("SOLO_SPARSE_ZOO") or ZOO_DIR) / "manifest.json"


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: manifest keys every entry must have (the rest are documentation)
REQUIRED = ("name", "file", "sha256", "size_bytes", "backbone")


def _check_entry(e: Any, where: Path) -> Dict[str, Any]:
    """One manifest entry, validated: every field that a later step trusts is checked here, with a one-line
    error naming the manifest, the entry and the field."""
    if not isinstance(e, dict):
        raise ZooError(f"{where}: an entry is a {type(e).__name__}, expected an object")
    label = f"{where}: entry {str(e.get('name', '?'))[:80]!r}"
    missing = [k for k in REQUIRED if k not in e]
    if missing:
        raise ZooError(f"{label} lacks {', '.join(missing)}")
    check_name(e["name"], label)
    if not isinstance(e["sha256"], str) or not _HEX64.match(e["sha256"]):
        raise ZooError(f"{label}: sha256 must be 64 lowercase hex characters, got {str(e['sha256'])[:80]!r}")
    if isinstance(e["size_bytes"], bool) or not isinstance(e["size_bytes"], int) or e["size_bytes"] <= 0:
        raise ZooError(f"{label}: size_bytes must be a positive integer, got {e['size_bytes']!r}")
    if not isinstance(e["file"], str) or not e["file"]:
        raise ZooError(f"{label}: file must be a path relative to the manifest or an https URL")
    if e["backbone"] not in ARCHS:
        raise ZooError(f"{label}: backbone {e['backbone']!r} is not one of {', '.join(ARCHS)}")
    return e


def check_name(name: Any, label: str = "zoo entry") -> str:
    """``name`` if it is a plain name (it becomes part of file names — exports, reports — and of printed
    lines), else a one-line ZooError (repr-quoted: a control character cannot spoof the line)."""
    if not is_plain_name(name):
        raise ZooError(f"{label}: name {str(name)[:80]!r} is not a plain name ({PLAIN_NAME_RULE})")
    return name


def _manifest(root: Optional[Path] = None) -> Dict[str, Any]:
    p = manifest_path(root)
    if not p.is_file():
        raise ZooError(f"no zoo manifest at {p} (set SOLO_SPARSE_ZOO or pass root=)")
    try:
        man = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(man, dict) or not isinstance(man.get("entries"), list):
        raise ZooError(f"{p}: expected an object with an 'entries' list")
    man["entries"] = [_check_entry(e, p) for e in man["entries"]]
    names = [e["name"] for e in man["entries"]]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise ZooError(f"{p}: entry name {dup!r} appears {names.count(dup)} times; names must be unique")
    return man


def list_entries(root: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every manifest entry (dicts, validated); also ``solo_sparse.zoo.list()``."""
    return _manifest(root)["entries"]


def entry(name: str, root: Optional[Path] = None) -> Dict[str, Any]:
    """One entry by name; an unknown name raises naming the closest ones."""
    entries = {e["name"]: e for e in list_entries(root)}
    if name not in entries:
        close = difflib.get_close_matches(name, entries, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; entries: {', '.join(sorted(entries))}"
        raise ZooError(f"unknown zoo entry {name!r}{hint}")
    return entries[name]


def cache_dir() -> Path:
    return _env_dir("SOLO_SPARSE_CACHE") or Path.home() / ".cache" / "solo_sparse" / "zoo"


def _allow_http() -> bool:
    return os.environ.get("SOLO_SPARSE_ALLOW_HTTP", "") == "1"


class _SchemeGuard(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to https (or http when explicitly allowed)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme
        if scheme != "https" and not (scheme == "http" and _allow_http()):
            raise ZooError(f"refusing a redirect from {req.full_url} to {newurl} (only https is followed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, timeout: float):
    """The HTTP response for ``url`` (redirects followed to https only); tests replace this function."""
    return urllib.request.build_opener(_SchemeGuard).open(url, timeout=timeout)


def _download(e: Mapping[str, Any], url: str, dest: Path, timeout: float) -> None:
    """Download ``url`` to ``dest`` through a temp file in the same folder, at most ``size_bytes`` bytes."""
    cap = int(e["size_bytes"])
    try:
        with atomic_path(dest) as part, _open(url, timeout) as r, open(part, "wb") as out:
            got = 0
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
                if got > cap:
                    raise ZooError(f"zoo entry {e['name']!r}: {url} sends more than the manifest's size_bytes "
                                   f"({cap}); refused")
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise ZooError(f"zoo entry {e['name']!r} is remote ({url}) and could not be downloaded: {exc}. "
                       f"Offline? Download it elsewhere and place it at {dest}") from exc


def _local_file(e: Mapping[str, Any], root: Optional[Path]) -> Path:
    zoo_root = manifest_path(root).parent.resolve()
    f = str(e["file"])
    if os.path.isabs(f) or "://" in f:
        raise ZooError(f"zoo entry {e['name']!r}: file {f!r} must be a path inside the zoo folder or an https URL")
    path = (zoo_root / f).resolve()
    if not path.is_relative_to(zoo_root):
        raise ZooError(f"zoo entry {e['name']!r}: file {f!r} resolves outside the zoo folder {zoo_root}; refused")
    if not path.is_file():
        raise ZooError(f"zoo entry {e['name']!r}: file {path} is missing")
    return path


def fetch(e: Mapping[str, Any], root: Optional[Path] = None, timeout: float = 30.0) -> Path:
    """Local path of an entry's file, verified against its sha256.

    Local files must lie inside the zoo folder. Remote files (https; plain http only with
    ``SOLO_SPARSE_ALLOW_HTTP=1``) are cached as ``<cache>/<sha256>.safetensors``, downloaded through a temp
    file, at most ``size_bytes`` bytes, redirects followed to https only. A file that fails its hash is
    refused; it is removed only if this call downloaded it (a cached file someone placed stays, named)."""
    e = _check_entry(dict(e), manifest_path(root))
    f = str(e["file"])
    scheme = urllib.parse.urlsplit(f).scheme if "://" in f else ""
    downloaded = False
    if scheme:
        if scheme != "https" and not (scheme == "http" and _allow_http()):
            raise ZooError(f"zoo entry {e['name']!r}: {f} is not https; plain http needs SOLO_SPARSE_ALLOW_HTTP=1")
        path = cache_dir().resolve() / f"{e['sha256']}.safetensors"
        if not path.exists():
            _download(e, f, path, timeout)
            downloaded = True
    else:
        path = _local_file(e, root)
    if path.stat().st_size != e["size_bytes"]:
        detail = f"{path.stat().st_size} bytes, the manifest says {e['size_bytes']}"
        if downloaded:
            path.unlink(missing_ok=True)
        raise ZooError(f"zoo entry {e['name']!r}: size mismatch for {path} ({detail}); refused"
                       + (" and removed" if downloaded else ""))
    got = file_sha256(path)
    if got != e["sha256"]:
        if downloaded:
            path.unlink(missing_ok=True)
        raise ZooError(f"zoo entry {e['name']!r}: sha256 mismatch for {path} (expected {e['sha256'][:16]}…, "
                       f"got {got[:16]}…); refused" + (" and removed" if downloaded else ""))
    return path


def check_against_manifest(e: Mapping[str, Any], masks: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """The file agrees with its manifest entry: architecture, method (when the file records it),
    plugin (when the file records gates) and density of the masks."""
    label = f"zoo entry {e['name']!r}"
    if meta.get("arch") != e["backbone"]:
        raise ZooError(f"{label}: the file holds a {meta.get('arch')!r} backbone, the manifest says {e['backbone']!r}")
    if meta.get("method") and e.get("method") and meta["method"] != e["method"]:
        raise ZooError(f"{label}: the file was trained with {meta['method']!r}, the manifest says {e['method']!r}")
    gating = meta.get("gating") or {}
    if gating and gating.get("plugin") not in (e.get("plugins") or {}):
        raise ZooError(f"{label}: the file's gates are {gating.get('plugin')!r}, not among the manifest's plugins")
    if e.get("density") is not None and masks:
        kept = sum(int(m.sum()) for m in masks.values())
        tot = sum(m.numel() for m in masks.values())
        if abs(kept / tot - e["density"]) > 1e-3:
            raise ZooError(f"{label}: density {kept / tot:.4f} in the file, {e['density']:.4f} in the manifest")


def verify(name: Optional[str] = None, root: Optional[Path] = None) -> Dict[str, str]:
    """{entry: "ok" | error} for one or every entry: size, sha256, format, agreement with the manifest,
    and a strict module build."""
    out = {}
    for e in ([entry(name, root)] if name else list_entries(root)):
        try:
            state, masks, meta = read_backbone(fetch(e, root))
            check_against_manifest(e, masks, meta)
            del state
            build_module(*read_backbone(fetch(e, root)))
            out[e["name"]] = "ok"
        except Exception as exc:   # noqa: BLE001 - report every entry, then fail in the caller
            out[e["name"]] = f"{type(exc).__name__}: {exc}"
    return out


def load(name: str, form: str = "solo", root: Optional[Path] = None) -> nn.Module:
    """A ready backbone of entry ``name`` (verified; masks and gates in place), in eval mode."""
    return load_with_meta(name, form, root)[0]


def load_with_meta(name: str, form: str = "solo", root: Optional[Path] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """:func:`load` and the file's metadata (``gating``: the plugin that rebuilt the backbone, if one did)."""
    e = entry(name, root)
    state, masks, meta = read_backbone(fetch(e, root))
    check_against_manifest(e, masks, meta)
    return build_module(state, masks, meta, form), meta


def load_file(path: Path, form: str = "solo") -> nn.Module:
    """A ready backbone from a zoo-format file outside the manifest (e.g. a compact export)."""
    return build_module(*read_backbone(Path(path)), form=form)


def add_entry(root: Path, record: Dict[str, Any]) -> None:
    """Insert or replace an entry in ``root/manifest.json`` (file written atomically)."""
    check_name(record.get("name"), "add_entry")
    p = manifest_path(root)
    man = json.loads(p.read_text()) if p.exists() else {"format": FORMAT, "entries": []}
    man["entries"] = [x for x in man["entries"] if x["name"] != record["name"]] + [record]
    man["entries"].sort(key=lambda x: x["name"])
    write_atomic(p, json.dumps(man, indent=2) + "\n")


def today() -> str:
    return datetime.date.today().isoformat()

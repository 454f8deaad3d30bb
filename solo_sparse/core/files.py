"""Every file solo-sparse writes is written atomically, here: to a temp file in the destination's folder, flushed
to disk (fsync), then renamed over the destination (``os.replace``). A full disk, ``ulimit -f`` or a kill while
writing leaves the previous file intact (or none), never a truncated one; the temp file is removed on failure.

    write_atomic(path, text_or_bytes)          # small files: JSON, markdown, manifests
    write_safetensors(path, tensors, metadata) # safetensors files (masks, states, zoo backbones)
    with atomic_path(path) as tmp:             # other writers that take a file name (torch.save, savefig)
        torch.save(obj, tmp)

:func:`file_sha256` is the one content hash of a file (zoo entries, IMP configs, bench config digests).

Names that become part of a path or of a printed line (zoo entries, suites, run ids) are plain names
(:func:`is_plain_name`): no folder separator, no ``..``, no control character.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

#: what :func:`is_plain_name` accepts, for error messages
PLAIN_NAME_RULE = "letters, digits and . _ : - (first a letter or digit), no '..', at most 128 characters"
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_plain_name(name: Any) -> bool:
    """A string safe to use as one path component and to print: :data:`PLAIN_NAME_RULE`."""
    return isinstance(name, str) and _PLAIN.fullmatch(name) is not None and ".." not in name


def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex), read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:          # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temp path next to ``path`` (same suffix, so writers that pick a format from it still do); when the
    block ends without an exception it is fsynced and renamed over ``path``. Parent folders are made. The
    file gets the old file's permissions, or 0644 (readable, as shared results and zoo files are meant to be)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.stem}.", suffix=f".part{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_safetensors(path: Union[str, Path], tensors: Mapping[str, Any],
                      metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``tensors`` ({name: torch tensor}) and ``metadata`` (strings) to the safetensors file ``path``
    atomically (:func:`atomic_path`); returns ``path``."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=None if metadata is None else dict(metadata))
    return Path(path)

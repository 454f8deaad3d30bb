"""Model zoo of pruned and gated backbones: manifest, compressed safetensors storage, verification,
loading into a ready ``nn.Module``, export to solo-learn / torchvision checkpoints.

Storage (``*.safetensors``, never pickled; format ``solo-sparse-zoo/1`` in the metadata):

* dense tensors as they are (``--fp16`` stores floating tensors as float16; they load as float32);
* a weight-sparse tensor ``k`` (a conv with a mask) as ``k::bitmask`` (uint8, the flattened mask
  packed 8 per byte, little bit order) + ``k::values`` (its non-zero values in row-major order);
  its shape is in the metadata (``"shapes"``). A 90%-sparse fp32 conv costs 1/32 (bitmask) + 0.1
  (values) = 0.13 of dense; with fp16 values 0.08.
* metadata: ``format``, ``arch``, ``gating`` (plugin name and config for gated backbones, so gates
  are rebuilt) and ``shapes``.

Manifest (``zoo/manifest.json``): ``{"entries": [...]}``, each entry with name, algorithm, plugin and
its full config, method, backbone, dataset, epochs, eval protocol, accuracies, density, FLOPs, file
(path relative to the manifest, or an https URL), sha256, size, the solo-learn config that trained
it, date and license. Loading verifies sha256 first; remote files are downloaded to a cache, a
partial or mismatching download is removed.
"""
from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .sparsifier import MASK

FORMAT = "solo-sparse-zoo/1"
SEP = "::"


def _default_zoo_dir() -> Path:
    """The zoo shipped with the package (``solo_sparse_zoo``), else a checkout's ``zoo/``."""
    try:
        import solo_sparse_zoo

        return Path(solo_sparse_zoo.__file__).resolve().parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "zoo"


ZOO_DIR = _default_zoo_dir()


class ZooError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ storage
def _pack(mask: torch.Tensor) -> torch.Tensor:
    """bool tensor -> uint8 bits (8 per byte, little bit order)."""
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    bits = flat.view(-1, 8) << torch.arange(8, dtype=torch.uint8)
    return bits.sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].bool()


def compress_state(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], fp16: bool = False
                   ) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[int]]]:
    """Backbone ``state`` (weights) + ``masks`` {weight key: bool mask} -> (tensors, shapes)."""
    out: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, List[int]] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.half()
        if k in masks:
            m = masks[k].bool().cpu()
            if m.shape != v.shape:
                raise ZooError(f"mask of {k!r} has shape {tuple(m.shape)}, weight {tuple(v.shape)}")
            out[k + SEP + "bitmask"] = _pack(m)
            out[k + SEP + "values"] = v.flatten()[m.flatten()].contiguous()
            shapes[k] = [int(d) for d in v.shape]
        else:
            out[k] = v.contiguous()
    return out, shapes


def decompress_state(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, List[int]]
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Inverse of :func:`compress_state`: (float32 state, {weight key: bool mask})."""
    state: Dict[str, torch.Tensor] = {}
    masks: Dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if SEP in k:
            continue
        state[k] = v.float() if v.is_floating_point() else v
    for k, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        m = _unpack(tensors[k + SEP + "bitmask"], n)
        vals = tensors[k + SEP + "values"].float()
        if int(m.sum()) != vals.numel():
            raise ZooError(f"{k!r}: {int(m.sum())} kept positions but {vals.numel()} values (corrupt file)")
        w = torch.zeros(n, dtype=torch.float32)
        w[m] = vals
        state[k] = w.view(shape)
        masks[k] = m.view(shape)
    return state, masks


def save_backbone(path: Path, state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *,
                  arch: str = "resnet18", gating: Optional[Mapping[str, Any]] = None, fp16: bool = False,
                  compact_widths: Optional[Mapping[str, int]] = None) -> None:
    """Write a backbone file (atomically: a temp file renamed into place). ``compact_widths``: the
    internal channel counts of a compacted ResNet (``solo_sparse.compact.widths``)."""
    from safetensors.torch import save_file

    tensors, shapes = compress_state(state, masks, fp16)
    meta = {"format": FORMAT, "arch": arch, "gating": json.dumps(gating or {}), "shapes": json.dumps(shapes),
            "fp16": str(bool(fp16)), "compact": json.dumps(dict(compact_widths or {}))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)      # mkstemp makes 0600; a zoo file is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_backbone(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], Dict[str, Any]]:
    """(float32 state, masks, metadata) of a backbone file; safetensors only, never unpickled."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ZooError(f"{path}: not a {FORMAT} file (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state, masks = decompress_state(tensors, json.loads(meta.get("shapes", "{}")))
    meta["gating"] = json.loads(meta.get("gating", "{}"))
    meta["compact"] = json.loads(meta.get("compact", "{}"))
    return state, masks, meta


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ building modules
def build_module(state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                 form: str = "solo") -> nn.Module:
    """A ready module: solo-learn's ResNet form (``fc`` = Identity, masks as ``weight_mask`` buffers,
    gates converted and routed to their evaluation path) or ``torchvision`` form (a plain torchvision
    ResNet with the masked weights, ``fc`` = Identity; refused for gated backbones, whose gates are
    not torchvision modules)."""
    from .backbones import apply_gating
    from .evaluate import build_resnet

    if form not in ("solo", "torchvision"):
        raise ZooError(f"form must be 'solo' or 'torchvision', got {form!r}")
    gating = meta.get("gating") or {}
    if form == "torchvision" and gating:
        raise ZooError(f"a {gating.get('plugin')} backbone has gates: load it with form='solo' (or export it with "
                       f"`solo-sparse zoo export --format solo` for main_linear.py)")
    net = build_resnet(meta.get("arch", "resnet18"))
    if meta.get("compact"):
        from .compact import shrink_to

        shrink_to(net, meta["compact"])
    if gating:
        apply_gating(net, gating["plugin"], gating["config"])
    res = net.load_state_dict(dict(state), strict=False)
    if res.missing_keys or res.unexpected_keys:
        first = (res.missing_keys or res.unexpected_keys)[0]
        what = "missing from the file" if res.missing_keys else "not in the model"
        raise ZooError(f"architecture mismatch: key {first!r} {what} (arch {meta.get('arch')}, "
                       f"{len(res.missing_keys)} missing, {len(res.unexpected_keys)} unexpected)")
    for k, m in masks.items():
        mod = net.get_submodule(k.rsplit(".", 1)[0])
        with torch.no_grad():
            mod.weight.mul_(m.to(mod.weight.dtype))
        if form == "solo":
            mod.register_buffer(MASK, m.clone(), persistent=True)
    return net.eval()


# ------------------------------------------------------------------------------ manifest
def manifest_path(root: Optional[Path] = None) -> Path:
    return Path(root or os.environ.get("SOLO_SPARSE_ZOO", ZOO_DIR)) / "manifest.json"


def _manifest(root: Optional[Path] = None) -> Dict[str, Any]:
    p = manifest_path(root)
    if not p.exists():
        raise ZooError(f"no zoo manifest at {p} (set SOLO_SPARSE_ZOO or pass root=)")
    return json.loads(p.read_text())


def list_entries(root: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every manifest entry (dicts); also ``solo_sparse.zoo.list()``."""
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
    return Path(os.environ.get("SOLO_SPARSE_CACHE", Path.home() / ".cache" / "solo_sparse" / "zoo"))


def fetch(e: Mapping[str, Any], root: Optional[Path] = None, timeout: float = 30.0) -> Path:
    """Local path of an entry's file, verified against its sha256 (downloads remote entries)."""
    f = str(e["file"])
    if f.startswith(("http://", "https://")):
        dest = cache_dir() / f"{e['sha256'][:16]}-{Path(f).name}"
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_suffix(dest.suffix + ".part")
            try:
                with urllib.request.urlopen(f, timeout=timeout) as r, open(part, "wb") as out:
                    shutil.copyfileobj(r, out)
            except (urllib.error.URLError, OSError) as exc:
                part.unlink(missing_ok=True)
                raise ZooError(f"zoo entry {e['name']!r} is remote ({f}) and could not be downloaded: {exc}. "
                               f"Offline? Download it elsewhere and place it at {dest}") from exc
            os.replace(part, dest)
        path = dest
    else:
        path = manifest_path(root).parent / f
        if not path.exists():
            raise ZooError(f"zoo entry {e['name']!r}: file {path} is missing")
    got = sha256(path)
    if got != e["sha256"]:
        if f.startswith(("http://", "https://")):
            path.unlink(missing_ok=True)
        raise ZooError(f"zoo entry {e['name']!r}: sha256 mismatch for {path} (expected {e['sha256'][:16]}…, "
                       f"got {got[:16]}…); refused" + (" and removed" if f.startswith("http") else ""))
    return path


def verify(name: Optional[str] = None, root: Optional[Path] = None) -> Dict[str, str]:
    """{entry: "ok" | error} for one or every entry: sha256, format, and a strict module build."""
    out = {}
    for e in ([entry(name, root)] if name else list_entries(root)):
        try:
            state, masks, meta = read_backbone(fetch(e, root))
            net = build_module(state, masks, meta)
            if e.get("density") is not None and masks:
                kept = sum(int(m.sum()) for m in masks.values())
                tot = sum(m.numel() for m in masks.values())
                if abs(kept / tot - e["density"]) > 1e-3:
                    raise ZooError(f"density {kept / tot:.4f} in the file, {e['density']:.4f} in the manifest")
            del net
            out[e["name"]] = "ok"
        except Exception as exc:   # report every entry, then fail in the caller
            out[e["name"]] = f"{type(exc).__name__}: {exc}"
    return out


def load(name: str, form: str = "solo", root: Optional[Path] = None) -> nn.Module:
    """A ready backbone of entry ``name`` (verified; masks and gates in place), in eval mode."""
    e = entry(name, root)
    state, masks, meta = read_backbone(fetch(e, root))
    return build_module(state, masks, meta, form)


def load_file(path: Path, form: str = "solo") -> nn.Module:
    """A ready backbone from a zoo-format file outside the manifest (e.g. a compact export)."""
    return build_module(*read_backbone(Path(path)), form=form)


def export_compact(name: str, out: Path, channel_density: Optional[float] = None, root: Optional[Path] = None,
                   fp16: bool = False) -> Dict[str, Any]:
    """Write a compacted copy of entry ``name`` (zoo format, ``compact`` widths in the metadata) and
    return {path, kept channels, MACs, max output difference}. ``channel_density`` first prunes the
    internal channels to that fraction (``solo_sparse.compact.channel_prune``); without it only the
    channels that carry nothing already are removed (exact)."""
    from . import compact as C

    net = load(name, "solo", root)
    if channel_density is not None:
        C.channel_prune(net, channel_density)
    small = C.compact(net)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((small(x) - net(x)).abs().max())
    sd = small.state_dict()
    masks = {k[: -len(MASK) - 1] + ".weight": v for k, v in sd.items() if k.endswith("." + MASK)}
    weights = {k: v for k, v in sd.items() if not k.endswith("." + MASK)}
    save_backbone(Path(out), weights, masks, arch=entry(name, root).get("backbone", "resnet18"), fp16=fp16,
                  compact_widths=C.widths(small))
    full, kept = sum(C.widths(net).values()), sum(C.widths(small).values())
    return {"path": str(out), "internal_channels": [kept, full], "macs": [C.macs(small), C.macs(net)],
            "max_abs_diff": diff, "size_bytes": Path(out).stat().st_size}


def export(name: str, out: Path, fmt: str = "solo", root: Optional[Path] = None) -> Path:
    """Write ``solo``: a solo-learn checkpoint (``state_dict`` with ``backbone.*`` and the plugin
    state ``solo_sparse``) that the unchanged ``main_linear.py`` loads with no missing key (with the
    entry's plugin line for gated backbones); or ``torchvision``: a plain ResNet state dict."""
    e = entry(name, root)
    state, masks, meta = read_backbone(fetch(e, root))
    net = build_module(state, masks, meta, "solo" if fmt == "solo" else "torchvision")
    sd = {k: v for k, v in net.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "solo":
        gating = meta.get("gating") or {}
        payload = {"state_dict": {f"backbone.{k}": v for k, v in sd.items()},
                   "solo_sparse": ({gating["plugin"]: {"config": gating["config"]}} if gating else {}),
                   "zoo_entry": name}
        torch.save(payload, out)
    elif fmt == "torchvision":
        torch.save({k: v for k, v in sd.items() if not k.endswith(MASK)}, out)
    else:
        raise ZooError(f"export format must be 'solo' or 'torchvision', got {fmt!r}")
    return out


def add_entry(root: Path, record: Dict[str, Any]) -> None:
    """Insert or replace an entry in ``root/manifest.json`` (file written atomically)."""
    p = manifest_path(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    man = json.loads(p.read_text()) if p.exists() else {"format": FORMAT, "entries": []}
    man["entries"] = [x for x in man["entries"] if x["name"] != record["name"]] + [record]
    man["entries"].sort(key=lambda x: x["name"])
    tmp = p.with_suffix(".json.part")
    tmp.write_text(json.dumps(man, indent=2) + "\n")
    os.replace(tmp, p)


def today() -> str:
    return datetime.date.today().isoformat()


#: ``solo_sparse.zoo.list()`` — the documented name (shadows the builtin inside this module only
#: after this line; nothing below uses the builtin)
list = list_entries  # noqa: A001

"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, and image-folder helpers.

Plain numpy/PIL/torch; no download ever happens here. The Debian package installs the original
idx files under ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from solo_sparse.core.files import write_atomic

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTMissing(FileNotFoundError):
    """The idx files are not where we looked."""


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str, source: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for ``split`` in {train, test}."""
    if split not in _FILES:
        raise ValueError(f"split={split!r}: allowed 'train' or 'test'")
    root = Path(source or os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR))
    img_f, lab_f = (root / f for f in _FILES[split])
    if not img_f.exists() or not lab_f.exists():
        raise FashionMNISTMissing(
            f"Fashion-MNIST idx files not found in {root} (looked for {img_f.name}, {lab_f.name}). "
            "Install the Debian package: apt-get install dataset-fashion-mnist "
            "(or pass --source / set FASHION_MNIST_DIR to a folder holding the four .gz files)."
        )
    return _read_idx(img_f), _read_idx(lab_f).astype(np.int64)


def first_per_class(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices of the first ``per_class`` samples of every class (all when None), sorted."""
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ValueError(f"per_class={per_class}: must be >= 1")
    idx = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def export_image_folder(
    out: str,
    source: Optional[str] = None,
    train_per_class: Optional[int] = None,
    val_per_class: Optional[int] = None,
) -> Dict:
    """Write solo-learn's ``custom`` layout (``train/<class>/*.png``, ``val/<class>/*.png``, RGB).

    Idempotent: a folder whose ``meta.json`` records the same subset is left as it is.
    """
    from PIL import Image

    out_p = Path(out)
    want = {"train_per_class": train_per_class, "val_per_class": val_per_class}
    meta_p = out_p / "meta.json"
    if meta_p.exists():
        meta = json.loads(meta_p.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            return meta
        raise FileExistsError(f"{out} holds a different subset ({meta_p}); choose another --out or delete it")
    counts = {}
    for split, folder, per_class in (("train", "train", train_per_class), ("test", "val", val_per_class)):
        images, labels = load_fashion_mnist(split, source)
        keep = first_per_class(labels, per_class)
        for c in FMNIST_CLASSES:
            (out_p / folder / c).mkdir(parents=True, exist_ok=True)
        for i in keep:
            Image.fromarray(images[i]).convert("RGB").save(out_p / folder / FMNIST_CLASSES[labels[i]] / f"{i:05d}.png")
        counts[folder] = int(len(keep))
    meta = dict(want, train_images=counts["train"], val_images=counts["val"], source="dataset-fashion-mnist")
    write_atomic(meta_p, json.dumps(meta, indent=2))
    return meta

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from solo_sparse.tools.data import FMNIST_CLASSES, FashionMNISTMissing, export_image_folder, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]


def write_idx(path, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for split, n in (("train", 60), ("t10k", 30)):
        labels = np.arange(n) % 10
        write_idx(src / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(src / f"{split}-labels-idx1-ubyte.gz", labels)
    return src


def test_reader_and_export(fake_fmnist, tmp_path):
    x, y = load_fashion_mnist("train", str(fake_fmnist))
    assert x.shape == (60, 28, 28) and y.tolist()[:3] == [0, 1, 2]
    out = tmp_path / "out"
    meta = export_image_folder(str(out), source=str(fake_fmnist), train_per_class=2)
    assert meta["train_images"] == 20 and meta["val_images"] == 30
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(FMNIST_CLASSES)
    from PIL import Image

    img = Image.open(next((out / "val" / "bag").iterdir()))
    assert img.mode == "RGB" and img.size == (28, 28)
    # idempotent for the same subset, refuses a different one
    assert export_image_folder(str(out), source=str(fake_fmnist), train_per_class=2) == meta
    with pytest.raises(FileExistsError):
        export_image_folder(str(out), source=str(fake_fmnist), train_per_class=3)


def test_missing_package_names_it(tmp_path):
    with pytest.raises(FashionMNISTMissing, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_fashion_mnist.py"), "--source", str(tmp_path),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "dataset-fashion-mnist" in r.stderr

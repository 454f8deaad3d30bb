#!/usr/bin/env python
"""Turn the Debian package ``dataset-fashion-mnist`` into solo-learn's ``custom`` layout.

Writes ``<out>/train/<class>/<idx>.png`` and ``<out>/val/<class>/<idx>.png`` (RGB, 28x28; the
solo-learn augmentation pipelines resize them) and ``<out>/meta.json`` with the exact subset.

    python scripts/prepare_fashion_mnist.py --out data/fmnist --train-per-class 500

``--train-per-class`` takes the first N images of each class from the official training split
(deterministic); ``--val-per-class`` does the same on the official test split (default: all 1000).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the engine's reader is the single implementation; this script is its command-line front
try:
    from solo_sparse.tools.data import FMNIST_CLASSES, FashionMNISTMissing, export_image_folder
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from solo_sparse.tools.data import FMNIST_CLASSES, FashionMNISTMissing, export_image_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/fmnist", help="output folder (train/ and val/ inside)")
    p.add_argument("--source", default=None, help="folder with the idx .gz files (default: the Debian package's)")
    p.add_argument("--train-per-class", type=int, default=None, help="images per class from the train split")
    p.add_argument("--val-per-class", type=int, default=None, help="images per class from the test split")
    args = p.parse_args(argv)
    try:
        meta = export_image_folder(
            args.out, source=args.source, train_per_class=args.train_per_class, val_per_class=args.val_per_class
        )
    except FashionMNISTMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {meta['train_images']} train and {meta['val_images']} val images "
          f"({len(FMNIST_CLASSES)} classes) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

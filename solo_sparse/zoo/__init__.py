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

Modules: :mod:`~solo_sparse.zoo.format` (storage), :mod:`~solo_sparse.zoo.manifest` (entries,
fetching, verification, loading), :mod:`~solo_sparse.zoo.export` (solo-learn / torchvision /
compact exports).

Manifest (``zoo/manifest.json``): ``{"entries": [...]}``, each entry with name, algorithm, plugin and
its full config, method, backbone, dataset, epochs, eval protocol, accuracies, density, FLOPs, file
(path relative to the manifest, or an https URL), sha256, size, the solo-learn config that trained
it, date and license. Loading verifies sha256 first; remote files are downloaded to a cache, a
partial or mismatching download is removed.
"""
from __future__ import annotations

from solo_sparse.core.files import file_sha256 as sha256
from solo_sparse.zoo.export import export, export_compact
from solo_sparse.zoo.format import (
                                    FORMAT,
                                    SEP,
                                    ZooError,
                                    build_module,
                                    compress_state,
                                    decompress_state,
                                    read_backbone,
                                    save_backbone,
)
from solo_sparse.zoo.manifest import (
                                    ZOO_DIR,
                                    add_entry,
                                    cache_dir,
                                    entry,
                                    fetch,
                                    list_entries,
                                    load,
                                    load_file,
                                    load_with_meta,
                                    manifest_path,
                                    today,
                                    verify,
)

#: ``solo_sparse.zoo.list()`` — the documented name (shadows the builtin inside this module only)
list = list_entries  # noqa: A001

__all__ = ["FORMAT", "SEP", "ZOO_DIR", "ZooError", "add_entry", "build_module", "cache_dir", "compress_state",
           "decompress_state", "entry", "export", "export_compact", "fetch", "list", "list_entries", "load",
           "load_file", "load_with_meta", "manifest_path", "read_backbone", "save_backbone", "sha256", "today",
           "verify"]

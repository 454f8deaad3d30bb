"""The zoo's file format against a committed golden file (tests/data/zoo_golden.safetensors, written once by
tests/data/make_zoo_golden.py): its bytes and its decoding are known, so any drift of the format fails here —
e.g. flipping the bit order in both pack and unpack keeps every round trip and ``zoo verify`` green while every
shipped entry would load scrambled weights.

The known tensors are spelled out below, independently of the script. Bitmasks pack the flattened mask 8 per
byte in *little* bit order (position 8 j + i is bit i of byte j), so:

    conv1 (18 positions) kept 0, 3 | 9, 10 | 17  ->  bytes 0b00001001, 0b00000110, 0b00000010 = 9, 6, 2
    conv2 (8 positions)  kept 1, 6               ->  byte  0b01000010 = 66
"""
import json
from pathlib import Path

import torch

from solo_sparse import zoo

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "zoo_golden.safetensors"
C1, C2 = "layer1.0.conv1.weight", "layer1.0.conv2.weight"
SHAPES = {C1: [2, 1, 3, 3], C2: [1, 2, 2, 2]}
KEPT = {C1: [0, 3, 9, 10, 17], C2: [1, 6]}
VALUES = {C1: [1.5, -2.0, 0.25, 3.0, -0.5], C2: [0.75, -1.25]}
BYTES = {C1: [9, 6, 2], C2: [66]}
DENSE = {"bn1.running_mean": torch.tensor([0.1, -0.2, 0.3], dtype=torch.float32),
         "bn1.num_batches_tracked": torch.tensor(7, dtype=torch.int64)}


def _known():
    state, masks = dict(DENSE), {}
    for k, shape in SHAPES.items():
        n = torch.Size(shape).numel()
        w, m = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
        m[KEPT[k]] = True
        w[KEPT[k]] = torch.tensor(VALUES[k])
        state[k], masks[k] = w.view(shape), m.view(shape)
    return state, masks


def _raw():
    from safetensors import safe_open

    with safe_open(str(GOLDEN), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_golden_file_bytes_are_the_documented_encoding():
    tensors, meta = _raw()
    assert set(tensors) == {*DENSE, *(k + zoo.SEP + p for k in SHAPES for p in ("bitmask", "values"))}
    assert meta["format"] == zoo.FORMAT and meta["arch"] == "resnet18" and meta["fp16"] == "False"
    assert json.loads(meta["shapes"]) == SHAPES
    for k in SHAPES:
        bits = tensors[k + zoo.SEP + "bitmask"]
        assert bits.dtype == torch.uint8 and bits.tolist() == BYTES[k], k
        assert tensors[k + zoo.SEP + "values"].tolist() == VALUES[k], k


def test_golden_file_decodes_to_the_known_tensors():
    state, masks, meta = zoo.read_backbone(GOLDEN)
    want_state, want_masks = _known()
    assert set(state) == set(want_state) and set(masks) == set(want_masks)
    for k, v in want_state.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    for k, m in want_masks.items():
        assert torch.equal(masks[k], m), k
        assert masks[k].flatten().nonzero().flatten().tolist() == KEPT[k], k


def test_the_writer_still_produces_the_golden_tensors():
    tensors, shapes = zoo.compress_state(*_known())
    golden, _ = _raw()
    assert shapes == SHAPES and set(tensors) == set(golden)
    for k, v in golden.items():
        assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), k

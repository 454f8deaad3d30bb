"""Hostile and careless inputs: the zoo trusts nothing in a manifest or a file header, and every CLI error is
one clear line with a non-zero exit code (no traceback without --debug)."""
import io
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from solo_sparse import zoo
from solo_sparse.tools.cli import main
from solo_sparse.tools.evaluate import build_resnet
from solo_sparse.zoo import manifest as zoo_manifest


# ----------------------------------------------------------------------------- a small valid zoo
def _net(density=0.3, seed=0):
    torch.manual_seed(seed)
    net = build_resnet("resnet18").eval()
    masks = {}
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and name != "conv1":
            m = torch.rand(mod.weight.shape) < density
            with torch.no_grad():
                mod.weight.mul_(m)
            masks[name + ".weight"] = m
    return net, masks


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    net, masks = _net()
    f = d / "toy.safetensors"
    zoo.save_backbone(f, net.state_dict(), masks, method="byol")
    return f, net


def _zoo(tmp_path, good_file, **over):
    f, _ = good_file
    root = tmp_path / "zoo"
    (root / "weights").mkdir(parents=True, exist_ok=True)
    dst = root / "weights" / "toy.safetensors"
    dst.write_bytes(f.read_bytes())
    rec = {"name": "toy", "backbone": "resnet18", "method": "byol", "file": "weights/toy.safetensors",
           "sha256": zoo.sha256(dst), "size_bytes": dst.stat().st_size, **over}
    (root / "manifest.json").write_text(json.dumps({"entries": [rec]}))
    return root


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- the manifest
def test_crafted_sha256_cannot_delete_a_file_outside_the_cache(tmp_path, good_file, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    target = victim / "abc-x.safetensors"
    target.write_text("precious")
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(cache))
    root = _zoo(tmp_path, good_file, file="https://example.invalid/x.safetensors", sha256="../victim/abc")
    with pytest.raises(zoo.ZooError, match="sha256 must be 64 lowercase hex"):
        zoo.load("toy", root=root)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("sha", ["0" * 63, "G" * 64, "0" * 64 + "/..", 12, None])
def test_sha256_field_must_be_64_hex(tmp_path, good_file, sha):
    root = _zoo(tmp_path, good_file, sha256=sha)
    with pytest.raises(zoo.ZooError, match="sha256 must be 64"):
        zoo.entry("toy", root)


@pytest.mark.parametrize("bad", ["../../etc/hostname", "/etc/hostname", "weights/../../outside.safetensors"])
def test_local_file_must_stay_inside_the_zoo(tmp_path, good_file, bad):
    (tmp_path / "outside.safetensors").write_bytes(good_file[0].read_bytes())
    root = _zoo(tmp_path, good_file, file=bad)
    with pytest.raises(zoo.ZooError, match="outside the zoo folder|inside the zoo folder"):
        zoo.fetch(zoo.entry("toy", root), root)


def test_plain_http_needs_an_explicit_opt_in(tmp_path, good_file, monkeypatch):
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(tmp_path / "cache"))
    payload = good_file[0].read_bytes()
    monkeypatch.setattr(zoo_manifest, "_open", lambda *a, **k: _Resp(payload))
    root = _zoo(tmp_path, good_file, file="http://example.invalid/toy.safetensors")
    with pytest.raises(zoo.ZooError, match="not https.*SOLO_SPARSE_ALLOW_HTTP"):
        zoo.load("toy", root=root)
    monkeypatch.setenv("SOLO_SPARSE_ALLOW_HTTP", "1")
    assert zoo.load("toy", root=root) is not None


def test_download_is_capped_at_size_bytes_and_leaves_nothing(tmp_path, good_file, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(cache))
    payload = good_file[0].read_bytes()
    monkeypatch.setattr(zoo_manifest, "_open", lambda *a, **k: _Resp(payload + b"\0" * (3 << 20)))
    root = _zoo(tmp_path, good_file, file="https://example.invalid/toy.safetensors")
    with pytest.raises(zoo.ZooError, match="more than the manifest's size_bytes"):
        zoo.load("toy", root=root)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_redirects_are_followed_to_https_only():
    import urllib.request

    guard = zoo_manifest._SchemeGuard()
    req = urllib.request.Request("https://example.invalid/a")
    with pytest.raises(zoo.ZooError, match="refusing a redirect"):
        guard.redirect_request(req, None, 302, "Found", {}, "http://example.invalid/b")
    with pytest.raises(zoo.ZooError, match="refusing a redirect"):
        guard.redirect_request(req, None, 302, "Found", {}, "file:///etc/hostname")
    assert guard.redirect_request(req, None, 302, "Found", {}, "https://example.invalid/b") is not None


def test_a_cached_file_this_call_did_not_write_is_refused_but_kept(tmp_path, good_file, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(cache))
    root = _zoo(tmp_path, good_file, file="https://example.invalid/toy.safetensors")
    e = zoo.entry("toy", root)
    placed = cache / f"{e['sha256']}.safetensors"
    placed.write_bytes(b"x" * e["size_bytes"])            # right size, wrong content, placed by someone
    with pytest.raises(zoo.ZooError, match="sha256 mismatch") as exc:
        zoo.load("toy", root=root)
    assert "removed" not in str(exc.value) and placed.exists()


def test_malformed_manifests_are_one_line_errors(tmp_path, good_file):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(zoo.ZooError, match=r"manifest.json: not valid JSON"):
        zoo.list_entries(root)
    (root / "manifest.json").write_text(json.dumps({"entries": [{"name": "x"}]}))
    with pytest.raises(zoo.ZooError, match=r"entry 'x' lacks file, sha256, size_bytes, backbone"):
        zoo.list_entries(root)
    (root / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(zoo.ZooError, match="expected an object with an 'entries' list"):
        zoo.list_entries(root)
    root2 = _zoo(tmp_path / "b", good_file, backbone="vit_huge")
    with pytest.raises(zoo.ZooError, match="backbone 'vit_huge' is not one of"):
        zoo.list_entries(root2)


def test_manifest_fields_are_checked_against_the_file(tmp_path, good_file):
    root = _zoo(tmp_path, good_file, backbone="resnet50")
    with pytest.raises(zoo.ZooError, match="holds a 'resnet18' backbone, the manifest says 'resnet50'"):
        zoo.load("toy", root=root)
    root = _zoo(tmp_path / "m", good_file, method="simclr")
    with pytest.raises(zoo.ZooError, match="trained with 'byol', the manifest says 'simclr'"):
        zoo.load("toy", root=root)
    root = _zoo(tmp_path / "d", good_file, density=0.9)
    assert "density" in zoo.verify("toy", root)["toy"]


# ----------------------------------------------------------------------------- the file header
def _tensors(good_file):
    from safetensors import safe_open

    with safe_open(str(good_file[0]), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_metadata_shapes_are_checked_before_any_allocation(tmp_path, good_file):
    tensors, meta = _tensors(good_file)
    shapes = json.loads(meta["shapes"])
    key = next(iter(shapes))
    shapes[key] = [1 << 20, 1 << 20, 64, 64]                  # asks for 2^52 floats
    bad = tmp_path / "huge.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "shapes": json.dumps(shapes)})
    with pytest.raises(zoo.ZooError, match="does not encode shape"):
        zoo.read_backbone(bad)
    shapes[key] = [-1, 3]
    save_file(tensors, str(bad), metadata={**meta, "shapes": json.dumps(shapes)})
    with pytest.raises(zoo.ZooError, match="positive integers"):
        zoo.read_backbone(bad)


@pytest.mark.parametrize("arch", ["__import__", "vit_b_16", "resnet18; rm -rf /", ""])
def test_arch_comes_from_an_allow_list(tmp_path, good_file, arch):
    tensors, meta = _tensors(good_file)
    bad = tmp_path / "arch.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "arch": arch})
    with pytest.raises(zoo.ZooError, match="is not one of resnet18"):
        zoo.read_backbone(bad)


def test_architecture_mismatch_is_one_line_naming_the_first_key(tmp_path, good_file):
    tensors, meta = _tensors(good_file)
    bad = tmp_path / "r50.safetensors"
    save_file(tensors, str(bad), metadata={**meta, "arch": "resnet50"})
    with pytest.raises(zoo.ZooError) as exc:
        zoo.load_file(bad)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("architecture mismatch: key ")


@pytest.mark.parametrize("content", [b"", b"hello", b"\xff" * 64, struct.pack("<Q", 1 << 60) + b"{}"])
def test_garbage_files_are_refused_naming_the_file(tmp_path, content):
    f = tmp_path / "junk.safetensors"
    f.write_bytes(content)
    with pytest.raises(zoo.ZooError, match="junk.safetensors"):
        zoo.read_backbone(f)


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {_Boom.marker}",))


def test_a_pickle_disguised_as_a_zoo_file_is_refused_without_running_it(tmp_path, good_file):
    _Boom.marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state": _Boom()}))
    with pytest.raises(zoo.ZooError):
        zoo.read_backbone(evil)
    root = _zoo(tmp_path, good_file)
    (root / "weights" / "toy.safetensors").write_bytes(evil.read_bytes())
    with pytest.raises(zoo.ZooError):
        zoo.load("toy", root=root)
    assert not _Boom.marker.exists()
    # the same pickle as a checkpoint: weights_only loading refuses it (no code runs)
    ck = tmp_path / "evil.ckpt"
    ck.write_bytes(evil.read_bytes())
    assert main(["sparsity", str(ck)]) == 2
    assert not _Boom.marker.exists()


def test_export_refuses_a_directory_and_a_malformed_file(tmp_path, good_file):
    root = _zoo(tmp_path, good_file)
    (tmp_path / "outdir").mkdir()
    with pytest.raises(zoo.ZooError, match="is a directory"):
        zoo.export("toy", tmp_path / "outdir", "solo", root=root)
    (root / "weights" / "toy.safetensors").write_bytes(b"\0" * zoo.entry("toy", root)["size_bytes"])
    with pytest.raises(zoo.ZooError, match="sha256 mismatch"):
        zoo.export("toy", tmp_path / "x.ckpt", "solo", root=root)


# ----------------------------------------------------------------------------- the CLI: one line, exit 2
@pytest.fixture
def bad_inputs(tmp_path, good_file):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("defaults: [\n  - oops: [")
    ck = tmp_path / "r18.ckpt"
    net, _ = _net()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, ck)
    return {"text": text, "empty": empty, "dir": tmp_path, "zoo": good_file[0], "yaml": bad_yaml,
            "missing_yaml": tmp_path / "nope.yaml", "missing": tmp_path / "nope.ckpt", "ckpt": ck}


CASES = [
    (["sparsity", "{text}"], "not a PyTorch checkpoint"),
    (["sparsity", "{empty}"], "empty file"),
    (["sparsity", "{dir}"], "is a directory"),
    (["sparsity", "{zoo}"], "a safetensors file, not a solo-learn checkpoint"),
    (["sparsity", "{missing}"], "no such file"),
    (["flops", "{text}"], "not a PyTorch checkpoint"),
    (["flops", "{dir}"], "is a directory"),
    (["flops", "{yaml}"], "cannot compose this config"),
    (["flops", "{missing_yaml}"], "no such file"),
    (["flops", "{ckpt}", "--backbone", "resnet50"], "wrong --backbone"),
    (["evaluate", "--data", "{dir}", "{empty}"], "empty file"),
    (["report", "{missing}"], "no such run directory, and not a zoo entry"),
    (["report", "{text}"], "is a file; report takes a run directory"),
    (["zoo", "export", "nope", "--out", "{dir}/x.ckpt"], "unknown zoo entry"),
]


@pytest.mark.parametrize("argv,match", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_cli_errors_are_one_line_and_exit_2(bad_inputs, capsys, argv, match, monkeypatch):
    monkeypatch.chdir(bad_inputs["dir"])
    if argv[0] == "evaluate":
        for split in ("train", "val"):
            d = bad_inputs["dir"] / split / "c0"
            d.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.new("RGB", (28, 28)).save(d / "0.png")
    args = [a.format(**bad_inputs) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("solo-sparse: error: ") and match in err, err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(bad_inputs):
    from solo_sparse.core.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "sparsity", str(bad_inputs["text"])])


def test_sparsity_says_which_line_a_checkpoint_needs(tmp_path, capsys):
    net, masks = _net()
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"backbone.{k[:-len('.weight')]}.weight_mask": m for k, m in masks.items()})
    ck = tmp_path / "gmp.ckpt"
    torch.save({"state_dict": sd, "solo_sparse": {"gmp": {"step": 3, "epoch": 0, "config": {}}}}, ck)
    assert main(["sparsity", str(ck)]) == 0
    assert "'- solo_sparse: gmp'" in capsys.readouterr().out
    assert Path(ck).exists()

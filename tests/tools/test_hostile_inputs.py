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
    assert "\n" not in msg and msg.startswith("architecture mismatch: keys 'layer1.0.conv3.weight', ")
    assert "missing from the file" in msg and "in all)" in msg


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
            for c in ("c0", "c1"):
                d = bad_inputs["dir"] / split / c
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


# ----------------------------------------------------------------------------- evaluation data (issue 31, re-probe)
def _grey_folder(root, classes=("c0", "c1", "c2", "c3", "c4"), train=3, val=2, val_classes=None):
    """train/ and val/ of well-separated grey levels (a random-init backbone separates them: kNN-1 = 100%)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n, names in (("train", train, classes), ("val", val, val_classes or classes)):
        for name in names:
            level = 50.0 * classes.index(name) if name in classes else 120.0
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.full((28, 28, 3), level) + 10 * torch.rand(28, 28, 3, generator=g)).clamp(0, 255)
                Image.fromarray(arr.to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def _evaluate(tmp_path, data, capsys):
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--data", str(data), "--random-init-densities", "1.0", "--out", str(out)])
    return rc, capsys.readouterr(), (json.loads(out.read_text()) if out.exists() else None)


def test_val_is_labelled_with_train_classes_when_it_lacks_one(tmp_path, capsys):
    data = _grey_folder(tmp_path / "d", val_classes=("c1", "c2", "c3", "c4"))     # val/c0 deleted
    rc, cap, res = _evaluate(tmp_path, data, capsys)
    assert rc == 0 and res[0]["knn1"] == 1.0, cap.err          # own numbering would shift every label: 0.00
    note = [line for line in cap.err.splitlines() if "has no images of 1 of train's 5 classes (c0)" in line]
    assert len(note) == 1, cap.err


def test_a_val_class_train_lacks_is_refused_naming_it(tmp_path, capsys):
    data = _grey_folder(tmp_path / "d", val_classes=("c0", "c1", "c2", "c3", "a4"))   # val/c4 renamed to a4
    rc, cap, res = _evaluate(tmp_path, data, capsys)
    assert rc == 2 and res is None
    assert cap.err.count("\n") == 1 and "class folder 'a4' is not a class of" in cap.err, cap.err


def test_a_single_class_folder_is_refused(tmp_path, capsys):
    data = _grey_folder(tmp_path / "d", classes=("c0",))
    rc, cap, _ = _evaluate(tmp_path, data, capsys)
    assert rc == 2 and "one class folder ('c0')" in cap.err and cap.err.count("\n") == 1, cap.err


def test_a_non_square_image_is_centre_cropped_and_a_broken_one_named(tmp_path, capsys):
    from PIL import Image

    data = _grey_folder(tmp_path / "d")
    Image.new("RGB", (60, 28), (0, 0, 0)).save(data / "val" / "c0" / "wide.png")
    rc, cap, res = _evaluate(tmp_path, data, capsys)
    assert rc == 0 and res[0]["knn1"] == 1.0, cap.err          # one (60, 28) image crashed the batch before
    (data / "val" / "c1" / "broken.png").write_bytes(b"\x89PNG not really")
    rc, cap, _ = _evaluate(tmp_path, data, capsys)
    assert rc == 2 and "broken.png: not a readable image" in cap.err and cap.err.count("\n") == 1, cap.err


def test_evaluate_out_keeps_the_rows_finished_before_a_failure(tmp_path, capsys, monkeypatch):
    from solo_sparse.tools import evaluate as ev

    data = _grey_folder(tmp_path / "d")
    real, calls = ev.evaluate_backbone, []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(ev, "evaluate_backbone", second_fails)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data), "--random-init-densities", "1.0", "0.5", "--out", str(out)]) == 2
    assert [r["backbone"] for r in json.loads(out.read_text())] == ["random-init, magnitude-pruned to 1.0"]


# ----------------------------------------------------------------------------- zoo names, widths, variables
@pytest.mark.parametrize("name,match", [
    ("../evil", "not a plain name"), ("a/b", "not a plain name"), ("ok\x1b[2Kspoof", "not a plain name"),
    ("", "not a plain name"), (".hidden", "not a plain name"), ("a..b", "not a plain name"), (7, "not a plain name"),
])
def test_zoo_names_are_plain(tmp_path, good_file, name, match):
    root = _zoo(tmp_path, good_file, name=name)
    with pytest.raises(zoo.ZooError, match=match) as exc:
        zoo.list_entries(root)
    assert "\x1b" not in str(exc.value)                         # repr-quoted: a control character cannot spoof


def test_a_bad_name_writes_nothing_outside_out(tmp_path, good_file, capsys):
    root = _zoo(tmp_path / "z", good_file, name="../../escaped")
    assert main(["report", "../../escaped", "--zoo", str(root), "--out", str(tmp_path / "a" / "b" / "out")]) == 2
    assert not list(tmp_path.rglob("*.png")) and "not a plain name" in capsys.readouterr().err


def test_duplicate_entry_names_are_refused(tmp_path, good_file, capsys):
    root = _zoo(tmp_path, good_file)
    man = json.loads((root / "manifest.json").read_text())
    bad = dict(man["entries"][0], sha256="0" * 64)              # a failing twin hid behind the good one in verify
    (root / "manifest.json").write_text(json.dumps({"entries": man["entries"] + [bad]}))
    assert main(["zoo", "--zoo", str(root), "verify"]) == 2
    assert "entry name 'toy' appears 2 times" in capsys.readouterr().err


def test_compact_widths_are_checked_before_any_allocation(tmp_path):
    net, _ = _net()
    for widths, match in (({"layer1.0.conv1": 1 << 40}, r"width of 'layer1.0.conv1' is 1099511627776; allowed an "
                                                         r"integer in \[1, 64\]"),
                          ({"layer1.0.conv1": 0}, "allowed an integer in"),
                          ({"layer1.0.conv1": "64"}, "allowed an integer in"),
                          ({"fc": 3}, "'fc' is not an internal conv of a resnet18")):
        f = tmp_path / "c.safetensors"
        zoo.save_backbone(f, net.state_dict(), {}, compact_widths=widths)
        with pytest.raises(zoo.ZooError, match=match):
            zoo.load_file(f)


def test_empty_zoo_and_cache_variables_mean_unset(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOLO_SPARSE_ZOO", "")
    monkeypatch.setenv("SOLO_SPARSE_CACHE", " ")
    assert zoo.manifest_path() == zoo.ZOO_DIR / "manifest.json"
    assert zoo.cache_dir() == Path.home() / ".cache" / "solo_sparse" / "zoo"


# ----------------------------------------------------------------------------- atomic writes
def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    from solo_sparse.core.files import atomic_path, write_atomic

    f = write_atomic(tmp_path / "r.json", "old")
    with pytest.raises(OSError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise OSError("No space left on device")
    assert f.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.slow
def test_zoo_export_under_a_file_size_limit_keeps_the_old_file(tmp_path, good_file):
    """``ulimit -f``: the write fails part-way; the previous export stays whole (it was truncated in place)."""
    import subprocess
    import sys

    root = _zoo(tmp_path, good_file)
    out = tmp_path / "toy.ckpt"
    zoo.export("toy", out, "solo", root=root)
    before = out.read_bytes()
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
            "from solo_sparse.tools.cli import main; "
            f"sys.exit(main(['zoo', '--zoo', {str(root)!r}, 'export', 'toy', '--out', {str(out)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "could not be written" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["toy.ckpt"]


# ----------------------------------------------------------------------------- crafted masks
def _masked_ckpt(tmp_path, mask):
    net, _ = _net()
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    sd["backbone.layer1.0.conv1.weight_mask"] = mask
    ck = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": sd}, ck)
    return ck


@pytest.mark.parametrize("mask,match", [
    (torch.ones(64, 64, 3, 3), "is torch.float32; a mask must be a bool tensor"),
    (torch.full((64, 64, 3, 3), float("nan")), "is torch.float32; a mask must be a bool tensor"),
    (torch.ones(64, 64, 1, 1, dtype=torch.bool), r"has shape \(64, 64, 1, 1\), its weight \(64, 64, 3, 3\)"),
], ids=["float", "nan", "shape"])
@pytest.mark.parametrize("cmd", ["sparsity", "flops", "evaluate"])
def test_crafted_masks_are_refused_in_one_line(tmp_path, capsys, mask, match, cmd):
    import re

    ck = _masked_ckpt(tmp_path, mask)
    argv = {"sparsity": ["sparsity", str(ck)], "flops": ["flops", str(ck)],
            "evaluate": ["evaluate", "--data", str(tmp_path / "nodata"), str(ck)]}[cmd]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected" not in err and re.search(match, err), err
    assert "layer1.0.conv1.weight_mask" in err


# ----------------------------------------------------------------------------- gated checkpoints' MACs
@pytest.fixture(scope="module")
def dgnet_ckpt(tmp_path_factory):
    """The shipped gated zoo entry (DGNet, gated path at t_d 0.3) exported as a solo-learn checkpoint."""
    from solo_sparse.core.registry import get_plugin

    name = next(e["name"] for e in zoo.list_entries()
                if any(get_plugin(p).rewrites_backbone for p in e.get("plugins") or {}))
    out = tmp_path_factory.mktemp("dg") / "dg.ckpt"
    zoo.export(name, out, "solo")
    return out


def test_evaluate_and_flops_report_a_gated_checkpoint_from_its_gates(tmp_path, dgnet_ckpt, capsys):
    data = _grey_folder(tmp_path / "d")
    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(data), str(dgnet_ckpt), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(out.read_text())[0]
    assert "density 1.000" not in line and "MACs x1.000" not in line and "-gated" in line, line
    assert 0.05 < res["macs_ratio"] < 0.9 and 0.0 < res["gate_sparsity"] < 1.0
    assert main(["flops", str(dgnet_ckpt)]) == 2
    assert "pass --data DIR" in capsys.readouterr().err
    assert main(["flops", str(dgnet_ckpt), "--data", str(data)]) == 0
    assert f"MACs ratio {res['macs_ratio']:.4f}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- numeric arguments
NUMERIC = [
    (["flops", "x.yaml", "--input-size", "0"], "--input-size", "'0'", "[8, 1024]"),
    (["evaluate", "--data", "d", "--input-size", "100000"], "--input-size", "'100000'", "[8, 1024]"),
    (["evaluate", "--data", "d", "--random-init-densities", "-1"], "--random-init-densities", "'-1'", "(0.0, 1.0]"),
    (["evaluate", "--data", "d", "--random-init-densities", "5"], "--random-init-densities", "'5'", "(0.0, 1.0]"),
    (["evaluate", "--data", "d", "--random-init-densities", "nan"], "--random-init-densities", "'nan'", "(0.0, 1.0]"),
    (["evaluate", "--data", "d", "--seed", "-3"], "--seed", "'-3'", "[0, inf]"),
    (["zoo", "bench", "x", "--reps", "0"], "--reps", "'0'", "[1, 100000]"),
    (["zoo", "bench", "x", "--batches", "0"], "--batches", "'0'", "[1, 4096]"),
    (["zoo", "bench", "x", "--sizes", "2"], "--sizes", "'2'", "[8, 1024]"),
    (["zoo", "bench", "x", "--channel-density", "0"], "--channel-density", "'0'", "(0.0, 1.0]"),
    (["zoo", "export", "x", "--out", "o", "--channel-density", "inf"], "--channel-density", "'inf'", "(0.0, 1.0]"),
    (["bench", "s.yaml", "--seeds", "0"], "--seeds", "'0'", "[1, 1000]"),
    (["report", "zoo", "--reference", "250"], "--reference", "'250'", "[0.0, 100.0]"),
    (["imp", "--config", "c", "--out", "o", "--rounds", "-1"], "--rounds", "'-1'", "[0, 100]"),
    (["imp", "--config", "c", "--out", "o", "--input-size", "0"], "--input-size", "'0'", "[8, 1024]"),
    (["retrain", "--data", "d", "--epochs", "0"], "--epochs", "'0'", "[1, 10000]"),
    (["retrain", "--data", "d", "--lr", "nan"], "--lr", "'nan'", "(0.0, 100.0]"),
    (["permute-masks", "a", "b", "--seed", "x"], "--seed", "'x'", "[0, inf]"),
]


@pytest.mark.parametrize("argv,option,value,allowed", NUMERIC, ids=[" ".join(c[0]) for c in NUMERIC])
def test_numeric_arguments_are_range_checked(capsys, argv, option, value, allowed):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("solo-sparse: error: ") and err.count("\n") == 1, err
    assert option in err and value in err and allowed in err, err


# ----------------------------------------------------------------------------- permute-masks, suites, plugins
def test_permute_masks_refuses_to_overwrite_its_source(tmp_path, capsys):
    from solo_sparse.engine.maskio import save_masks

    _, masks = _net()
    src = save_masks(tmp_path / "ticket.safetensors", masks)
    before = src.read_bytes()
    for dest in (src, tmp_path / "." / "ticket.safetensors"):
        assert main(["permute-masks", str(src), str(dest)]) == 2
        assert "is the SOURCE mask file" in capsys.readouterr().err
    assert src.read_bytes() == before


BAD_SUITES = [
    ("overrides: 'max_epochs=1'\n", "overrides='max_epochs=1': expected a list of strings"),
    ("seeds: -2\n", "seeds=-2: expected an integer in [1, 1000]"),
    ("size: 0\n", "size=0: expected an integer in [8, 1024]"),
    ("random_init: 'yes'\n", "random_init='yes': expected true or false"),
    ("data: ../../etc\n", "data='../../etc': expected a folder name"),
]
BAD_RUNS = [
    ("{id: ../../escape, config: c.yaml}", "run '../../escape': id='../../escape': expected a plain name"),
    ("{id: a/b, config: c.yaml}", "id='a/b': expected a plain name"),
    ("{id: a, config: c.yaml, overrides: '++x=1'}", "run 'a': overrides='++x=1': expected a list of strings"),
    ("{id: a, config: c.yaml, seeds: 0}", "seeds=0: expected an integer in [1, 1000] or null"),
    ("{id: a, config: c.yaml, controls: [../x]}", "controls=['../x']: expected a list of global_random, layer_permutation, random_reinit"),
    ("{id: a, config: c.yaml, eval_paths: ['../p']}", "eval_paths=['../p']: expected a non-empty list"),
    ("{id: a, config: c.yaml, bogus: 1}", "run 'a': unknown run key(s) bogus"),
    ("just-a-string", "runs[0] is 'just-a-string'; a run is a mapping with an 'id'"),
]


SUITE_CASES = ([(f"suite: toy\n{t}", "{id: a, config: c.yaml}", m) for t, m in BAD_SUITES]
               + [("suite: toy\n", r, m) for r, m in BAD_RUNS]
               + [("suite: ../../out\n", "{id: a, config: c.yaml}", "suite='../../out': expected a plain name"),
                  ("suite: toy\n", "{id: a, config: c.yaml}", None)])


@pytest.mark.parametrize("top,run,match", SUITE_CASES)
def test_suite_files_are_type_checked(tmp_path, monkeypatch, top, run, match):
    import re

    from solo_sparse.core.config import ConfigError
    from solo_sparse.tools.bench import Suite

    (tmp_path / "c.yaml").write_text("method: byol\n")
    s = tmp_path / "s.yaml"
    s.write_text(f"{top}runs:\n  - {run}\n")
    monkeypatch.chdir(tmp_path)   # config paths are relative to the current folder outside scripts/suites/
    if match is None:
        assert Suite.load(s).runs[0].id == "a"
        return
    with pytest.raises(ConfigError, match=re.escape(match)) as exc:
        Suite.load(s)
    assert "\n" not in str(exc.value)


def test_a_single_plugins_string_is_one_plugin_not_letters():
    from solo_sparse.binding.guard import section_plugins
    from solo_sparse.core.config import ConfigError
    from solo_sparse.core.registry import build_plugins, plugin_names

    assert plugin_names({"plugins": "gmp"}) == ["gmp"] and section_plugins({"plugins": "gmp"}) == ["gmp"]
    (p,) = build_plugins({"plugins": "gmp", "final_density": 0.5})
    assert p.name == "gmp" and p.config.final_density == 0.5
    with pytest.raises(ConfigError, match=r"solo_sparse.plugins=\{'a': 1\}: expected a plugin name or a list"):
        plugin_names({"plugins": {"a": 1}})


# ----------------------------------------------------------------------------- the one line, seen from every file
def _warn(monkeypatch, capsys, cfg_dir, name, *overrides):
    from solo_sparse.binding import guard

    monkeypatch.setattr(guard, "_WARNED", False)
    guard.warn_unselected(["main_pretrain.py", "--config-path", str(cfg_dir), "--config-name", name, *overrides])
    return capsys.readouterr().err


@pytest.mark.parametrize("primary,included,where", [
    ("defaults:\n  - _self_\n  - base\nmethod: byol\n", {"base.yaml": "solo_sparse:\n  final_density: 0.1\n"},
     "base.yaml"),
    ("defaults:\n  - _self_\n  - extra: sparse\n", {"extra/sparse.yaml": "# @package _global_\nsolo_sparse:\n  x: 1\n"},
     "sparse.yaml"),
    ("defaults:\n  - base\n", {"base.yaml": "defaults:\n  - deeper\n", "deeper.yaml": "solo_sparse: {x: 1}\n"},
     "deeper.yaml"),
])
def test_a_section_from_an_included_file_without_the_line_is_warned(tmp_path, monkeypatch, capsys, primary,
                                                                       included, where):
    (tmp_path / "run.yaml").write_text(primary)
    for rel, text in included.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    err = _warn(monkeypatch, capsys, tmp_path, "run")
    assert err.count("\n") == 1 and f"{where} has a 'solo_sparse:' section (included by " in err, err
    assert "the job trains dense" in err


def test_no_warning_when_a_file_selects_the_group_or_the_section_lands_elsewhere(tmp_path, monkeypatch, capsys):
    (tmp_path / "run.yaml").write_text("defaults:\n  - base\n  - aug: x\n")
    (tmp_path / "base.yaml").write_text("defaults:\n  - solo_sparse: gmp\nsolo_sparse:\n  final_density: 0.1\n")
    (tmp_path / "aug").mkdir()
    (tmp_path / "aug" / "x.yaml").write_text("solo_sparse: {x: 1}\n")      # lands under aug.solo_sparse
    assert _warn(monkeypatch, capsys, tmp_path, "run") == ""
    (tmp_path / "base.yaml").write_text("method: byol\n")
    assert _warn(monkeypatch, capsys, tmp_path, "run") == ""


def test_main_linear_without_the_line_on_a_gated_checkpoint_says_which_line(tmp_path, monkeypatch, capsys,
                                                                           dgnet_ckpt):
    from solo_sparse.core.registry import linear_lines

    line = linear_lines(torch.load(dgnet_ckpt, weights_only=True)["solo_sparse"])[0]
    (tmp_path / "linear.yaml").write_text(f"defaults:\n  - _self_\npretrained_feature_extractor: {dgnet_ckpt}\n")
    err = _warn(monkeypatch, capsys, tmp_path, "linear")
    assert err.count("\n") == 1 and f"add '- solo_sparse: {line}' to its defaults" in err, err
    assert str(dgnet_ckpt) in err and "plain backbone" in err
    # the checkpoint named on the command line; and no word once the line is there
    (tmp_path / "linear.yaml").write_text("defaults:\n  - _self_\npretrained_feature_extractor: none.ckpt\n")
    assert f"'- solo_sparse: {line}'" in _warn(monkeypatch, capsys, tmp_path, "linear",
                                                f"++pretrained_feature_extractor={dgnet_ckpt}")
    (tmp_path / "linear.yaml").write_text(f"defaults:\n  - _self_\n  - solo_sparse: {line}\n"
                                          f"pretrained_feature_extractor: {dgnet_ckpt}\n")
    assert _warn(monkeypatch, capsys, tmp_path, "linear") == ""

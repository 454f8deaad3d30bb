"""Model zoo: compressed safetensors storage, manifest, verification, loading, export, bad input, and
the committed entries themselves."""
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from solo_sparse import zoo
from solo_sparse.engine.sparsifier import MASK
from solo_sparse.tools.evaluate import build_resnet
from solo_sparse.zoo import format as zoo_format
from solo_sparse.zoo import manifest as zoo_manifest


def _sparse_resnet(density=0.1, seed=0):
    """ResNet-18 (fc = Identity) with a random element mask of ``density`` on every conv."""
    torch.manual_seed(seed)
    net = build_resnet("resnet18").eval()
    masks = {}
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            m = torch.rand(mod.weight.shape) < density
            with torch.no_grad():
                mod.weight.mul_(m)
            masks[name + ".weight"] = m
    # non-trivial BN statistics, so a wrong load shows
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return net, masks


def _zoo_with(tmp_path, name, net, masks, gating=None, fp16=False, **extra):
    root = tmp_path / "zoo"
    f = root / "weights" / f"{name}.safetensors"
    zoo.save_backbone(f, net.state_dict(), masks, gating=gating, fp16=fp16)
    kept = sum(int(m.sum()) for m in masks.values())
    tot = sum(m.numel() for m in masks.values()) or 1
    rec = {"name": name, "algorithm": "test", "backbone": "resnet18", "file": str(f.relative_to(root)),
           "sha256": zoo.sha256(f),
           "size_bytes": f.stat().st_size, "density": kept / tot if masks else None,
           "accuracy": {"knn20": 50.0, "linear": 60.0}, "flops_ratio": 0.3, **extra}
    zoo.add_entry(root, rec)
    return root, f


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4609])
def test_bitmask_pack_round_trip(n):
    m = torch.rand(n) < 0.3
    packed = zoo_format._pack(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(zoo_format._unpack(packed, n), m)


def test_compress_round_trip_is_exact_and_fp16_is_close():
    net, masks = _sparse_resnet(0.1)
    sd = net.state_dict()
    tensors, shapes = zoo.compress_state(sd, masks)
    state, got_masks = zoo.decompress_state(tensors, shapes)
    assert set(state) == set(sd) and set(got_masks) == set(masks)
    for k, v in sd.items():
        assert torch.equal(state[k], v.float() if v.is_floating_point() else v), k
    for k, m in masks.items():
        assert torch.equal(got_masks[k], m), k
    t16, sh16 = zoo.compress_state(sd, masks, fp16=True)
    s16, m16 = zoo.decompress_state(t16, sh16)
    for k in masks:
        assert torch.equal(m16[k], masks[k])
        assert s16[k].dtype == torch.float32
        torch.testing.assert_close(s16[k], sd[k], rtol=1e-3, atol=1e-4)


def test_mask_shape_mismatch_refused():
    net, masks = _sparse_resnet(0.5)
    k = next(iter(masks))
    masks[k] = masks[k][:1]
    with pytest.raises(zoo.ZooError, match="mask of"):
        zoo.compress_state(net.state_dict(), masks)


def test_file_size_at_90_percent_sparsity(tmp_path):
    from safetensors.torch import save_file

    net, masks = _sparse_resnet(0.1)
    dense = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(dense))
    f32, f16 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    zoo.save_backbone(f32, net.state_dict(), masks)
    zoo.save_backbone(f16, net.state_dict(), masks, fp16=True)
    r32 = f32.stat().st_size / dense.stat().st_size
    r16 = f16.stat().st_size / dense.stat().st_size
    assert r32 <= 0.15, r32          # the goal (fp32 values)
    assert r16 < r32 * 0.7, (r16, r32)
    assert not list(tmp_path.glob("*.part"))   # atomic write leaves nothing behind


def test_load_gives_the_same_network_with_masks_in_place(tmp_path):
    net, masks = _sparse_resnet(0.1)
    root, _ = _zoo_with(tmp_path, "toy-d10", net, masks)
    got = zoo.load("toy-d10", root=root)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x), net(x), rtol=0, atol=0)
    conv = got.layer2[0].conv1
    assert torch.equal(getattr(conv, MASK), masks["layer2.0.conv1.weight"])
    tv = zoo.load("toy-d10", form="torchvision", root=root)
    assert not any(k.endswith(MASK) for k in tv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(tv(x), net(x), rtol=0, atol=0)
    assert zoo.verify(root=root) == {"toy-d10": "ok"}
    assert [e["name"] for e in zoo.list(root)] == ["toy-d10"]


def test_unknown_entry_suggests_close_names(tmp_path):
    net, masks = _sparse_resnet(0.5)
    root, _ = _zoo_with(tmp_path, "resnet18-fmnist-byol-synccp-d10", net, masks)
    with pytest.raises(zoo.ZooError, match="did you mean resnet18-fmnist-byol-synccp-d10"):
        zoo.load("resnet18-fmnist-byol-synccp-d1", root=root)
    with pytest.raises(zoo.ZooError, match="unknown zoo entry 'zzz'"):
        zoo.entry("zzz", root=root)


def test_sha256_mismatch_is_refused(tmp_path):
    net, masks = _sparse_resnet(0.5)
    root, f = _zoo_with(tmp_path, "toy", net, masks)
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(zoo.ZooError, match="sha256 mismatch"):
        zoo.load("toy", root=root)
    assert "sha256 mismatch" in zoo.verify("toy", root=root)["toy"]


def test_architecture_mismatch_names_the_first_key(tmp_path):
    net, masks = _sparse_resnet(0.5)
    sd = net.state_dict()
    sd["layer9.conv.weight"] = torch.zeros(1)
    f = tmp_path / "x.safetensors"
    zoo.save_backbone(f, sd, masks)
    state, m, meta = zoo.read_backbone(f)
    with pytest.raises(zoo.ZooError, match=r"architecture mismatch: key 'layer9.conv.weight' not in the model"):
        zoo.build_module(state, m, meta)
    del sd["layer9.conv.weight"], sd["layer1.0.bn1.weight"]
    zoo.save_backbone(f, sd, masks)
    with pytest.raises(zoo.ZooError, match="'layer1.0.bn1.weight' missing from the file"):
        zoo.build_module(*zoo.read_backbone(f))


def test_foreign_safetensors_file_refused(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(f))
    with pytest.raises(zoo.ZooError, match="not a solo-sparse-zoo/1 file"):
        zoo.read_backbone(f)


def _remote_root(tmp_path, payload_sha, size=1000):
    root = tmp_path / "zoo"
    zoo.add_entry(root, {"name": "remote", "file": "https://example.invalid/x/remote.safetensors",
                         "sha256": payload_sha, "size_bytes": size, "backbone": "resnet18"})
    return root


def test_remote_entry_offline_error_and_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(zoo_manifest, "_open", offline)
    root = _remote_root(tmp_path, "0" * 64)
    with pytest.raises(zoo.ZooError, match="is remote .* could not be downloaded.*Offline"):
        zoo.load("remote", root=root)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_remote_entry_downloads_verifies_and_removes_a_bad_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SOLO_SPARSE_CACHE", str(tmp_path / "cache"))
    net, masks = _sparse_resnet(0.2)
    good = tmp_path / "good.safetensors"
    zoo.save_backbone(good, net.state_dict(), masks)
    payload = good.read_bytes()

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(zoo_manifest, "_open", lambda *a, **k: Resp(payload))
    root = _remote_root(tmp_path, zoo.sha256(good), len(payload))
    got = zoo.load("remote", root=root)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x), net(x), rtol=0, atol=0)
    # a different payload under the same sha: refused and removed from the cache
    for p in (tmp_path / "cache").rglob("*.safetensors"):
        p.unlink()
    monkeypatch.setattr(zoo_manifest, "_open", lambda *a, **k: Resp(payload[:-10] + b"0123456789"))
    with pytest.raises(zoo.ZooError, match="sha256 mismatch.*removed"):
        zoo.load("remote", root=root)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_export_solo_and_torchvision(tmp_path):
    net, masks = _sparse_resnet(0.1)
    root, _ = _zoo_with(tmp_path, "toy", net, masks)
    out = zoo.export("toy", tmp_path / "toy.ckpt", "solo", root=root)
    ck = torch.load(out, map_location="cpu", weights_only=True)
    sd = ck["state_dict"]
    want = {f"backbone.{k}" for k in net.state_dict()} | {f"backbone.{k[:-7]}.{MASK}" for k in masks}
    assert set(sd) == want
    assert torch.equal(sd["backbone.layer3.1.conv2.weight"], net.layer3[1].conv2.weight)
    tv = torch.load(zoo.export("toy", tmp_path / "tv.pth", "torchvision", root=root), weights_only=True)
    assert set(tv) == set(net.state_dict())
    with pytest.raises(zoo.ZooError, match="export format"):
        zoo.export("toy", tmp_path / "x", "onnx", root=root)


def _gated(kind):
    from solo_sparse import get_plugin
    from solo_sparse.core.config import config_to_state
    from solo_sparse.core.registry import rebuild_backbone

    cfg = json.loads(json.dumps(config_to_state(get_plugin(kind).Config())))
    torch.manual_seed(1)
    net = rebuild_backbone(build_resnet("resnet18"), {kind: {"config": cfg}})[0].eval()
    with torch.no_grad():   # make gate parameters differ from their initial values
        for n, p in net.named_parameters():
            if "gate" in n or n.endswith("tau"):
                p.add_(0.05 * torch.randn_like(p))
    return net, cfg


@pytest.mark.parametrize("kind", ["cdg", "dgnet_dual"])
def test_gated_entry_keeps_its_gates(tmp_path, kind):
    net, cfg = _gated(kind)
    root, _ = _zoo_with(tmp_path, "g", net, {}, gating={"plugin": kind, "config": cfg}, fp16=False,
                        plugins={kind: cfg})
    got = zoo.load("g", root=root)
    assert set(got.state_dict()) == set(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(zoo.ZooError, match="has gates"):
        zoo.load("g", form="torchvision", root=root)
    ck = torch.load(zoo.export("g", tmp_path / "g.ckpt", root=root), weights_only=True)
    assert kind in ck["solo_sparse"] and ck["solo_sparse"][kind]["config"] == cfg


REQUIRED = {"name", "algorithm", "plugins", "method", "backbone", "dataset", "epochs", "eval_protocol", "accuracy",
            "density", "flops_ratio", "file", "sha256", "size_bytes", "config", "date", "license", "reproduce"}


def test_committed_zoo_entries_are_complete_and_verify():
    entries = zoo.list()
    assert len(entries) >= 2
    root = zoo.manifest_path().parent
    for e in entries:
        assert REQUIRED <= set(e), (e["name"], REQUIRED - set(e))
        assert (root / e["config"]).exists(), e["config"]
        assert set(e["accuracy"]) >= {"knn20", "linear"}
    res = zoo.verify()
    assert all(v == "ok" for v in res.values()), res


def test_report_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from solo_sparse.tools import report

    net, masks = _sparse_resnet(0.3)
    root, _ = _zoo_with(tmp_path, "a", net, masks)
    _zoo_with(tmp_path, "b", net, masks, accuracy={"knn20": 40.0, "linear": 55.0}, flops_ratio=0.6)
    p = report.plot_zoo(tmp_path / "out", root)
    assert Path(p).stat().st_size > 1000
    p = report.plot_layer_density(masks, tmp_path / "out" / "ld.png", "a")
    assert p is not None and Path(p).stat().st_size > 1000
    run = tmp_path / "run" / "version_0"
    run.mkdir(parents=True)
    rows = ["epoch,step,solo_sparse/density/online,solo_sparse/density/momentum,solo_sparse/csi/I"]
    rows += [f"0,{s},{1 - s / 100:.3f},{1 - s / 200:.3f},{0.5 / (1 + s):.3f}" for s in range(0, 100, 10)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    got = report.plot_run(tmp_path / "run", tmp_path / "out2")
    assert [Path(x).name for x in got] == ["density_schedule.png", "csi.png"]
    assert all(Path(x).stat().st_size > 1000 for x in got)


def test_a_static_control_entry_exports_and_benches_as_the_narrow_resnet_it_is(tmp_path):
    """A DGNet static-control entry: `zoo export --compact` and `zoo bench` go through the plugin's plain form (the
    narrower ResNet) instead of refusing a gated backbone or timing a per-image gather."""
    from solo_sparse.core.config import config_to_state
    from solo_sparse.core.registry import get_plugin, rebuild_backbone
    from solo_sparse.gating.dgnet import gated_blocks
    from solo_sparse.tools.zoo_bench import bench_entry

    cfg = json.loads(json.dumps(config_to_state(get_plugin("dgnet_gated").Config(control="static", target=0.3))))
    net = rebuild_backbone(build_resnet("resnet18"), {"dgnet_gated": {"config": cfg}})[0].eval()
    root, _ = _zoo_with(tmp_path, "s", net, {}, gating={"plugin": "dgnet_gated", "config": cfg}, plugins={
        "a_pruner_not_installed_here": {"density": 0.5}, "dgnet_gated": cfg})   # only the gating plugin is asked
    rep = zoo.export_compact("s", tmp_path / "s_c.safetensors", root=root)
    kept = sum(blk.gate.kept for _, blk in gated_blocks(net))
    assert rep["internal_channels"] == [kept, 1920] and rep["max_abs_diff"] < 1e-4
    small = zoo.load_file(tmp_path / "s_c.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-4, atol=1e-4)
    res = bench_entry("s", sizes=(32,), batches=(1,), reps=2, root=root, progress=False)
    assert res["kind"].startswith("compact export") and res["internal_channels"][0] <= 1920
    from solo_sparse.tools.speed import build_path

    p = build_path({"id": "z", "zoo": "s"}, root)                  # `solo-sparse speed` on the entry as well
    assert p.info["plain_backbone_of"] == "dgnet_gated"

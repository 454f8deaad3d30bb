"""core.files: the one safetensors writer (masks, IMP states, zoo backbones) is atomic; the one file hash."""
import pytest
import torch
from safetensors import safe_open

from solo_sparse.core.files import write_safetensors


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _failing_save_file(monkeypatch):
    """safetensors' writer that writes half a file and then fails, as a full disk does."""
    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", save_file)


def test_write_safetensors_writes_tensors_and_metadata(tmp_path):
    out = write_safetensors(tmp_path / "sub" / "a.safetensors", {"w": torch.arange(4.0)}, {"format": "x/1"})
    assert out == tmp_path / "sub" / "a.safetensors"
    tensors, meta = _read(out)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == {"format": "x/1"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    f = write_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(3)}, {"format": "old"})
    before = f.read_bytes()
    _failing_save_file(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_safetensors(f, {"w": torch.zeros(3)}, {"format": "new"})
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    _failing_save_file(monkeypatch)
    with pytest.raises(OSError):
        write_safetensors(tmp_path / "a.safetensors", {"w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []


def _save_masks(path):
    from solo_sparse.engine.maskio import save_masks

    save_masks(path, {"backbone.conv1": torch.ones(2, 2, dtype=torch.bool)})


def _save_state(path):
    from solo_sparse.engine.imp import save_state

    save_state(path, {"backbone.conv1.weight": torch.ones(2, 2)}, step=0)


def _save_backbone(path):
    from solo_sparse.zoo.format import save_backbone

    save_backbone(path, {"conv1.weight": torch.ones(2, 2)}, {})


@pytest.mark.parametrize("write", [_save_masks, _save_state, _save_backbone],
                         ids=["engine.maskio.save_masks", "engine.imp.save_state", "zoo.format.save_backbone"])
def test_every_safetensors_writer_is_atomic(tmp_path, monkeypatch, write):
    f = tmp_path / "x.safetensors"
    write(f)
    before = f.read_bytes()
    _failing_save_file(monkeypatch)
    with pytest.raises(OSError):
        write(f)
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_file_sha256_is_the_hash_of_the_bytes_read_in_chunks(tmp_path):
    import hashlib

    from solo_sparse.core.files import file_sha256

    f = tmp_path / "b.bin"
    f.write_bytes(bytes(range(256)) * 41)
    assert file_sha256(f, chunk=1000) == file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()

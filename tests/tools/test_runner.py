"""solo_sparse.tools.runner: the one helper that runs solo-learn's main_pretrain.py for benchmarks, zoo and IMP."""
import sys
from pathlib import Path

import pytest

from solo_sparse.core.config import ConfigError
from solo_sparse.tools.runner import (
    config_digest,
    newest_checkpoint,
    pretrain_command,
    run_command,
    run_pretrain,
    solo_learn_dir,
)


def fake_solo(tmp_path: Path, body: str) -> Path:
    """A directory with a main_pretrain.py that runs ``body`` (argv available as ``sys.argv``)."""
    d = tmp_path / "solo"
    d.mkdir()
    (d / "main_pretrain.py").write_text("import sys, pathlib\n" + body)
    return d


def test_pretrain_command_is_solo_learns_script_on_the_yaml(tmp_path):
    cfg = tmp_path / "cfgs" / "simclr_cdg.yaml"
    cfg.parent.mkdir()
    cfg.write_text("method: simclr\n")
    cmd = pretrain_command(cfg, solo_dir=tmp_path / "solo", name="r1", run_dir=tmp_path / "run",
                           train_path=tmp_path / "data", overrides=["++max_epochs=1"])
    assert cmd[1] == str(tmp_path / "solo" / "main_pretrain.py")
    assert cmd[2:6] == ["--config-path", str(cfg.parent), "--config-name", "simclr_cdg.yaml"]
    assert cmd[6:] == ["++name=r1", f"++checkpoint.dir={tmp_path / 'run'}", f"++data.train_path={tmp_path / 'data'}",
                       "++max_epochs=1"]


def test_config_digest_follows_the_content(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("x: 1\n")
    d1 = config_digest(p)
    assert len(d1) == 12 and config_digest(p) == d1
    p.write_text("x: 2\n")
    assert config_digest(p) != d1


def test_run_pretrain_finds_the_newest_checkpoint_and_logs(tmp_path):
    solo = fake_solo(tmp_path, (
        "d = pathlib.Path([a for a in sys.argv if a.startswith('++checkpoint.dir=')][0].split('=', 1)[1])\n"
        "(d / 'sub').mkdir(parents=True, exist_ok=True)\n"
        "(d / 'old.ckpt').write_bytes(b'0')\n"
        "import time; time.sleep(0.05)\n"
        "(d / 'sub' / 'ep=1.ckpt').write_bytes(b'1')\n"
        "print('trained', sys.argv[-1])\n"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    res = run_pretrain(cfg, tmp_path / "run", solo_dir=solo, overrides=["++seed=3"], echo=False)
    assert res.ok and res.error == ""
    assert res.checkpoint == tmp_path / "run" / "sub" / "ep=1.ckpt"
    assert "trained ++seed=3" in (tmp_path / "run" / "train.log").read_text()
    assert "++name=c" in res.command_line and res.seconds >= 0.05
    assert newest_checkpoint(tmp_path / "run") == res.checkpoint


def test_run_command_reports_failures(tmp_path):
    res = run_command([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "r")
    assert not res.ok and res.error == "exit 3: boom" and res.checkpoint is None
    assert "boom" in res.log.read_text()
    res = run_command([sys.executable, "-c", "pass"], tmp_path / "r2")    # exit 0 but nothing written
    assert not res.ok and "no checkpoint" in res.error


def test_run_command_appends_when_resuming(tmp_path):
    run_command([sys.executable, "-c", "print('first')"], tmp_path / "r")
    run_command([sys.executable, "-c", "print('second')"], tmp_path / "r", append=True)
    assert (tmp_path / "r" / "train.log").read_text().split() == ["first", "second"]


def test_solo_learn_dir_says_what_to_do(tmp_path, monkeypatch):
    assert solo_learn_dir(tmp_path) == tmp_path
    monkeypatch.setitem(sys.modules, "solo", None)           # import solo -> ImportError
    with pytest.raises(ConfigError, match="solo-learn is not importable.*--solo-learn"):
        solo_learn_dir()

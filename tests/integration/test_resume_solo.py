"""Resuming a run through solo-learn's unchanged main_pretrain.py (``resume_from_checkpoint``): the plugin's
step, schedule position and masks continue from the checkpoint, and — because the wrapped method saves and
restores every global random state with its checkpoint — the resumed run equals an uninterrupted one bit for
bit (same data order, worker seeds and augmentations). Needs solo-learn."""
from pathlib import Path

import pytest
import torch
from helpers import FMNIST_CONFIGS, config_dir, make_image_folder, run_solo

pytestmark = [pytest.mark.solo, pytest.mark.slow]   # these runs use solo-learn's main_pretrain.py

GMP = """
solo_sparse:
  final_density: 0.3
  start: 1
  end: 7
  every: 2
"""


def _cfg(tmp_path):
    text = (FMNIST_CONFIGS / "mocov2plus.yaml").read_text().replace("  - _self_\n", "  - _self_\n  - solo_sparse: gmp\n", 1)
    return config_dir(tmp_path, pre=text + GMP)


def _run(cfgs, data, out, epochs, *extra, cwd):
    r = run_solo("main_pretrain.py", cfgs, "pre.yaml", f"++data.train_path={data / 'train'}", f"++checkpoint.dir={out}",
                 f"++max_epochs={epochs}", "++optimizer.batch_size=4", "++data.num_workers=1",
                 "++method_kwargs.queue_size=16", "++checkpoint.keep_prev=True", *extra, cwd=cwd, tiny=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return sorted(Path(out).rglob("*.ckpt"))


def test_resume_continues_the_plugin_and_equals_an_uninterrupted_run(tmp_path):
    data = make_image_folder(tmp_path / "data", train_per_class=8)
    cfgs = _cfg(tmp_path)
    full = _run(cfgs, data, tmp_path / "full", 2, cwd=tmp_path)
    # the interruption: a new process resumes from the uninterrupted run's own epoch-0 checkpoint (same config,
    # same schedule), as solo-learn's resume_from_checkpoint does after a crash
    first = next(c for c in full if "ep=0" in c.name)
    resumed = _run(cfgs, data, tmp_path / "resumed", 2, f"++resume_from_checkpoint='{first}'", cwd=tmp_path)
    a = torch.load(next(c for c in full if "ep=1" in c.name), map_location="cpu", weights_only=True)
    b = torch.load(next(c for c in resumed if "ep=1" in c.name), map_location="cpu", weights_only=True)
    s0 = torch.load(first, map_location="cpu", weights_only=True)["solo_sparse"]["gmp"]
    assert b["solo_sparse"]["gmp"]["step"] == a["solo_sparse"]["gmp"]["step"] > s0["step"] > 0   # continued
    assert b["solo_sparse_rng"] is not None
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k                     # weights, masks, queue, BN stats

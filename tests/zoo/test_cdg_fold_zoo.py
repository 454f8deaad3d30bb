"""A CDG run packed into the zoo is the deployed network: ``scripts/build_zoo.py``'s packer folds the
conditional-path scale gamma into the weights (``deploy_backbone``), so the entry is the paper's form
(``cond_scale: none``, no gamma parameter) and its outputs equal the trained network's on the evaluation path."""
import torch
from helpers import load_script

from solo_sparse import zoo
from solo_sparse.core.config import config_to_state
from solo_sparse.core.registry import get_plugin
from solo_sparse.engine.resnet import build_resnet
from solo_sparse.gating.channel import gated_convs


def _build_zoo():
    return load_script("build_zoo")


def test_zoo_pack_folds_the_conditional_scale_and_keeps_the_outputs(tmp_path):
    cls = get_plugin("cdg")
    saved = config_to_state(cls.from_params({"cg": 1, "ramp": 0, "target": 0.5, "stages": [1, 2, 3]}).config)
    assert saved["cond_scale"] == 0.0
    torch.manual_seed(0)
    net = cls.rebuild_backbone(build_resnet("resnet18"), saved)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                        # a trained gamma: non-zero, different per channel
        for _, c in gated_convs(net):
            c.cond_scale.copy_(torch.rand(c.cond_scale.shape, generator=g) + 0.2)
    net.eval()
    ck = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                "solo_sparse": {"cdg": {"config": saved}}, "epoch": 0}, ck)
    out = tmp_path / "entry.safetensors"
    info = _build_zoo().pack_checkpoint(ck, out, fp16=False, method="simclr")
    assert info["gating"] == "cdg"
    state, masks, meta = zoo.read_backbone(out)
    assert meta["gating"]["config"]["cond_scale"] == "none"
    assert not any(k.endswith("cond_scale") for k in state)
    deployed = zoo.build_module(state, masks, meta).eval()
    assert all(c.cond_scale is None for _, c in gated_convs(deployed))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(deployed(x), net(x), atol=1e-5, rtol=1e-4)

import pytest
import torch

from solo_sparse.core.config import ConfigError
from solo_sparse.engine.masks import (
    check_layer_shape,
    compute_mask,
    n_keep,
    nm_group_mask_is_valid,
    xor_share,
)


def test_element_mask_keeps_exactly_the_largest():
    torch.manual_seed(0)
    s = torch.randn(32, 16, 3, 3).abs()
    m = compute_mask(s, 0.3)
    k = n_keep(s.numel(), 0.3)
    assert int(m.sum()) == k
    assert s[m].min() >= s[~m].max()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_every_group_valid_at_n_over_m(n, m):
    torch.manual_seed(1)
    s = torch.randn(24, 32, 3, 3).abs()
    mask = compute_mask(s, n / m, "nm", n=n, m=m)
    # groups run along input channels: for a fixed (o, kh, kw), m consecutive input channels
    g = mask.permute(0, 2, 3, 1).reshape(-1, m)
    assert (g.sum(1) == n).all()
    assert mask.float().mean().item() == pytest.approx(n / m)
    # the kept ones are the n largest of each group
    sg = s.permute(0, 2, 3, 1).reshape(-1, m)
    kept_min = torch.where(g, sg, torch.full_like(sg, float("inf"))).min(1).values
    dropped_max = torch.where(~g, sg, torch.full_like(sg, -1.0)).max(1).values
    assert (kept_min >= dropped_max).all()


def test_nm_partial_density_sparsifies_a_share_of_groups():
    torch.manual_seed(2)
    s = torch.randn(16, 16, 3, 3).abs()
    mask = compute_mask(s, 0.75, "nm", n=2, m=4)  # half of the groups are 2:4, half dense
    assert nm_group_mask_is_valid(mask, 2, 4).all()
    rows = mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1)
    assert int((rows == 2).sum()) == rows.numel() // 2
    assert mask.float().mean().item() == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="cannot go below"):
        compute_mask(s, 0.4, "nm", n=2, m=4)


def test_nm_linear_weight():
    s = torch.randn(8, 16).abs()
    mask = compute_mask(s, 0.5, "nm", n=2, m=4)
    assert (mask.reshape(-1, 4).sum(1) == 2).all()


def test_block_structure_and_density():
    torch.manual_seed(3)
    s = torch.randn(32, 16, 3, 3).abs()
    mask = compute_mask(s, 0.25, "block", block=(8, 8))
    blocks = mask.reshape(4, 8, 2, 8, 9)  # (O/K, K, I/C, C, taps)
    per_block = blocks.float().mean(dim=(1, 3, 4))
    assert set(per_block.unique().tolist()) <= {0.0, 1.0}  # every block all-kept or all-pruned
    assert int(per_block.sum()) == 2  # 25% of 8 blocks
    # the kept blocks have the largest L1 norms
    l1 = s.reshape(4, 8, 2, 8, 9).sum(dim=(1, 3, 4))
    assert l1[per_block == 1].min() >= l1[per_block == 0].max()


def test_channel_mask_prunes_whole_filters():
    s = torch.randn(10, 4, 3, 3).abs()
    s[3] += 10
    mask = compute_mask(s, 0.1, "channel")
    assert mask[3].all() and int(mask.sum()) == 4 * 9


def test_minus_inf_stays_pruned():
    s = torch.rand(100)
    s[:50] = float("-inf")
    m = compute_mask(s, 0.6)  # asks for 60 but only 50 are eligible: the -inf ones come last
    assert m[50:].all() and int(m.sum()) == 60


def test_shape_checks_name_the_layer():
    assert "layer1.conv" in check_layer_shape("layer1.conv", (16, 6, 3, 3), "nm", 2, 4, (8, 8))
    assert check_layer_shape("l", (16, 8, 3, 3), "nm", 2, 4, (8, 8)) is None
    assert "8x8" in check_layer_shape("l", (12, 8, 3, 3), "block", 2, 4, (8, 8))


def test_xor_share():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert xor_share(a, b) == 0.5


def test_packed_mask_files_hold_the_same_bits_in_an_eighth(tmp_path):
    from solo_sparse.engine.maskio import load_masks, load_packed_masks, save_masks, save_packed_masks

    g = torch.Generator().manual_seed(0)
    masks = {"backbone.layer1.0.conv1": torch.rand(64, 64, 3, 3, generator=g) < 0.33,
             "backbone.fc": torch.rand(10, 7, generator=g) < 0.9, "backbone.one": torch.tensor([True])}
    save_masks(tmp_path / "full.safetensors", masks, round=3)
    save_packed_masks(tmp_path / "packed.safetensors", masks, round=3)
    back, meta = load_packed_masks(tmp_path / "packed.safetensors")
    assert set(back) == set(masks) and all(torch.equal(back[k], masks[k]) and back[k].dtype == torch.bool
                                           for k in masks)
    assert meta["round"] == load_masks(tmp_path / "full.safetensors")[1]["round"] == "3"
    assert meta["format"] == load_masks(tmp_path / "full.safetensors")[1]["format"]
    assert (tmp_path / "packed.safetensors").stat().st_size * 6 < (tmp_path / "full.safetensors").stat().st_size
    with pytest.raises(ConfigError, match="not a packed solo-sparse mask file"):
        load_packed_masks(tmp_path / "full.safetensors")

"""engine/probes.py: the collapse measures (mean cosine of different images' embeddings, effective rank)."""
import pytest
import torch
import torch.nn.functional as F

from solo_sparse.engine.probes import effective_rank, other_images_cos


def _explicit(a, b):
    c = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    n = len(a)
    return float((c.sum() - c.diagonal().sum()) / (n * (n - 1)))


def test_other_images_cos_is_the_off_diagonal_mean():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(33, 8, generator=g) + 0.5, torch.randn(33, 8, generator=g) * 3
    assert other_images_cos(a, b) == pytest.approx(_explicit(a, b), abs=1e-6)
    assert other_images_cos(a) == pytest.approx(_explicit(a, a), abs=1e-6)
    # the diagonal is left out: b_i = a_i contributes nothing extra for the same image
    assert other_images_cos(a, a) != pytest.approx(float((F.normalize(a, dim=1) @ F.normalize(a, dim=1).T).mean()))


def test_other_images_cos_reads_a_collapse():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(1, 16, generator=g)
    collapsed = one.repeat(50, 1) * torch.rand(50, 1, generator=g).add(0.5)   # one direction, any scale
    assert other_images_cos(collapsed) == pytest.approx(1.0, abs=1e-5)
    spread = torch.randn(2000, 16, generator=g)
    assert abs(other_images_cos(spread)) < 0.02


@pytest.mark.parametrize("a,b", [((5, 4), (6, 4)), ((1, 4), (1, 4)), ((5,), (5,))])
def test_other_images_cos_refuses_bad_shapes(a, b):
    with pytest.raises(ValueError, match="N >= 2"):
        other_images_cos(torch.randn(*a), torch.randn(*b))


def test_effective_rank():
    g = torch.Generator().manual_seed(2)
    line = torch.randn(200, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    iso = torch.randn(4000, 16, generator=g)
    assert 15.0 < effective_rank(iso) <= 16.0
    two = torch.cat([torch.randn(300, 2, generator=g), torch.zeros(300, 30)], 1)
    assert 1.8 < effective_rank(two) < 2.01

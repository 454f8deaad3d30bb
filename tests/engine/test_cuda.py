"""Engine operations on a CUDA device: masks computed where the weights live (found by the GPU check:
the global threshold built a CPU tensor beside CUDA scores, so granet and sdclr failed at their first
update on a GPU). Skipped where no CUDA device is present; ``scripts/gpu_check.py`` runs this file."""
import pytest
import torch

from solo_sparse.engine.density import allocate_masks

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("distribution,granularity", [
    (dist, gran) for dist in ("uniform", "erk", "global") for gran in ("element", "channel")] + [("uniform", "nm")])
def test_allocate_masks_on_cuda_matches_cpu(distribution, granularity):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(16, 8, 3, 3, generator=g), "b": torch.rand(32, 16, 3, 3, generator=g),
              "c": torch.rand(10, 32, generator=g)}
    d = 0.5 if granularity == "nm" else 0.3          # N:M 2:4 cannot go below 0.5
    cpu = allocate_masks(scores, d, distribution, granularity)
    gpu = allocate_masks({k: v.cuda() for k, v in scores.items()}, d, distribution, granularity)
    for k in scores:
        assert gpu[k].device.type == "cuda"
        assert torch.equal(gpu[k].cpu(), cpu[k]), k

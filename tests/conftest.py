import os
import zlib

import pytest
import torch

# Without a GPU, Triton kernels run through the CPU interpreter. Triton reads this when a kernel is
# decorated, so it must be set before any triton_marlin kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def gen():
    """A fresh random generator per test (seeded from the test name for reproducibility)."""
    name = os.environ.get("PYTEST_CURRENT_TEST", "").encode()
    g = torch.Generator().manual_seed(zlib.crc32(name))
    return g


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()

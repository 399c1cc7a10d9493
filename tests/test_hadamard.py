"""Randomized Hadamard transforms: the reference math and the Triton kernel (interpreter on CPU)."""
import pytest
import torch

from triton_marlin.formats import hadamard as ref

from conftest import rel_err


def _dense(signs, block):
    D = signs.numel()
    h = ref.sylvester(block, torch.float64) / block ** 0.5
    return torch.block_diag(*[h] * (D // block)) @ torch.diag(signs.double())


@pytest.mark.parametrize("D,block", [(16, 16), (96, 32), (384, 128)])
def test_reference_matches_dense_orthogonal_matrix(D, block, gen):
    s = ref.random_signs(D, gen)
    V = _dense(s, block)
    assert torch.allclose(V @ V.t(), torch.eye(D, dtype=torch.float64), atol=1e-12)
    x = torch.randn(3, D, generator=gen, dtype=torch.float64)
    assert torch.allclose(ref.rotate(x, s, block), x @ V.t(), atol=1e-12)
    assert torch.allclose(ref.unrotate(x, s, block), x @ V, atol=1e-12)
    assert torch.allclose(ref.unrotate(ref.rotate(x, s, block), s, block), x, atol=1e-12)


def test_rotated_hessian_preserves_proxy_loss(gen):
    K = 64
    s = ref.random_signs(K, gen)
    X = torch.randn(100, K, generator=gen, dtype=torch.float64)
    H = X.t() @ X
    Hr = ref.rotate_hessian(H, s, 64)
    Xr = ref.rotate(X, s, 64)
    assert torch.allclose(Hr, Xr.t() @ Xr, atol=1e-8)
    E = torch.randn(5, K, generator=gen, dtype=torch.float64)
    Er = ref.rotate(E, s, 64)
    assert torch.trace(Er @ Hr @ Er.t()).item() == pytest.approx(torch.trace(E @ H @ E.t()).item(), rel=1e-10)


def test_block_size_choice():
    assert ref.hadamard_block_size(4096) == 128
    assert ref.hadamard_block_size(96) == 32
    assert ref.hadamard_block_size(48) == 16
    assert ref.hadamard_block_size(7) == 1
    with pytest.raises(ValueError):
        ref.hadamard_block_size(0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("R,D,block", [(1, 128, 128), (19, 96, 32), (3, 48, 16), (70, 256, 128)])
def test_triton_kernel_matches_reference(dtype, tol, R, D, block, gen):
    from triton_marlin.kernels import hadamard as kh
    s = ref.random_signs(D, gen)
    x = torch.randn(R, D, generator=gen).to(dtype)
    for fn, rfn in ((kh.rotate, ref.rotate), (kh.unrotate, ref.unrotate)):
        out = torch.full((R, D), float("nan"), dtype=torch.float32)
        out.copy_(fn(x, s, block, out_dtype=torch.float32))
        assert rel_err(out, rfn(x, s, block)) < tol
        assert fn(x, s, block).dtype == dtype


def test_triton_unrotate_adds_bias(gen):
    from triton_marlin.kernels import hadamard as kh
    s = ref.random_signs(64, gen)
    y = torch.randn(3, 64, generator=gen)
    bias = torch.randn(64, generator=gen).half()
    out = kh.unrotate(y, s, 32, out_dtype=torch.float16, bias=bias)
    assert out.dtype == torch.float16
    assert rel_err(out, ref.unrotate(y, s, 32) + bias.double()) < 1e-3
    with pytest.raises(ValueError, match="bias"):
        kh.unrotate(y, s, 32, bias=torch.zeros(63))


def test_triton_kernel_bad_arguments():
    from triton_marlin.kernels import hadamard as kh
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="signs"):
        kh.rotate(x, torch.ones(32, dtype=torch.int8), 64)
    with pytest.raises(ValueError, match="block"):
        kh.rotate(x, torch.ones(64, dtype=torch.int8), 256)
    with pytest.raises(TypeError, match="x must be"):
        kh.rotate(x.double(), torch.ones(64, dtype=torch.int8), 64)


@pytest.mark.parametrize("S,R,D,block", [(1, 2, 128, 128), (3, 21, 96, 32), (2, 1, 64, 64)])
def test_triton_unrotate_sums_split_parts(S, R, D, block, gen):
    # split-K partial results are added before the (linear) transform, in the same launch
    # (R <= 4: the register transform; R = 21: the tensor-core product with fp32 input split in two)
    from triton_marlin.kernels import hadamard as kh
    s = ref.random_signs(D, gen)
    parts = torch.randn(S, R, D, generator=gen)
    bias = torch.randn(D, generator=gen)
    out = kh.unrotate_parts(parts, s, block, out_dtype=torch.float32, bias=bias)
    assert out.shape == (R, D) and not torch.isnan(out).any()
    assert rel_err(out, ref.unrotate(parts.double().sum(0), s, block) + bias.double()) < 1e-6
    with pytest.raises(ValueError, match="parts=True"):
        kh.unrotate_parts(parts[0], s, block)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("R", [1, 3, 16, 70, 333])
def test_gpu_kernel_matches_reference(dtype, tol, R, gen):
    # the register transform (R <= 4) and the tensor-core product (more rows), compiled
    from triton_marlin.kernels import hadamard as kh
    D = 1024
    s = ref.random_signs(D, gen).cuda()
    x = torch.randn(R, D, generator=gen).to(dtype).cuda()
    for fn, rfn in ((kh.rotate, ref.rotate), (kh.unrotate, ref.unrotate)):
        out = torch.full((R, D), float("nan"), device="cuda")
        out.copy_(fn(x, s, 128, out_dtype=torch.float32))
        assert rel_err(out, rfn(x, s, 128)) < tol
    parts = torch.randn(3, R, D, generator=gen).cuda() * 100
    y = kh.unrotate_parts(parts, s, 128, out_dtype=torch.float32)
    assert rel_err(y, ref.unrotate(parts.double().sum(0), s, 128)) < 1e-6

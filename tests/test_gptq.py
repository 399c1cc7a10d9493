"""GPTQ (and MR-GPTQ) for the integer formats, and LDLQ for the trellis formats: proxy loss."""
import pytest
import torch

import triton_marlin as tm
from triton_marlin.formats import QuantizedTensor
from triton_marlin.formats.packing import unpack_codes
from triton_marlin.quantize.gptq import proxy_loss


def _correlated_hessian(K, gen, n=512):
    """Activations with a few large channels and correlated inputs (as in real layers)."""
    X = torch.randn(n, K, generator=gen, dtype=torch.float64)
    X[:, :3] *= 15.0
    mix = torch.eye(K, dtype=torch.float64) + 0.4 * torch.randn(K, K, generator=gen, dtype=torch.float64) / K ** 0.5
    X = X @ mix
    return (X.t() @ X).float()


def test_gptq_with_identity_hessian_is_rtn(gen):
    # with H = I and no damping no error is fed forward: GPTQ must reduce to round-to-nearest
    w = torch.randn(24, 96, generator=gen)
    a = tm.quantize(w, "int4", group_size=32, method="gptq", hessian=torch.eye(96), damp=0.0)
    b = tm.quantize(w, "int4", group_size=32)
    assert torch.equal(unpack_codes(a.tensors, 4, 96), unpack_codes(b.tensors, 4, 96))
    assert torch.equal(a.tensors["scales"], b.tensors["scales"])


@pytest.mark.parametrize("fmt,group,kw", [
    ("int4", 128, {}),
    ("int4", 32, {"act_order": True}),
    ("int3", 64, {"symmetric": False}),
    ("int2", -1, {"act_order": True, "symmetric": False}),
    ("int8", 128, {}),
    ("int4", 128, {"rotate": True}),
])
def test_gptq_proxy_loss_below_rtn(fmt, group, kw, gen):
    K = 256 if group == 128 else 192
    w = torch.randn(32, K, generator=gen)
    H = _correlated_hessian(K, gen)
    q = tm.quantize(w, fmt, group_size=group, method="gptq", hessian=H, **kw)
    rtn = tm.quantize(w, fmt, group_size=group, symmetric=kw.get("symmetric", True))
    lg = proxy_loss(w, q.dequantize(torch.float64), H)
    lr = proxy_loss(w, rtn.dequantize(torch.float64), H)
    assert lg < 0.8 * lr
    assert q.meta["method"] == "gptq" and q.format == fmt


def test_mr_gptq_artifact_is_exact(tmp_path, gen):
    K = 192
    w = torch.randn(16, K, generator=gen)
    H = _correlated_hessian(K, gen)
    q = tm.quantize(w, "int4", group_size=64, method="gptq", hessian=H, rotate=True, seed=7)
    assert q.meta["hadamard_block"] == 64 and q.tensors["had_signs"].shape == (K,)
    # dequantize = (codes - z) * s, then the inverse rotation
    from triton_marlin.formats import hadamard
    codes = unpack_codes(q.tensors, 4, K).double()
    s = q.tensors["scales"].double().t().repeat_interleave(64, dim=1)
    want = hadamard.unrotate((codes - 8) * s, q.tensors["had_signs"], 64)
    assert torch.allclose(q.dequantize(torch.float64), want, rtol=0, atol=1e-12)
    q.save(tmp_path / "q.safetensors")
    back = QuantizedTensor.load(tmp_path / "q.safetensors")
    assert torch.equal(back.dequantize(torch.float32), q.dequantize(torch.float32))
    # the reference matmul of a rotated weight equals x @ W_hat^T
    x = torch.randn(3, K, generator=gen)
    y = tm.qmatmul(x, q, backend="torch")
    assert torch.allclose(y.double(), x.double() @ q.dequantize(torch.float64).t(), rtol=1e-4, atol=1e-4)


def test_gptq_bad_arguments(gen):
    w = torch.randn(8, 64, generator=gen)
    with pytest.raises(ValueError, match="hessian"):
        tm.quantize(w, "int4", group_size=32, method="gptq")
    with pytest.raises(ValueError, match=r"\(64, 64\)"):
        tm.quantize(w, "int4", group_size=32, method="gptq", hessian=torch.eye(32))
    with pytest.raises(ValueError, match="symmetric"):
        tm.quantize(w, "int4", group_size=32, method="gptq", hessian=torch.triu(torch.ones(64, 64)))
    with pytest.raises(ValueError, match="integer formats"):
        tm.quantize(w, "fp4", group_size=32, method="gptq", hessian=torch.eye(64))
    with pytest.raises(ValueError, match="damp"):
        tm.quantize(w, "int4", group_size=32, method="gptq", hessian=torch.eye(64), damp=2.0)


def test_ldlq_proxy_loss_below_plain_viterbi(gen):
    K = 64
    w = torch.randn(16, K, generator=gen)
    H = _correlated_hessian(K, gen)
    ld = tm.quantize(w, "trellis3", method="ldlq", hessian=H, code="1mad", chunk_tiles=4)
    vi = tm.quantize(w, "trellis3", method="viterbi", code="1mad", chunk_tiles=4)
    assert ld.meta["method"] == "ldlq"
    assert proxy_loss(w, ld.dequantize(torch.float64), H) < 0.7 * proxy_loss(w, vi.dequantize(torch.float64), H)


def test_qmatmul_auto_on_rotated_int_weight_is_correct(gen):
    # whatever path qmatmul picks, a rotated (MR-GPTQ) weight must give x @ W_hat^T
    K = 128
    w = torch.randn(32, K, generator=gen)
    H = _correlated_hessian(K, gen)
    q = tm.quantize(w, "int4", group_size=64, method="gptq", hessian=H, rotate=True)
    x = torch.randn(2, K, generator=gen, dtype=torch.float16)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = tm.qmatmul(x, q)
    ref = x.double() @ q.dequantize(torch.float64).t()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-3

"""Public API: qmatmul (torch path) against fp64, QuantizedLinear, replace_linear_layers, bad input."""
import pytest
import torch
from torch import nn

import triton_marlin as tm
from triton_marlin import dispatch

from conftest import rel_err

FORMATS = ["int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_qmatmul_torch_path_matches_fp64(fmt, dtype, gen):
    N, K = 37, 256
    qt = tm.quantize(torch.randn(N, K, generator=gen), fmt)
    x = torch.randn(2, 3, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype)
    dispatch.reset()
    out = tm.qmatmul(x, qt, bias, backend="torch")
    assert dispatch.counts() == {("qmatmul", "torch"): 1}
    ref = x.double() @ qt.dequantize(torch.float64).t() + bias.double()
    assert out.shape == (2, 3, N) and out.dtype == dtype
    # fp32 accumulate, one rounding to the output dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    assert rel_err(out, ref) < tol


def test_qmatmul_empty_batch():
    qt = tm.quantize(torch.randn(16, 128), "int4")
    out = tm.qmatmul(torch.randn(0, 128), qt)
    assert out.shape == (0, 16)


def test_qmatmul_non_contiguous_x(gen):
    qt = tm.quantize(torch.randn(16, 128, generator=gen), "int4")
    x = torch.randn(128, 5, generator=gen).t()
    assert not x.is_contiguous()
    ref = x.double() @ qt.dequantize(torch.float64).t()
    assert rel_err(tm.qmatmul(x, qt), ref) < 1e-5


@pytest.mark.parametrize("call,exc,msg", [
    (lambda qt: tm.qmatmul(torch.randn(3, 100), qt), ValueError, "last dimension must equal"),
    (lambda qt: tm.qmatmul(torch.randint(0, 2, (3, 128)), qt), TypeError, "dtype"),
    (lambda qt: tm.qmatmul(torch.randn(3, 128), qt, torch.randn(7)), ValueError, "bias"),
    (lambda qt: tm.qmatmul(torch.randn(3, 128), qt.dequantize()), TypeError, "QuantizedTensor"),
    (lambda qt: tm.qmatmul(torch.randn(3, 128), qt, backend="cuda"), ValueError, "backend"),
    (lambda qt: tm.qmatmul(torch.randn(3, 128, device="meta"), qt), ValueError, "is on meta"),
])
def test_qmatmul_bad_input(call, exc, msg):
    qt = tm.quantize(torch.randn(16, 128), "int4")
    with pytest.raises(exc, match=msg):
        call(qt)


def test_quantized_linear_matches_its_weight(gen):
    lin = nn.Linear(256, 48, bias=True)
    q = tm.QuantizedLinear.from_linear(lin, "int4", 64)
    x = torch.randn(5, 256, generator=gen)
    ref = x.double() @ q.quantized_weight().dequantize(torch.float64).t() + lin.bias.double()
    assert rel_err(q(x), ref) < 1e-5
    assert "format=int4" in repr(q)
    # the float layer and its quantized copy agree to within the quantization error
    assert rel_err(q(x), lin(x)) < 0.15


def test_quantized_linear_state_dict_round_trip(gen):
    q = tm.QuantizedLinear.from_linear(nn.Linear(128, 16), "fp4")
    q2 = tm.QuantizedLinear(q.quantized_weight(), q.bias)
    q2.load_state_dict(q.state_dict())
    x = torch.randn(2, 128, generator=gen)
    assert torch.equal(q(x), q2(x))


def test_replace_linear_layers_reports_and_skips():
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(),
                          nn.Sequential(nn.Linear(256, 128), nn.Linear(128, 64)))
    model.add_module("lm_head", nn.Linear(64, 10))
    x = torch.randn(3, 128)
    report = tm.replace_linear_layers(model, format="int8", group_size=64, skip=["lm_head"])
    assert [r["name"] for r in report] == ["0", "2.0", "2.1"]
    assert isinstance(model.lm_head, nn.Linear)
    assert all(isinstance(m, tm.QuantizedLinear) for m in (model[0], model[2][0], model[2][1]))
    assert all(r["bytes_after"] < r["bytes_before"] for r in report)
    assert model(x).shape == (3, 10)


def test_replace_linear_layers_skip_predicate():
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    report = tm.replace_linear_layers(model, "int4", skip=lambda name: name == "1")
    assert [r["name"] for r in report] == ["0"]


def test_qmatmul_routes_trellis_weights_to_their_kernel(gen):
    from triton_marlin.device import triton_enabled_for
    if not triton_enabled_for(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    qt = tm.quantize(torch.randn(16, 128, generator=gen), "trellis2", method="viterbi")
    x = torch.randn(2, 128, generator=gen)
    dispatch.reset()
    out = tm.qmatmul(x, qt)
    counts = dispatch.counts()
    assert counts.get(("qmatmul", "triton")) == 1
    # the trellis product records which of its kernels ran, once
    gemv = {path: n for (op, path), n in counts.items() if op == "trellis_gemv"}
    assert sum(gemv.values()) == 1, counts
    assert set(counts) - {("qmatmul", "triton")} == {("trellis_gemv", p) for p in gemv}, counts
    assert rel_err(out, x.double() @ qt.dequantize(torch.float64).t()) < 1e-5

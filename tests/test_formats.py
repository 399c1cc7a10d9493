"""Weight formats: bit-exact packing, exact reference dequantizers, artifacts, bad input."""
import json
import os

import pytest
import torch

import triton_marlin as tm
from triton_marlin.formats import FormatError, QuantizedTensor
from triton_marlin.formats.minifloat import (decode_e2m1, decode_e4m3fn, decode_e8m0, encode_e2m1,
                                             encode_e4m3fn, encode_e8m0_floor)
from triton_marlin.formats.packing import pack_codes, packed_shapes, unpack_codes

INT_BITS = (2, 3, 4, 8)
GROUPS = (32, 64, 128, 256, -1)


@pytest.mark.parametrize("bits", INT_BITS)
@pytest.mark.parametrize("K", [32, 96, 256, 333, 1024])
def test_pack_unpack_bit_exact(bits, K, gen):
    codes = torch.randint(0, 2 ** bits, (7, K), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert {k: (tuple(v.shape), v.dtype) for k, v in packed.items()} == packed_shapes(bits, 7, K)
    assert torch.equal(unpack_codes(packed, bits, K), codes)


def test_k16_interleaved_layout_int4():
    # code of k = tile*128 + i*16 + w sits in word row tile*16 + w, bits [4i, 4i+4)
    codes = torch.zeros(2, 256, dtype=torch.uint8)
    tile, i, w = 1, 5, 3
    codes[1, tile * 128 + i * 16 + w] = 0xB
    words = pack_codes(codes, 4)["qweight"]
    assert words.shape == (32, 2)
    assert (words[tile * 16 + w, 1].item() & 0xFFFFFFFF) == 0xB << (4 * i)
    assert int((words != 0).sum()) == 1


@pytest.mark.parametrize("bits", INT_BITS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_int_reference_dequant(bits, group_size, symmetric, gen):
    N, K = 9, 512
    w = torch.randn(N, K, generator=gen)
    qt = tm.quantize(w, f"int{bits}", group_size, symmetric=symmetric)
    fmt = qt.fmt
    q = fmt.codes(qt).float()
    g = K if group_size == -1 else group_size
    s = qt.tensors["scales"].float().t().repeat_interleave(g, 1)
    z = 2.0 ** (bits - 1) if symmetric else qt.tensors["zeros"].float().t().repeat_interleave(g, 1)
    assert torch.equal(qt.dequantize(torch.float32), (q - z) * s)
    assert q.min() >= 0 and q.max() < 2 ** bits
    # round-to-nearest: every weight within half a step of its code (clamped extremes aside)
    err = (qt.dequantize(torch.float32) - w).abs()
    assert (err <= 0.5 * s * (1 + 1e-3) + 1e-6).float().mean() > 0.97


@pytest.mark.parametrize("bits", INT_BITS)
def test_requantizing_a_dequantized_weight_is_exact(bits, gen):
    w = torch.randn(16, 256, generator=gen)
    qt = tm.quantize(w, f"int{bits}", 64)
    again = tm.quantize(qt.dequantize(torch.float32), f"int{bits}", 64)
    assert torch.equal(again.dequantize(torch.float32), qt.dequantize(torch.float32))


def test_quantization_error_shrinks_with_bits(gen):
    w = torch.randn(64, 512, generator=gen)
    mse = [((tm.quantize(w, f"int{b}", 128).dequantize(torch.float32) - w) ** 2).mean().item()
           for b in INT_BITS]
    assert mse == sorted(mse, reverse=True)
    assert mse[-1] < 1e-4


def test_fp8_decodes_all_256_codes_like_torch():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = decode_e4m3fn(codes)
    ref = codes.view(torch.float8_e4m3fn).float()
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(ours), nan)
    assert int(nan.sum()) == 2  # only S.1111.111
    assert torch.equal(ours[~nan], ref[~nan])
    assert ours[~nan].abs().max().item() == 448.0
    assert torch.isfinite(ours[codes == 0x7E]).all()  # S.1111.110 = 448, not NaN


def test_fp8_encode_round_trip_of_every_finite_code():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vals = decode_e4m3fn(codes)
    finite = ~torch.isnan(vals)
    back = encode_e4m3fn(vals[finite])
    # +0 and -0 both decode to 0.0; everything else maps back to its own code
    same = back == codes[finite]
    zero = vals[finite] == 0
    assert bool((same | zero).all())


def test_e2m1_values():
    vals = decode_e2m1(torch.arange(16))
    assert vals[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert vals[8:].tolist() == [-0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert torch.equal(encode_e2m1(vals)[1:8], torch.arange(1, 8, dtype=torch.uint8))
    assert torch.equal(encode_e2m1(vals)[9:], torch.arange(9, 16, dtype=torch.uint8))


def test_e2m1_rounding_to_nearest_ties_even():
    x = torch.tensor([0.24, 0.26, 0.75, 1.25, 2.5, 3.5, 5.0, 100.0, -2.6])
    assert decode_e2m1(encode_e2m1(x)).tolist() == [0.0, 0.5, 1.0, 1.0, 2.0, 4.0, 4.0, 6.0, -3.0]


def test_e8m0_scales_round_trip():
    codes = torch.arange(255, dtype=torch.int32).to(torch.uint8)
    vals = decode_e8m0(codes)
    assert torch.equal(encode_e8m0_floor(vals), codes)
    assert torch.isnan(decode_e8m0(torch.tensor([255], dtype=torch.uint8))).all()


@pytest.mark.parametrize("fmt,gs", [("fp4", 32), ("fp4", 128), ("fp4", -1), ("mxfp4", 32), ("nvfp4", 16)])
def test_fp4_family_dequant_and_scales(fmt, gs, gen):
    w = torch.randn(11, 256, generator=gen) * 3
    qt = tm.quantize(w, fmt, gs)
    F = qt.fmt
    codes = F.codes(qt)
    g = 256 if gs == -1 else gs
    expect = decode_e2m1(codes) * F.block_scales(qt).t().repeat_interleave(g, 1)
    assert torch.equal(qt.dequantize(torch.float32), expect)
    # the scale codes survive the artifact round trip bit for bit
    if fmt == "mxfp4":
        assert torch.equal(encode_e8m0_floor(decode_e8m0(qt.tensors["scales"])), qt.tensors["scales"])
    if fmt == "nvfp4":
        assert torch.equal(encode_e4m3fn(decode_e4m3fn(qt.tensors["scales"])), qt.tensors["scales"])
    rel = ((qt.dequantize(torch.float32) - w) ** 2).mean() / (w ** 2).mean()
    assert rel < 0.03


def test_mxfp4_scale_puts_block_max_in_top_binade(gen):
    w = torch.randn(4, 64, generator=gen)
    qt = tm.quantize(w, "mxfp4")
    scale = decode_e8m0(qt.tensors["scales"]).t()  # [N, G]
    amax = w.abs().reshape(4, 2, 32).amax(-1)
    ratio = amax / scale
    assert bool(((ratio >= 4) & (ratio < 8)).all())


@pytest.mark.parametrize("fmt", ["int2", "int3", "int4", "int8", "fp4", "mxfp4", "nvfp4", "fp8"])
def test_artifact_round_trip(fmt, tmp_path, gen):
    w = torch.randn(33, 256, generator=gen, dtype=torch.float16)
    qt = tm.quantize(w, fmt)
    path = tmp_path / "w.safetensors"
    qt.save(path)
    back = QuantizedTensor.load(path)
    assert back.format == fmt and back.shape == qt.shape and back.group_size == qt.group_size
    assert back.meta == qt.meta
    for k in qt.tensors:
        assert torch.equal(back.tensors[k], qt.tensors[k])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


def _rewrite_header(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header.update(changes)
    save_file(tensors, str(path), metadata=header)


def test_artifact_refuses_other_version(tmp_path):
    qt = tm.quantize(torch.randn(8, 128), "int4")
    p = tmp_path / "w.safetensors"
    qt.save(p)
    _rewrite_header(p, version="99")
    with pytest.raises(FormatError, match="version '99' is not supported"):
        QuantizedTensor.load(p)


def test_artifact_refuses_mismatched_format(tmp_path):
    qt = tm.quantize(torch.randn(8, 128), "int4")
    p = tmp_path / "w.safetensors"
    qt.save(p)
    with pytest.raises(FormatError, match="holds a 'int4' weight, expected 'fp4'"):
        QuantizedTensor.load(p, expect_format="fp4")
    # a header that names another format than the tensors were packed for
    _rewrite_header(p, format="int8", meta=json.dumps({**qt.meta, "format": "int8", "bits": 8}))
    with pytest.raises(FormatError, match="expects"):
        QuantizedTensor.load(p)


def test_artifact_refuses_corrupt_file(tmp_path):
    qt = tm.quantize(torch.randn(8, 128), "int4")
    p = tmp_path / "w.safetensors"
    qt.save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        QuantizedTensor.load(p)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    import safetensors.torch as st
    qt = tm.quantize(torch.randn(8, 128), "int4")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        qt.save(tmp_path / "w.safetensors")
    assert os.listdir(tmp_path) == []


def test_bits_per_weight_counts_scales_and_zeros():
    w = torch.randn(128, 1024)
    assert tm.quantize(w, "int4", 128).bits_per_weight == pytest.approx(4 + 16 / 128)
    assert tm.quantize(w, "int4", 128, symmetric=False).bits_per_weight == pytest.approx(4 + 24 / 128)
    assert tm.quantize(w, "mxfp4").bits_per_weight == pytest.approx(4 + 8 / 32)
    assert tm.quantize(w, "nvfp4").bits_per_weight == pytest.approx(4 + 8 / 16 + 32 / w.numel())
    assert tm.quantize(w, "fp8").bits_per_weight == pytest.approx(8 + 16 / 1024)


@pytest.mark.parametrize("bad,exc,msg", [
    (lambda: tm.quantize(torch.randn(8, 100), "int4", 128), ValueError, "not a multiple of group_size"),
    (lambda: tm.quantize(torch.randn(8, 128), "int5"), ValueError, "unknown format"),
    (lambda: tm.quantize(torch.randint(0, 3, (8, 128)), "int4"), TypeError, "dtype"),
    (lambda: tm.quantize(torch.tensor([[1.0, float("nan")] * 64]), "int4"), ValueError, "NaN"),
    (lambda: tm.quantize(torch.tensor([[1.0, float("inf")] * 64]), "fp8"), ValueError, "NaN/inf"),
    (lambda: tm.quantize(torch.randn(128), "int4"), ValueError, "2-D"),
    (lambda: tm.quantize(torch.randn(8, 128), "int4", 48), ValueError, "group_size"),
    (lambda: tm.quantize(torch.randn(8, 128), "mxfp4", 64), ValueError, "group_size"),
    (lambda: tm.quantize(torch.randn(8, 128), "int4", method="magic"), ValueError, "unknown quantization method"),
    (lambda: tm.quantize(torch.randn(8, 128), "int4", scale_dtype=torch.float32), TypeError, "scale_dtype"),
])
def test_bad_input_errors(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        bad()


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_scale_dtypes(scale_dtype, gen):
    w = torch.randn(8, 256, generator=gen)
    for fmt in ("int4", "fp4", "fp8"):
        qt = tm.quantize(w, fmt, scale_dtype=scale_dtype)
        assert qt.tensors["scales"].dtype == scale_dtype
        assert qt.dequantize(torch.float32).shape == (8, 256)

"""The quantized-experts container: construction, validation, the safetensors artifact, the flattened
per-projection buffers the fused kernels read, and lossless re-packing at a wider width."""
import pytest
import torch

import triton_marlin
from triton_marlin.formats import FormatError
from triton_marlin.moe.experts import (KIND_CODES, PART_ALIGN, PROJECTIONS, QuantizedExperts, T_CODE, T_GROUP, T_HI,
                                       T_KIND, T_SCALE, T_ZERO, interleave_k16, interleave_word_tiles, pad_to_max_bits,
                                       repack_lossless)

H, I = 64, 96


def float_moe(E, gen):
    return (torch.randn(E, I, H, generator=gen) * 0.05, torch.randn(E, I, H, generator=gen) * 0.05,
            torch.randn(E, H, I, generator=gen) * 0.05)


MIXED = [(("int4", 32),) * 3, (("int2", 32), ("int2", 32), ("int3", 32)), ("mxfp4", ("fp4", 32), "fp8"),
         (("int8", -1), "nvfp4", ("int4", 32))]


def test_from_float_recipe_and_shared(gen):
    g, u, d = float_moe(4, gen)
    shared = (torch.randn(2 * I, H, generator=gen), torch.randn(2 * I, H, generator=gen),
              torch.randn(H, 2 * I, generator=gen))
    ex = QuantizedExperts.from_float(g, u, d, MIXED, shared=shared, shared_recipe=("int8", 32))
    assert ex.num_experts == 4 and ex.num_shared == 2 and ex.num_total == 6
    assert ex.formats(1) == ("int2", "int2", "int3") and ex.widths(1) == (2, 2, 3)
    assert ex.formats(5) == ("int8", "int8", "int8")
    assert not ex.is_uniform()
    # the split shared MLP: expert 4 holds rows 0..I-1 of the gate, expert 5 the next I rows
    w = ex.experts[5]["gate"].dequantize(torch.float32)
    ref = triton_marlin.quantize(shared[0][I:], "int8", 32).dequantize(torch.float32)
    assert torch.equal(w, ref)
    assert "shared" in ex.describe()


def test_save_load_round_trip(tmp_path, gen):
    ex = QuantizedExperts.from_float(*float_moe(4, gen), MIXED)
    path = tmp_path / "experts.safetensors"
    ex.save(path)
    back = QuantizedExperts.load(path)
    assert back.num_total == 4 and back.hidden_size == H and back.intermediate_size == I
    for e in range(4):
        for p in PROJECTIONS:
            a, b = ex.experts[e][p], back.experts[e][p]
            assert a.format == b.format and a.group_size == b.group_size and a.meta == b.meta
            for name in a.tensors:
                assert torch.equal(a.tensors[name], b.tensors[name])


def test_load_refuses_other_files(tmp_path, gen):
    qt = triton_marlin.quantize(torch.randn(32, 64, generator=gen), "int4", 32)
    path = tmp_path / "w.safetensors"
    qt.save(path)
    with pytest.raises(FormatError, match="not a triton_marlin experts artifact"):
        QuantizedExperts.load(path)


def test_flat_tables_point_at_each_expert(gen):
    """Each table row's offsets locate exactly that expert's tensors in the concatenated buffers."""
    ex = QuantizedExperts.from_float(*float_moe(4, gen), MIXED)
    for p in PROJECTIONS:
        flat = ex.flat(p)
        assert flat.table.shape == (4, 8) and flat.table.dtype == torch.int32
        for e in range(4):
            qt = ex.experts[e][p]
            row = flat.table[e].tolist()
            assert row[T_KIND] == KIND_CODES[qt.format]
            assert row[T_GROUP] == (qt.shape[1] if qt.group_size == -1 else qt.group_size)
            assert all(off % PART_ALIGN == 0 for off in (row[T_CODE], row[T_HI], row[T_SCALE]))
            if qt.format in ("int8", "fp8"):
                codes, buf = interleave_k16(qt.tensors["qweight"]).reshape(-1), flat.codes8
            else:
                codes, buf = interleave_word_tiles(qt.tensors["qweight"]).reshape(-1), flat.codes32
            assert torch.equal(buf[row[T_CODE]:row[T_CODE] + codes.numel()], codes)
            sc = qt.tensors["scales"].reshape(-1)
            sbuf = flat.scales8 if qt.format in ("mxfp4", "nvfp4") else flat.scales16
            assert torch.equal(sbuf[row[T_SCALE]:row[T_SCALE] + sc.numel()], sc)
            if "qweight_hi" in qt.tensors:
                hi = interleave_word_tiles(qt.tensors["qweight_hi"]).reshape(-1)
                assert torch.equal(flat.codes16[row[T_HI]:row[T_HI] + hi.numel()], hi)
            assert row[T_ZERO] == -1
            if qt.format == "nvfp4":
                assert flat.gscale[e] == qt.tensors["global_scale"][0]


def test_interleave_word_tiles_layout():
    """Word (r, n) of a [rows, N] plane lands at (r // 16, n, r % 16); a partial tile is refused."""
    rows, N = 48, 5
    words = torch.arange(rows * N, dtype=torch.int32).reshape(rows, N)
    out = interleave_word_tiles(words)
    assert out.shape == (rows // 16, N, 16)
    for r, n in ((0, 0), (15, 4), (16, 0), (37, 3), (47, 4)):
        assert out[r // 16, n, r % 16] == words[r, n]
    with pytest.raises(ValueError, match="multiple of 16 rows"):
        interleave_word_tiles(words[:40])


def test_interleave_k16_layout():
    """Code (k, n) of a [K, N] byte matrix lands at (k // 16, n, k % 16); a partial last slot is zero-padded."""
    K, N = 40, 3
    codes = torch.randint(0, 256, (K, N), dtype=torch.uint8)
    out = interleave_k16(codes)
    assert out.shape == (3, N, 16)
    for k, n in ((0, 0), (15, 2), (16, 1), (39, 2)):
        assert out[k // 16, n, k % 16] == codes[k, n]
    assert (out[2, :, 8:] == 0).all()


def test_asymmetric_kind_and_zeros(gen):
    experts = [{p: triton_marlin.quantize(torch.randn(*shape, generator=gen), "int4", 32, symmetric=False)
                for p, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I)))}]
    ex = QuantizedExperts(experts, H, I)
    flat = ex.flat("gate")
    assert flat.kinds == (KIND_CODES["int4"] + 8,)
    z = experts[0]["gate"].tensors["zeros"].reshape(-1)
    off = int(flat.table[0, T_ZERO])
    assert torch.equal(flat.zeros8[off:off + z.numel()], z)


@pytest.mark.parametrize("src,target", [("int2", "int4"), ("int3", "int8"), ("int4", "int8"), ("fp4", "int8"),
                                        ("mxfp4", "int8"), ("int4", "fp8"), ("fp4", "fp8"), ("int2", "fp8")])
def test_repack_lossless(src, target, gen):
    w = torch.randn(48, 512, generator=gen) * 0.05  # K a multiple of every packing tile: no padding
    gs = 32 if src != "mxfp4" else None
    qt = triton_marlin.quantize(w, src, gs)
    out = repack_lossless(qt, target)
    assert out.format == target and out.bits >= qt.bits
    assert torch.equal(out.dequantize(torch.float32), qt.dequantize(torch.float32))
    assert out.nbytes > qt.nbytes


def test_repack_asymmetric_int(gen):
    qt = triton_marlin.quantize(torch.randn(32, 64, generator=gen), "int3", 32, symmetric=False)
    out = repack_lossless(qt, "int8")
    assert torch.equal(out.dequantize(torch.float32), qt.dequantize(torch.float32))


def test_repack_refuses_lossy(gen):
    qt = triton_marlin.quantize(torch.randn(32, 64, generator=gen), "int8", 32)
    with pytest.raises(ValueError, match="no lossless"):
        repack_lossless(qt, "fp8")
    with pytest.raises(ValueError, match="cannot pad int8 down to int4"):
        repack_lossless(qt, "int4")


PADDABLE = [(("int4", 32),) * 3, (("int2", 32), ("int2", 32), ("int3", 32)), ("mxfp4", ("fp4", 32), "fp8"),
            (("int8", -1), ("int4", 32), ("int4", 32))]


def test_pad_to_max_bits(gen):
    ex = QuantizedExperts.from_float(*float_moe(4, gen), PADDABLE)
    padded = pad_to_max_bits(ex)
    assert padded.is_uniform()
    assert padded.nbytes > ex.nbytes
    for e in range(4):
        for p in PROJECTIONS:
            assert torch.equal(padded.experts[e][p].dequantize(torch.float32),
                               ex.experts[e][p].dequantize(torch.float32))
    # int8 next to fp8 in one projection has no common lossless format
    bad = QuantizedExperts.from_float(*float_moe(2, gen), [(("int8", 32),) * 3, (("fp8", 32),) * 3])
    with pytest.raises(ValueError, match="no common lossless wider format"):
        pad_to_max_bits(bad)
    # nvfp4's E4M3 block scale times its fp32 global scale is not an fp16 scale in general
    with pytest.raises(ValueError, match="nvfp4"):
        pad_to_max_bits(QuantizedExperts.from_float(*float_moe(4, gen), MIXED))


def test_bad_containers(gen):
    g, u, d = float_moe(2, gen)
    with pytest.raises(ValueError, match=r"expected \(2, 96, 64\)"):
        QuantizedExperts.from_float(g, u[:, :, :32], d)
    with pytest.raises(ValueError, match="not supported for experts"):
        QuantizedExperts.from_float(g, u, d, "int5")
    ex = QuantizedExperts.from_float(g, u, d, ("int4", 32))
    experts = [dict(e) for e in ex.experts]
    experts[1]["down"] = triton_marlin.quantize(torch.randn(H, 64, generator=gen), "int4", 32)
    with pytest.raises(ValueError, match=r"expert 1 down: weight shape \[64, 64\] does not match \[64, 96\]"):
        QuantizedExperts(experts, H, I)
    experts = [dict(e) for e in ex.experts]
    del experts[0]["up"]
    with pytest.raises(ValueError, match="expert 0: expected a dict with keys"):
        QuantizedExperts(experts, H, I)
    with pytest.raises(ValueError, match="at least one routed expert"):
        QuantizedExperts(ex.experts, H, I, num_shared=2)
    with pytest.raises(ValueError, match="recipe for expert"):
        QuantizedExperts.from_float(g, u, d, [("int4", "int4")] * 2)

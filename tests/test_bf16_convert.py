"""The Triton bf16 conversion kernel and its torch reference (Triton runs under TRITON_INTERPRET=1 on CPU)."""
import pytest
import torch

from triton_marlin import dispatch
from triton_marlin.device import triton_enabled_for
from triton_marlin.kernels import bf16_convert as bc

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not triton_enabled_for(DEV), reason="Triton cannot run here")


def _bits(t):
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def _special_fp32():
    vals = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 3.4028235e38, -3.4028235e38, 1e-45, -1e-45,
            1.1754944e-38, 65504.0, 65520.0, 6e-8, 1e-40]
    t = torch.tensor(vals, dtype=torch.float32)
    # exact ties between two bf16 values: mantissa low half 0x8000, with even and odd high lsb
    ties = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F8000, 0x00008000, 0x00018000],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    # NaNs with various payloads and signs, including one whose payload sits only in the low 16 bits
    nans = torch.tensor([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F80FFFF],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([t, ties, nans])


def test_reference_matches_torch_rounding_on_every_non_nan():
    g = torch.Generator().manual_seed(1)
    # random bit patterns cover every exponent, subnormals and both signs
    bits = torch.randint(-2**31, 2**31 - 1, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), _special_fp32()])
    ours = bc.convert_reference(x, torch.bfloat16)
    nan = torch.isnan(x)
    assert torch.isnan(ours[nan]).all()
    assert torch.equal(_bits(ours)[~nan], _bits(x[~nan].to(torch.bfloat16)))
    # NaN keeps its sign
    assert torch.equal(torch.signbit(ours[nan]), torch.signbit(x[nan]))


def test_reference_every_bf16_code_round_trips():
    codes = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    up = bc.convert_reference(codes, torch.float32)
    nan = torch.isnan(codes)
    assert torch.equal(up[~nan], codes[~nan].float())
    assert torch.isnan(up[nan]).all()
    back = bc.convert_reference(up, torch.bfloat16)
    assert torch.equal(_bits(back)[~nan], _bits(codes)[~nan])  # exact
    # a NaN comes back as the same NaN with its quiet bit set (signaling NaNs become quiet)
    assert torch.equal(_bits(back)[nan], _bits(codes)[nan] | 0x0040)
    half = bc.convert_reference(codes, torch.float16)
    assert torch.equal(half[~nan], codes[~nan].to(torch.float16))
    assert torch.isnan(half[nan]).all()
    h = _bits(codes)[nan].to(torch.int32) & 0xFFFF
    expect = ((h & 0x8000) | 0x7E00 | ((h & 0x7F) << 3)).to(torch.int16)  # sign and payload kept, quiet bit set
    assert torch.equal(_bits(half)[nan], expect)


def test_reference_fp16_to_bf16():
    codes = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    ours = bc.convert_reference(codes, torch.bfloat16)
    nan = torch.isnan(codes)
    assert torch.equal(_bits(ours)[~nan], _bits(codes[~nan].to(torch.bfloat16)))
    h = _bits(codes)[nan].to(torch.int32) & 0xFFFF
    expect = ((h & 0x8000) | 0x7FC0 | ((h & 0x3FF) >> 3)).to(torch.int16)
    assert torch.equal(_bits(ours)[nan], expect)


def _poisoned(shape, dtype):
    out = torch.empty(shape, dtype=dtype, device=DEV)
    out.view(torch.int16 if out.element_size() == 2 else torch.int32).fill_(0x7FBF)  # a NaN/odd pattern
    return out


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # interpreter's numpy, bf16->fp16
@pytest.mark.parametrize("src,dst", sorted(bc.SUPPORTED, key=str))
@pytest.mark.parametrize("shape,block", [((1,), 128), ((3, 333), 256), ((4099,), 1024), ((2, 17, 65), 128)])
def test_kernel_bit_exact_against_reference(src, dst, shape, block):
    g = torch.Generator().manual_seed(hash((str(src), shape)) % 2**31)
    x = (torch.randn(shape, generator=g) * torch.logspace(-30, 30, shape[-1]).clamp(max=6e4)).to(src)
    flat = x.view(-1)
    specials = _special_fp32().to(src)[: flat.numel()]
    flat[: specials.numel()] = specials
    x = x.to(DEV)
    out = bc.convert_triton(x, dst, block=block, out=_poisoned(shape, dst))
    ref = bc.convert_reference(x.cpu(), dst)
    assert out.dtype == dst and out.shape == x.shape
    assert torch.equal(_bits(out.cpu()), _bits(ref))


@needs_triton
def test_public_convert_records_triton_path():
    dispatch.reset()
    x = torch.randn(5, 77, device=DEV)
    y = bc.to_bfloat16(x)
    assert torch.equal(_bits(y.cpu()), _bits(bc.convert_reference(x.cpu(), torch.bfloat16)))
    assert dispatch.counts().get(("bf16_convert", "triton")) == 1
    z = bc.from_bfloat16(y, torch.float16)
    assert torch.equal(z.cpu(), y.cpu().to(torch.float16))


def test_torch_backend_and_noncontiguous_input():
    dispatch.reset()
    x = torch.randn(64, 48)
    y = bc.convert(x.t(), torch.bfloat16, backend="torch")
    assert torch.equal(y.float(), x.t().to(torch.bfloat16).float())
    assert dispatch.counts() == {("bf16_convert", "torch"): 1}
    with pytest.raises(ValueError, match="contiguous"):
        bc.convert_triton(x.t(), torch.bfloat16)


def test_bad_arguments():
    x = torch.randn(8)
    with pytest.raises(TypeError, match="float32 -> torch.float16"):
        bc.convert(x, torch.float16)
    with pytest.raises(TypeError, match="dtype"):
        bc.convert(x, "bf16")
    with pytest.raises(TypeError, match="x"):
        bc.convert([1.0], torch.bfloat16)
    with pytest.raises(ValueError, match="backend"):
        bc.convert(x, torch.bfloat16, backend="cuda")
    with pytest.raises(ValueError, match="block"):
        bc.convert_triton(x, torch.bfloat16, block=100)
    with pytest.raises(ValueError, match="out"):
        bc.convert_triton(x, torch.bfloat16, out=torch.empty(8, dtype=torch.float16))


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 5, dtype=torch.float32)
        y = torch.ops.triton_marlin.bf16_convert(x, torch.bfloat16)
        assert y.shape == (3, 5) and y.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("src,dst", sorted(bc.SUPPORTED, key=str))
def test_kernel_large_tensor_on_gpu(src, dst):
    """Many programs, a ragged tail, every fp32 exponent: bit-exact against the reference, NaN kept."""
    n = (1 << 24) + 3
    g = torch.Generator(device="cuda").manual_seed(7)
    bits = torch.randint(-2**31, 2**31 - 1, (n,), device="cuda", generator=g, dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32).to(src)
    out = _poisoned((n,), dst)
    bc.convert_triton(x, dst, out=out)
    ref = bc.convert_reference(x, dst)  # the torch reference runs on the GPU too
    assert torch.equal(_bits(out), _bits(ref))
    nan = torch.isnan(x)
    assert torch.isnan(out[nan]).all()
    assert torch.equal(_bits(out[~nan]), _bits(x[~nan].to(dst)))


@needs_triton
@pytest.mark.parametrize("src,dst", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16)])
def test_custom_op_passes_opcheck(src, dst):
    x = torch.randn(3, 70, device=DEV).to(src)
    result = torch.library.opcheck(torch.ops.triton_marlin.bf16_convert.default, (x, dst))
    assert all(v == "SUCCESS" for v in result.values()), result

"""Fused trellis GEMV / GEMM: decode trellis codes in registers, never writing a dequantized weight.

``y = x @ W.T`` for a trellis weight ``W = U.T @ Wt @ V`` (docs/formats-trellis.md) runs as

    x' = x @ V.T            (kernels/hadamard.py: signs + block Walsh-Hadamard)
    y' = x' @ Wt.T          (this file: decode + multiply-accumulate)
    y  = y' @ U             (kernels/hadamard.py)

Decoding weight ``(k, n)``: its tile is ``(k // 16, n // 16)``, its step ``t = 16*(k % 16) + n % 16``;
the 16-bit state is the stream window ending at bit ``e = (t+1)*K``: with ``hi = (e-1) // 32`` and
``r = 32*(hi+1) - e``, ``state = ((word[hi] >> r) | (word[hi-1 mod W] << (32-r))) & 0xFFFF`` (a funnel
shift over two 32-bit words of the tile). The word offsets and shifts depend only on ``(k % 16, n % 16)``
and are computed once per program; the K loop does two loads, the funnel shift and the code.

Paths: ``M <= GEMV_MAX_M``: one program per (row, N block, K split) accumulating in fp32 with FMAs
(split-K partial sums combined with atomics); larger M: a tiled GEMM that decodes a ``[BLOCK_K,
BLOCK_N]`` weight tile to the activation dtype in registers and uses ``tl.dot``.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..formats import QuantizedTensor
from ..formats import trellis as tf
from . import hadamard as had

GEMV_MAX_M = 4
CODE_IDS = {"3inst": 0, "1mad": 1, "hyb": 2}
LAST_COMPILED: dict = {}   # path -> the compiled kernel of the latest launch (benchmarks read its asm)


@triton.jit
def _decode(base_ptr, off_hi, off_prev, rshift, lshift, mask, lut_ptr, CODE: tl.constexpr,
            EVEN: tl.constexpr):
    """Code values (fp32) of a block of weights. ``base_ptr``: the int32 words of the block's first
    tile row; ``off_hi``/``off_prev``: int32 offsets of each weight's two window words from it;
    ``rshift`` = r and ``lshift`` = 31 - r (uint32). ``EVEN``: no element is masked."""
    if EVEN:
        cur = tl.load(base_ptr + off_hi)
        prv = tl.load(base_ptr + off_prev)
    else:
        cur = tl.load(base_ptr + off_hi, mask=mask, other=0)
        prv = tl.load(base_ptr + off_prev, mask=mask, other=0)
    cur = cur.to(tl.uint32, bitcast=True)
    prv = prv.to(tl.uint32, bitcast=True)
    state = ((cur >> rshift) | ((prv << lshift) << 1)) & 0xFFFF
    if CODE == 0:    # 3inst
        x = state * 89226354 + 64248484
        x = (x & tl.full(x.shape, 0x8FFF8FFF, tl.uint32)) ^ tl.full(x.shape, 0x3B603B60, tl.uint32)
        lo = (x & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (x >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        val = lo + hi
    elif CODE == 1:  # 1mad
        x = state * 34038481 + 76625530
        total = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        val = (total.to(tl.int32) - 510).to(tl.float32)
    else:            # hyb: a 256-entry fp16 table (512 bytes, stays in L1)
        x = state * tl.full(state.shape, 0xCBAC1FED, tl.uint32)
        val = tl.load(lut_ptr + (x >> 24).to(tl.int32)).to(tl.float32)
    return val


@triton.jit
def _window_offsets(kk, nn, N, BITS: tl.constexpr):
    """Per (k, n) of a [BLOCK_K, BLOCK_N] block: int32 offsets of the window's two words from the
    words of the block's first tile row (tile row = k // 16), and the funnel shifts r, 31 - r.
    Computed once per program: only k % 16, n % 16 and the tile position inside the block matter."""
    W: tl.constexpr = 8 * BITS
    t = (kk % 16)[:, None] * 16 + (nn % 16)[None, :]
    e = (t + 1) * BITS
    hi = (e - 1) // 32
    r = 32 * (hi + 1) - e
    prev = (hi + W - 1) % W
    n_tiles = N // 16
    tile = (kk // 16)[:, None] * (n_tiles * W) + (nn // 16)[None, :]      # qweight[tk, j, tn]
    return tile + hi * n_tiles, tile + prev * n_tiles, r.to(tl.uint32), (31 - r).to(tl.uint32)


@triton.jit
def _trellis_gemv_kernel(x_ptr, qw_ptr, s_ptr, lut_ptr, out_ptr, N, K, stride_xm, stride_om, group,
                         ITERS_PER_SPLIT,
                         BITS: tl.constexpr, CODE: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, USE_ATOMIC: tl.constexpr, EVEN: tl.constexpr):
    """x: [M, K] fp32/fp16/bf16 (rotated activations); qw: int32 [K/16, 8*BITS, N/16]; s: [G, N];
    lut: [256] fp16 (hyb); out: [M, N] fp32 (zeroed when USE_ATOMIC).
    Grid: (cdiv(N, BLOCK_N), SPLIT_K, M). BLOCK_K divides the scale group; EVEN: BLOCK_N | N and
    BLOCK_K | K."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    W: tl.constexpr = 8 * BITS
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    nmask = nn < N
    off_hi, off_prev, rsh, lsh = _window_offsets(kk, nn, N, BITS)
    row_words = (N // 16) * W                       # int32 words of one tile row (16 k)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * ITERS_PER_SPLIT * BLOCK_K
    k_end = tl.minimum(k_start + ITERS_PER_SPLIT * BLOCK_K, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        base = qw_ptr + (k0 // 16) * row_words        # int32: < 2^31 words (8 GiB of codes)
        val = _decode(base, off_hi, off_prev, rsh, lsh, kmask[:, None] & nmask[None, :], lut_ptr, CODE, EVEN)
        if EVEN:
            xv = tl.load(x_ptr + m * stride_xm + k).to(tl.float32)
            s = tl.load(s_ptr + (k0 // group) * N + nn).to(tl.float32)
        else:
            xv = tl.load(x_ptr + m * stride_xm + k, mask=kmask, other=0.0).to(tl.float32)
            s = tl.load(s_ptr + (k0 // group) * N + nn, mask=nmask, other=0.0).to(tl.float32)
        acc += s * tl.sum(val * xv[:, None], axis=0)
    if USE_ATOMIC:
        tl.atomic_add(out_ptr + m * stride_om + nn, acc, mask=nmask)
    else:
        tl.store(out_ptr + m * stride_om + nn, acc, mask=nmask)


@triton.jit
def _trellis_gemm_kernel(x_ptr, qw_ptr, s_ptr, lut_ptr, out_ptr, M, N, K, stride_xm, stride_om, group,
                         BITS: tl.constexpr, CODE: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                         EVEN: tl.constexpr):
    """x: [M, K] (rotated activations, the dot dtype); out: [M, N] fp32. Grid: (cdiv(M, BLOCK_M),
    cdiv(N, BLOCK_N)). BLOCK_K divides the scale group; EVEN: BLOCK_N | N and BLOCK_K | K."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    W: tl.constexpr = 8 * BITS
    mm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    nmask = nn < N
    mmask = mm < M
    off_hi, off_prev, rsh, lsh = _window_offsets(kk, nn, N, BITS)
    row_words = (N // 16) * W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        base = qw_ptr + (k0 // 16) * row_words        # int32: < 2^31 words (8 GiB of codes)
        val = _decode(base, off_hi, off_prev, rsh, lsh, kmask[:, None] & nmask[None, :], lut_ptr, CODE, EVEN)
        s = tl.load(s_ptr + (k0 // group) * N + nn, mask=nmask, other=0.0).to(tl.float32)
        a = tl.load(x_ptr + mm[:, None] * stride_xm + k[None, :], mask=mmask[:, None] & kmask[None, :],
                    other=0.0)
        w = (val * s[None, :]).to(a.dtype)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    tl.store(out_ptr + mm[:, None] * stride_om + nn[None, :], acc, mask=mmask[:, None] & nmask[None, :])


def unsupported_reason(x: torch.Tensor, qt: QuantizedTensor) -> str | None:
    """Why :func:`trellis_qgemm` cannot run this call (``None`` when it can)."""
    if not qt.format.startswith("trellis"):
        return f"format {qt.format!r} is not a trellis format"
    if qt.meta.get("code") not in CODE_IDS:
        return f"trellis code {qt.meta.get('code')!r} has no kernel"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"activation dtype {x.dtype} (expected float16, bfloat16 or float32)"
    if x.device.type not in ("cuda", "cpu"):
        return f"device {x.device.type} has no Triton backend"
    for side in ("had_block_in", "had_block_out"):
        if qt.meta[side] not in (16, 32, 64, 128):
            return f"Hadamard block {qt.meta[side]} ({side}) is not 16, 32, 64 or 128"
    return None


@functools.lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_k(n_blocks: int, k_iters: int, device: torch.device) -> int:
    """K splits so that about 4 programs per SM run (M=1 on a tall-thin grid needs them)."""
    if device.type != "cuda":
        return 1 if k_iters < 4 else 2
    target = 4 * _sm_count(device)
    split = max(1, min(k_iters, target // max(1, n_blocks)))
    return split


def _output(out, M: int, N: int, device) -> torch.Tensor:
    if out is None:
        return torch.empty((M, N), dtype=torch.float32, device=device)
    if out.shape != (M, N) or out.dtype != torch.float32 or out.stride(1) != 1 or out.device != device:
        raise ValueError(f"out must be a float32 [{M}, {N}] tensor with unit column stride on {device}")
    return out


def trellis_matmul_rotated(xr: torch.Tensor, qt: QuantizedTensor, *, block_n: int | None = None,
                           block_k: int = 32, split_k: int | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """``y' = x' @ Wt.T`` in fp32 for rotated activations ``x' [M, K]`` (the kernel alone).

    ``out``: optional fp32 ``[M, N]`` buffer (contiguous rows); split-K zeroes it first."""
    M, K = xr.shape
    N = qt.shape[0]
    bits = qt.bits
    group = K if qt.group_size == -1 else qt.group_size
    if group % block_k:
        block_k = 16 if group % 16 == 0 else block_k
    code = CODE_IDS[qt.meta["code"]]
    qw, s = qt.tensors["qweight"], qt.tensors["scales"]
    lut = qt.tensors.get("lut", s)        # any valid pointer when the code has no table
    if M <= GEMV_MAX_M:
        BLOCK_N = block_n or 64
        n_blocks = triton.cdiv(N, BLOCK_N)
        k_iters = triton.cdiv(K, block_k)
        split = split_k or _split_k(n_blocks, k_iters, xr.device)
        iters = triton.cdiv(k_iters, split)
        split = triton.cdiv(k_iters, iters)
        out = _output(out, M, N, xr.device)
        if split > 1:
            out.zero_()
        LAST_COMPILED["gemv"] = _trellis_gemv_kernel[(n_blocks, split, M)](
            xr, qw, s, lut, out, N, K, xr.stride(0), out.stride(0), group, iters,
            BITS=bits, CODE=code, BLOCK_N=BLOCK_N, BLOCK_K=block_k, USE_ATOMIC=split > 1,
            EVEN=N % BLOCK_N == 0 and K % block_k == 0, num_warps=4)
        return out
    BLOCK_M = 16 if M <= 16 else (32 if M <= 32 else 64)
    BLOCK_N = block_n or 64
    out = _output(out, M, N, xr.device)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    LAST_COMPILED["gemm"] = _trellis_gemm_kernel[grid](
        xr, qw, s, lut, out, M, N, K, xr.stride(0), out.stride(0), group,
        BITS=bits, CODE=code, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k,
        IEEE=xr.dtype == torch.float32, EVEN=N % BLOCK_N == 0 and K % block_k == 0, num_warps=4)
    return out


def trellis_qgemm(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``x2d [M, K] @ W.T (+ bias) -> [M, N]`` in ``x2d.dtype`` for a trellis weight (Triton).

    Inside a ``torch.compile`` trace the call goes through the custom op ``triton_marlin::trellis_qgemm``
    (opaque to the compiler, with a fake implementation); eager calls run the launcher directly."""
    if not isinstance(x2d, torch.Tensor) or x2d.dim() != 2:
        raise ValueError(f"x2d must be a 2-D [M, K] tensor, got {tuple(getattr(x2d, 'shape', ()))}")
    reason = unsupported_reason(x2d, qt)
    if reason is not None:
        raise ValueError(f"trellis_qgemm cannot run: {reason}")
    N, K = qt.shape
    if x2d.shape[1] != K:
        raise ValueError(f"x2d has K={x2d.shape[1]}, the weight has K={K}")
    if x2d.device != qt.device:
        raise ValueError(f"x is on {x2d.device} but the weight is on {qt.device}")
    if bias is not None and (bias.shape != (N,) or bias.device != x2d.device):
        raise ValueError(f"bias must be a ({N},) tensor on {x2d.device}, got {tuple(bias.shape)} on {bias.device}")
    if not torch.compiler.is_compiling():
        return _trellis_qgemm_impl(x2d, qt, bias)
    t = qt.tensors
    return torch.ops.triton_marlin.trellis_qgemm(
        x2d, t["qweight"], t["scales"], t["su"], t["sv"], t.get("lut"), bias, qt.bits, qt.meta["code"],
        N, K, qt.group_size, qt.meta["had_block_in"], qt.meta["had_block_out"])


@torch.library.custom_op("triton_marlin::trellis_qgemm", mutates_args=())
def _trellis_qgemm_op(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, su: torch.Tensor,
                      sv: torch.Tensor, lut: torch.Tensor | None, bias: torch.Tensor | None, bits: int,
                      code: str, N: int, K: int, group_size: int, had_block_in: int,
                      had_block_out: int) -> torch.Tensor:
    tensors = {"qweight": qweight, "scales": scales, "su": su, "sv": sv}
    if lut is not None:
        tensors["lut"] = lut
    meta = tf.make_meta(bits, code, N, K, scales.dtype, method="")
    meta.update(had_block_in=had_block_in, had_block_out=had_block_out)
    qt = QuantizedTensor(f"trellis{bits}", (N, K), group_size, tensors, meta)
    return _trellis_qgemm_impl(x2d, qt, bias)


@_trellis_qgemm_op.register_fake
def _(x2d, qweight, scales, su, sv, lut, bias, bits, code, N, K, group_size, had_block_in, had_block_out):
    return x2d.new_empty((x2d.shape[0], N))


def _trellis_qgemm_impl(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None) -> torch.Tensor:
    M = x2d.shape[0]
    if M == 0:
        return x2d.new_empty((0, qt.shape[0]))
    # GEMV accumulates in fp32, so keep x' in fp32; the tiled path feeds tensor cores in x's dtype
    xr_dtype = torch.float32 if M <= GEMV_MAX_M else x2d.dtype
    xr = had.rotate(x2d, qt.tensors["sv"], qt.meta["had_block_in"], out_dtype=xr_dtype)
    yr = trellis_matmul_rotated(xr, qt)
    y = had.unrotate(yr, qt.tensors["su"], qt.meta["had_block_out"], out_dtype=torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x2d.dtype)


def trellis_qgemm_reference(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None = None
                            ) -> torch.Tensor:
    """Torch reference of the same three steps (float64 rotations, fp32 product)."""
    from ..formats import hadamard as ref
    xr = ref.rotate(x2d, qt.tensors["sv"], qt.meta["had_block_in"])
    wt = qt.fmt.rotated_weight(qt).to(torch.float64)
    y = ref.unrotate(xr @ wt.t(), qt.tensors["su"], qt.meta["had_block_out"])
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(x2d.dtype)

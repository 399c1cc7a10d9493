"""Fused trellis GEMV / GEMM: decode trellis codes in registers, never writing a dequantized weight.

``y = x @ W.T`` for a trellis weight ``W = U.T @ Wt @ V`` (docs/formats-trellis.md) runs as

    x' = x @ V.T            (kernels/hadamard.py: signs + block Walsh-Hadamard, one launch)
    y' = x' @ Wt.T          (this file: decode + multiply-accumulate; split-K partials [S, M, N])
    y  = y' @ U (+ bias)    (kernels/hadamard.py: sum of the partials + transform, one launch)

Decoding weight ``(k, n)``: its tile is ``(k // 16, n // 16)``, its step ``t = 16*(k % 16) + n % 16``;
the 16-bit state is the stream window ending at bit ``e = (t+1)*K``: with ``hi = (e-1) // 32`` and
``r = 32*(hi+1) - e``, ``state = ((word[hi] >> r) | (word[hi-1 mod W] << (32-r))) & 0xFFFF`` (a funnel
shift over two 32-bit words of the tile).

Kernels (docs/perf/trellis.md counts their instructions):
- static GEMV (M <= GEMV_MAX_M, whole blocks of tiles): the 16 columns of a tile are cut into
  groups whose steps start on a word boundary; a thread loads a group's few words once and derives
  all of its states with compile-time shifts, n_local (16) held in registers; fp32 FMAs; the next
  tile row's words prefetched (per code, GEMV_DEFAULTS); M = 2..4 rows share one decode; one
  partial result per K split, summed by the output transform (atomics into a zeroed ``out`` only
  when a caller passes one);
- generic GEMV (any shape): per-weight word offsets and shifts (computed once per program), two
  loads and a variable funnel shift per weight;
- static / generic tiled GEMM (M > GEMV_MAX_M): the same two decodes into a weight tile in the
  activation dtype, multiplied with ``tl.dot``.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import dispatch
from ..formats import QuantizedTensor
from ..formats import trellis as tf
from . import hadamard as had
from .hadamard import _block_fwht

GEMV_MAX_M = 4
CODE_IDS = {"3inst": 0, "1mad": 1, "hyb": 2, "1mad2": 3, "1mad2r": 4}
PAIR = 3         # codes from this id on decode two weights (n_local even, odd) per state
HAS_GATHER = hasattr(tl, "gather")   # register/shared-memory table reads (Triton >= 3.2)
LAST_COMPILED: dict = {}   # path -> the compiled kernel of the latest launch (benchmarks read its asm)


@triton.jit
def _decode(base_ptr, off_hi, off_prev, rshift, lshift, mask, lut_ptr, CODE: tl.constexpr,
            EVEN: tl.constexpr, odd=None):
    """Code values (fp32) of a block of weights. ``base_ptr``: the int32 words of the block's first
    tile row; ``off_hi``/``off_prev``: int32 offsets of each weight's two window words from it;
    ``rshift`` = r and ``lshift`` = 31 - r (uint32). ``EVEN``: no element is masked. Pair codes:
    the offsets and shifts are those of the pair's state (step t | 1) and ``odd`` (n odd) picks the
    component."""
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
        lo = (x & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
        hi = (x >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
        val = (lo + hi).to(tl.float32)
    elif CODE == 1:  # 1mad
        x = state * 34038481 + 76625530
        total = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        val = (total.to(tl.int32) - 510).to(tl.float32)
    elif CODE == 2:  # hyb: a 256-entry fp16 table (512 bytes, stays in L1)
        x = state * tl.full(state.shape, 0xCBAC1FED, tl.uint32)
        val = tl.load(lut_ptr + (x >> 24).to(tl.int32)).to(tl.float32)
    else:            # pair codes (1mad2, 1mad2r): component 1 for odd n
        v0, v1 = _pair_values(state, CODE, False, tl.float32)
        val = tl.where(odd, v1, v0)
    return val


@triton.jit
def _window_offsets(kk, nn, N, BITS: tl.constexpr, PAIRED: tl.constexpr = False):
    """Per (k, n) of a [BLOCK_K, BLOCK_N] block: int32 offsets of the window's two words from the
    words of the block's first tile row (tile row = k // 16), and the funnel shifts r, 31 - r.
    Computed once per program: only k % 16, n % 16 and the tile position inside the block matter."""
    W: tl.constexpr = 8 * BITS
    t = (kk % 16)[:, None] * 16 + (nn % 16)[None, :]
    if PAIRED:
        t = t | 1            # both weights of a pair read the state of its odd step
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
    off_hi, off_prev, rsh, lsh = _window_offsets(kk, nn, N, BITS, CODE >= 3)
    odd = ((nn % 2) == 1)[None, :]
    row_words = (N // 16) * W                       # int32 words of one tile row (16 k)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * ITERS_PER_SPLIT * BLOCK_K
    k_end = tl.minimum(k_start + ITERS_PER_SPLIT * BLOCK_K, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        base = qw_ptr + (k0 // 16) * row_words        # int32: < 2^31 words (8 GiB of codes)
        val = _decode(base, off_hi, off_prev, rsh, lsh, kmask[:, None] & nmask[None, :], lut_ptr, CODE, EVEN, odd)
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
def _load_lut(lut_ptr, CODE: tl.constexpr, GATHER: tl.constexpr, OUT: tl.constexpr):
    """The hyb table in registers (``GATHER``), loaded once per program before the K loop; a dummy
    scalar for the other codes."""
    if GATHER and CODE == 2:
        return tl.load(lut_ptr + tl.arange(0, 256)).to(OUT)
    else:
        return tl.zeros((1,), dtype=OUT)


@triton.jit
def _code_value(state, lut_ptr, lut, CODE: tl.constexpr, ASM: tl.constexpr = False, GATHER: tl.constexpr = False,
                OUT: tl.constexpr = tl.float32):
    """The code of 16-bit states held in uint32 (see formats/trellis.py: decode_states), in ``OUT``
    (float32, or float16: every code value is exact in fp16, so a tensor-core operand needs no
    conversion).

    ``ASM`` (compiled CUDA only; the interpreter runs the portable branch): the same arithmetic in
    inline PTX, which the compiler cannot derive from the portable form: 3inst adds the two fp16
    halves of the 32-bit word in place (``mov.b32 {lo, hi}``, ``add.f16``); 1mad sums the 4 bytes
    with one ``dp4a``. ``GATHER`` (hyb): the table is loaded once per program and read with
    ``tl.gather`` (shared memory on the GPU) instead of a global load per weight.""" 
    if GATHER and CODE == 2:     # ``lut``: the table from _load_lut
        x = state * tl.full(state.shape, 0xCBAC1FED, tl.uint32)
        idx = tl.reshape((x >> 24).to(tl.int32), (state.numel,))
        val = tl.reshape(tl.gather(lut, idx, 0), state.shape)
    elif ASM and CODE == 0:
        x = state * 89226354 + 64248484
        x = (x & tl.full(x.shape, 0x8FFF8FFF, tl.uint32)) ^ tl.full(x.shape, 0x3B603B60, tl.uint32)
        if OUT == tl.float16:
            val = tl.inline_asm_elementwise(
                "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $1; add.rn.f16 $0, lo, hi; }",
                "=h,r", [x], dtype=tl.float16, is_pure=True, pack=1)
        else:
            val = tl.inline_asm_elementwise(
                "{ .reg .b16 lo, hi, s; mov.b32 {lo, hi}, $1; add.rn.f16 s, lo, hi; cvt.f32.f16 $0, s; }",
                "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    elif ASM and CODE == 1:
        # byte sum by dp4a into the mantissa of 2^23 (accumulator 0x4B000000): the float is 2^23 + sum,
        # so one FADD gives sum - 510 exactly, with no int-to-float conversion (a quarter-rate pipe)
        x = state * 34038481 + 76625530
        biased = tl.inline_asm_elementwise("dp4a.u32.u32 $0, $1, 0x01010101, 0x4B000000;", "=r,r", [x],
                                           dtype=tl.int32, is_pure=True, pack=1)
        val = (biased.to(tl.float32, bitcast=True) - 8389118.0).to(OUT)
    elif CODE == 0:    # 3inst
        x = state * 89226354 + 64248484
        x = (x & tl.full(x.shape, 0x8FFF8FFF, tl.uint32)) ^ tl.full(x.shape, 0x3B603B60, tl.uint32)
        lo = (x & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
        hi = (x >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
        val = (lo + hi).to(OUT)
    elif CODE == 1:  # 1mad
        x = state * 34038481 + 76625530
        total = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        biased = (total + 0x4B000000).to(tl.int32, bitcast=True)         # 2^23 + sum, as above
        val = (biased.to(tl.float32, bitcast=True) - 8389118.0).to(OUT)
    else:            # hyb
        x = state * tl.full(state.shape, 0xCBAC1FED, tl.uint32)
        val = tl.load(lut_ptr + (x >> 24).to(tl.int32)).to(OUT)
    return val


@triton.jit
def _byte_sum_value(x, ASM: tl.constexpr, OUT: tl.constexpr, SIGNED: tl.constexpr = False):
    """Sum of the 4 bytes of uint32 ``x`` minus 510 (1mad's value of its LCG word), or with ``SIGNED`` the
    alternating sum byte0 - byte1 + byte2 - byte3 (1mad2r's second component), in ``OUT``: the sum + 510
    (0 .. 1020 either way) lands in the mantissa of 2^23 (one ``dp4a`` with ASM: unsigned bytes of x times
    the +1 / -1 bytes of 0xFF01FF01, accumulated onto 0x4B0001FE = the bits of 2^23 + 510), one subtraction
    removes 2^23 + 510."""
    if ASM:
        if SIGNED:
            biased = tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, 0xFF01FF01, 0x4B0001FE;", "=r,r", [x],
                                               dtype=tl.int32, is_pure=True, pack=1)
        else:
            biased = tl.inline_asm_elementwise("dp4a.u32.u32 $0, $1, 0x01010101, 0x4B000000;", "=r,r", [x],
                                               dtype=tl.int32, is_pure=True, pack=1)
    else:
        if SIGNED:    # + 510 first: every intermediate stays a non-negative uint32
            total = (x & 255) + ((x >> 16) & 255) + 510 - ((x >> 8) & 255) - (x >> 24)
        else:
            total = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        biased = (total + 0x4B000000).to(tl.int32, bitcast=True)
    return (biased.to(tl.float32, bitcast=True) - 8389118.0).to(OUT)


@triton.jit
def _rotr6(x):
    """uint32 ``x`` rotated right by 6 bits (1mad2r's second word): a funnel shift (one SHF on sm_90)."""
    return (x >> 6) | (x << 26)


@triton.jit
def _pair_values(state, CODE: tl.constexpr, ASM: tl.constexpr, OUT: tl.constexpr):
    """The two components of a pair code for 16-bit states (formats/trellis.py: decode_states). Both start
    from the 1mad word ``x = state * 34038481 + 76625530`` (component 0: its byte sum - 510). Component 1:
    1mad2 (CODE 3): the byte sum - 510 of a second LCG word ``state * 0x2E3A8F1D + 0x9E3779B9``; 1mad2r
    (CODE 4): the alternating byte sum of ``rotr32(x, 6)`` (no second multiply)."""
    x = state * 34038481 + 76625530
    if CODE == 4:
        return _byte_sum_value(x, ASM, OUT), _byte_sum_value(_rotr6(x), ASM, OUT, True)
    else:
        y = state * tl.full(state.shape, 0x2E3A8F1D, tl.uint32) + tl.full(state.shape, 0x9E3779B9, tl.uint32)
        return _byte_sum_value(x, ASM, OUT), _byte_sum_value(y, ASM, OUT)


@triton.jit
def _window_states(wm1, w0, w1, w2, B: tl.constexpr, STEP: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr):
    """States of the N steps B + STEP j (j < N; N = 8 or 16) of a column group, [G, TN, N] (j last, in registers):
    steps j and j + N/2 joined first, then the halves of each level, so that the reshape puts j in order."""
    tl.static_assert(N == 8 or N == 16, "a column group's window block is 8 or 16 steps")
    H0: tl.constexpr = N // 2
    LEVELS: tl.constexpr = 3 if N == 16 else 2
    cur = ()
    for i in tl.static_range(H0):
        cur = cur + (tl.join(_window(wm1, w0, w1, w2, B + STEP * i, BITS),
                             _window(wm1, w0, w1, w2, B + STEP * (i + H0), BITS)),)
    for lv in tl.static_range(LEVELS):
        nxt = ()
        for i in tl.static_range((N // 4) >> lv):           # this level joins element i with i + (N / 4) / 2^lv
            nxt = nxt + (tl.join(cur[i], cur[i + ((N // 4) >> lv)]),)
        cur = nxt
    top = cur[0]
    return tl.reshape(top, (top.shape[0], top.shape[1], N))


@triton.jit
def _column_values(wm1, w0, w1, w2, P0: tl.constexpr, BITS: tl.constexpr, lut_ptr, lut, CODE: tl.constexpr,
                   ASM: tl.constexpr, GATHER: tl.constexpr, OUT: tl.constexpr = tl.float32):
    """Code values of the 16 steps of column P0 of a group, [G, TN, 16] (n_local last): one state per
    step, or for pair codes one state per two steps (n_local 2j and 2j+1 from pair j)."""
    if CODE >= 3:
        v0, v1 = _pair_values(_window_states(wm1, w0, w1, w2, 16 * P0 + 1, 2, 8, BITS), CODE, ASM, OUT)  # odd steps
        v = tl.join(v0, v1)        # [G, TN, 8, 2]: n_local = 2j + component
        val = tl.reshape(v, (v.shape[0], v.shape[1], 16))
    else:
        val = _code_value(_window_states(wm1, w0, w1, w2, 16 * P0, 1, 16, BITS), lut_ptr, lut, CODE, ASM, GATHER,
                          OUT)
    return val


@triton.jit
def _pick(wm1, w0, w1, w2, I: tl.constexpr):
    """Word I (-1..2) of a column group, chosen at compile time."""
    if I == -1:
        return wm1
    elif I == 0:
        return w0
    elif I == 1:
        return w1
    else:
        return w2


@triton.jit
def _window(wm1, w0, w1, w2, T: tl.constexpr, BITS: tl.constexpr):
    """16-bit state of step T (0 .. 16*P-1) of a column group: the stream window ending at bit
    (T+1)*BITS counted from the group's first word w0 (wm1 = the word before). Shifts are constants."""
    E: tl.constexpr = (T + 1) * BITS
    HI: tl.constexpr = (E - 1) // 32
    R: tl.constexpr = 32 * (HI + 1) - E
    cur = _pick(wm1, w0, w1, w2, HI)
    if R <= 16:
        st = (cur >> R) & 0xFFFF
    else:
        prv = _pick(wm1, w0, w1, w2, HI - 1)
        st = ((cur >> R) | (prv << (32 - R))) & 0xFFFF
    return st


@triton.jit
def _load_word(base, g, tn, tk_words, n_tiles, I: tl.constexpr, WG: tl.constexpr, W: tl.constexpr,
               GPT: tl.constexpr):
    """Word I (-1 .. WG-1) of each column group: qweight[tk, (j*WG + I) mod W, tn] for group g."""
    j = g % GPT
    wi = (j * WG + I + W) % W
    off = ((g // GPT) * tk_words + wi * n_tiles)[:, None] + tn[None, :]
    return tl.load(base + off).to(tl.uint32, bitcast=True)


@triton.jit
def _load_words(base, g, tn, tk_words, n_tiles, WG: tl.constexpr, W: tl.constexpr, GPT: tl.constexpr):
    """The words -1 .. WG-1 of each column group of one tile row (unused ones repeat word 0)."""
    wm1 = _load_word(base, g, tn, tk_words, n_tiles, -1, WG, W, GPT)
    w0 = _load_word(base, g, tn, tk_words, n_tiles, 0, WG, W, GPT)
    w1 = w0
    w2 = w0
    if WG > 1:
        w1 = _load_word(base, g, tn, tk_words, n_tiles, 1, WG, W, GPT)
    if WG > 2:
        w2 = _load_word(base, g, tn, tk_words, n_tiles, 2, WG, W, GPT)
    return wm1, w0, w1, w2


@triton.jit
def _trellis_gemv_static_kernel(x_ptr, qw_ptr, s_ptr, lut_ptr, out_ptr, N, K, stride_xm, stride_om, group,
                                ITERS_PER_SPLIT,
                                BITS: tl.constexpr, CODE: tl.constexpr, BLOCK_TN: tl.constexpr,
                                BLOCK_TK: tl.constexpr, USE_ATOMIC: tl.constexpr, GROUPED: tl.constexpr,
                                ASM: tl.constexpr, GATHER: tl.constexpr, stride_os=0, PREFETCH: tl.constexpr = False,
                                M=1, ROWS: tl.constexpr = 1, sv_ptr=None, xr_ptr=None,
                                ROTATE_HB: tl.constexpr = 0, ROTATE_F1: tl.constexpr = 1,
                                ROTATE_F2: tl.constexpr = 1, rotate_scale=1.0):
    """Decode GEMV with compile-time window shifts (full blocks only: 16*BLOCK_TN | N, 16*BLOCK_TK | K).

    The 16 k of a tile are cut into column groups of P columns (P = 2 for 3 bits, else 1) whose
    steps start on a word boundary: group j of a tile owns words j*WG .. j*WG+WG-1 (WG = BITS*P/2)
    plus the word before it. Each program loads those words once per (group, tile) and derives all
    16*P states of the group with constant shifts, so per weight the loop spends a shift or funnel
    shift and a mask, the code, and an FMA. The accumulator keeps n_local (16) in registers.
    x: [M, K] (rotated activations); qw: int32 [K/16, 8*BITS, N/16]; s: [G, N]; out: [M, N] fp32
    (USE_ATOMIC: split-K sums added into a zeroed out) or, without atomics, split k's partial result
    at out + k * stride_os ([SPLIT_K, M, N] buffer, summed by the output transform).
    PREFETCH: the next tile row's words are loaded before the current ones are decoded, so their
    latency overlaps the decode. ROWS (1, 2 or 4): each program multiplies its decoded weights with
    ROWS rows of x (one accumulator each), so M <= ROWS costs one decode, not M.
    ROTATE_HB > 0: x is the raw activation and the program first applies the input transform to its
    own K range (signs sv, Hadamard blocks of ROTATE_HB = ROTATE_F1 * ROTATE_F2; the range must be
    whole blocks), writing the rotated rows to xr ([M, K] fp32, row stride K), which the K loop then
    reads: no separate launch. Every program of a K range writes the same values there.
    Grid: (N/16/BLOCK_TN, SPLIT_K, cdiv(M, ROWS))."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2) * ROWS
    W: tl.constexpr = 8 * BITS
    P: tl.constexpr = 2 if BITS == 3 else 1
    WG: tl.constexpr = BITS * P // 2
    GPT: tl.constexpr = 16 // P                     # column groups per tile
    G: tl.constexpr = BLOCK_TK * GPT
    n_tiles = N // 16
    tk_words = W * n_tiles
    g = tl.arange(0, G)
    tn = pid_n * BLOCK_TN + tl.arange(0, BLOCK_TN)
    nl = tl.arange(0, 16)
    acc = tl.zeros((G, BLOCK_TN, 16), dtype=tl.float32)
    # rows 1..3 of the program (ROWS = 2 or 4); rows past M repeat row M-1 and are never stored
    acc1 = tl.zeros((G, BLOCK_TN, 16) if ROWS >= 2 else (1, 1, 1), dtype=tl.float32)
    acc2 = tl.zeros((G, BLOCK_TN, 16) if ROWS >= 4 else (1, 1, 1), dtype=tl.float32)
    acc3 = tl.zeros((G, BLOCK_TN, 16) if ROWS >= 4 else (1, 1, 1), dtype=tl.float32)
    lut = _load_lut(lut_ptr, CODE, GATHER, tl.float32)
    STEP: tl.constexpr = 16 * BLOCK_TK
    k_start = pid_k * ITERS_PER_SPLIT * STEP
    k_end = tl.minimum(k_start + ITERS_PER_SPLIT * STEP, K)
    if ROTATE_HB > 0:
        hb = tl.arange(0, ROTATE_HB)
        for r in tl.static_range(ROWS):
            row = tl.minimum(m + r, M - 1)
            for kb in range(k_start, k_end, ROTATE_HB):
                xb = tl.load(x_ptr + row * stride_xm + kb + hb).to(tl.float32)
                xb = xb * tl.load(sv_ptr + kb + hb).to(tl.float32)
                yb = _block_fwht(xb[None, :], 1, ROTATE_F1, ROTATE_F2) * rotate_scale
                tl.store(xr_ptr + row * K + kb + hb[None, :], yb)
        tl.debug_barrier()         # this program's rotated range is visible to all of its threads
        x_ptr = xr_ptr
        stride_xm = K
    if PREFETCH:
        base = qw_ptr + (k_start // 16) * tk_words
        wm1, w0, w1, w2 = _load_words(base, g, tn, tk_words, n_tiles, WG, W, GPT)
    for k0 in range(k_start, k_end, STEP):
        if PREFETCH:
            # the next row's words (the last row again on the last step: a valid address, unused)
            nxt = qw_ptr + (tl.minimum(k0 + STEP, k_end - STEP) // 16) * tk_words
            nm1, n0, n1, n2 = _load_words(nxt, g, tn, tk_words, n_tiles, WG, W, GPT)
        else:
            base = qw_ptr + (k0 // 16) * tk_words
            wm1, w0, w1, w2 = _load_words(base, g, tn, tk_words, n_tiles, WG, W, GPT)
        for p in tl.static_range(P):
            val = _column_values(wm1, w0, w1, w2, p, BITS, lut_ptr, lut, CODE, ASM, GATHER)
            if GROUPED:
                sg = tl.load(s_ptr + ((k0 + g * P + p) // group)[:, None, None] * N
                             + (tn * 16)[None, :, None] + nl[None, None, :]).to(tl.float32)
            if not GROUPED:
                sg = val       # unused
            koff = k0 + g * P + p
            acc = _row_fma(acc, val, sg, x_ptr + m * stride_xm + koff, GROUPED)
            if ROWS >= 2:
                acc1 = _row_fma(acc1, val, sg, x_ptr + tl.minimum(m + 1, M - 1) * stride_xm + koff, GROUPED)
            if ROWS >= 4:
                acc2 = _row_fma(acc2, val, sg, x_ptr + tl.minimum(m + 2, M - 1) * stride_xm + koff, GROUPED)
                acc3 = _row_fma(acc3, val, sg, x_ptr + tl.minimum(m + 3, M - 1) * stride_xm + koff, GROUPED)
        if PREFETCH:
            wm1, w0, w1, w2 = nm1, n0, n1, n2
    cols = (tn * 16)[:, None] + nl[None, :]
    if GROUPED:
        scale = 1.0         # applied per group in the loop
    else:
        scale = tl.load(s_ptr + cols).to(tl.float32)
    if not USE_ATOMIC:
        out_ptr = out_ptr + pid_k * stride_os
    _row_store(acc, scale, out_ptr + m * stride_om + cols, True, GROUPED, USE_ATOMIC)
    if ROWS >= 2:
        _row_store(acc1, scale, out_ptr + (m + 1) * stride_om + cols, m + 1 < M, GROUPED, USE_ATOMIC)
    if ROWS >= 4:
        _row_store(acc2, scale, out_ptr + (m + 2) * stride_om + cols, m + 2 < M, GROUPED, USE_ATOMIC)
        _row_store(acc3, scale, out_ptr + (m + 3) * stride_om + cols, m + 3 < M, GROUPED, USE_ATOMIC)


@triton.jit
def _row_fma(acc, val, sg, x_row_ptr, GROUPED: tl.constexpr):
    """acc [G, TN, 16] += decoded values x one row of x at the groups' k (times grouped scales)."""
    xv = tl.load(x_row_ptr).to(tl.float32)
    if GROUPED:
        return acc + val * (xv[:, None, None] * sg)
    else:
        return acc + val * xv[:, None, None]


@triton.jit
def _row_store(acc, scale, ptrs, ok, GROUPED: tl.constexpr, USE_ATOMIC: tl.constexpr):
    """One row's [BLOCK_TN, 16] result (per-channel scale applied) stored or added when ``ok``."""
    res = tl.sum(acc, axis=0)
    if not GROUPED:
        res = res * scale
    mask = tl.full(res.shape, 1, tl.int1) & ok
    if USE_ATOMIC:
        tl.atomic_add(ptrs, res, mask=mask)
    else:
        tl.store(ptrs, res, mask=mask)


# ------------------------------------------------------------------------------------------------
# Tensor-core GEMV for M <= 4 (codes 1mad, 1mad2, 1mad2r): ``mma.sync.m16n8k16`` over values placed by hand.
#
# The stored layout is unchanged: in a tile's k-major order (step t = 16 k_local + n_local) the 64 steps
# of 4 consecutive columns k_local = 4c .. 4c+3 are one contiguous run of 64*K stream bits (2K words),
# so thread (g, c) of a warp (g = lane // 4, c = lane % 4) loads the 2K words of its run plus the word
# before it, once per tile, and derives all 64 states with compile-time shifts. The warp's 8 threads of
# one c hold 8 different tiles (tile g of the program's 8 along N), so MMA (j, q) (j = 0..7, q = 0, 1)
# multiplies the weights of rows {tile g, n_local 2j (fragment row g) and 2j+1 (row g+8)} at k_local
# 4c + 2q (fragment column 2c) and 4c + 2q + 1 (column 2c + 8) of every thread c.
# A register = {1024 + byte sum, -1534} (one dp4a accumulating onto 0xE5FE6400: the low half is the exact
# fp16 code value + 1534, the high half the fp16 -1534), B register = {x_k, x_k}: each k contributes
# (v + 1534) x - 1534 x = v x exactly, the offset cancels inside the MMA (no correction, no FADD).
# B column 2m is row m of x rounded to fp16, column 2m+1 its rounding residue (x - fp16(x), in fp16), so
# D's columns 2m and 2m+1 add up to the product with fp32 activations (M <= 4 fills the 8 columns; rows
# past M are never stored). Per two weights (one 1mad2 state): a window, 2 IMAD (the LCGs), 2 dp4a; one
# HMMA per 4 weights of a thread. 1mad2r: 1 IMAD, 1 funnel shift (rotr 6, the ALU pipe) and 2 dp4a, the odd
# row's dp4a signed (bytes x {+1, -1, +1, -1}, onto 0xE5FE6400 + 510: the low half is again the fp16 of
# 1534 + the value, the value being in [-510, 510]). No FFMA, FADD, PRMT or conversion per weight. The 4
# warps take the 4 tile rows of a K step; their accumulators are summed once at the end (one shared-memory
# reduction).
# ------------------------------------------------------------------------------------------------


@triton.jit
def _tc_window(ws, E: tl.constexpr):
    """16-bit state of the window ending at bit E of a thread's run (``ws`` = (word -1, word 0, ...))."""
    HI: tl.constexpr = (E - 1) // 32
    R: tl.constexpr = 32 * (HI + 1) - E
    cur = ws[HI + 1]
    if R <= 16:
        st = (cur >> R) & 0xFFFF
    else:
        st = ((cur >> R) | (ws[HI] << (32 - R))) & 0xFFFF
    return st


@triton.jit
def _tc_lcg_words(ws, J: tl.constexpr, BITS: tl.constexpr, CODE: tl.constexpr):
    """The 8 LCG words of row pair J of a thread: (kk = 0..3 of n_local 2J, then kk = 0..3 of 2J+1); each
    value is the byte sum of its word - 510 (1mad2r's odd row: the alternating byte sum). 1mad2: one state
    per kk (the pair's odd step), its two LCGs; 1mad2r: the same state's 1mad word and that word rotated
    right by 6; 1mad: one state per weight, the 1mad LCG."""
    out0 = ()
    out1 = ()
    for kk in tl.static_range(4):
        if CODE == 4:
            s = _tc_window(ws, (16 * kk + 2 * J + 2) * BITS)
            x = s * 34038481 + 76625530
            out0 = out0 + (x,)
            out1 = out1 + (_rotr6(x),)
        elif CODE == 3:
            s = _tc_window(ws, (16 * kk + 2 * J + 2) * BITS)
            out0 = out0 + (s * 34038481 + 76625530,)
            out1 = out1 + (s * tl.full(s.shape, 0x2E3A8F1D, tl.uint32) + tl.full(s.shape, 0x9E3779B9, tl.uint32),)
        else:
            s0 = _tc_window(ws, (16 * kk + 2 * J + 1) * BITS)
            s1 = _tc_window(ws, (16 * kk + 2 * J + 2) * BITS)
            out0 = out0 + (s0 * 34038481 + 76625530,)
            out1 = out1 + (s1 * 34038481 + 76625530,)
    return out0 + out1


def _tc_mma_asm(signed_odd: bool) -> str:
    """Inline PTX of two MMA steps. $4..$11: LCG words (kk 0..3 of row g, kk 0..3 of row g+8); $12..$15: B
    registers of k_local 4c..4c+3; $16..$19: accumulators. p_i = {0x6400 + byte sum, 0xE5FE}: a fragment
    register as it is. ``signed_odd`` (1mad2r): row g+8's words summed with the signs +1, -1, +1, -1 onto
    0xE5FE6400 + 510 (an s32 sum in [0xE5FE6400, 0xE5FE67FC]: never a carry into the high half, far from the
    s32 limits), i.e. p_i = {0x6400 + 510 + c1, 0xE5FE}."""
    dp4a = [f"dp4a.u32.u32 p{i}, ${4 + i}, 0x01010101, 0xE5FE6400;\n" for i in range(8)]
    if signed_odd:
        dp4a[4:] = [f"dp4a.u32.s32 p{i}, ${4 + i}, 0xFF01FF01, 0xE5FE65FE;\n" for i in range(4, 8)]
    return ("{ .reg .b32 p<8>; .reg .f32 d<4>;\n" + "".join(dp4a)
            + "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {d0,d1,d2,d3}, {p0,p4,p1,p5}, {$12,$13}, "
            "{$16,$17,$18,$19};\n"
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0,$1,$2,$3}, {p2,p6,p3,p7}, {$14,$15}, "
            "{d0,d1,d2,d3}; }")


TC_MMA_ASM = tl.constexpr(_tc_mma_asm(False))        # 1mad, 1mad2
TC_MMA_ASM_ROT = tl.constexpr(_tc_mma_asm(True))     # 1mad2r
# B registers {t, t} from 4 fp32 activations x[4c .. 4c+3] of a thread's row; $8 = -part: t = fp16(x)
# (part 0) or fp16(x - fp16(x)) (part 1)
TC_B_ASM = tl.constexpr(
    "{ .reg .b32 h01, h23; .reg .b16 q<4>; .reg .f32 f<4>;\n"
    "cvt.rn.f16x2.f32 h01, $5, $4;\ncvt.rn.f16x2.f32 h23, $7, $6;\n"
    "mov.b32 {q0, q1}, h01;\nmov.b32 {q2, q3}, h23;\n"
    + "".join(f"cvt.f32.f16 f{i}, q{i};\nfma.rn.f32 f{i}, f{i}, $8, ${4 + i};\n"
              f"cvt.rn.f16x2.f32 ${i}, f{i}, f{i};\n" for i in range(4))
    + "}")


@triton.jit
def _tc_b_operand(x0, x1, x2, x3, negpart, ASM: tl.constexpr):
    """The 4 B registers of a thread (ASM: f16x2 {t, t}, see TC_B_ASM) or, for the portable emulation,
    the 4 values t as fp32: fp16(x) (negpart 0) or fp16(x - fp16(x)) (negpart -1)."""
    if ASM:
        b = tl.inline_asm_elementwise(TC_B_ASM, "=r,=r,=r,=r,f,f,f,f,f", [x0, x1, x2, x3, negpart],
                                      dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        b = ()
        for xv in tl.static_range(4):
            v = (x0, x1, x2, x3)[xv]
            hi = v.to(tl.float16).to(tl.float32)
            b = b + ((v + negpart * hi).to(tl.float16).to(tl.float32),)
    return b


@triton.jit
def _tc_stack4(a, b, c, d):
    """[BLOCK] x 4 -> [BLOCK, 4] (column i = the i-th argument)."""
    t = tl.permute(tl.join(tl.join(a, b), tl.join(c, d)), (0, 2, 1))
    return tl.reshape(t, (a.shape[0], 4))


@triton.jit
def _tc_mma(u, b, c0, c1, c2, c3, ASM: tl.constexpr, NW: tl.constexpr, CODE: tl.constexpr = 3):
    """Two MMA steps of every warp (k_local 4c + {0, 1} and 4c + {2, 3}): c += A @ B, A = the 16 x 16
    weights of the 8 LCG words ``u`` of each thread, B the activations (``b``). Returns the four fp32
    accumulator registers. CODE 4 (1mad2r): the odd row's words (u[4..7]) are summed with alternating
    signs. Portable branch (the interpreter): the same sums from the per-thread values of the whole warp,
    in k order (A and B share the fragment's k permutation, so it does not change the product; the +1534 /
    -1534 halves cancel exactly, so the values enter as they are)."""
    if ASM:
        d = tl.inline_asm_elementwise(
            TC_MMA_ASM_ROT if CODE == 4 else TC_MMA_ASM, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,r,r,r,r,f,f,f,f",
            [u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], b[0], b[1], b[2], b[3], c0, c1, c2, c3],
            dtype=(tl.float32,) * 4, is_pure=True, pack=1)
        r0, r1, r2, r3 = d[0], d[1], d[2], d[3]
    else:
        v = ()
        for i in tl.static_range(8):      # byte sum - 510, or (1mad2r, odd row) the alternating byte sum
            w = u[i]
            if CODE == 4 and i >= 4:
                v = v + (((w & 255) + ((w >> 16) & 255)).to(tl.float32)
                         - (((w >> 8) & 255) + (w >> 24)).to(tl.float32),)
            else:
                v = v + (((w & 255) + ((w >> 8) & 255) + ((w >> 16) & 255) + (w >> 24)).to(tl.float32) - 510.0,)
        bm = tl.reshape(_tc_stack4(b[0], b[1], b[2], b[3]), (NW, 1, 8, 4, 4))      # [w, -, col g', c, kk]
        a0 = tl.reshape(_tc_stack4(v[0], v[1], v[2], v[3]), (NW, 8, 1, 4, 4))     # [w, g, -, c, kk]
        a1 = tl.reshape(_tc_stack4(v[4], v[5], v[6], v[7]), (NW, 8, 1, 4, 4))
        e0 = tl.reshape(tl.sum(tl.sum(a0 * bm, axis=4), axis=3), (NW * 32, 2))      # [w, g, col 2c + p]
        e1 = tl.reshape(tl.sum(tl.sum(a1 * bm, axis=4), axis=3), (NW * 32, 2))
        d0, d1 = tl.split(e0)
        d2, d3 = tl.split(e1)
        r0, r1, r2, r3 = c0 + d0, c1 + d1, c2 + d2, c3 + d3
    return r0, r1, r2, r3


@triton.jit
def _tc_stack16(t, OFF: tl.constexpr):
    """16 [BLOCK] tensors t[OFF .. OFF+15] -> [BLOCK, 16] (column q = t[OFF + q])."""
    p = ()
    for k in tl.static_range(8):
        p = p + (tl.join(t[OFF + 2 * k], t[OFF + 2 * k + 1]),)
    r = ()
    for k in tl.static_range(4):
        r = r + (tl.join(p[2 * k], p[2 * k + 1]),)
    s = (tl.join(r[0], r[1]), tl.join(r[2], r[3]))
    z = tl.join(s[0], s[1])                     # [B, s0, s1, s2, s3] = t[OFF + s0 + 2 s1 + 4 s2 + 8 s3]
    return tl.reshape(tl.permute(z, (0, 4, 3, 2, 1)), (z.shape[0], 16))


@triton.jit
def _tc_load_words(base, woff, TN: tl.constexpr, WT: tl.constexpr):
    """The (WT + 1) * TN words of a thread's runs in one K step (uint32, in ``woff`` order)."""
    ws = ()
    for q in tl.static_range(TN * (WT + 1)):
        ws = ws + (tl.load(base + woff[q]).to(tl.uint32, bitcast=True),)
    return ws


@triton.jit
def _tc_load_x(x_thr, k0):
    """The 4 activations x[k0 + 4c .. k0 + 4c + 3] of a thread's row (fp32; ``x_thr`` holds the row, warp and
    c offsets)."""
    return (tl.load(x_thr + k0).to(tl.float32), tl.load(x_thr + k0 + 1).to(tl.float32),
            tl.load(x_thr + k0 + 2).to(tl.float32), tl.load(x_thr + k0 + 3).to(tl.float32))


@triton.jit
def _trellis_gemv_tc_kernel(x_ptr, qw_ptr, s_ptr, out_ptr, N, K, stride_xm, stride_om, ITERS_PER_SPLIT, M,
                            BITS: tl.constexpr, CODE: tl.constexpr, TN: tl.constexpr, NW: tl.constexpr,
                            ASM: tl.constexpr, USE_ATOMIC: tl.constexpr, stride_os=0,
                            PREFETCH: tl.constexpr = False, PREFETCH_X: tl.constexpr = False):
    """Tensor-core decode GEMV (M <= 4, codes 1mad/1mad2/1mad2r, per-channel scales; see the block comment above).

    x: [M, K] rotated activations (fp32, or fp16/bf16 read as fp32); qw: int32 [K/16, 8*BITS, N/16];
    s: [1, N]; out: [M, N] fp32 (USE_ATOMIC: split-K sums added into a zeroed out) or split k's partial
    at out + k * stride_os. One element per thread in every [32*NW] tensor (element e = lane e % 32 of
    warp e // 32; the inline PTX relies on it); warp w takes tile row w of each K step of 16*NW, thread
    (g, c) tiles pid_n*8*TN + 8i + g (i < TN), 4 accumulators per row pair and tile, summed over the
    warps at the end. PREFETCH (0, 1 = True, 2): the words of the next PREFETCH K steps are loaded before
    the current ones are decoded (PREFETCH + 1 steps of loads in flight, (2*BITS+1)*TN more registers a
    step). PREFETCH_X (with PREFETCH >= 1): the next step's 4 activations load with its words (else they
    load at the top of their own step, and its first B operand waits for them). Grid: (N / (128*TN),
    SPLIT_K). Needs 128*TN | N and 16*NW | K."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    BLOCK: tl.constexpr = 32 * NW
    W: tl.constexpr = 8 * BITS
    WT: tl.constexpr = 2 * BITS                # words of a thread's 64 steps
    e = tl.arange(0, BLOCK)
    lane = e % 32
    warp = e // 32
    g = lane // 4
    c = lane % 4
    n_tiles = N // 16
    tk_words = W * n_tiles
    woff = ()
    for i in tl.static_range(TN):
        tn = pid_n * (8 * TN) + i * 8 + g
        for w in tl.static_range(WT + 1):
            woff = woff + (warp * tk_words + ((WT * c + w - 1 + W) % W) * n_tiles + tn,)
    row = tl.minimum(g // 2, M - 1)
    negpart = -(g % 2).to(tl.float32)
    x_thr = x_ptr + row * stride_xm + warp * 16 + c * 4
    acc = ()
    for a in tl.static_range(TN * 32):
        acc = acc + (tl.zeros((BLOCK,), dtype=tl.float32),)
    STEP: tl.constexpr = 16 * NW
    k_start = pid_k * ITERS_PER_SPLIT * STEP
    k_end = tl.minimum(k_start + ITERS_PER_SPLIT * STEP, K)
    if PREFETCH >= 1:
        nxt = _tc_load_words(qw_ptr + (k_start // 16) * tk_words, woff, TN, WT)
        if PREFETCH_X:
            xn = _tc_load_x(x_thr, k_start)
    if PREFETCH >= 2:
        nxt2 = _tc_load_words(qw_ptr + (tl.minimum(k_start + STEP, k_end - STEP) // 16) * tk_words, woff, TN, WT)
    for k0 in range(k_start, k_end, STEP):
        if PREFETCH >= 2:
            cur = nxt
            nxt = nxt2
            # the words two steps ahead (clamped to the last step near the end: a valid address, unused)
            nxt2 = _tc_load_words(qw_ptr + (tl.minimum(k0 + 2 * STEP, k_end - STEP) // 16) * tk_words, woff, TN,
                                  WT)
        elif PREFETCH >= 1:
            cur = nxt
            # the next step's words (the last step again on the last one: a valid address, unused)
            nxt = _tc_load_words(qw_ptr + (tl.minimum(k0 + STEP, k_end - STEP) // 16) * tk_words, woff, TN, WT)
        else:
            cur = _tc_load_words(qw_ptr + (k0 // 16) * tk_words, woff, TN, WT)
        if PREFETCH >= 1 and PREFETCH_X:
            xs = xn
            xn = _tc_load_x(x_thr, tl.minimum(k0 + STEP, k_end - STEP))
        else:
            xs = _tc_load_x(x_thr, k0)
        b = _tc_b_operand(xs[0], xs[1], xs[2], xs[3], negpart, ASM)
        new = ()
        for i in tl.static_range(TN):
            ws = ()
            for w in tl.static_range(WT + 1):
                ws = ws + (cur[i * (WT + 1) + w],)
            for j in tl.static_range(8):
                u = _tc_lcg_words(ws, j, BITS, CODE)
                new = new + _tc_mma(u, b, acc[(i * 8 + j) * 4], acc[(i * 8 + j) * 4 + 1], acc[(i * 8 + j) * 4 + 2],
                                    acc[(i * 8 + j) * 4 + 3], ASM, NW, CODE)
        acc = new
    # epilogue: lane l = (g, c) holds rows n = 16 * tile + 2j + h (h = 0: d0, d1; h = 1: d2, d3) of token
    # m = c, the fp16 part in D column 2c and the residue in 2c + 1
    ys = ()
    for q in tl.static_range(TN * 16):
        ys = ys + (acc[2 * q] + acc[2 * q + 1],)
    ln = tl.arange(0, 32)
    m_l = (ln % 4)[:, None]
    ok = m_l < M
    if not USE_ATOMIC:
        out_ptr = out_ptr + pid_k * stride_os
    for i in tl.static_range(TN):
        y = tl.sum(tl.reshape(_tc_stack16(ys, i * 16), (NW, 32, 16)), axis=0)        # [lane, 2j + h]
        n = (pid_n * (8 * TN) + i * 8 + ln // 4)[:, None] * 16 + tl.arange(0, 16)[None, :]
        y = y * tl.load(s_ptr + n).to(tl.float32)
        if USE_ATOMIC:
            tl.atomic_add(out_ptr + m_l * stride_om + n, y, mask=ok)
        else:
            tl.store(out_ptr + m_l * stride_om + n, y, mask=ok)


@triton.jit
def _trellis_gemm_static_kernel(x_ptr, qw_ptr, s_ptr, lut_ptr, out_ptr, M, N, K, stride_xm, stride_om, group,
                                BITS: tl.constexpr, CODE: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_TN: tl.constexpr, BLOCK_TK: tl.constexpr, IEEE: tl.constexpr,
                                GROUPED: tl.constexpr, ASM: tl.constexpr, GATHER: tl.constexpr,
                                ITERS_PER_SPLIT, USE_ATOMIC: tl.constexpr, stride_os=0):
    """Tiled GEMM with the static decode: a [16*BLOCK_TK, 16*BLOCK_TN] weight tile is decoded in
    registers (compile-time shifts, as _trellis_gemv_static_kernel) straight into x's dtype when
    that is fp16 (code values are exact in fp16) and fed to tl.dot. Also the tensor-core GEMV: M <= 16
    in one BLOCK_M=16 row block, K split over programs (fp32 atomics into a zeroed out).
    x: [M, K] rotated activations; out: [M, N] fp32. Grid: (cdiv(M, BLOCK_M), N/16/BLOCK_TN, SPLIT_K).
    Needs 16*BLOCK_TN | N, 16*BLOCK_TK | K and (grouped) 16*BLOCK_TK | group."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    W: tl.constexpr = 8 * BITS
    P: tl.constexpr = 2 if BITS == 3 else 1
    WG: tl.constexpr = BITS * P // 2
    GPT: tl.constexpr = 16 // P
    G: tl.constexpr = BLOCK_TK * GPT
    BK: tl.constexpr = 16 * BLOCK_TK
    BN: tl.constexpr = 16 * BLOCK_TN
    n_tiles = N // 16
    tk_words = W * n_tiles
    g = tl.arange(0, G)
    tn = pid_n * BLOCK_TN + tl.arange(0, BLOCK_TN)
    mm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    nn = pid_n * BN + tl.arange(0, BN)
    kk = tl.arange(0, BK)
    mmask = mm < M
    acc = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    DEC: tl.constexpr = tl.float16 if x_ptr.dtype.element_ty == tl.float16 else tl.float32
    lut = _load_lut(lut_ptr, CODE, GATHER, DEC)
    k_start = pid_k * ITERS_PER_SPLIT * BK
    k_end = tl.minimum(k_start + ITERS_PER_SPLIT * BK, K)
    for k0 in range(k_start, k_end, BK):
        base = qw_ptr + (k0 // 16) * tk_words
        wm1 = _load_word(base, g, tn, tk_words, n_tiles, -1, WG, W, GPT)
        w0 = _load_word(base, g, tn, tk_words, n_tiles, 0, WG, W, GPT)
        w1 = w0
        w2 = w0
        if WG > 1:
            w1 = _load_word(base, g, tn, tk_words, n_tiles, 1, WG, W, GPT)
        if WG > 2:
            w2 = _load_word(base, g, tn, tk_words, n_tiles, 2, WG, W, GPT)
        v0 = _column_values(wm1, w0, w1, w2, 0, BITS, lut_ptr, lut, CODE, ASM, GATHER, DEC)
        if P == 1:
            w = tl.reshape(v0, (BK, BN))                                   # k = g, n = 16 tn + n_local
        else:
            v1 = _column_values(wm1, w0, w1, w2, 1, BITS, lut_ptr, lut, CODE, ASM, GATHER, DEC)
            w = tl.reshape(tl.permute(tl.join(v0, v1), (0, 3, 1, 2)), (BK, BN))   # k = 2 g + p
        if GROUPED:
            w = w * tl.load(s_ptr + (k0 // group) * N + nn).to(tl.float32)[None, :]
        a = tl.load(x_ptr + mm[:, None] * stride_xm + (k0 + kk)[None, :], mask=mmask[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(a, w.to(a.dtype), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
    if not GROUPED:
        acc = acc * tl.load(s_ptr + nn).to(tl.float32)[None, :]
    if USE_ATOMIC:
        tl.atomic_add(out_ptr + mm[:, None] * stride_om + nn[None, :], acc, mask=mmask[:, None])
    else:
        tl.store(out_ptr + pid_k * stride_os + mm[:, None] * stride_om + nn[None, :], acc, mask=mmask[:, None])


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
    off_hi, off_prev, rsh, lsh = _window_offsets(kk, nn, N, BITS, CODE >= 3)
    odd = ((nn % 2) == 1)[None, :]
    row_words = (N // 16) * W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        kmask = k < K
        base = qw_ptr + (k0 // 16) * row_words        # int32: < 2^31 words (8 GiB of codes)
        val = _decode(base, off_hi, off_prev, rsh, lsh, kmask[:, None] & nmask[None, :], lut_ptr, CODE, EVEN, odd)
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


# Static GEMV launch defaults (M <= GEMV_MAX_M), from the block/split sweep of bench_gemm_trellis.py
# --sweep on an H200 (docs/perf/trellis.md): per (code, bits) at M=1 the tiles along K per step and
# whether the next words are prefetched; for M = 2..4 (several rows per decode) tiles along K by
# bits and no prefetch; the programs per SM the K split aims for; warps per program. (3 bits needs
# 2+ tiles a step: with one, 8 column groups x 8 tiles leave half the threads duplicating work.)
GEMV_DEFAULTS = {
    "m1": {("3inst", 2): (2, True), ("3inst", 3): (2, True), ("3inst", 4): (4, True),
           ("1mad", 2): (2, False), ("1mad", 3): (2, False), ("1mad", 4): (2, False),
           ("hyb", 2): (1, True), ("hyb", 3): (4, True), ("hyb", 4): (1, True),
           # 1mad2 (H200 sweep 2026-11-26, docs/perf/trellis.md): 3 bits prefetches (20.2 / 62.4 us at
           # 8192x8192 / 28672x8192 against 23.2 / 75.5 without); 2 and 4 bits do not (21.5 / 64.4 and
           # 21.9 / 73.0 us without, 22.4 / 69.8 and 24.1 / 78.5 with)
           ("1mad2", 2): (2, False), ("1mad2", 3): (2, True), ("1mad2", 4): (2, False),
           # 1mad2r: 1mad2's until timed (same blocking, one multiply less per state)
           ("1mad2r", 2): (2, False), ("1mad2r", 3): (2, True), ("1mad2r", 4): (2, False)},
    "rows_block_tk": {2: 1, 3: 2, 4: 1}, "rows_prefetch": False,
    "programs_per_sm": 8, "num_warps": 4}


def _split_k(n_blocks: int, k_iters: int, device: torch.device, programs_per_sm: int | None = None,
             resident: int = 1, sms: int | None = None) -> int:
    """K splits for a grid of ``n_blocks`` output blocks: about ``programs_per_sm`` programs per SM
    (M=1 on a tall-thin grid needs many to hide load latency), picked among splits up to twice that for
    the smallest last-wave tail: programs / (SMs x ``resident``) close to a whole number, ``resident``
    being the programs an SM holds at once (1: the model the launch defaults were swept with, which
    counts a wave as one program per SM). ``sms``: the SM count (default: the device's)."""
    if device.type != "cuda" and sms is None:
        return 1 if k_iters < 4 else 2
    sms = sms or _sm_count(device)
    per_sm = programs_per_sm or GEMV_DEFAULTS["programs_per_sm"]
    want = max(1, min(k_iters, -(-per_sm * sms // max(1, n_blocks))))
    best, best_eff = 1, -1.0
    for split in range(want, min(k_iters, 2 * want) + 1):
        split = triton.cdiv(k_iters, triton.cdiv(k_iters, split))      # every split non-empty
        waves = n_blocks * split / (sms * resident)
        eff = waves / -(-waves // 1)
        if eff > best_eff + 1e-9:
            best, best_eff = split, eff
    return best


def _output(out, M: int, N: int, device) -> torch.Tensor:
    if out is None:
        return torch.empty((M, N), dtype=torch.float32, device=device)
    if out.shape != (M, N) or out.dtype != torch.float32 or out.stride(1) != 1 or out.device != device:
        raise ValueError(f"out must be a float32 [{M}, {N}] tensor with unit column stride on {device}")
    return out


GEMV_KERNELS = ("auto", "static", "generic", "mma", "tc")

# Tensor-core GEMV (_trellis_gemv_tc_kernel) launch configs and where ``gemv="auto"`` takes it, from the
# H200 sweeps of 2026-11-26 (docs/perf/trellis.md): code 1mad2, kernel times by CUDA-graph replay against the
# best FMA GEMV config of the same run. Second sweep (docs/perf/data/2026-11-26-h200-trellis-tc2/), M=1:
#   8192x8192:   2 bits tc 17.7 us (tn 1, resident split, prefetch) vs FMA 21.5; 3 bits 18.5 (tn 1, prefetch)
#                vs 20.2; 4 bits 20.1 (tn 1) vs 21.9
#   28672x8192:  2 bits 55.4 (tn 1, resident split, prefetch) vs FMA 64.8; 3 bits 58.9 (tn 1, resident split,
#                prefetch) vs 62.4; 4 bits 59.3 (tn 2, resident split, prefetch) vs 73.4
# -> tc everywhere. Every best config had 32 programs per SM and one warp a program; tn = tiles per thread
# along N (a program covers 128 * tn columns); "resident_split": the K split counts waves of the programs an SM
# holds at once (``TC_RESIDENT``); "prefetch": the next K step's words load while this one decodes. Shapes
# other than the two measured fall in the class of their N (``TC_WIDE_N``). M = 2 and 4 (8192x8192, forced tc,
# first config): 18.4 / 18.7 us at 2 bits, 20.6 / 22.9 at 4, against 29.2 / 46.0 and 31.8 / 57.6 for the FMA
# GEMV: ``auto`` takes tc up to M = 4 (``TC_GEMV_MAX_M``).
TC_WIDE_N = 16384           # N >= this: the 28672x8192 row of the table
TC_CONFIGS = {   # (bits, wide): launch config; "auto": whether gemv="auto" takes the tensor-core GEMV
    (2, False): {"tn": 1, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                 "auto": True},
    (3, False): {"tn": 1, "programs_per_sm": 32, "num_warps": 1, "prefetch": True, "auto": True},
    (4, False): {"tn": 1, "programs_per_sm": 32, "num_warps": 1, "auto": True},
    (2, True): {"tn": 1, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                "auto": True},
    (3, True): {"tn": 1, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                "auto": True},
    (4, True): {"tn": 2, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                "auto": True},
}
# Per-code overrides of TC_CONFIGS (same keys and fields; a code or key absent here takes TC_CONFIGS). 1mad2r,
# from its own H200 sweep of 2026-11-26 (docs/perf/data/2026-11-26-h200-trellis-rot/, M=1, graph replay; a
# knob a sweep config leaves unset takes 1mad2's TC_CONFIGS value, so these are the configs as launched), where
# its best beat 1mad2's config by more than 3% and more than 3x the larger std of the two timings:
#   8192x8192:   2 bits 16.24 us (tn 2, 16 programs per SM, resident split, prefetch) vs 17.08; 4 bits 19.05
#                (tn 1, 16 per SM) vs 19.97
#   28672x8192:  2 bits 50.12 (tn 2, resident split, prefetch, activations prefetched) vs 53.36; 4 bits 56.01
#                (1mad2's tn 2 config plus prefetch_x) vs 60.37
# 3 bits: best within 0.7% (8192) / 1.4% (28672) of 1mad2's config, kept.
TC_CODE_CONFIGS = {
    "1mad2r": {
        (2, False): {"tn": 2, "programs_per_sm": 16, "num_warps": 1, "resident_split": True, "prefetch": True,
                     "auto": True},
        (4, False): {"tn": 1, "programs_per_sm": 16, "num_warps": 1, "auto": True},
        (2, True): {"tn": 2, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                    "prefetch_x": True, "auto": True},
        (4, True): {"tn": 2, "programs_per_sm": 32, "num_warps": 1, "resident_split": True, "prefetch": True,
                    "prefetch_x": True, "auto": True},
    },
}
# Programs (one warp each) an SM holds at once, from the registers ptxas gives the kernel (Triton 3.6,
# sm_90; docs/perf/trellis.md): tn 1: 64 / 72 / 80 registers at 2 / 3 / 4 bits -> 32 (the 32-CTA cap) /
# 28 / 25; tn 2: 123-128 registers -> 16. Used by the resident-wave K split (``tc_resident_split``).
TC_RESIDENT = {(2, 1): 32, (3, 1): 28, (4, 1): 25, (2, 2): 16, (3, 2): 16, (4, 2): 16}
# auto picks the tensor-core GEMV (codes TC_AUTO_CODES, M <= TC_GEMV_MAX_M, where TC_CONFIGS says so) when True.
TC_GEMV = True
TC_GEMV_MAX_M = 4
TC_CODES = ("1mad", "1mad2", "1mad2r")   # the codes the tensor-core GEMV decodes
# 1mad has a tc decode too, but was not timed with it; 1mad2r takes TC_CODE_CONFIGS where they differ
TC_AUTO_CODES = ("1mad2", "1mad2r")


def tc_config(qt: QuantizedTensor) -> dict:
    """The tensor-core GEMV's launch config for this weight (``TC_CONFIGS`` by bits and N class, or the
    code's entry in ``TC_CODE_CONFIGS``); tn falls back to 1 where ``128 * tn`` does not divide N."""
    N = qt.shape[0]
    key = (qt.bits, N >= TC_WIDE_N)
    cfg = dict(TC_CODE_CONFIGS.get(qt.meta.get("code"), {}).get(key) or TC_CONFIGS[key])
    if N % (128 * cfg["tn"]):
        cfg["tn"] = 1
    return cfg


def tc_gemv_auto(M: int, qt: QuantizedTensor) -> bool:
    """Whether ``gemv="auto"`` takes the tensor-core GEMV for this call (see ``TC_CONFIGS``)."""
    if not TC_GEMV or M > TC_GEMV_MAX_M or qt.meta.get("code") not in TC_AUTO_CODES:
        return False
    if qt.bits not in (2, 3, 4) or not tc_config(qt)["auto"]:
        return False
    return tc_gemv_reason(M, qt) is None


def tc_gemv_reason(M: int, qt: QuantizedTensor, tn: int | None = None, num_warps: int | None = None) -> str | None:
    """Why the tensor-core GEMV cannot run this call (None when it can); ``tn``/``num_warps`` default to
    :func:`tc_config`."""
    N, K = qt.shape
    if qt.meta["code"] not in TC_CODES:
        return f"code {qt.meta['code']!r} (the tensor-core GEMV decodes {', '.join(TC_CODES)})"
    if M > GEMV_MAX_M:
        return f"M={M} > {GEMV_MAX_M}"
    if qt.group_size != -1 and qt.group_size != K:
        return f"grouped scales (group_size={qt.group_size}); it applies per-channel scales in the epilogue"
    cfg = tc_config(qt)
    tn = tn or cfg["tn"]
    nw = num_warps or cfg["num_warps"]
    if N % (128 * tn) or K % (16 * nw):
        return f"N={N} must be a multiple of {128 * tn} and K={K} of {16 * nw}"
    return None


def _tc_gemv(xr, qt, out, parts: bool, split_k: int | None, tn: int | None, num_warps: int | None,
             programs_per_sm: int | None, resident_split: bool = False, prefetch: bool | int | None = None,
             prefetch_x: bool | None = None) -> torch.Tensor:
    """Launch _trellis_gemv_tc_kernel (checks done by the caller); unset knobs from :func:`tc_config`.
    ``prefetch``: K steps of words loaded ahead (False/0, True/1, 2); ``prefetch_x``: the activations too
    (one step ahead, only with ``prefetch`` >= 1)."""
    M, K = xr.shape
    N = qt.shape[0]
    cfg = tc_config(qt)
    tn = tn or cfg["tn"]
    nw = num_warps or cfg["num_warps"]
    n_blocks, k_iters = N // (128 * tn), K // (16 * nw)
    resident_split = resident_split or cfg.get("resident_split", False)
    resident = TC_RESIDENT.get((qt.bits, tn), 1) if resident_split and nw == 1 else 1
    split = split_k or _split_k(n_blocks, k_iters, xr.device, programs_per_sm or cfg["programs_per_sm"],
                                resident=resident)
    iters = triton.cdiv(k_iters, split)
    split = triton.cdiv(k_iters, iters)
    buf, atomic = _split_output(out, parts, split, M, N, xr.device)
    pf = int(cfg.get("prefetch", False) if prefetch is None else prefetch)
    if pf not in (0, 1, 2):
        raise ValueError(f"prefetch for the tensor-core GEMV must be False/0, True/1 or 2, got {prefetch!r}")
    LAST_COMPILED["tc"] = _trellis_gemv_tc_kernel[(n_blocks, split)](
        xr, qt.tensors["qweight"], qt.tensors["scales"], buf, N, K, xr.stride(0), buf.stride(-2), iters, M,
        BITS=qt.bits, CODE=CODE_IDS[qt.meta["code"]], TN=tn, NW=nw, ASM=use_asm(xr.device),
        USE_ATOMIC=atomic, stride_os=buf.stride(0) if parts else 0,
        PREFETCH=pf, PREFETCH_X=pf >= 1 and bool(cfg.get("prefetch_x", False) if prefetch_x is None else prefetch_x),
        num_warps=nw)
    return buf


def _split_output(out, parts: bool, split: int, M: int, N: int, device):
    """(buffer the kernel writes, whether it accumulates with atomics). ``parts``: a fresh
    [split, M, N] fp32 buffer, one slice per split (nothing to zero); else ``out`` [M, N], zeroed
    for atomics when split > 1."""
    if parts:
        if out is not None:
            raise ValueError("out cannot be given with parts=True")
        return torch.empty((split, M, N), dtype=torch.float32, device=device), False
    out = _output(out, M, N, device)
    if split > 1:
        out.zero_()
    return out, split > 1


def _static_gemm(xr, qt, out, block_m: int, split_k: int | None, label: str, parts: bool = False,
                 num_warps: int = 4) -> torch.Tensor:
    """Launch _trellis_gemm_static_kernel (blocks of 32 k x 128 n), K split to fill the GPU."""
    M, K = xr.shape
    N = qt.shape[0]
    group = K if qt.group_size == -1 else qt.group_size
    m_blocks, n_blocks, k_iters = triton.cdiv(M, block_m), N // 128, K // 32
    split = split_k or _split_k(m_blocks * n_blocks, k_iters, xr.device, programs_per_sm=4)
    iters = triton.cdiv(k_iters, split)
    split = triton.cdiv(k_iters, iters)
    buf, atomic = _split_output(out, parts, split, M, N, xr.device)
    s = qt.tensors["scales"]
    LAST_COMPILED[label] = _trellis_gemm_static_kernel[(m_blocks, n_blocks, split)](
        xr, qt.tensors["qweight"], s, qt.tensors.get("lut", s), buf, M, N, K, xr.stride(0), buf.stride(-2),
        group, BITS=qt.bits, CODE=CODE_IDS[qt.meta["code"]], BLOCK_M=block_m, BLOCK_TN=8, BLOCK_TK=2,
        IEEE=xr.dtype == torch.float32, GROUPED=qt.group_size != -1, ASM=use_asm(xr.device),
        GATHER=HAS_GATHER, ITERS_PER_SPLIT=iters, USE_ATOMIC=atomic,
        stride_os=buf.stride(0) if parts else 0, num_warps=num_warps)
    return buf


def use_asm(device: torch.device) -> bool:
    """Inline-PTX code paths: compiled CUDA only (never the interpreter); TRITON_MARLIN_NO_ASM=1 turns
    them off (the portable branch computes the same values)."""
    import os
    return device.type == "cuda" and os.environ.get("TRITON_MARLIN_NO_ASM", "0") != "1"


def trellis_matmul_rotated(xr: torch.Tensor, qt: QuantizedTensor, *, block_n: int | None = None,
                           block_k: int = 32, split_k: int | None = None,
                           out: torch.Tensor | None = None, gemv: str = "auto",
                           block_tn: int = 8, block_tk: int | None = None, parts: bool = False,
                           prefetch: bool | None = None, num_warps: int | None = None,
                           gather: bool | None = None, programs_per_sm: int | None = None,
                           block_m: int | None = None, rotate_signs: torch.Tensor | None = None,
                           block_tn_tc: int | None = None, tc_resident_split: bool = False,
                           tc_prefetch_x: bool | None = None) -> torch.Tensor:
    """``y' = x' @ Wt.T`` in fp32 for rotated activations ``x' [M, K]`` (the kernel alone).

    ``out``: optional fp32 ``[M, N]`` buffer (contiguous rows); split-K zeroes it first and adds with
    atomics. ``parts=True`` (what ``trellis_qgemm`` runs): returns ``[S, M, N]`` partial results, one
    per K split, for :func:`hadamard.unrotate_parts` to add (no zeroing launch, no atomics; the
    generic kernels return ``[1, M, N]``).
    ``gemv`` (M <= 4): ``static`` = the compile-time-shift FMA kernel (needs 16*block_tn | N and
    16*block_tk | K), ``generic`` = per-weight window offsets (any shape), ``mma`` = the static decode
    into tensor-core tiles (M <= 16; N % 128, K % 32), ``auto`` = static when the shape allows.
    ``block_n``/``block_k`` configure the generic and tiled kernels; ``block_tk``, ``prefetch``,
    ``num_warps``, ``gather`` (hyb table in shared memory vs. global loads) and ``programs_per_sm``
    (target of the K split) the static GEMV, defaults in ``GEMV_DEFAULTS``; ``block_m`` (M > 4: rows
    per tiled program, each row block decodes the weight once) and ``num_warps`` the tiled GEMM.
    ``rotate_signs`` (static GEMV only): ``xr`` is the raw activation ``x`` and the kernel applies the
    input transform (these signs, the weight's ``had_block_in``) itself, with no separate launch.
    ``gemv="tc"``: the tensor-core GEMV (codes 1mad/1mad2/1mad2r, M <= 4, per-channel scales, 128*tn | N,
    16*num_warps | K; ``auto`` takes it where :func:`tc_gemv_auto` says the H200 sweep measured it
    faster); ``block_tn_tc`` (tn), ``num_warps`` and ``programs_per_sm`` configure it (defaults
    :func:`tc_config`); ``tc_resident_split``: the K split counts waves of the programs an SM holds at
    once (``TC_RESIDENT``) instead of one program per SM (True turns it on; False keeps
    :func:`tc_config`'s); ``prefetch`` with ``gemv="tc"``: its next K step's words loaded ahead (default
    :func:`tc_config`'s; with ``gemv="auto"`` the prefetch knob asks for the FMA GEMV; ``prefetch=2``: two
    K steps ahead); ``tc_prefetch_x``: the next step's activations load with its words (default
    :func:`tc_config`'s ``prefetch_x``). Its B operand is x' as
    fp16 plus its fp16 rounding residue, so |x'| must stay in fp16 range (< 65504).
    The path taken (M <= 4) is recorded in :mod:`triton_marlin.dispatch` as op ``trellis_gemv``."""
    M, K = xr.shape
    N = qt.shape[0]
    bits = qt.bits
    # knobs of the FMA GEMV only: asking for one keeps auto off the tensor-core GEMV
    static_knobs = block_tk is not None or prefetch is not None or gather is not None or rotate_signs is not None
    group = K if qt.group_size == -1 else qt.group_size
    if group % block_k:
        block_k = 16 if group % 16 == 0 else block_k
    code = CODE_IDS[qt.meta["code"]]
    qw, s = qt.tensors["qweight"], qt.tensors["scales"]
    lut = qt.tensors.get("lut", s)        # any valid pointer when the code has no table
    if M == 1:
        default_tk, default_prefetch = GEMV_DEFAULTS["m1"][(qt.meta["code"], bits)]
    else:      # several rows multiply every decoded weight: a shorter K step keeps the accumulators small
        default_tk, default_prefetch = GEMV_DEFAULTS["rows_block_tk"][bits], GEMV_DEFAULTS["rows_prefetch"]
    if block_tk is None:
        block_tk = default_tk
        if K % (16 * block_tk) or group % (16 * block_tk):
            block_tk = 2 if bits == 3 else 1     # 3 bits: column groups span 2 k; 2 tiles keep 128 threads busy
    if gemv not in GEMV_KERNELS:
        raise ValueError(f"gemv must be one of {GEMV_KERNELS}, got {gemv!r}")
    static_ok = N % (16 * block_tn) == 0 and K % (16 * block_tk) == 0
    if gemv == "static" and not static_ok:
        raise ValueError(f"the static GEMV needs N % {16 * block_tn} == 0 and K % {16 * block_tk} == 0, "
                         f"got N={N}, K={K}")
    if gemv == "tc" or (gemv == "auto" and not static_knobs and num_warps is None and tc_gemv_auto(M, qt)):
        reason = tc_gemv_reason(M, qt, block_tn_tc, num_warps)
        if reason is not None:
            raise ValueError(f"the tensor-core GEMV cannot run: {reason}")
        if rotate_signs is not None:
            raise ValueError("rotate_signs needs the static GEMV, not gemv='tc'")
        dispatch.record("trellis_gemv", "tc")
        return _tc_gemv(xr, qt, out, parts, split_k, block_tn_tc, num_warps, programs_per_sm, tc_resident_split,
                        prefetch, tc_prefetch_x)
    if gemv == "mma":
        if M > 16 or N % 128 or K % 32 or group % 32:
            raise ValueError(f"the tensor-core GEMV needs M <= 16, N % 128 == 0, K % 32 == 0 and a group "
                             f"multiple of 32; got M={M}, N={N}, K={K}, group={group}")
        dispatch.record("trellis_gemv", "mma")
        return _static_gemm(xr, qt, out, 16, split_k, "mma", parts)
    fuse = rotate_signs is not None
    if fuse and not (M <= GEMV_MAX_M and gemv != "generic" and static_ok):
        raise ValueError(f"rotate_signs needs the static GEMV (M <= {GEMV_MAX_M}, whole blocks), got M={M}, "
                         f"N={N}, K={K}, gemv={gemv!r}")
    if M <= GEMV_MAX_M and gemv != "generic" and static_ok:
        n_blocks = N // (16 * block_tn)
        k_iters = K // (16 * block_tk)
        split = split_k or _split_k(n_blocks, k_iters, xr.device, programs_per_sm)
        iters = triton.cdiv(k_iters, split)
        # no input transform: unused pointers still get tensors (no None specialization)
        rot = dict(sv_ptr=s, xr_ptr=s, ROTATE_HB=0, ROTATE_F1=1, ROTATE_F2=1, rotate_scale=1.0)
        if fuse:
            hb = qt.meta["had_block_in"]
            if hb not in had._FACTORS or hb % (16 * block_tk):
                raise ValueError(f"rotate_signs: Hadamard block {hb} must be a multiple of the K step "
                                 f"{16 * block_tk}")
            per = hb // (16 * block_tk)               # each program's K range: whole Hadamard blocks
            iters = triton.cdiv(iters, per) * per
            f1, f2 = had._FACTORS[hb]
            rot = dict(sv_ptr=rotate_signs, xr_ptr=torch.empty((M, K), dtype=torch.float32, device=xr.device),
                       ROTATE_HB=hb, ROTATE_F1=f1, ROTATE_F2=f2, rotate_scale=1.0 / hb ** 0.5)
        split = triton.cdiv(k_iters, iters)
        buf, atomic = _split_output(out, parts, split, M, N, xr.device)
        pf = default_prefetch if prefetch is None else prefetch
        rows_per_program = 1 if M == 1 else triton.next_power_of_2(M)
        dispatch.record("trellis_gemv", "static")
        LAST_COMPILED["gemv"] = _trellis_gemv_static_kernel[(n_blocks, split, triton.cdiv(M, rows_per_program))](
            xr, qw, s, lut, buf, N, K, xr.stride(0), buf.stride(-2), group, iters,
            BITS=bits, CODE=code, BLOCK_TN=block_tn, BLOCK_TK=block_tk, USE_ATOMIC=atomic,
            GROUPED=qt.group_size != -1, ASM=use_asm(xr.device),
            GATHER=HAS_GATHER if gather is None else (gather and HAS_GATHER),
            stride_os=buf.stride(0) if parts else 0, PREFETCH=pf, M=M, ROWS=rows_per_program,
            num_warps=num_warps or GEMV_DEFAULTS["num_warps"], **rot)
        return buf
    if M <= GEMV_MAX_M:
        BLOCK_N = block_n or 64
        n_blocks = triton.cdiv(N, BLOCK_N)
        k_iters = triton.cdiv(K, block_k)
        split = split_k or _split_k(n_blocks, k_iters, xr.device, programs_per_sm)
        iters = triton.cdiv(k_iters, split)
        split = triton.cdiv(k_iters, iters)
        out = _output(out, M, N, xr.device)
        if split > 1:
            out.zero_()
        dispatch.record("trellis_gemv", "generic")
        LAST_COMPILED["gemv"] = _trellis_gemv_kernel[(n_blocks, split, M)](
            xr, qw, s, lut, out, N, K, xr.stride(0), out.stride(0), group, iters,
            BITS=bits, CODE=code, BLOCK_N=BLOCK_N, BLOCK_K=block_k, USE_ATOMIC=split > 1,
            EVEN=N % BLOCK_N == 0 and K % block_k == 0, num_warps=4)
        return out[None] if parts else out
    # 128-row blocks decode the weight once for M=128 (2 and 4 bits measured faster; 3 bits' two-column
    # groups were slower there, so it keeps 64)
    BLOCK_M = block_m or (16 if M <= 16 else (32 if M <= 32 else (64 if M <= 64 or bits == 3 else 128)))
    if gemv != "generic" and N % 128 == 0 and K % 32 == 0 and group % 32 == 0:
        # a [BLOCK_M, 128] fp32 accumulator: 8 warps from 128 rows on (64 registers a thread)
        return _static_gemm(xr, qt, out, BLOCK_M, split_k, "gemm", parts,
                            num_warps=num_warps or (8 if BLOCK_M >= 128 else 4))
    BLOCK_N = block_n or 64
    out = _output(out, M, N, xr.device)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    LAST_COMPILED["gemm"] = _trellis_gemm_kernel[grid](
        xr, qw, s, lut, out, M, N, K, xr.stride(0), out.stride(0), group,
        BITS=bits, CODE=code, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=block_k,
        IEEE=xr.dtype == torch.float32, EVEN=N % BLOCK_N == 0 and K % block_k == 0, num_warps=4)
    return out[None] if parts else out


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


# Input transform inside the decode GEMV (M <= 4) instead of its own launch. Off: not yet timed on a
# GPU (bench_gemm_trellis.py records it as impl "trellis_full_fused_in"; docs/perf/trellis.md).
FUSE_INPUT_ROTATION = False


def fused_input_ok(M: int, qt: QuantizedTensor) -> bool:
    """Whether the static GEMV can apply the input transform itself for this call (M <= 4, whole
    blocks, Hadamard blocks a multiple of the K step)."""
    N, K = qt.shape
    if M > GEMV_MAX_M or N % 128:
        return False
    if M == 1:
        tk = GEMV_DEFAULTS["m1"][(qt.meta["code"], qt.bits)][0]
    else:
        tk = GEMV_DEFAULTS["rows_block_tk"][qt.bits]
    group = K if qt.group_size == -1 else qt.group_size
    hb = qt.meta["had_block_in"]
    return K % (16 * tk) == 0 and group % (16 * tk) == 0 and hb % (16 * tk) == 0


def _trellis_qgemm_impl(x2d: torch.Tensor, qt: QuantizedTensor, bias: torch.Tensor | None,
                        fuse_input: bool | None = None, gemv: str = "auto") -> torch.Tensor:
    """``gemv``: the decode kernel of M <= 4 (``trellis_matmul_rotated``'s argument; benchmarks force
    ``"tc"`` or ``"static"`` with it)."""
    M = x2d.shape[0]
    if M == 0:
        return x2d.new_empty((0, qt.shape[0]))
    fuse = FUSE_INPUT_ROTATION if fuse_input is None else fuse_input
    if fuse and fused_input_ok(M, qt):
        yr_parts = trellis_matmul_rotated(x2d, qt, parts=True, rotate_signs=qt.tensors["sv"])
    else:
        # GEMV accumulates in fp32, so keep x' in fp32; the tiled path feeds tensor cores in x's dtype
        xr_dtype = torch.float32 if M <= GEMV_MAX_M else x2d.dtype
        xr = had.rotate(x2d, qt.tensors["sv"], qt.meta["had_block_in"], out_dtype=xr_dtype)
        yr_parts = trellis_matmul_rotated(xr, qt, parts=True, gemv=gemv if M <= GEMV_MAX_M else "auto")
    # one launch adds the split-K partials, transforms, adds the bias and writes x's dtype
    return had.unrotate_parts(yr_parts, qt.tensors["su"], qt.meta["had_block_out"], out_dtype=x2d.dtype,
                              bias=bias)


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

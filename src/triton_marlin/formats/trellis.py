"""Trellis-coded weight formats ``trellis2``, ``trellis3``, ``trellis4`` (QTIP / EXL3 style).

A weight ``W [N, K]`` is stored in a rotated basis ``Wt = U @ W @ V.T`` (random Hadamard transforms
on both sides, :mod:`triton_marlin.formats.hadamard`), so ``Wt`` looks like i.i.d. Gaussian data.
``Wt`` is cut into 16x16 tiles; each tile is a sequence of 256 weights coded as a path through a
bitshift trellis with ``L = 16`` state bits and ``bits`` (K) bits per weight:

- tile ``(tk, tn)`` covers rows ``16*tn .. 16*tn+15`` and columns ``16*tk .. 16*tk+15`` of ``Wt``;
  sequence position ``t = 16 * k_local + n_local`` (column-major inside the tile).
- the tile's code is a circular bitstream of ``256 * K`` bits: step ``t`` appends the K bits
  ``c_t`` at stream bits ``[t*K, (t+1)*K)`` (most significant first). The state of step ``t`` is the
  16-bit window of the stream ending at bit ``(t+1)*K``, read circularly: the first steps read the
  end of the stream (tail-biting: start state = end state), so every tile decodes on its own.
- the weight of step ``t`` is ``code(state_t) * scale``; ``code`` is a computed code (``3inst``,
  ``1mad``) or ``hyb`` (a hashed 256-entry lookup table stored in the artifact). Pair codes
  (``1mad2``, ``1mad2r``) decode two weights per state: steps ``2u`` and ``2u+1`` (n_local even and odd, same
  k_local) both take their values from the state of step ``2u+1`` (the window ending at bit
  ``(2u+2)*K``), component 0 and 1 of a 2-D code value: a trellis of 128 steps of ``2K`` bits with
  2-D outputs (QTIP's V = 2), over the same stream.

Stored tensors (G = K // group_size, or 1 per-channel):
- ``qweight`` int32 ``[K/16, 8*K, N/16]``: ``qweight[tk, j, tn]`` is word ``j`` of tile (tk, tn)'s
  stream, holding stream bits ``[32j, 32j+32)`` with stream bit ``32j`` in its most significant bit
  (word-major inside a row of tiles, so word ``j`` of consecutive tiles along N is contiguous).
- ``scales`` ``[G, N]`` float16/bfloat16 (per row of ``Wt``, per group of its columns).
- ``su`` int8 ``[N]``, ``sv`` int8 ``[K]``: the Hadamard sign vectors (output and input side).
- ``lut`` float16 ``[256]`` for code ``hyb`` only.

Dequantization: ``W = U.T @ (code(states) * scales) @ V``.
"""
from __future__ import annotations

import torch

from . import hadamard
from .base import (QuantizedTensor, WeightFormat, check_scale_dtype, dtype_from_name, dtype_name,
                   register_format)

STATE_BITS = 16              # L
TILE = 16                    # tiles are TILE x TILE weights
TILE_WEIGHTS = TILE * TILE   # sequence length of one tile
CODES = ("3inst", "1mad", "hyb", "1mad2", "1mad2r")
PAIR_CODES = ("1mad2", "1mad2r")    # two weights (a 2-D value) per state
LAYOUT = "trellis16_kmajor_circular"
HYB_LUT_SIZE = 256

# Code constants (QTIP's 3INST and 1MAD; HYB's hash multiplier is an odd 32-bit constant).
INST3_MUL, INST3_ADD, INST3_MASK, INST3_XOR = 89226354, 64248484, 0x8FFF8FFF, 0x3B603B60
MAD1_MUL, MAD1_ADD, MAD1_BIAS = 34038481, 76625530, 510
MAD2_MUL, MAD2_ADD = 0x2E3A8F1D, 0x9E3779B9   # 1mad2's second component: a second LCG of the state
# 1mad2r's second component: the 1mad word rotated right by MAD2R_ROT bits, its bytes summed with the signs
# +1, -1, +1, -1 (byte 0 first; as a dp4a operand of signed bytes: MAD2R_SIGNS)
MAD2R_ROT, MAD2R_SIGNS = 6, 0xFF01FF01
HYB_MUL = 0xCBAC1FED
U32 = 0xFFFFFFFF


def code_dim(code: str) -> int:
    """Weights decoded per state: 2 for pair codes, else 1."""
    return 2 if code in PAIR_CODES else 1


def words_per_tile(bits: int) -> int:
    return TILE_WEIGHTS * bits // 32


def words_to_qweight(words: torch.Tensor) -> torch.Tensor:
    """Per-tile streams ``[K/16, N/16, W]`` -> the stored layout ``[K/16, W, N/16]``."""
    return words.permute(0, 2, 1).contiguous()


def qweight_to_words(qweight: torch.Tensor) -> torch.Tensor:
    """Stored ``[K/16, W, N/16]`` -> per-tile streams ``[K/16 * N/16, W]`` (tile order tk, tn)."""
    return qweight.permute(0, 2, 1).reshape(-1, qweight.shape[1])


def _fp16_from_bits(b: torch.Tensor) -> torch.Tensor:
    """int64 tensor of 16-bit patterns -> those fp16 numbers."""
    signed = torch.where(b >= 1 << 15, b - (1 << 16), b).to(torch.int16)
    return signed.view(torch.float16)


def default_hyb_lut() -> torch.Tensor:
    """256 Gaussian quantiles (fp16): the HYB table before any training."""
    p = (torch.arange(HYB_LUT_SIZE, dtype=torch.float64) + 0.5) / HYB_LUT_SIZE
    return torch.special.ndtri(p).to(torch.float16)


def hyb_index(states: torch.Tensor) -> torch.Tensor:
    """Table index of each state for code ``hyb``: the top 8 bits of ``state * HYB_MUL mod 2^32``."""
    return ((states.to(torch.int64) * HYB_MUL) & U32) >> 24


def decode_states(states: torch.Tensor, code: str, lut: torch.Tensor | None = None) -> torch.Tensor:
    """Code value (float32) of each trellis state (integers in ``[0, 2**16)``).

    - ``3inst``: ``x = state * 89226354 + 64248484 (mod 2^32)``, ``x = (x & 0x8FFF8FFF) ^ 0x3B603B60``,
      value = fp16(low half) + fp16(high half), the sum rounded to fp16 (QTIP's definition).
    - ``1mad``: ``x = state * 34038481 + 76625530 (mod 2^32)``, value = sum of x's 4 bytes - 510.
    - ``hyb``: value = ``lut[(state * 0xCBAC1FED mod 2^32) >> 24]``.
    - ``1mad2`` (two weights per state; values ``[..., 2]``): component 0 is the ``1mad`` value;
      component 1 the same with ``x = state * 0x2E3A8F1D + 0x9E3779B9 (mod 2^32)``. (One LCG word
      split two ways, e.g. byte sums with signs (1,1,1,1) and (1,-1,1,-1), measured 0.0187 MSE at 3
      bits against 0.0175 for two LCGs: a 2-D projection of 4 bytes is a rotated product of two
      triangular densities, too far from a 2-D Gaussian.)
    - ``1mad2r`` (two weights per state, one LCG): component 0 is the ``1mad`` value of
      ``x = state * 34038481 + 76625530``; component 1 is ``y0 - y1 + y2 - y3`` for the bytes ``y0..y3``
      (least significant first) of ``y = rotr32(x, 6) = (x >> 6) | (x << 26) (mod 2^32)``, in
      ``[-510, 510]``. The rotation moves every byte boundary of ``x`` by 6 bits, so each byte of ``y``
      mixes two bytes of ``x`` and the pair is uncorrelated and close to a 2-D Gaussian: on Gaussian data
      it codes as well as ``1mad2`` with one multiply per state instead of two (rotations by 2, 4, 12 or
      20 bits measured worse; unsigned byte sums of the rotated word are correlated with component 0).
    Every value is exact in float32, so the Triton decoder reproduces it bit for bit.
    """
    s = states.to(torch.int64)
    if code == "3inst":
        x = (s * INST3_MUL + INST3_ADD) & U32
        x = (x & INST3_MASK) ^ INST3_XOR
        # fp16 + fp16 rounded to fp16 (IEEE round to nearest even, as the GPU's add.f16)
        return (_fp16_from_bits(x & 0xFFFF) + _fp16_from_bits(x >> 16)).to(torch.float32)
    if code == "1mad":
        x = (s * MAD1_MUL + MAD1_ADD) & U32
        total = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + (x >> 24)
        return (total - MAD1_BIAS).to(torch.float32)
    if code == "1mad2":
        x = (s * MAD1_MUL + MAD1_ADD) & U32
        y = (s * MAD2_MUL + MAD2_ADD) & U32
        c0 = sum((x >> (8 * i)) & 255 for i in range(4)) - MAD1_BIAS
        c1 = sum((y >> (8 * i)) & 255 for i in range(4)) - MAD1_BIAS
        return torch.stack([c0, c1], dim=-1).to(torch.float32)
    if code == "1mad2r":
        x = (s * MAD1_MUL + MAD1_ADD) & U32
        y = ((x >> MAD2R_ROT) | (x << (32 - MAD2R_ROT))) & U32
        c0 = sum((x >> (8 * i)) & 255 for i in range(4)) - MAD1_BIAS
        c1 = sum((-1) ** i * ((y >> (8 * i)) & 255) for i in range(4))
        return torch.stack([c0, c1], dim=-1).to(torch.float32)
    if code == "hyb":
        if lut is None or lut.shape != (HYB_LUT_SIZE,):
            raise ValueError(f"code 'hyb' needs a lut of shape ({HYB_LUT_SIZE},)")
        return lut.to(device=s.device, dtype=torch.float32)[hyb_index(s)]
    raise ValueError(f"unknown trellis code {code!r}: expected one of {CODES}")


def code_table(code: str, lut: torch.Tensor | None = None, state_bits: int = STATE_BITS,
               device="cpu") -> torch.Tensor:
    """Values of all ``2**state_bits`` states, float32: ``[2**state_bits]``, or ``[2**state_bits, 2]``
    for a pair code."""
    return decode_states(torch.arange(1 << state_bits, device=device), code, lut)


def path_values(states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Weight values of per-step state sequences ``[..., T]`` for a code table from :func:`code_table`.
    A pair table ``[S, 2]``: steps ``2u`` and ``2u+1`` are components 0 and 1 of state ``2u+1``."""
    if table.dim() == 1:
        return table[states]
    odd = states[..., 1::2]
    return table[odd].reshape(*states.shape)


def pair_to_step_states(pair_states: torch.Tensor, bits: int, state_bits: int = STATE_BITS) -> torch.Tensor:
    """Per-step states ``[B, T]`` (``bits`` per step) of circular paths given by their pair states
    ``[B, T/2]`` (``2*bits`` per pair: state of step ``2u+1``). Step ``2u``'s window is the pair state
    ``u-1`` shifted by ``bits`` (circularly) with the first ``bits`` bits of pair ``u`` appended."""
    mask = (1 << state_bits) - 1
    prev = torch.roll(pair_states, shifts=1, dims=1)
    even = ((prev << bits) & mask) | ((pair_states >> bits) & ((1 << bits) - 1))
    return torch.stack([even, pair_states], dim=-1).reshape(pair_states.shape[0], -1)


# -- bitstreams --------------------------------------------------------------------------------
def pack_stream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-step codes ``[B, T]`` (``bits`` each) -> int32 words ``[B, T*bits/32]`` (MSB first)."""
    B, T = codes.shape
    if (T * bits) % 32:
        raise ValueError(f"a stream of {T} steps x {bits} bits is not a whole number of 32-bit words")
    shifts = torch.arange(bits - 1, -1, -1, device=codes.device, dtype=torch.int64)
    stream = (codes.to(torch.int64).unsqueeze(-1) >> shifts) & 1            # [B, T, bits]
    stream = stream.reshape(B, T * bits // 32, 32)
    weights = torch.arange(31, -1, -1, device=codes.device, dtype=torch.int64)
    words = (stream << weights).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return words.to(torch.int32)


def unpack_stream_bits(words: torch.Tensor) -> torch.Tensor:
    """int32 words ``[B, W]`` -> stream bits ``[B, 32*W]`` (uint8), stream order."""
    shifts = torch.arange(31, -1, -1, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1).to(torch.uint8)


def stream_states(words: torch.Tensor, bits: int, state_bits: int = STATE_BITS) -> torch.Tensor:
    """States ``[B, T]`` of circular streams: the ``state_bits`` window ending at bit ``(t+1)*bits``."""
    stream = unpack_stream_bits(words).to(torch.int64)
    n = stream.shape[1]
    T = n // bits
    ends = (torch.arange(T, device=words.device) + 1) * bits
    pos = (ends.unsqueeze(1) - state_bits + torch.arange(state_bits, device=words.device)) % n
    window = stream[:, pos]                                                 # [B, T, L]
    weights = 1 << torch.arange(state_bits - 1, -1, -1, device=words.device, dtype=torch.int64)
    return (window * weights).sum(-1)


def states_to_codes(states: torch.Tensor, bits: int) -> torch.Tensor:
    return states & ((1 << bits) - 1)


# -- tile layout -------------------------------------------------------------------------------
def matrix_to_tiles(w: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` -> ``[K/16, N/16, 256]`` with sequence position ``16*k_local + n_local``."""
    N, K = w.shape
    t = w.reshape(N // TILE, TILE, K // TILE, TILE)        # [tn, n_l, tk, k_l]
    return t.permute(2, 0, 3, 1).reshape(K // TILE, N // TILE, TILE_WEIGHTS)


def tiles_to_matrix(t: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Inverse of :func:`matrix_to_tiles`."""
    x = t.reshape(K // TILE, N // TILE, TILE, TILE)        # [tk, tn, k_l, n_l]
    return x.permute(1, 3, 0, 2).reshape(N, K)


def check_trellis_shape(N: int, K: int) -> None:
    if N % TILE or K % TILE:
        raise ValueError(f"trellis formats need N and K (out and in features) to be multiples of {TILE}, "
                         f"got N={N}, K={K}")


class TrellisFormat(WeightFormat):
    allowed_group_sizes = (-1, 32, 64, 128, 256)
    default_group_size = -1

    def __init__(self, bits: int):
        self.bits = bits
        self.name = f"trellis{bits}"

    def quantize_rtn(self, weight, group_size=-1, **options):
        raise ValueError(f"format {self.name!r} is coded by a trellis search; round-to-nearest does not "
                         f"apply: use method='viterbi' or method='ldlq'")

    def check_group_size(self, group_size: int, K: int) -> int:
        group = super().check_group_size(group_size, K)
        if group % TILE:
            raise ValueError(f"group_size must be a multiple of {TILE} for {self.name!r}, got {group_size}")
        return group

    def table(self, qt: QuantizedTensor, device=None) -> torch.Tensor:
        return code_table(qt.meta["code"], qt.tensors.get("lut"),
                          device=device if device is not None else qt.device)

    def rotated_weight(self, qt: QuantizedTensor) -> torch.Tensor:
        """``Wt = code(states) * scales`` in the rotated basis, float32 ``[N, K]``."""
        N, K = qt.shape
        words = qweight_to_words(qt.tensors["qweight"])
        table = self.table(qt)
        dim = code_dim(qt.meta["code"])
        vals = torch.empty(words.shape[0], TILE_WEIGHTS, dtype=torch.float32, device=words.device)
        step = 8192          # tiles per chunk: the bit-level unpack holds ~32 KiB per tile
        for lo in range(0, words.shape[0], step):
            # pair codes: one state per 2 steps (2*bits per state), 2-D values
            v = table[stream_states(words[lo:lo + step], self.bits * dim)]
            vals[lo:lo + step] = v.reshape(v.shape[0], TILE_WEIGHTS)
        vals = vals.reshape(K // TILE, N // TILE, TILE_WEIGHTS)
        wt = tiles_to_matrix(vals, N, K)
        group = K if qt.group_size == -1 else qt.group_size
        scales = qt.tensors["scales"].to(torch.float32).t().repeat_interleave(group, dim=1)
        return wt * scales

    def dequantize(self, qt: QuantizedTensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        wt = self.rotated_weight(qt).to(torch.float64)
        meta = qt.meta
        w = hadamard.unrotate(wt, qt.tensors["sv"], meta["had_block_in"])             # Wt V
        w = hadamard.unrotate(w.t(), qt.tensors["su"], meta["had_block_out"]).t()       # U^T Wt V
        return w.to(dtype)

    def expected_tensors(self, shape, group_size, meta) -> dict:
        N, K = shape
        check_trellis_shape(N, K)
        if meta["code"] not in CODES:
            raise ValueError(f"unknown trellis code {meta['code']!r} (this version decodes {', '.join(CODES)})")
        if int(meta.get("state_bits", STATE_BITS)) != STATE_BITS:
            raise ValueError(f"state_bits {meta.get('state_bits')} unsupported (only {STATE_BITS})")
        if meta.get("layout") != LAYOUT:
            raise ValueError(f"layout {meta.get('layout')!r} unsupported (expected {LAYOUT!r})")
        G = self.num_groups(shape, group_size)
        out = {
            "qweight": ((K // TILE, words_per_tile(self.bits), N // TILE), torch.int32),
            "scales": ((G, N), dtype_from_name(meta["scale_dtype"])),
            "su": ((N,), torch.int8),
            "sv": ((K,), torch.int8),
        }
        if meta["code"] == "hyb":
            out["lut"] = ((HYB_LUT_SIZE,), torch.float16)
        return out

    def options_from_meta(self, meta: dict) -> dict:
        return {"code": meta["code"], "scale_dtype": dtype_from_name(meta["scale_dtype"])}


def make_meta(bits: int, code: str, N: int, K: int, scale_dtype: torch.dtype, method: str) -> dict:
    check_scale_dtype(scale_dtype)
    return {"format": f"trellis{bits}", "bits": bits, "code": code, "state_bits": STATE_BITS,
            "tile": TILE, "layout": LAYOUT, "scale_dtype": dtype_name(scale_dtype),
            "had_block_in": hadamard.hadamard_block_size(K), "had_block_out": hadamard.hadamard_block_size(N),
            "method": method}


TRELLIS_FORMATS = {b: register_format(TrellisFormat(b)) for b in (2, 3, 4)}


def random_trellis_weight(N: int, K: int, bits: int, code: str = "3inst", group_size: int = -1,
                          generator: torch.Generator | None = None, device="cpu",
                          scale: float = 0.02, scale_dtype: torch.dtype = torch.float16) -> QuantizedTensor:
    """A trellis weight with uniformly random streams (every bit pattern is a valid tail-biting
    stream): what kernel timing needs without paying for an encode. Quality figures need a real
    encode (method='viterbi' or 'ldlq')."""
    check_trellis_shape(N, K)
    if code not in CODES:
        raise ValueError(f"code must be one of {CODES}, got {code!r}")
    words = torch.randint(-2 ** 31, 2 ** 31, (K // TILE, words_per_tile(bits), N // TILE),
                          generator=generator, dtype=torch.int64).to(torch.int32)
    G = 1 if group_size == -1 else K // group_size
    rms = code_table(code, default_hyb_lut() if code == "hyb" else None).square().mean().sqrt()
    tensors = {"qweight": words, "scales": torch.full((G, N), scale / rms.item()).to(scale_dtype),
               "su": hadamard.random_signs(N, generator), "sv": hadamard.random_signs(K, generator)}
    if code == "hyb":
        tensors["lut"] = default_hyb_lut()
    meta = make_meta(bits, code, N, K, scale_dtype, method="random")
    return QuantizedTensor(f"trellis{bits}", (N, K), group_size, tensors, meta).to(device)

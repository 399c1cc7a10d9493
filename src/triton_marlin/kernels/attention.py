"""Attention in Triton: a FlashAttention-2-style prefill kernel and a split-K decode kernel over a KV cache.

Prefill (``attention``): ``q [B, Hq, Sq, D]``, ``k``/``v [B, Hkv, Sk, D]`` with ``Hkv`` dividing ``Hq`` (GQA:
query head ``h`` reads KV head ``h // (Hq // Hkv)``), D in {64, 128, 256}, fp16 or bf16, any strides. One program
owns BLOCK_M query rows of one (batch, head); it streams K/V in BLOCK_N-row tiles and keeps the softmax online
in fp32 (running max ``m``, running sum ``l``, unnormalized accumulator), in base 2 with ``log2(e)`` folded
into the scale. P is rounded to the input dtype before the P @ V tensor-core dot; everything else is fp32.
Causal masking is aligned bottom-right: query row ``i`` sits at position ``Sk - Sq + i`` and sees keys
``j <= Sk - Sq + i`` (for Sq == Sk this is the usual lower triangle; for Sq < Sk it is chunked prefill
against a longer context). Key tiles wholly inside the visible region run without masks; only the diagonal
and ragged tail tiles pay for them.

Decode (``decode_attention``): one query token per sequence, ``q [B, Hq, D]``, against a cache
``k_cache``/``v_cache`` viewed as ``[B, Hkv, S_max, D]`` through arbitrary strides (so every memory layout of
:mod:`triton_marlin.kvcache` is read in place) and ``seq_lens [B]`` (int32, per sequence, may differ).
Stage 1 splits each sequence into ``num_splits`` chunks; a program handles one (batch, KV head, chunk) for all
``Hq // Hkv`` query heads of that KV head at once (each K/V byte is read once per step, not once per query
head) and writes a normalized partial output plus its log-sum-exp. Stage 2 merges the chunks per (batch,
query head); with a single chunk stage 1 writes the output itself and stage 2 is skipped. A sequence of length 0
gives an all-zero output.

MLA decode (``mla_decode_attention``): multi-head latent attention (DeepSeek-V2, GLM-4.7-Flash) in the absorbed
form: all heads attend over one shared cache row per token, a latent (keys' no-rope part and the values) plus
a rope key. Same split-K scheme, one program per (batch, chunk) for all heads; each latent tile is read once.

Layers: ``_attn_fwd_kernel`` / ``_decode_split_kernel`` / ``_mla_decode_split_kernel`` + ``_decode_combine_kernel``
(Triton); ``flash_attention_triton`` / ``decode_attention_triton`` / ``mla_decode_attention_triton`` (checks,
allocation, launch config); the custom ops ``triton_marlin::attention`` / ``::decode_attention`` /
``::mla_decode_attention`` (fake impls for torch.compile); ``attention`` / ``decode_attention`` /
``mla_decode_attention`` (pick the path, record it in :mod:`triton_marlin.dispatch`). ``attention_reference`` /
``decode_attention_reference`` / ``mla_decode_reference`` are the torch paths (explicit fp32 softmax).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .. import dispatch
from ..device import triton_enabled_for, triton_interpret

__all__ = [
    # entry points and references
    "attention", "attention_reference", "flash_attention_triton",
    "decode_attention", "decode_attention_reference", "decode_attention_triton",
    "mla_decode_attention", "mla_decode_reference", "mla_decode_attention_triton",
    # configuration
    "HEAD_CONFIGS", "MLA_CONFIGS", "SUPPORTED_HEAD_DIMS", "SUPPORTED_DTYPES", "PrefillConfig", "DecodeConfig",
    "default_prefill_config", "default_decode_config", "default_mla_decode_config",
    "choose_num_splits", "merge_min_chunk", "decode_num_splits", "mla_decode_num_splits", "split_plan",
    # counts and queries
    "attention_flops", "decode_bytes", "mla_decode_bytes", "unsupported_reason", "path_label",
]

# Attention head configurations the benchmarks use. GLM-4.7-Flash (Glm4MoeLite) has multi-head latent
# attention (MLA, DeepSeek-V2 style), not GQA: 20 query heads with a 256-d query/key (192 no-rope + 64 rope)
# and a 256-d value, over a cache of one 512-d latent plus one 64-d rope key per token and layer (1152 bytes
# in fp16). Prefill without weight absorption expands the latent into per-head keys and values: exactly MHA
# with 20 heads of 256 dims ("glm47-flash-mla-prefill"). Its decode reads the latent cache (MLA_CONFIGS and
# mla_decode_attention); for the GQA decode kernel and the KV-cache layouts a stated stand-in keeps the same
# 20 query heads with 2 KV heads of 128 dims (K + V = 1024 bytes per token and layer, close to MLA's 1152).
HEAD_CONFIGS = {
    "glm47-flash-mla-prefill": {"num_heads": 20, "num_kv_heads": 20, "head_dim": 256},
    "glm47-flash-gqa-standin": {"num_heads": 20, "num_kv_heads": 2, "head_dim": 128},
    "llama3-8b": {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128},
    "mha-d64": {"num_heads": 16, "num_kv_heads": 16, "head_dim": 64},
}

# GLM-4.7-Flash decode in the absorbed MLA form (see mla_decode_attention): every query head attends over one
# shared cache row per token, a kv_lora_rank-wide latent (also the value) plus a rope key; softmax scale
# 1/sqrt(qk_nope_head_dim + qk_rope_head_dim) = 1/sqrt(256) (no YaRN factor in its config).
MLA_CONFIGS = {
    "glm47-flash-mla": {"num_heads": 20, "kv_lora_rank": 512, "rope_dim": 64, "sm_scale": 256 ** -0.5},
}

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634
# Tests set this to fill the decode workspace (partial outputs, LSEs) with NaN, so a chunk the kernel
# forgot to write shows up in the result.
_POISON_WORKSPACE = False


@dataclasses.dataclass(frozen=True)
class PrefillConfig:
    """Launch configuration of the prefill kernel."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name}: expected a power of two >= 16, got {v}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps: expected 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages: expected >= 1, got {self.num_stages}")

    def label(self) -> str:
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Launch configuration of the decode kernels."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n: expected a power of two >= 16, got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps: expected 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"num_stages: expected >= 1, got {self.num_stages}")


def default_prefill_config(head_dim: int, device: torch.device) -> PrefillConfig:
    """Fixed per head dim. On GPU: 128-row query tiles, 64-row K/V tiles; 3 stages (K+V tiles x 3 stages +
    the Q tile: 128 KiB of shared memory at D=128, inside the 227 KiB of an H100/H200), 2 at D=256 (192 KiB;
    sm_90 compiles of these configs use 184-255 registers per thread without spilling). Under the
    interpreter: small tiles, so tests stay fast while still crossing tile boundaries."""
    if device.type != "cuda":
        return PrefillConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
    if head_dim <= 64:
        return PrefillConfig(block_m=128, block_n=64, num_warps=4, num_stages=3)
    if head_dim <= 128:
        return PrefillConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return PrefillConfig(block_m=128, block_n=64, num_warps=8, num_stages=2)


def default_decode_config(head_dim: int, device: torch.device) -> DecodeConfig:
    if device.type != "cuda":
        return DecodeConfig(block_n=16, num_warps=1, num_stages=1)
    return DecodeConfig(block_n=64, num_warps=4, num_stages=3 if head_dim <= 64 else 2)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def merge_min_chunk(rows: int, out_dim: int, kv_bytes_per_token: int, block_n: int, budget: float = 0.1) -> int:
    """Shortest split-K chunk (whole tiles, at least two) whose fp32 partial outputs, written and read back by
    the merge (``rows * out_dim * 8`` bytes per program), stay within ``budget`` of the K/V bytes the chunk
    reads (``kv_bytes_per_token`` per token). GLM-4.7-Flash MLA (20 rows x 512, 1152 B/token): 736 tokens;
    the GQA stand-in (10 rows x 128, 512 B/token per KV head): 256."""
    tokens = rows * out_dim * 8 / (budget * kv_bytes_per_token)
    return max(2 * block_n, -(-int(math.ceil(tokens)) // block_n) * block_n)


def choose_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, block_n: int,
                      device: torch.device, min_chunk: int | None = None) -> int:
    """Chunks per sequence: enough (batch, KV head, chunk) programs for about two waves of the GPU's SMs, but
    no chunk shorter than ``min_chunk`` (default two tiles; the launchers pass :func:`merge_min_chunk`, so the
    merge's traffic stays small beside the cache's), and at most 128. Off CUDA a stand-in of 4 SMs keeps
    several chunks in play for tests."""
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    want = -(-2 * sms // max(1, batch * num_kv_heads))
    most = max(1, -(-max_seq_len // (min_chunk or 2 * block_n)))
    return int(max(1, min(want, most, 128)))


def decode_num_splits(batch: int, num_heads: int, num_kv_heads: int, head_dim: int, elem_size: int,
                      max_seq_len: int, block_n: int, device: torch.device) -> int:
    """The chunk count the GQA decode launcher picks when none is given (before :func:`split_plan`)."""
    min_chunk = merge_min_chunk(num_heads // num_kv_heads, head_dim, 2 * head_dim * elem_size, block_n)
    return choose_num_splits(batch, num_kv_heads, max_seq_len, block_n, device, min_chunk)


def mla_decode_num_splits(batch: int, num_heads: int, kv_lora_rank: int, rope_dim: int, elem_size: int,
                          max_seq_len: int, block_n: int, device: torch.device) -> int:
    """The chunk count the MLA decode launcher picks when none is given (before :func:`split_plan`)."""
    min_chunk = merge_min_chunk(num_heads, kv_lora_rank, (kv_lora_rank + rope_dim) * elem_size, block_n)
    return choose_num_splits(batch, 1, max_seq_len, block_n, device, min_chunk)


def split_plan(max_seq_len: int, num_splits: int, block_n: int) -> tuple[int, int]:
    """(chunk length, chunks actually launched) for splitting ``max_seq_len`` positions into about
    ``num_splits`` chunks of whole K/V tiles; chunks that would start past ``max_seq_len`` are dropped."""
    max_seq_len = max(1, max_seq_len)
    chunk = -(-max_seq_len // max(1, num_splits))
    chunk = -(-chunk // block_n) * block_n
    return chunk, -(-max_seq_len // chunk)


def attention_flops(batch: int, num_heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool) -> int:
    """Useful FLOPs of attention: 2*D per (query, key) pair for QK^T and 2*D for PV, counting only the
    pairs the mask lets through (bottom-right causal alignment)."""
    if causal:
        if seqlen_q > seqlen_k:
            raise ValueError(f"seqlen_q: causal attention needs seqlen_q <= seqlen_k, got {seqlen_q} > {seqlen_k}")
        # row i sees off + i + 1 keys (off = Sk - Sq)
        pairs = seqlen_q * (seqlen_k - seqlen_q + 1) + seqlen_q * (seqlen_q - 1) // 2
    else:
        pairs = seqlen_q * seqlen_k
    return 4 * batch * num_heads * head_dim * pairs


def decode_bytes(seq_lens, num_heads: int, num_kv_heads: int, head_dim: int, elem_size: int) -> int:
    """Bytes a decode step must move: K and V of every cached token (the floor), plus q in and out."""
    tokens = int(sum(int(s) for s in seq_lens))
    batch = len(seq_lens)
    return 2 * tokens * num_kv_heads * head_dim * elem_size + 2 * batch * num_heads * head_dim * elem_size


# ----------------------------------------------------------------- checks

def _check_tensor(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")


def _check_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def _check_prefill(q, k, v, causal) -> None:
    _check_tensor("q", q, 4)
    _check_tensor("k", k, 4)
    _check_tensor("v", v, 4)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected the dtype of q ({q.dtype}), got {k.dtype} and {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"k, v: expected tensors on {q.device}, got {k.device} and {v.device}")
    B, Hq, Sq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k: expected shape [B={B}, Hkv, Sk, D={D}], got {tuple(k.shape)}")
    Hkv, Sk = k.shape[1], k.shape[2]
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"k: num_kv_heads ({Hkv}) must divide num_heads of q ({Hq})")
    if Sk < 1:
        raise ValueError("k: expected at least one key (Sk >= 1)")
    if causal and Sq > Sk:
        raise ValueError(f"q: causal attention (bottom-right aligned) needs Sq <= Sk, got Sq={Sq} > Sk={Sk}")


def _check_decode(q, k_cache, v_cache, seq_lens) -> None:
    _check_tensor("q", q, 3)
    _check_tensor("k_cache", k_cache, 4)
    _check_tensor("v_cache", v_cache, 4)
    _check_tensor("seq_lens", seq_lens, 1)
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_float(name, t)
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"k_cache, v_cache: expected the dtype of q ({q.dtype}), got {k_cache.dtype} and "
                        f"{v_cache.dtype}")
    if seq_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"seq_lens: expected int32 or int64, got {seq_lens.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens)):
        if t.device != q.device:
            raise ValueError(f"{name}: expected a tensor on {q.device}, got {t.device}")
    B, Hq, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k_cache.shape)}, got "
                         f"{tuple(v_cache.shape)}")
    if k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(f"k_cache: expected shape [B={B}, Hkv, S_max, D={D}], got {tuple(k_cache.shape)}")
    Hkv = k_cache.shape[1]
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"k_cache: num_kv_heads ({Hkv}) must divide num_heads of q ({Hq})")
    if seq_lens.shape[0] != B:
        raise ValueError(f"seq_lens: expected {B} lengths (one per sequence), got {seq_lens.shape[0]}")


def unsupported_reason(q: torch.Tensor, head_dims: tuple | None = SUPPORTED_HEAD_DIMS) -> str | None:
    """Why the Triton kernels cannot take ``q`` (None when they can); ``head_dims=None`` skips the head-dim check."""
    if not triton_enabled_for(q.device):
        return f"Triton cannot run on {q.device} here (CUDA, or CPU with TRITON_INTERPRET=1)"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (the kernels take float16 or bfloat16)"
    if head_dims is not None and q.shape[-1] not in head_dims:
        return f"head_dim {q.shape[-1]} (the kernels take {head_dims})"
    return None


def path_label(device: torch.device) -> str | None:
    """How the Triton kernels run on ``device``: ``"triton"`` (compiled, CUDA), ``"triton-interpreter"``
    (CPU under TRITON_INTERPRET=1: correct but orders of magnitude slow), or None (they cannot run)."""
    if not triton_enabled_for(device):
        return None
    return "triton" if device.type == "cuda" else "triton-interpreter"


def _scale(sm_scale, head_dim) -> float:
    if sm_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)) or not math.isfinite(sm_scale) \
            or sm_scale <= 0:
        raise ValueError(f"sm_scale: expected a finite positive float or None, got {sm_scale!r}")
    return float(sm_scale)


def _mla_scale(sm_scale) -> float:
    if sm_scale is None:  # the model's scale (qk head dim, YaRN factor) is not recoverable from the shapes
        raise ValueError("sm_scale: expected the model's logit scale (GLM-4.7-Flash: 1/sqrt(256)), got None")
    return _scale(sm_scale, 1)


# ----------------------------------------------------------------- torch references

def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale [+ bottom-right causal mask]) v, computed in fp32 (fp64 for fp64 inputs),
    returned in q's dtype. Shapes as :func:`attention`."""
    _check_prefill(q, k, v, causal)
    scale = _scale(sm_scale, q.shape[-1])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    kf = k.to(acc).repeat_interleave(group, dim=1)
    vf = v.to(acc).repeat_interleave(group, dim=1)
    scores = torch.matmul(q.to(acc), kf.transpose(-1, -2)) * scale
    if causal:
        sq, sk = q.shape[2], k.shape[2]
        rows = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        cols = torch.arange(sk, device=q.device)[None, :]
        scores = scores.masked_fill(cols > rows, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), vf).to(q.dtype)


def decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               seq_lens: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
    """One query token per sequence against the first ``seq_lens[b]`` cached positions, fp32 softmax (fp64
    for fp64 inputs); a sequence of length 0 gives zeros. Shapes as :func:`decode_attention`."""
    _check_decode(q, k_cache, v_cache, seq_lens)
    scale = _scale(sm_scale, q.shape[-1])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, Hq, D = q.shape
    group = Hq // k_cache.shape[1]
    lens = [min(int(n), k_cache.shape[2]) for n in seq_lens.tolist()]
    if any(n < 0 for n in lens):
        raise ValueError(f"seq_lens: expected lengths >= 0, got {seq_lens.tolist()}")
    out = torch.zeros(B, Hq, D, dtype=acc, device=q.device)
    for b, n in enumerate(lens):
        if n == 0:
            continue
        kb = k_cache[b, :, :n].to(acc).repeat_interleave(group, dim=0)  # [Hq, n, D]
        vb = v_cache[b, :, :n].to(acc).repeat_interleave(group, dim=0)
        scores = torch.einsum("hd,hnd->hn", q[b].to(acc), kb) * scale
        out[b] = torch.einsum("hn,hnd->hd", torch.softmax(scores, dim=-1), vb)
    return out.to(q.dtype)


def _check_mla(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens) -> None:
    _check_tensor("q_nope", q_nope, 3)
    _check_tensor("q_rope", q_rope, 3)
    _check_tensor("ckv_cache", ckv_cache, 3)
    _check_tensor("kpe_cache", kpe_cache, 3)
    _check_tensor("seq_lens", seq_lens, 1)
    for name, t in (("q_nope", q_nope), ("q_rope", q_rope), ("ckv_cache", ckv_cache), ("kpe_cache", kpe_cache)):
        _check_float(name, t)
        if t.dtype != q_nope.dtype:
            raise TypeError(f"{name}: expected the dtype of q_nope ({q_nope.dtype}), got {t.dtype}")
    for name, t in (("q_rope", q_rope), ("ckv_cache", ckv_cache), ("kpe_cache", kpe_cache), ("seq_lens", seq_lens)):
        if t.device != q_nope.device:
            raise ValueError(f"{name}: expected a tensor on {q_nope.device}, got {t.device}")
    if seq_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"seq_lens: expected int32 or int64, got {seq_lens.dtype}")
    B, H, R = q_nope.shape
    P = q_rope.shape[2]
    if q_rope.shape[:2] != (B, H):
        raise ValueError(f"q_rope: expected shape [B={B}, H={H}, P], got {tuple(q_rope.shape)}")
    if ckv_cache.shape[0] != B or ckv_cache.shape[2] != R:
        raise ValueError(f"ckv_cache: expected shape [B={B}, S_max, R={R}], got {tuple(ckv_cache.shape)}")
    if kpe_cache.shape != (B, ckv_cache.shape[1], P):
        raise ValueError(f"kpe_cache: expected shape [B={B}, S_max={ckv_cache.shape[1]}, P={P}], got "
                         f"{tuple(kpe_cache.shape)}")
    if seq_lens.shape[0] != B:
        raise ValueError(f"seq_lens: expected {B} lengths (one per sequence), got {seq_lens.shape[0]}")


def mla_decode_reference(q_nope: torch.Tensor, q_rope: torch.Tensor, ckv_cache: torch.Tensor,
                         kpe_cache: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Absorbed-MLA decode in fp32 (fp64 for fp64 inputs): softmax((q_nope . ckv + q_rope . kpe) * scale) ckv
    over the first ``seq_lens[b]`` positions; zeros for a sequence of length 0. Shapes as
    :func:`mla_decode_attention`."""
    _check_mla(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens)
    scale = _mla_scale(sm_scale)
    acc = torch.float64 if q_nope.dtype == torch.float64 else torch.float32
    B, H, R = q_nope.shape
    lens = [min(int(n), ckv_cache.shape[1]) for n in seq_lens.tolist()]
    if any(n < 0 for n in lens):
        raise ValueError(f"seq_lens: expected lengths >= 0, got {seq_lens.tolist()}")
    out = torch.zeros(B, H, R, dtype=acc, device=q_nope.device)
    for b, n in enumerate(lens):
        if n == 0:
            continue
        ckv = ckv_cache[b, :n].to(acc)
        scores = (q_nope[b].to(acc) @ ckv.T + q_rope[b].to(acc) @ kpe_cache[b, :n].to(acc).T) * scale
        out[b] = torch.softmax(scores, dim=-1) @ ckv
    return out.to(q_nope.dtype)


def mla_decode_bytes(seq_lens, num_heads: int, kv_lora_rank: int, rope_dim: int, elem_size: int) -> int:
    """Bytes an absorbed-MLA decode step must move: one latent + rope row per cached token (read once for
    all heads), plus the queries in and the latent outputs back."""
    tokens = int(sum(int(s) for s in seq_lens))
    batch = len(seq_lens)
    return (tokens * (kv_lora_rank + rope_dim)
            + batch * num_heads * (2 * kv_lora_rank + rope_dim)) * elem_size


# ----------------------------------------------------------------- Triton kernels

try:
    import triton
    import triton.language as tl
    _HAVE_TRITON = True
except ImportError:  # the torch reference path still works
    _HAVE_TRITON = False

if _HAVE_TRITON:

    @triton.jit
    def _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        lo, hi, q_pos, offs_n, offs_d, seqlen_k, qk_scale,
                        BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                        DOT_F32: tl.constexpr):
        """Online-softmax update over key tiles [lo, hi). MASKED tiles check key bounds (and causality)."""
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            kt_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd     # [D, BLOCK_N]
            v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd      # [BLOCK_N, D]
            if MASKED:
                in_k = cols < seqlen_k
                kt = tl.load(kt_ptrs, mask=in_k[None, :], other=0.0)
            else:
                kt = tl.load(kt_ptrs)
            if DOT_F32:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt) * qk_scale  # fp32 [BLOCK_M, BLOCK_N], base-2 logits
            if MASKED:
                keep = in_k[None, :]
                if CAUSAL:
                    keep = keep & (cols[None, :] <= q_pos[:, None])
                s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if MASKED:
                vt = tl.load(v_ptrs, mask=in_k[:, None], other=0.0)
            else:
                vt = tl.load(v_ptrs)
            if DOT_F32:
                acc = tl.dot(p.to(vt.dtype).to(tl.float32), vt.to(tl.float32), acc)
            else:
                acc = tl.dot(p.to(vt.dtype), vt, acc)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(Q, K, V, Out,
                         stride_qb, stride_qh, stride_qs, stride_qd,
                         stride_kb, stride_kh, stride_ks, stride_kd,
                         stride_vb, stride_vh, stride_vs, stride_vd,
                         stride_ob, stride_oh, stride_os, stride_od,
                         num_heads, seqlen_q, seqlen_k, qk_scale,
                         GROUP: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr):
        """Out[b, h, i, :] = softmax_j(Q[b, h, i] . K[b, h // GROUP, j] * scale) V[b, h // GROUP, j].

        Q, Out: [B, Hq, Sq, HEAD_DIM]; K, V: [B, Hq // GROUP, Sk, HEAD_DIM]; all addressed through the given
        (batch, head, seq, dim) strides. qk_scale = sm_scale * log2(e). Grid: (cdiv(Sq, BLOCK_M), B * Hq).
        Causal: query blocks are taken last-first, so the longest rows start first and the short ones fill
        the tail of the launch.
        """
        if CAUSAL:
            pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // num_heads).to(tl.int64)
        h = pid_bh % num_heads
        kvh = (h // GROUP).to(tl.int64)
        h = h.to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=offs_m[:, None] < seqlen_q, other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        k_base = K + b * stride_kb + kvh * stride_kh
        v_base = V + b * stride_vb + kvh * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            q_pos = offs_m + (seqlen_k - seqlen_q)         # absolute position of each query row
            first_pos = pid_m * BLOCK_M + (seqlen_k - seqlen_q)
            hi = tl.minimum(seqlen_k, first_pos + BLOCK_M)  # last row of the tile sees keys < hi
            full_hi = (tl.minimum(first_pos + 1, seqlen_k) // BLOCK_N) * BLOCK_N  # seen by every row
        else:
            q_pos = offs_m
            hi = seqlen_k
            full_hi = (seqlen_k // BLOCK_N) * BLOCK_N
        # Tiles every row sees in full (no mask), then the diagonal / ragged tail with masks. The first
        # tile processed always holds key 0, visible to every row, so m_i is finite after it.
        acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd, stride_vs,
                                        stride_vd, 0, full_hi, q_pos, offs_n, offs_d, seqlen_k, qk_scale,
                                        BLOCK_N, False, CAUSAL, DOT_F32)
        acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_kd, stride_vs,
                                        stride_vd, full_hi, hi, q_pos, offs_n, offs_d, seqlen_k, qk_scale,
                                        BLOCK_N, True, CAUSAL, DOT_F32)
        out = acc / l_i[:, None]
        o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < seqlen_q)

    @triton.jit
    def _decode_split_kernel(Q, K, V, SeqLens, PartO, PartLse,
                             stride_qb, stride_qh, stride_qd,
                             stride_kb, stride_kh, stride_ks, stride_kd,
                             stride_vb, stride_vh, stride_vs, stride_vd,
                             stride_pob, stride_poh, stride_pos, stride_pod,
                             stride_plb, stride_plh, stride_pls,
                             capacity, chunk, qk_scale,
                             GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                             BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, WRITE_LSE: tl.constexpr):
        """Partial attention of the GROUP query heads of one KV head over one chunk of one sequence.

        Q: [B, Hq, HEAD_DIM]; K, V: [B, Hkv, capacity, HEAD_DIM] (any strides); SeqLens: [B];
        PartO: [B, Hq, num_splits, HEAD_DIM] fp32 (normalized within the chunk); PartLse: [B, Hq, num_splits]
        fp32, base-2 log-sum-exp of the chunk's logits (-inf for an empty chunk).
        Grid: (B, Hkv, num_splits); chunk is a multiple of BLOCK_N. With one chunk (WRITE_LSE=False) PartO is
        the output itself ([B, Hq, HEAD_DIM] in q's dtype, stride_pos unused) and no merge is needed.
        """
        b = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1).to(tl.int64)
        split = tl.program_id(2)
        seq_len = tl.minimum(tl.load(SeqLens + b).to(tl.int32), capacity)
        start = split * chunk
        end = tl.minimum(start + chunk, seq_len)

        offs_g = tl.arange(0, GROUP_PAD)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        heads = kvh * GROUP + offs_g
        g_mask = offs_g < GROUP
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                    mask=g_mask[:, None], other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        k_base = K + b * stride_kb + kvh * stride_kh
        v_base = V + b * stride_vb + kvh * stride_vh

        m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        for start_n in range(start, end, BLOCK_N):
            cols = start_n + offs_n
            in_k = cols < end
            kt = tl.load(k_base + cols[None, :].to(tl.int64) * stride_ks + offs_d[:, None] * stride_kd,
                         mask=in_k[None, :], other=0.0)
            if DOT_F32:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt) * qk_scale
            s = tl.where(in_k[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            vt = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vs + offs_d[None, :] * stride_vd,
                         mask=in_k[:, None], other=0.0)
            if DOT_F32:
                acc = tl.dot(p.to(vt.dtype).to(tl.float32), vt.to(tl.float32), acc)
            else:
                acc = tl.dot(p.to(vt.dtype), vt, acc)
            m_i = m_new
        nonempty = l_i > 0
        out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
        lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
        tl.store(PartO + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos
                 + offs_d[None, :] * stride_pod, out.to(PartO.dtype.element_ty), mask=g_mask[:, None])
        if WRITE_LSE:
            tl.store(PartLse + b * stride_plb + heads * stride_plh + split * stride_pls, lse, mask=g_mask)

    @triton.jit
    def _decode_combine_kernel(PartO, PartLse, Out,
                               stride_pob, stride_poh, stride_pos, stride_pod,
                               stride_plb, stride_plh, stride_pls,
                               stride_ob, stride_oh, stride_od,
                               num_splits,
                               BLOCK_D: tl.constexpr, SPLITS_PAD: tl.constexpr):
        """Out[b, h] = sum_s w_s PartO[b, h, s] / sum_s w_s with w_s = 2^(lse_s - max lse); 0 if all empty.
        Grid: (B, Hq, head_dim // BLOCK_D): each program merges BLOCK_D columns (SPLITS_PAD x BLOCK_D partials
        in registers)."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        offs_s = tl.arange(0, SPLITS_PAD)
        offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        s_mask = offs_s < num_splits
        lse = tl.load(PartLse + b * stride_plb + h * stride_plh + offs_s * stride_pls, mask=s_mask,
                      other=float("-inf"))
        lse_max = tl.max(lse, 0)
        lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
        w = tl.exp2(lse - lse_max)
        w = tl.where(s_mask & (lse > float("-inf")), w, 0.0)
        po = tl.load(PartO + b * stride_pob + h * stride_poh + offs_s[:, None] * stride_pos
                     + offs_d[None, :] * stride_pod, mask=(w > 0)[:, None], other=0.0)
        total = tl.sum(w, 0)
        out = tl.sum(po * w[:, None], 0) / tl.where(total > 0, total, 1.0)
        tl.store(Out + b * stride_ob + h * stride_oh + offs_d * stride_od, out.to(Out.dtype.element_ty))


    @triton.jit
    def _mla_decode_split_kernel(QN, QR, CKV, KPE, SeqLens, PartO, PartLse,
                                 stride_qnb, stride_qnh, stride_qnd,
                                 stride_qrb, stride_qrh, stride_qrd,
                                 stride_cb, stride_cs, stride_cd,
                                 stride_kb, stride_ks, stride_kd,
                                 stride_pob, stride_poh, stride_pos, stride_pod,
                                 stride_plb, stride_plh, stride_pls,
                                 num_heads, capacity, chunk, qk_scale,
                                 HEADS_PAD: tl.constexpr, LATENT: tl.constexpr, ROPE: tl.constexpr,
                                 BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, WRITE_LSE: tl.constexpr):
        """Absorbed-MLA partial attention of all heads of one sequence over one chunk of its cache.

        QN: [B, H, LATENT], QR: [B, H, ROPE]; CKV: [B, capacity, LATENT] (keys' latent part and the values),
        KPE: [B, capacity, ROPE]; logits = (QN . CKV + QR . KPE) * scale. Each CKV tile is loaded once and
        used twice (for the logits, transposed, and as the values). PartO/PartLse as in _decode_split_kernel
        (PartO [B, H, splits, LATENT]); with WRITE_LSE=False PartO is the output [B, H, LATENT].
        Grid: (B, num_splits).
        """
        b = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        seq_len = tl.minimum(tl.load(SeqLens + b).to(tl.int32), capacity)
        start = split * chunk
        end = tl.minimum(start + chunk, seq_len)
        offs_h = tl.arange(0, HEADS_PAD)
        h_mask = offs_h < num_heads
        offs_c = tl.arange(0, LATENT)
        offs_r = tl.arange(0, ROPE)
        offs_n = tl.arange(0, BLOCK_N)
        qn = tl.load(QN + b * stride_qnb + offs_h[:, None] * stride_qnh + offs_c[None, :] * stride_qnd,
                     mask=h_mask[:, None], other=0.0)
        qr = tl.load(QR + b * stride_qrb + offs_h[:, None] * stride_qrh + offs_r[None, :] * stride_qrd,
                     mask=h_mask[:, None], other=0.0)
        if DOT_F32:
            qn = qn.to(tl.float32)
            qr = qr.to(tl.float32)
        m_i = tl.full([HEADS_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([HEADS_PAD], dtype=tl.float32)
        acc = tl.zeros([HEADS_PAD, LATENT], dtype=tl.float32)
        for start_n in range(start, end, BLOCK_N):
            cols = start_n + offs_n
            in_k = cols < end
            ckv = tl.load(CKV + b * stride_cb + cols[:, None].to(tl.int64) * stride_cs + offs_c[None, :] * stride_cd,
                          mask=in_k[:, None], other=0.0)                                   # [BLOCK_N, LATENT]
            kpe_t = tl.load(KPE + b * stride_kb + cols[None, :].to(tl.int64) * stride_ks
                            + offs_r[:, None] * stride_kd, mask=in_k[None, :], other=0.0)  # [ROPE, BLOCK_N]
            if DOT_F32:
                s = tl.dot(qr, kpe_t.to(tl.float32), tl.dot(qn, tl.trans(ckv.to(tl.float32))))
            else:
                s = tl.dot(qr, kpe_t, tl.dot(qn, tl.trans(ckv)))
            s = tl.where(in_k[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if DOT_F32:
                acc = tl.dot(p.to(ckv.dtype).to(tl.float32), ckv.to(tl.float32), acc)
            else:
                acc = tl.dot(p.to(ckv.dtype), ckv, acc)
            m_i = m_new
        nonempty = l_i > 0
        out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
        lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
        tl.store(PartO + b * stride_pob + offs_h[:, None] * stride_poh + split * stride_pos
                 + offs_c[None, :] * stride_pod, out.to(PartO.dtype.element_ty), mask=h_mask[:, None])
        if WRITE_LSE:
            tl.store(PartLse + b * stride_plb + offs_h * stride_plh + split * stride_pls, lse, mask=h_mask)


def _get_kernels() -> dict:
    if not _HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    return {"prefill": _attn_fwd_kernel, "decode_split": _decode_split_kernel,
            "decode_combine": _decode_combine_kernel, "mla_decode_split": _mla_decode_split_kernel}


def _dot_in_fp32(q: torch.Tensor) -> bool:
    """The Triton interpreter (3.9) computes tl.dot of bfloat16 operands wrongly (numpy has no bf16), so under
    TRITON_INTERPRET the bf16 operands are widened to fp32 before each dot: exact, since a bf16 product fits
    in fp32, and P is still rounded to bf16 first. On the GPU the dots take bf16 operands directly."""
    return q.dtype == torch.bfloat16 and q.device.type == "cpu" and triton_interpret()


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _check_int32_span(name: str, t: torch.Tensor) -> None:
    """The prefill kernel forms (seq, dim) offsets within one (batch, head) slice in int32."""
    if (t.shape[2] - 1) * abs(t.stride(2)) + (t.shape[3] - 1) * abs(t.stride(3)) >= 2 ** 31:
        raise ValueError(f"{name}: one (batch, head) slice spans 2^31 elements or more with strides "
                         f"{t.stride()}; use a layout with a smaller sequence stride")


def _check_triton(q: torch.Tensor) -> None:
    reason = unsupported_reason(q)
    if reason is not None:
        raise ValueError(f"q: the Triton attention kernels cannot take this input: {reason}")


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           sm_scale: float | None = None, *, config: PrefillConfig | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the prefill kernel (shapes and semantics as :func:`attention`). ``out`` (optional, shape and
    dtype of q) is written in place."""
    _check_prefill(q, k, v, causal)
    _check_triton(q)
    scale = _scale(sm_scale, q.shape[-1])
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if out is None:
        out = torch.empty(B, Hq, Sq, D, dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out: expected a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if B == 0 or Sq == 0:
        return out
    for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
        _check_int32_span(name, t)
    cfg = config or default_prefill_config(D, q.device)
    grid = (-(-Sq // cfg.block_m), B * Hq)
    _get_kernels()["prefill"][grid](
        q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        Hq, Sq, Sk, scale * _LOG2E,
        GROUP=Hq // Hkv, CAUSAL=bool(causal), HEAD_DIM=D, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        DOT_F32=_dot_in_fp32(q),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            seq_lens: torch.Tensor, sm_scale: float | None = None, *,
                            max_seq_len: int | None = None, num_splits: int | None = None,
                            config: DecodeConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the two decode kernels (shapes and semantics as :func:`decode_attention`).

    ``max_seq_len`` (an upper bound of ``seq_lens``, host int) sizes the chunks; when None it is read from
    ``seq_lens`` (a device sync, which CUDA-graph capture does not allow: pass it there). Lengths above the
    cache capacity are clamped to it inside the kernel.
    """
    _check_decode(q, k_cache, v_cache, seq_lens)
    _check_triton(q)
    scale = _scale(sm_scale, q.shape[-1])
    B, Hq, D = q.shape
    Hkv, capacity = k_cache.shape[1], k_cache.shape[2]
    out = _decode_output(out, q)
    if B == 0:
        return out
    max_seq_len = _clamped_max_seq_len(max_seq_len, seq_lens, capacity)
    cfg = config or default_decode_config(D, q.device)
    if num_splits is None:
        num_splits = decode_num_splits(B, Hq, Hkv, D, q.element_size(), max_seq_len, cfg.block_n, q.device)
    chunk, num_splits = split_plan(max_seq_len, _checked_num_splits(num_splits), cfg.block_n)
    group = Hq // Hkv
    kernels = _get_kernels()
    consts = dict(GROUP=group, GROUP_PAD=max(16, _next_pow2(group)), HEAD_DIM=D, BLOCK_N=cfg.block_n,
                  DOT_F32=_dot_in_fp32(q), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if num_splits == 1:  # one chunk: normalize and write the output directly, no merge kernel
        kernels["decode_split"][(B, Hkv, 1)](
            q, k_cache, v_cache, seq_lens, out, out,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), out.stride(0), out.stride(1), 0, out.stride(2),
            0, 0, 0, capacity, chunk, scale * _LOG2E, WRITE_LSE=False, **consts)
        return out
    part_o, part_lse = _split_workspace(B, Hq, num_splits, D, q.device)
    kernels["decode_split"][(B, Hkv, num_splits)](
        q, k_cache, v_cache, seq_lens, part_o, part_lse,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *part_o.stride(), *part_lse.stride(),
        capacity, chunk, scale * _LOG2E, WRITE_LSE=True, **consts)
    _merge_splits(part_o, part_lse, out, num_splits)
    return out


def _decode_output(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """The decode output: a new tensor like ``q``, or the caller's ``out`` after checking it matches."""
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out: expected a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    return out


def _clamped_max_seq_len(max_seq_len, seq_lens: torch.Tensor, capacity: int) -> int:
    """``max_seq_len`` (read from ``seq_lens`` when None: a device sync), checked, clamped to [1, capacity]."""
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max().item())
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 0:
        raise ValueError(f"max_seq_len: expected an int >= 0, got {max_seq_len!r}")
    return max(1, min(max_seq_len, capacity))


def _checked_num_splits(num_splits) -> int:
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits: expected an int >= 1, got {num_splits!r}")
    return num_splits


def _split_workspace(B: int, H: int, num_splits: int, D: int, device: torch.device):
    """fp32 partial outputs ``[B, H, splits, D]`` and log-sum-exps ``[B, H, splits]`` of a split decode
    (NaN-filled under ``_POISON_WORKSPACE``, so a partial the kernel never wrote shows up)."""
    part_o = torch.empty(B, H, num_splits, D, dtype=torch.float32, device=device)
    part_lse = torch.empty(B, H, num_splits, dtype=torch.float32, device=device)
    if _POISON_WORKSPACE:
        part_o.fill_(float("nan"))
        part_lse.fill_(float("nan"))
    return part_o, part_lse


def _merge_splits(part_o: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor, num_splits: int) -> None:
    """Launch the merge of ``num_splits`` partial outputs ``part_o [B, H, splits, D]`` into ``out [B, H, D]``."""
    B, H, _, D = part_o.shape
    splits_pad = max(2, _next_pow2(num_splits))
    block_d = min(D, max(16, 8192 // splits_pad))  # at most 8192 partial values in flight per program
    _get_kernels()["decode_combine"][(B, H, D // block_d)](
        part_o, part_lse, out, *part_o.stride(), *part_lse.stride(), *out.stride(), num_splits,
        BLOCK_D=block_d, SPLITS_PAD=splits_pad, num_warps=4 if block_d * splits_pad >= 4096 else 2)


def default_mla_decode_config(kv_lora_rank: int, device: torch.device) -> DecodeConfig:
    """On GPU: 32-token tiles (a 512-wide latent tile is 32 KiB in fp16) and 8 warps for the
    [heads, kv_lora_rank] fp32 accumulator."""
    if device.type != "cuda":
        return DecodeConfig(block_n=16, num_warps=1, num_stages=1)
    return DecodeConfig(block_n=32, num_warps=8 if kv_lora_rank >= 256 else 4, num_stages=2)


def mla_decode_attention_triton(q_nope: torch.Tensor, q_rope: torch.Tensor, ckv_cache: torch.Tensor,
                                kpe_cache: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, *,
                                max_seq_len: int | None = None, num_splits: int | None = None,
                                config: DecodeConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the absorbed-MLA decode kernels (shapes and semantics as :func:`mla_decode_attention`)."""
    _check_mla(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens)
    reason = unsupported_reason(q_nope, head_dims=None)
    for name, t in (("q_nope", q_nope), ("q_rope", q_rope)):
        d = t.shape[2]
        if d < 16 or d & (d - 1):
            reason = reason or f"{name} width {d} (the MLA kernel takes powers of two >= 16)"
    if reason is not None:
        raise ValueError(f"q_nope: the Triton MLA decode kernel cannot take this input: {reason}")
    scale = _mla_scale(sm_scale)
    B, H, R = q_nope.shape
    P = q_rope.shape[2]
    capacity = ckv_cache.shape[1]
    out = _decode_output(out, q_nope)
    if B == 0:
        return out
    max_seq_len = _clamped_max_seq_len(max_seq_len, seq_lens, capacity)
    cfg = config or default_mla_decode_config(R, q_nope.device)
    if num_splits is None:
        num_splits = mla_decode_num_splits(B, H, R, P, q_nope.element_size(), max_seq_len, cfg.block_n,
                                           q_nope.device)
    chunk, num_splits = split_plan(max_seq_len, _checked_num_splits(num_splits), cfg.block_n)
    kernel = _get_kernels()["mla_decode_split"]
    args = (q_nope, q_rope, ckv_cache, kpe_cache, seq_lens)
    strides = (*q_nope.stride(), *q_rope.stride(), *ckv_cache.stride(), *kpe_cache.stride())
    consts = dict(HEADS_PAD=max(16, _next_pow2(H)), LATENT=R, ROPE=P, BLOCK_N=cfg.block_n,
                  DOT_F32=_dot_in_fp32(q_nope), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if num_splits == 1:
        kernel[(B, 1)](*args, out, out, *strides, out.stride(0), out.stride(1), 0, out.stride(2), 0, 0, 0,
                       H, capacity, chunk, scale * _LOG2E, WRITE_LSE=False, **consts)
        return out
    part_o, part_lse = _split_workspace(B, H, num_splits, R, q_nope.device)
    kernel[(B, num_splits)](*args, part_o, part_lse, *strides, *part_o.stride(), *part_lse.stride(),
                            H, capacity, chunk, scale * _LOG2E, WRITE_LSE=True, **consts)
    _merge_splits(part_o, part_lse, out, num_splits)
    return out


# ----------------------------------------------------------------- custom ops and public entries

@torch.library.custom_op("triton_marlin::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                  sm_scale: float) -> torch.Tensor:
    return flash_attention_triton(q, k, v, causal, sm_scale)


@_attention_op.register_fake
def _(q, k, v, causal, sm_scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.custom_op("triton_marlin::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                         sm_scale: float, max_seq_len: int, num_splits: int) -> torch.Tensor:
    return decode_attention_triton(q, k_cache, v_cache, seq_lens, sm_scale, max_seq_len=max_seq_len,
                                   num_splits=num_splits if num_splits > 0 else None)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, sm_scale, max_seq_len, num_splits):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def _use_triton(op: str, q: torch.Tensor, backend: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    reason = unsupported_reason(q)
    if reason is None:
        return True
    if backend == "triton":
        raise ValueError(f"backend='triton': {reason}")
    if not _compiling():
        dispatch.warn_fallback(op, f"{reason}; running the torch reference")
    return False


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              sm_scale: float | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention (prefill).

    Args:
        q: ``[B, Hq, Sq, D]``; k, v: ``[B, Hkv, Sk, D]`` with ``Hkv`` dividing ``Hq``; any strides.
        causal: bottom-right aligned causal mask (query i sees keys ``j <= Sk - Sq + i``; needs Sq <= Sk).
        sm_scale: logit scale, default ``1/sqrt(D)``.
        backend: ``auto`` (Triton where it runs, else the torch reference with a warning), ``triton``, ``torch``.

    Returns ``[B, Hq, Sq, D]`` in q's dtype. The path taken is recorded in :mod:`triton_marlin.dispatch`.
    """
    _check_prefill(q, k, v, causal)
    scale = _scale(sm_scale, q.shape[-1])
    if _use_triton("attention", q, backend):
        if _compiling():  # traced once: the custom op is what runs; dispatch's counters are host state
            return _attention_op(q, k, v, bool(causal), scale)
        dispatch.record("attention", "triton")
        return flash_attention_triton(q, k, v, causal, scale)
    if not _compiling():
        dispatch.record("attention", "torch")
    return attention_reference(q, k, v, causal, scale)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                     sm_scale: float | None = None, *, max_seq_len: int | None = None,
                     num_splits: int | None = None, backend: str = "auto") -> torch.Tensor:
    """Attention of one new query token per sequence over a KV cache.

    Args:
        q: ``[B, Hq, D]``.
        k_cache, v_cache: ``[B, Hkv, S_max, D]`` views (any strides: BHSD, BSHD, HBSD storage all work).
        seq_lens: ``[B]`` int32/int64 on q's device: how many cached positions each sequence attends to.
        sm_scale: logit scale, default ``1/sqrt(D)``.
        max_seq_len: host-side upper bound of ``seq_lens`` (sizes the split-K chunks; read from the tensor,
            with a device sync, when None).
        num_splits: chunks per sequence (default: chosen from the GPU's SM count, see :func:`choose_num_splits`).
        backend: ``auto``, ``triton`` or ``torch``.

    Returns ``[B, Hq, D]`` in q's dtype (zeros for a sequence of length 0).
    """
    _check_decode(q, k_cache, v_cache, seq_lens)
    scale = _scale(sm_scale, q.shape[-1])
    if _use_triton("decode_attention", q, backend):
        if _compiling():
            if max_seq_len is None:
                max_seq_len = k_cache.shape[2]
            return _decode_attention_op(q, k_cache, v_cache, seq_lens, scale, max_seq_len, num_splits or 0)
        dispatch.record("decode_attention", "triton")
        return decode_attention_triton(q, k_cache, v_cache, seq_lens, scale, max_seq_len=max_seq_len,
                                       num_splits=num_splits)
    if not _compiling():
        dispatch.record("decode_attention", "torch")
    return decode_attention_reference(q, k_cache, v_cache, seq_lens, scale)


@torch.library.custom_op("triton_marlin::mla_decode_attention", mutates_args=())
def _mla_decode_op(q_nope: torch.Tensor, q_rope: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
                   seq_lens: torch.Tensor, sm_scale: float, max_seq_len: int, num_splits: int) -> torch.Tensor:
    return mla_decode_attention_triton(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens, sm_scale,
                                       max_seq_len=max_seq_len, num_splits=num_splits if num_splits > 0 else None)


@_mla_decode_op.register_fake
def _(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens, sm_scale, max_seq_len, num_splits):
    return torch.empty(q_nope.shape, dtype=q_nope.dtype, device=q_nope.device)


def mla_decode_attention(q_nope: torch.Tensor, q_rope: torch.Tensor, ckv_cache: torch.Tensor,
                         kpe_cache: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float, *,
                         max_seq_len: int | None = None, num_splits: int | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Multi-head latent attention (DeepSeek-V2 / GLM-4.7-Flash) decode, with the key and value up-projections
    absorbed: every head attends over one shared cache row per token.

    Args:
        q_nope: ``[B, H, R]``: the no-rope query already multiplied by the key up-projection (R = kv_lora_rank).
        q_rope: ``[B, H, P]``: the rotary part of the query (P = qk_rope_head_dim).
        ckv_cache: ``[B, S_max, R]``: the compressed latent per token (keys' no-rope part and the values).
        kpe_cache: ``[B, S_max, P]``: the rotary key per token. Both may be views of one ``[B, S_max, R + P]``.
        seq_lens: ``[B]`` int32/int64 on the same device.
        sm_scale: the model's logit scale (GLM-4.7-Flash: 1/sqrt(256)).
        max_seq_len, num_splits, backend: as in :func:`decode_attention` (R and P: powers of two >= 16 for Triton).

    Returns ``[B, H, R]`` in q_nope's dtype: the attention output in latent space (the value up-projection
    applies next, outside this op). Zeros for a sequence of length 0.
    """
    _check_mla(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens)
    scale = _mla_scale(sm_scale)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
    reason = None
    if backend != "torch":
        reason = unsupported_reason(q_nope, head_dims=None)
        for name, t in (("q_nope", q_nope), ("q_rope", q_rope)):
            d = t.shape[2]
            if reason is None and (d < 16 or d & (d - 1)):
                reason = f"{name} width {d} (the MLA kernel takes powers of two >= 16)"
        if reason is None:
            if _compiling():
                return _mla_decode_op(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens, scale,
                                      max_seq_len if max_seq_len is not None else ckv_cache.shape[1],
                                      num_splits or 0)
            dispatch.record("mla_decode_attention", "triton")
            return mla_decode_attention_triton(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens, scale,
                                               max_seq_len=max_seq_len, num_splits=num_splits)
        if backend == "triton":
            raise ValueError(f"backend='triton': {reason}")
        if not _compiling():
            dispatch.warn_fallback("mla_decode_attention", f"{reason}; running the torch reference")
    if not _compiling():
        dispatch.record("mla_decode_attention", "torch")
    return mla_decode_reference(q_nope, q_rope, ckv_cache, kpe_cache, seq_lens, scale)

"""KV caches: GQA caches with a selectable memory layout and MLA latent caches; append (prefill and per token)
with a Triton kernel; prefill and decode attention over them.

Layouts (the order of the storage dimensions; B batch, H KV heads, S positions, D head dim):

* ``BHSD``: one sequence's positions of one head are contiguous: decode reads long contiguous runs per
  (batch, head); a per-token append writes B*H separate D-element rows.
* ``BSHD``: all heads of one position are contiguous: a per-token append writes one H*D run per sequence;
  decode reads D-element rows strided by H*D.
* ``HBSD``: head-major (what a per-head sharded cache looks like); contiguous runs as BHSD, heads outermost.

Whatever the layout, :meth:`KVCache.keys` / :meth:`KVCache.values` return the logical ``[B, H, S, D]`` view of
the storage (a permutation, no copy), and both the append kernel and the decode-attention kernel of
:mod:`triton_marlin.kernels.attention` address the storage through those strides.

:class:`LatentKVCache` holds multi-head latent attention caches (GLM-4.7-Flash, DeepSeek-V2): one
``[B, S_max, kv_lora_rank + rope_dim]`` tensor, no head dimension, read by the MLA decode kernel.

Lengths live twice: ``seq_lens`` (int32 on the cache's device, read by the kernels) and ``lengths`` (a host
list, for capacity checks and chunk sizing without a device sync). Both change only through the cache classes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import dispatch
from .device import triton_enabled_for
from .kernels.attention import attention, decode_attention, mla_decode_attention

__all__ = ["LAYOUTS", "KVCache", "LatentKVCache", "kv_append", "kv_append_reference", "kv_append_triton",
           "logical_view", "storage_shape"]

LAYOUTS = ("BHSD", "BSHD", "HBSD")
# storage dim order for each layout, as indices into the logical (B, H, S, D)
_ORDER = {"BHSD": (0, 1, 2, 3), "BSHD": (0, 2, 1, 3), "HBSD": (1, 0, 2, 3)}


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def storage_shape(layout: str, batch: int, heads: int, seq: int, dim: int) -> tuple[int, int, int, int]:
    """Shape of the storage tensor of ``layout`` for a logical ``[batch, heads, seq, dim]`` cache."""
    logical = (batch, heads, seq, dim)
    return tuple(logical[i] for i in _ORDER[_check_layout(layout)])


def logical_view(storage: torch.Tensor, layout: str) -> torch.Tensor:
    """The ``[B, H, S, D]`` view of a storage tensor of ``layout`` (no copy)."""
    order = _ORDER[_check_layout(layout)]
    inverse = [order.index(i) for i in range(4)]
    return storage.permute(*inverse)


# ----------------------------------------------------------------- append: torch reference and Triton kernel

def _check_append(k_cache, v_cache, k_new, v_new, seq_lens, num_new) -> None:
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected 4 dims [B, H, S or T, D], got shape {tuple(t.shape)}")
        if t.device != k_cache.device:
            raise ValueError(f"{name}: expected a tensor on {k_cache.device}, got {t.device}")
        if t.dtype != k_cache.dtype:
            raise TypeError(f"{name}: expected dtype {k_cache.dtype}, got {t.dtype}")
    # K and V rows may differ in width (an MLA cache: 512-wide latents beside 64-wide rope keys)
    if v_cache.shape[:3] != k_cache.shape[:3]:
        raise ValueError(f"v_cache: expected [B, H, S_max] = {tuple(k_cache.shape[:3])} like k_cache, got "
                         f"{tuple(v_cache.shape)}")
    B, H, _, D = k_cache.shape
    if k_new.shape[0] != B or k_new.shape[1] != H or k_new.shape[3] != D:
        raise ValueError(f"k_new: expected shape [B={B}, H={H}, T, D={D}], got {tuple(k_new.shape)}")
    if v_new.shape[:3] != k_new.shape[:3] or v_new.shape[3] != v_cache.shape[3]:
        raise ValueError(f"v_new: expected shape [{B}, {H}, {k_new.shape[2]}, {v_cache.shape[3]}], got "
                         f"{tuple(v_new.shape)}")
    for name, t in (("seq_lens", seq_lens), ("num_new", num_new)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"{name}: expected a 1-d tensor of {B} lengths")
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected int32 or int64, got {t.dtype}")
        if t.device != k_cache.device:
            raise ValueError(f"{name}: expected a tensor on {k_cache.device}, got {t.device}")


def kv_append_reference(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                        seq_lens: torch.Tensor, num_new: torch.Tensor | None = None) -> None:
    """Write ``k_new[b, :, t]`` / ``v_new[b, :, t]`` to position ``seq_lens[b] + t`` of the caches for
    ``t < num_new[b]`` (all T when None); positions at or past the capacity are dropped. Caches are logical
    ``[B, H, S_max, D]`` views, written in place; ``seq_lens`` is not changed."""
    _check_append(k_cache, v_cache, k_new, v_new, seq_lens, num_new)
    T, capacity = k_new.shape[2], k_cache.shape[2]
    starts = seq_lens.tolist()
    counts = num_new.tolist() if num_new is not None else [T] * len(starts)
    for b, (pos, n) in enumerate(zip(starts, counts)):
        n = max(0, min(int(n), T, capacity - int(pos)))
        if n:
            k_cache[b, :, pos:pos + n] = k_new[b, :, :n]
            v_cache[b, :, pos:pos + n] = v_new[b, :, :n]


try:
    import triton
    import triton.language as tl
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

if _HAVE_TRITON:
    @triton.jit
    def _kv_append_kernel(KNew, VNew, KCache, VCache, SeqLens, NumNew,
                          stride_knb, stride_knh, stride_knt, stride_knd,
                          stride_vnb, stride_vnh, stride_vnt, stride_vnd,
                          stride_kcb, stride_kch, stride_kcs, stride_kcd,
                          stride_vcb, stride_vch, stride_vcs, stride_vcd,
                          num_tokens, capacity,
                          HAS_NUM_NEW: tl.constexpr, DIM_K: tl.constexpr, DIM_V: tl.constexpr,
                          BLOCK_T: tl.constexpr):
        """KCache[b, h, SeqLens[b] + t] = KNew[b, h, t] (same for V) for t < NumNew[b] (or num_tokens) and
        SeqLens[b] + t < capacity. New: [B, H, T, DIM_K] and [B, H, T, DIM_V]; caches: [B, H, capacity, DIM_K]
        and [B, H, capacity, DIM_V]; any strides. Grid: (B, H, cdiv(T, BLOCK_T))."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_k = tl.arange(0, DIM_K)
        offs_v = tl.arange(0, DIM_V)
        start = tl.load(SeqLens + b)
        if HAS_NUM_NEW:
            n = tl.load(NumNew + b)
        else:
            n = num_tokens
        pos = (start + offs_t).to(tl.int64)
        keep = (offs_t < n) & (offs_t < num_tokens) & (pos < capacity)
        mask = keep[:, None]
        kn = tl.load(KNew + b * stride_knb + h * stride_knh + offs_t[:, None] * stride_knt
                     + offs_k[None, :] * stride_knd, mask=mask)
        vn = tl.load(VNew + b * stride_vnb + h * stride_vnh + offs_t[:, None] * stride_vnt
                     + offs_v[None, :] * stride_vnd, mask=mask)
        tl.store(KCache + b * stride_kcb + h * stride_kch + pos[:, None] * stride_kcs + offs_k[None, :] * stride_kcd,
                 kn, mask=mask)
        tl.store(VCache + b * stride_vcb + h * stride_vch + pos[:, None] * stride_vcs + offs_v[None, :] * stride_vcd,
                 vn, mask=mask)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def kv_append_triton(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                     seq_lens: torch.Tensor, num_new: torch.Tensor | None = None) -> None:
    """The Triton append kernel; semantics of :func:`kv_append_reference` (reads positions from the device
    ``seq_lens``: no host sync, capturable in a CUDA graph). K and V widths must be powers of two."""
    _check_append(k_cache, v_cache, k_new, v_new, seq_lens, num_new)
    if not _HAVE_TRITON or not triton_enabled_for(k_cache.device):
        raise ValueError(f"k_cache: the Triton append kernel cannot run on {k_cache.device} here")
    B, H, T, DK = k_new.shape
    DV = v_new.shape[3]
    if not (_pow2(DK) and _pow2(DV)):
        raise ValueError(f"k_new, v_new: the Triton append kernel needs power-of-two widths, got {DK} and {DV}")
    if B == 0 or T == 0:
        return
    block_t = min(64, max(1, 1 << (T - 1).bit_length()))
    grid = (B, H, -(-T // block_t))
    _kv_append_kernel[grid](
        k_new, v_new, k_cache, v_cache, seq_lens, num_new if num_new is not None else seq_lens,
        *k_new.stride(), *v_new.stride(), *k_cache.stride(), *v_cache.stride(), T, k_cache.shape[2],
        HAS_NUM_NEW=num_new is not None, DIM_K=DK, DIM_V=DV, BLOCK_T=block_t,
        num_warps=4 if block_t * (DK + DV) >= 4096 else 1)


def kv_append(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
              seq_lens: torch.Tensor, num_new: torch.Tensor | None = None, *, backend: str = "auto") -> None:
    """Append new K/V rows to logical ``[B, H, S_max, D]`` cache views (see :func:`kv_append_reference`).
    ``backend``: ``auto`` (Triton where it runs, else torch with a warning), ``triton`` or ``torch``."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: expected 'auto', 'triton' or 'torch', got {backend!r}")
    _check_append(k_cache, v_cache, k_new, v_new, seq_lens, num_new)
    if backend != "torch":
        reason = None
        if not _HAVE_TRITON or not triton_enabled_for(k_cache.device):
            reason = f"Triton cannot run on {k_cache.device} here (CUDA, or CPU with TRITON_INTERPRET=1)"
        elif not (_pow2(k_new.shape[3]) and _pow2(v_new.shape[3])):
            reason = f"widths {k_new.shape[3]} and {v_new.shape[3]} are not both powers of two"
        if reason is None:
            dispatch.record("kv_append", "triton")
            kv_append_triton(k_cache, v_cache, k_new, v_new, seq_lens, num_new)
            return
        if backend == "triton":
            raise ValueError(f"backend='triton': {reason}")
        dispatch.warn_fallback("kv_append", f"{reason}; running the torch reference")
    dispatch.record("kv_append", "torch")
    kv_append_reference(k_cache, v_cache, k_new, v_new, seq_lens, num_new)


# ----------------------------------------------------------------- the cache

class _Lengths:
    """Per-sequence lengths kept twice: ``seq_lens`` (int32 on the device, read by the kernels) and ``lengths``
    (host ints: capacity checks and chunk sizing without a device sync)."""

    def _init_lengths(self, batch_size: int, max_seq_len: int, device: torch.device) -> None:
        self.batch_size, self.max_seq_len, self.device = batch_size, max_seq_len, device
        self.seq_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.lengths: list[int] = [0] * batch_size

    def reset(self, lengths: Sequence[int] | None = None) -> None:
        """Set every sequence's length (default 0). Stored rows are kept; positions past a length are unused."""
        lengths = [0] * self.batch_size if lengths is None else [int(n) for n in lengths]
        if len(lengths) != self.batch_size or any(n < 0 or n > self.max_seq_len for n in lengths):
            raise ValueError(f"lengths: expected {self.batch_size} values in [0, {self.max_seq_len}], got {lengths}")
        self.lengths = lengths
        self.seq_lens.copy_(torch.tensor(lengths, dtype=torch.int32))

    def _plan_append(self, T: int, num_new, what: str):
        """Validated per-sequence counts (host list) and their device tensor (None when all are T)."""
        counts = [T] * self.batch_size if num_new is None else [int(n) for n in num_new]
        if len(counts) != self.batch_size or any(n < 0 or n > T for n in counts):
            raise ValueError(f"num_new: expected {self.batch_size} counts in [0, {T}], got {list(num_new)}")
        over = [b for b, (n, c) in enumerate(zip(self.lengths, counts)) if n + c > self.max_seq_len]
        if over:
            raise ValueError(f"{what}: appending overflows max_seq_len={self.max_seq_len} for sequences {over} "
                             f"(lengths {[self.lengths[b] for b in over]} + {[counts[b] for b in over]})")
        num_new_t = None
        if num_new is not None:
            num_new_t = torch.tensor(counts, dtype=torch.int32).to(self.device, non_blocking=True)
        return counts, num_new_t

    def _commit_append(self, T: int, counts, num_new_t) -> None:
        if num_new_t is None:
            self.seq_lens += T
        else:
            self.seq_lens += num_new_t
        self.lengths = [n + c for n, c in zip(self.lengths, counts)]


def _check_sizes(**sizes) -> None:
    for name, val in sizes.items():
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {val!r}")


def _check_dtype(dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")


class KVCache(_Lengths):
    """K and V storage for ``batch_size`` sequences of up to ``max_seq_len`` positions.

    Example::

        cache = KVCache(batch_size=4, num_kv_heads=2, head_dim=128, max_seq_len=4096, layout="BSHD",
                        dtype=torch.float16, device="cuda")
        cache.append(k_prompt, v_prompt)              # [4, 2, T, 128] each: prefill
        out = cache.attend(q)                         # q [4, Hq, 128] -> [4, Hq, 128]
        cache.append(k_tok, v_tok)                    # [4, 2, 1, 128]: one decode step
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, max_seq_len: int,
                 layout: str = "BHSD", dtype: torch.dtype = torch.float16,
                 device: torch.device | str | None = None):
        _check_sizes(batch_size=batch_size, num_kv_heads=num_kv_heads, head_dim=head_dim, max_seq_len=max_seq_len)
        _check_dtype(dtype)
        self.layout = _check_layout(layout)
        self.num_kv_heads, self.head_dim, self.dtype = num_kv_heads, head_dim, dtype
        self._init_lengths(batch_size, max_seq_len, torch.device(device) if device is not None else torch.device("cpu"))
        shape = storage_shape(layout, batch_size, num_kv_heads, max_seq_len, head_dim)
        self.k_storage = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v_storage = torch.zeros(shape, dtype=dtype, device=self.device)

    def __repr__(self) -> str:
        return (f"KVCache(layout={self.layout}, batch={self.batch_size}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, dtype={self.dtype}, "
                f"device={self.device}, lengths={self.lengths})")

    @property
    def nbytes(self) -> int:
        """Bytes of K and V storage (the whole capacity)."""
        return self.k_storage.numel() * self.k_storage.element_size() * 2

    def keys(self) -> torch.Tensor:
        """Logical ``[B, H, S_max, D]`` view of K (no copy)."""
        return logical_view(self.k_storage, self.layout)

    def values(self) -> torch.Tensor:
        """Logical ``[B, H, S_max, D]`` view of V (no copy)."""
        return logical_view(self.v_storage, self.layout)

    def append(self, k: torch.Tensor, v: torch.Tensor, num_new: Sequence[int] | None = None, *,
               backend: str = "auto") -> None:
        """Append ``k``/``v`` (``[B, H, T, D]``, any strides) after each sequence's current length.

        ``num_new`` (host ints, one per sequence, each <= T) appends only the first ``num_new[b]`` rows of
        sequence b (ragged prefill); default: all T. Raises ValueError if a sequence would overflow.
        """
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.shape[:2] != (self.batch_size, self.num_kv_heads) or t.dim() != 4 or t.shape[3] != self.head_dim:
                raise ValueError(f"{name}: expected shape [{self.batch_size}, {self.num_kv_heads}, T, "
                                 f"{self.head_dim}], got {tuple(t.shape)}")
        T = k.shape[2]
        counts, num_new_t = self._plan_append(T, num_new, "k")
        kv_append(self.keys(), self.values(), k, v, self.seq_lens, num_new_t, backend=backend)
        self._commit_append(T, counts, num_new_t)

    def attend(self, q: torch.Tensor, sm_scale: float | None = None, *, num_splits: int | None = None,
               backend: str = "auto") -> torch.Tensor:
        """Decode attention of ``q`` (``[B, Hq, D]``, one token per sequence) over the cached positions."""
        return decode_attention(q, self.keys(), self.values(), self.seq_lens, sm_scale,
                                max_seq_len=max(self.lengths), num_splits=num_splits, backend=backend)

    def attend_prefill(self, q: torch.Tensor, causal: bool = True, sm_scale: float | None = None, *,
                       backend: str = "auto") -> torch.Tensor:
        """Prefill attention of ``q`` (``[B, Hq, T, D]``: the last T cached positions' queries) over everything
        cached, read in place through the layout's strides. Causal masking is bottom-right aligned, so a chunk
        appended after earlier ones (chunked prefill) sees the whole history. Needs equal lengths across the
        batch (the prefill kernel has one key length per launch)."""
        n = self.lengths[0]
        if any(m != n for m in self.lengths):
            raise ValueError(f"lengths: attend_prefill needs equal lengths across the batch, got {self.lengths}")
        if n == 0:
            raise ValueError("lengths: nothing cached yet; append the prompt's K/V first")
        return attention(q, self.keys()[:, :, :n], self.values()[:, :, :n], causal, sm_scale, backend=backend)


class LatentKVCache(_Lengths):
    """Cache of multi-head latent attention (DeepSeek-V2, GLM-4.7-Flash): per token one ``kv_lora_rank``-wide
    latent and one ``rope_dim``-wide rotary key, shared by every head, stored as one ``[B, S_max, R + P]``
    tensor (GLM-4.7-Flash: 512 + 64 = 1152 bytes per token and layer in fp16). Heads do not exist in it, so
    the BHSD/BSHD/HBSD question does not arise.

    Example::

        cache = LatentKVCache(batch_size=4, kv_lora_rank=512, rope_dim=64, max_seq_len=8192, device="cuda")
        cache.append(ckv, kpe)                               # [4, T, 512], [4, T, 64]
        out = cache.attend(q_nope, q_rope, sm_scale=256 ** -0.5)   # [4, 20, 512] latent-space outputs
    """

    def __init__(self, batch_size: int, kv_lora_rank: int, rope_dim: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float16, device: torch.device | str | None = None):
        _check_sizes(batch_size=batch_size, kv_lora_rank=kv_lora_rank, rope_dim=rope_dim, max_seq_len=max_seq_len)
        _check_dtype(dtype)
        self.kv_lora_rank, self.rope_dim, self.dtype = kv_lora_rank, rope_dim, dtype
        self._init_lengths(batch_size, max_seq_len, torch.device(device) if device is not None else torch.device("cpu"))
        self.storage = torch.zeros(batch_size, max_seq_len, kv_lora_rank + rope_dim, dtype=dtype, device=self.device)

    def __repr__(self) -> str:
        return (f"LatentKVCache(batch={self.batch_size}, kv_lora_rank={self.kv_lora_rank}, rope_dim={self.rope_dim}, "
                f"max_seq_len={self.max_seq_len}, dtype={self.dtype}, device={self.device}, lengths={self.lengths})")

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def latents(self) -> torch.Tensor:
        """``[B, S_max, R]`` view of the latents (no copy)."""
        return self.storage[..., :self.kv_lora_rank]

    def rope_keys(self) -> torch.Tensor:
        """``[B, S_max, P]`` view of the rotary keys (no copy)."""
        return self.storage[..., self.kv_lora_rank:]

    def append(self, ckv: torch.Tensor, kpe: torch.Tensor, num_new: Sequence[int] | None = None, *,
               backend: str = "auto") -> None:
        """Append latents ``ckv [B, T, R]`` and rotary keys ``kpe [B, T, P]`` (any strides) after each
        sequence's current length; ``num_new`` as in :meth:`KVCache.append`."""
        for name, t, width in (("ckv", ckv, self.kv_lora_rank), ("kpe", kpe, self.rope_dim)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.shape[0] != self.batch_size or t.shape[2] != width:
                raise ValueError(f"{name}: expected shape [{self.batch_size}, T, {width}], got {tuple(t.shape)}")
        if kpe.shape[1] != ckv.shape[1]:
            raise ValueError(f"kpe: expected {ckv.shape[1]} tokens like ckv, got {kpe.shape[1]}")
        T = ckv.shape[1]
        counts, num_new_t = self._plan_append(T, num_new, "ckv")
        # one "head": the append kernel writes latent and rope rows of each token in one program
        kv_append(self.latents()[:, None], self.rope_keys()[:, None], ckv[:, None], kpe[:, None], self.seq_lens,
                  num_new_t, backend=backend)
        self._commit_append(T, counts, num_new_t)

    def attend(self, q_nope: torch.Tensor, q_rope: torch.Tensor, sm_scale: float, *, num_splits: int | None = None,
               backend: str = "auto") -> torch.Tensor:
        """Absorbed-MLA decode (:func:`~triton_marlin.kernels.attention.mla_decode_attention`) over the cached
        positions: ``q_nope [B, H, R]``, ``q_rope [B, H, P]`` -> ``[B, H, R]``."""
        return mla_decode_attention(q_nope, q_rope, self.latents(), self.rope_keys(), self.seq_lens, sm_scale,
                                    max_seq_len=max(self.lengths), num_splits=num_splits, backend=backend)

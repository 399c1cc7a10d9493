"""Kernel selection for the quantized GEMM: a measured table per GPU, with a default when none exists.

Tables are JSON files ``kernels/tuned/<gpu-slug>.json`` written by ``benchmarks/bench_kernel_selection.py``::

    {"gpu": "NVIDIA H100 80GB HBM3", "triton": "3.6.0", "torch": "2.11.0",
     "entries": {"int4": {"8192x8192": {"1": {"family": "gemv", "block_n": 64, ...}, "16": {...}}}}}

``entries[format]["NxK"][M bucket]`` is the fastest configuration measured for that format, weight
shape and M bucket (M rounded up to a power of two, at most :data:`MAX_M_BUCKET`). A weight shape
that was not measured takes the nearest measured shape (in log N and log K); a format without
entries takes int4's (same 4-bit tile), then the default rule. Nothing here runs a benchmark: the
first call costs one kernel compile, never a search.

:func:`load_table` / :func:`reset` / :func:`set_table` manage the table in use; ``TRITON_MARLIN_QGEMM_TABLE``
names a file to load instead of the packaged one.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from pathlib import Path

import torch

from ..formats import QuantizedTensor
from .qgemm import KernelConfig, format_spec
from .qgemv_mma import MMA_FORMATS, MMA_MAX_M

TUNED_DIR = Path(__file__).with_name("tuned")
MAX_M_BUCKET = 1024
ENV_TABLE = "TRITON_MARLIN_QGEMM_TABLE"

_lock = threading.Lock()
_tables: dict[str, dict | None] = {}  # gpu slug -> table (None: looked, none found)
_chosen: dict[tuple, KernelConfig] = {}  # per-call memo of select_config, cleared with the tables


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_gpu_name(device: torch.device) -> str:
    if device.type == "cuda":
        return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())
    return "cpu"


def table_path(gpu_name: str) -> Path:
    return TUNED_DIR / f"{gpu_slug(gpu_name)}.json"


def m_bucket(M: int) -> int:
    """M rounded up to a power of two, capped at MAX_M_BUCKET."""
    return min(MAX_M_BUCKET, 1 << max(0, (M - 1).bit_length()))


def validate_table(table: dict, source: str = "table") -> dict:
    """Check structure and every config; raise ValueError naming the bad entry."""
    if not isinstance(table, dict) or not isinstance(table.get("entries"), dict):
        raise ValueError(f"{source}: expected a JSON object with an 'entries' object")
    for fmt, shapes in table["entries"].items():
        if not isinstance(shapes, dict):
            raise ValueError(f"{source}: entries[{fmt!r}] must be an object")
        for shape, buckets in shapes.items():
            if not re.fullmatch(r"\d+x\d+", shape):
                raise ValueError(f"{source}: entries[{fmt!r}] has shape key {shape!r}, expected 'NxK'")
            for mb, cfg in buckets.items():
                if not str(mb).isdigit():
                    raise ValueError(f"{source}: entries[{fmt!r}][{shape!r}] has M key {mb!r}")
                try:
                    KernelConfig.from_dict(cfg)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{source}: entries[{fmt!r}][{shape!r}][{mb!r}]: {e}") from None
    return table


def load_table(gpu_name: str, path: str | os.PathLike | None = None) -> dict | None:
    """Load (and cache) the table for ``gpu_name``: ``path``, else $TRITON_MARLIN_QGEMM_TABLE, else
    the packaged ``tuned/<slug>.json``. Returns None when there is none."""
    slug = gpu_slug(gpu_name)
    if path is None:
        path = os.environ.get(ENV_TABLE) or table_path(gpu_name)
    path = Path(path)
    table = None
    if path.is_file():
        with open(path) as f:
            table = validate_table(json.load(f), str(path))
    with _lock:
        _tables[slug] = table
        _chosen.clear()
    return table


def set_table(gpu_name: str, table: dict | None) -> None:
    """Use ``table`` (already in memory) for ``gpu_name``; None means 'no table, use the default'."""
    if table is not None:
        validate_table(table)
    with _lock:
        _tables[gpu_slug(gpu_name)] = table
        _chosen.clear()


def reset(gpu_name: str | None = None) -> None:
    """Forget loaded tables (all, or one GPU's); the next call reloads from disk."""
    with _lock:
        if gpu_name is None:
            _tables.clear()
        else:
            _tables.pop(gpu_slug(gpu_name), None)
        _chosen.clear()


def current_table(gpu_name: str) -> dict | None:
    slug = gpu_slug(gpu_name)
    with _lock:
        if slug in _tables:
            return _tables[slug]
    return load_table(gpu_name)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 1


def _split_for(programs: int, tiles: int, sms: int, max_split: int = 16) -> int:
    """Split K until the grid holds about two programs per SM (never splits below 2 tiles each)."""
    if programs >= 2 * sms:
        return 1
    split = math.ceil(2 * sms / programs)
    return max(1, min(split, max_split, tiles // 2))


def _split_long(programs: int, tiles: int, sms: int, tiles_per_split: int = 16) -> int:
    """Split K into runs of about ``tiles_per_split`` K tiles, more only if the grid would not cover
    every SM. With the scales loaded a tile ahead, longer runs per program won on the H200 (int4 M=1
    and 16, both large shapes: 16 tiles per split beat 8 and 4, docs/perf/gemm.md)."""
    split = max(1, -(-tiles // tiles_per_split))
    if programs * split < sms:
        split = max(split, min(-(-sms // programs), max(1, tiles // 2)))
    return split


def mma_default(N: int, tiles: int, sms: int) -> KernelConfig:
    """Register-fragment GEMV without a measured entry: 32 columns a program (16 when that leaves fewer programs
    than SMs) whose 8 warps split K, 4 warps when 8 would not all be resident at once (32 warps an SM), the
    next tile's words loaded ahead; split K only when the grid has fewer warps than 8 an SM (H200 sweeps, int4
    M = 1 and 8: 8192x8192 best with 32 columns x 8 warps, 28672x8192 with 32 x 4, the GLM expert shapes with
    16 x 8, none of them split); a 96-register cap where the whole grid fits at that count."""
    bn = 32 if -(-N // 32) >= sms else 16
    programs = -(-N // bn)
    warps = 8 if programs * 8 <= 32 * sms else 4
    split = 1
    while programs * warps * split < 8 * sms and split * warps * 2 <= tiles:
        split *= 2
    # 96 registers where every warp of the grid still fits an SM at that count (21 an SM): ptxas then issues the
    # next tile's loads earlier (H200 A/B on the table's entries: 3-10% faster on such grids, slower where the cap
    # would push the grid past one wave)
    cap = 96 if programs * warps * split <= (65536 // (96 * 32)) * sms else 0
    return KernelConfig("mma", block_m=8, block_n=bn, num_warps=warps, split_k=split, prefetch=1, maxnreg=cap)


def default_config(M: int, N: int, K: int, qt: QuantizedTensor, device: torch.device,
                   allow_mma: bool = True) -> KernelConfig:
    """The rule used where no measured entry exists, shaped by the H200 sweeps (docs/perf/gemm.md):
    up to 8 rows of a format the register-fragment GEMV reads: that GEMV (:func:`mma_default`; not with
    ``allow_mma=False``, the fallback of a call that GEMV cannot take); other
    M <= 16: 16x128 tensor-core tiles with fold operands, scales loaded a tile ahead, about 16 K tiles
    per split (best at M = 1 and 16 on both large shapes); M <= 64: 32-row fold tiles (best at M = 64);
    larger M: dequantize + cuBLAS (fastest measured at M = 256, every shape; the fused tiles reached
    20-45% of cuBLAS's rate)."""
    spec = format_spec(qt)
    tiles = -(-K // spec.tile_k)
    sms = sm_count(device)
    if allow_mma and M <= 8 and qt.format in MMA_FORMATS:
        return mma_default(N, tiles, sms)
    if M <= 16:
        programs = -(-N // 128)
        return KernelConfig("dot", block_m=16, block_n=128, fold=1, num_warps=4, num_stages=3, prefetch=1,
                            split_k=_split_long(programs, tiles, sms))
    if M <= 64:
        programs = -(-N // 128) * -(-M // 32)
        return KernelConfig("dot", block_m=32, block_n=128, fold=1, num_warps=4, num_stages=3, prefetch=1,
                            split_k=_split_for(programs, tiles, sms, max_split=4))
    return KernelConfig("dequant")


def _shape_distance(key: str, N: int, K: int) -> float:
    n, k = (int(v) for v in key.split("x"))
    return abs(math.log(n / N)) + abs(math.log(k / K))


def lookup(table: dict | None, fmt: str, N: int, K: int, M: int) -> tuple[KernelConfig, str] | None:
    """(config, where it came from) from ``table``, or None.

    Candidates are the format's own entries and int4's (same 4-bit tile; the stand-in for formats
    not measured); mma entries only where that family runs the call (its formats, at most MMA_MAX_M rows). Each
    measured (shape, M bucket) scores its distance in log N + log K + 0.5 log2 M from the call, the format's own
    entries winning ties.
    """
    if not table:
        return None
    entries = table["entries"]
    mb = m_bucket(M)
    best = None
    for fmt_key, own in ((fmt, 0), ("int4", 1)):
        for shape, buckets in entries.get(fmt_key, {}).items():
            ds = _shape_distance(shape, N, K)
            for b, cfg in buckets.items():
                if cfg.get("family") == "mma" and (fmt not in MMA_FORMATS or M > MMA_MAX_M):
                    continue  # register-fragment entries stand in only for calls that kernel runs
                score = (round(ds + 0.5 * abs(math.log2(int(b)) - math.log2(mb)), 6), own, int(b))
                if best is None or score < best[0]:
                    best = (score, cfg, f"table:{fmt_key}/{shape}/M{b}")
    if best is None:
        return None
    return KernelConfig.from_dict(best[1]), best[2]


def select_config(x: torch.Tensor, qt: QuantizedTensor) -> KernelConfig:
    """The configuration for this call: the table's entry, else :func:`default_config` (memoized
    per device, format, shape and M bucket, so a steady decode loop pays a dict lookup)."""
    M, K = x.shape
    N = qt.shape[0]
    key = (x.device, qt.format, qt.group_size, N, K, m_bucket(M) if M > 16 else M)
    cfg = _chosen.get(key)
    if cfg is not None:
        return cfg
    found = lookup(current_table(device_gpu_name(x.device)), qt.format, N, K, M)
    cfg = found[0] if found is not None else default_config(M, N, K, qt, x.device)
    _chosen[key] = cfg
    return cfg


def explain(x: torch.Tensor, qt: QuantizedTensor) -> str:
    """Which configuration a call would use and why (for benchmarks and debugging)."""
    M, K = x.shape
    N = qt.shape[0]
    found = lookup(current_table(device_gpu_name(x.device)), qt.format, N, K, M)
    if found is not None:
        return found[1]
    return "default"

"""Measured ceilings of a device (copy bandwidth, dense matmul rate): the roofline every figure is set against.

``benchmarks/baseline_benchmark.py`` measures them carefully and writes ``results/baseline-<gpu slug>.json``;
:func:`load_baseline` reads that file, or, when there is none, measures a quick version now and warns.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import warnings
from pathlib import Path

import torch

from ..device import device_name, synchronize
from .timing import time_fn

__all__ = ["baseline_path", "load_baseline", "save_baseline", "measure_copy_GBps", "measure_matmul_TFLOPs",
           "quick_baseline", "ENV_BASELINE"]

ENV_BASELINE = "TRITON_MARLIN_BASELINE"
_REPO_ROOT = Path(__file__).resolve().parents[3]
_cache: dict[str, dict] = {}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def baseline_path(device: torch.device | str, root: str | Path | None = None) -> Path:
    """Where the baseline file of this device lives: ``$TRITON_MARLIN_BASELINE`` if set, else
    ``<root>/results/baseline-<device name slug>.json`` (root: the current directory)."""
    env = os.environ.get(ENV_BASELINE)
    if env:
        return Path(env)
    base = Path(root) if root is not None else Path.cwd()
    return base / "results" / f"baseline-{slug(device_name(device))}.json"


def measure_copy_GBps(device: torch.device | str, nbytes: int = 256 << 20, warmup: int = 3,
                      repeats: int = 10) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (2 * nbytes per copy)."""
    dev = torch.device(device)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    st = time_fn(lambda: dst.copy_(src), device=dev, warmup=warmup, repeats=repeats)
    return 2 * src.numel() * src.element_size() / (st.median_us * 1e-6) / 1e9


def measure_matmul_TFLOPs(device: torch.device | str, dtype: torch.dtype, size: int, warmup: int = 3,
                          repeats: int = 10) -> float:
    """Dense square matmul rate: 2*size^3 FLOPs per call."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, device=dev, dtype=torch.float32, generator=gen).to(dtype)
    b = torch.randn(size, size, device=dev, dtype=torch.float32, generator=gen).to(dtype)
    out = torch.empty(size, size, device=dev, dtype=dtype)
    st = time_fn(lambda: torch.matmul(a, b, out=out), device=dev, warmup=warmup, repeats=repeats)
    return 2 * size ** 3 / (st.median_us * 1e-6) / 1e12


def quick_baseline(device: torch.device | str) -> dict:
    """A fast (seconds) estimate of the ceilings, for when no baseline file exists."""
    dev = torch.device(device)
    big = dev.type == "cuda"
    copy_bytes = (512 << 20) if big else (32 << 20)
    mm_size = 8192 if big else 512
    rates = {str(dt).removeprefix("torch."): measure_matmul_TFLOPs(dev, dt, mm_size, warmup=2, repeats=5)
             for dt in (torch.float16, torch.bfloat16, torch.float32)}
    synchronize(dev)
    return {
        "gpu": device_name(dev),
        "device": dev.type,
        "copy_GBps": measure_copy_GBps(dev, copy_bytes, warmup=2, repeats=5),
        "matmul_TFLOPs": rates,
        "matmul_size": mm_size,
        "source": "measured quickly at load time (no baseline file)",
    }


def save_baseline(device: torch.device | str, data: dict, path: str | Path | None = None) -> Path:
    """Write a baseline dict (must hold ``copy_GBps`` and ``matmul_TFLOPs``) as JSON; returns the path."""
    for key in ("copy_GBps", "matmul_TFLOPs"):
        if key not in data:
            raise ValueError(f"data: expected a {key!r} entry, got keys {sorted(data)}")
    out = Path(path) if path is not None else baseline_path(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(data)
    payload.setdefault("gpu", device_name(device))
    payload.setdefault("written", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    out.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    _cache.pop(device_name(device), None)
    return out


def load_baseline(device: torch.device | str, path: str | Path | None = None) -> dict:
    """The ceilings of ``device``: ``{"copy_GBps": float, "matmul_TFLOPs": {"float16": ..., "bfloat16": ...,
    "float32": ...}, "gpu": name, "source": where they came from}``.

    Reads ``path``, else :func:`baseline_path` (checked in the current directory, then the repository root);
    when no file exists, measures :func:`quick_baseline` now with a ``RuntimeWarning`` saying so.
    A file written for another GPU is refused.
    """
    dev = torch.device(device)
    name = device_name(dev)
    candidates = [Path(path)] if path is not None else [baseline_path(dev)]
    if path is None and not os.environ.get(ENV_BASELINE):
        candidates.append(baseline_path(dev, root=_REPO_ROOT))
    for cand in candidates:
        if cand.is_file():
            data = json.loads(cand.read_text())
            if data.get("gpu") not in (None, name):
                raise ValueError(f"baseline file {cand} was measured on {data.get('gpu')!r}, not on {name!r}")
            for key in ("copy_GBps", "matmul_TFLOPs"):
                if key not in data:
                    raise ValueError(f"baseline file {cand}: expected a {key!r} entry, got keys {sorted(data)}")
            data["source"] = str(cand)
            return data
    if path is not None:
        raise FileNotFoundError(f"path: no baseline file at {path}")
    if name not in _cache:
        warnings.warn(f"no baseline file for {name} (looked for {candidates[0]}); measuring copy bandwidth and "
                      f"matmul rate quickly now - run benchmarks/baseline_benchmark.py for careful figures",
                      RuntimeWarning, stacklevel=2)
        _cache[name] = quick_baseline(dev)
    return dict(_cache[name])

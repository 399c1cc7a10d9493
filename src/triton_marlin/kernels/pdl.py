"""Programmatic dependent launch (sm_90+): a kernel launched with ``launch_pdl=True`` may start while the kernel
before it in the stream is still running; :func:`pdl_sync`, called at the kernel's entry, lets the kernel after
it launch in turn and then waits until the previous kernel has finished and its writes are visible. A kernel
that reads and writes nothing before that call keeps stream order; what overlaps is each launch with the tail of
the kernel before it, a large share of the time of the short decode kernels."""
from __future__ import annotations

import functools
import os

import torch
import triton
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def pdl_sync():
    gdc_launch_dependents()
    gdc_wait()


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_supported(device: torch.device) -> bool:
    """Compiled CUDA on sm_90 or newer (the interpreter runs no PTX)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())

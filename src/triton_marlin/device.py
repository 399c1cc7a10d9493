"""Device selection and capability queries.

Order of preference: cuda -> mps -> cpu. Falling back from a device the caller asked for
always warns; nothing silently lands on a slower device.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

__all__ = [
    "select_device",
    "device_name",
    "has_triton",
    "triton_enabled_for",
    "synchronize",
    "empty_cache",
]


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return kind == "cpu"


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """Return the device to run on.

    ``None`` or ``"auto"`` picks the best available (cuda, then mps, then cpu). An explicit request
    for an unavailable device falls back down the same order with a ``RuntimeWarning``.
    """
    order = ["cuda", "mps", "cpu"]
    if requested is None or str(requested) == "auto":
        for kind in order:
            if _available(kind):
                return torch.device(kind)
    dev = torch.device(requested)
    if _available(dev.type):
        return dev
    if dev.type not in order:
        raise ValueError(f"unknown device {requested!r}: expected one of auto, cuda, mps, cpu")
    for kind in order[order.index(dev.type) + 1:]:
        if _available(kind):
            warnings.warn(f"device {dev.type!r} is not available; falling back to {kind!r}",
                          RuntimeWarning, stacklevel=2)
            return torch.device(kind)
    raise RuntimeError("no usable torch device")


def device_name(device: torch.device | str) -> str:
    """Human-readable name of the device: the GPU's marketing name, or the CPU/MPS label."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_enabled_for(device: torch.device) -> bool:
    """Whether Triton kernels can run on tensors of this device.

    On CUDA when Triton is installed; on CPU only under ``TRITON_INTERPRET=1`` (how tests run the
    kernels without a GPU).
    """
    if not has_triton():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpret()


def synchronize(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def empty_cache(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    elif dev.type == "mps":
        torch.mps.empty_cache()

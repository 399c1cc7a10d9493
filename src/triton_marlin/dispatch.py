"""Which implementation ran: every public op records its path here, so a fallback is visible."""
from __future__ import annotations

import collections
import threading
import warnings

import torch

_lock = threading.Lock()
_counts: collections.Counter = collections.Counter()
_warned: set = set()


def record(op: str, path: str) -> None:
    if _compiling():  # inside a torch.compile trace the lock cannot be traced; the compiled call is not counted
        return
    with _lock:
        _counts[(op, path)] += 1


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def counts() -> dict[tuple[str, str], int]:
    """``{(op, path): calls}`` since the last :func:`reset`."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.clear()


def warn_fallback(op: str, reason: str) -> None:
    """Warn once per (op, reason) that a slower path is running."""
    key = (op, reason)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"{op}: {reason}", RuntimeWarning, stacklevel=3)

"""Device-synchronized timing of a callable.

Two modes:

* plain (default): every sample starts from an idle device, so on CUDA the time includes the cost
  of launching ``fn`` from Python (what a caller of the op pays). CUDA events bracket the calls;
  elsewhere ``time.perf_counter_ns`` with a device synchronize after the calls.
* ``cuda_graph=True`` (CUDA only): ``fn`` is captured ``graph_calls`` times into one CUDA graph and
  the graph is replayed; per-call time = replay time / ``graph_calls``. A short device-side spin is
  queued before each replay so the GPU never waits on the CPU inside the timed region: the figure is
  the GPU time of the work, launch overhead excluded.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from typing import Callable

import numpy as np
import torch

from ..device import empty_cache, synchronize

__all__ = ["Stats", "time_fn", "cleanup", "summarize"]

# Bytes written between samples when flush_cache=True: several times the largest L2 (H100/H200: 50 MB).
_FLUSH_BYTES = 256 * 1024 * 1024
# GPU cycles of the spin queued ahead of a timed graph replay (~0.1-0.3 ms on current parts): long
# enough for the CPU to enqueue the start event, the replay and the end event behind it.
_SPIN_CYCLES = 200_000


@dataclasses.dataclass(frozen=True)
class Stats:
    """Summary of timing samples, all in microseconds per call."""

    median_us: float
    mean_us: float
    std_us: float
    p10_us: float
    p90_us: float
    n: int
    min_us: float = math.nan
    max_us: float = math.nan
    samples_us: tuple = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples_us) -> "Stats":
        arr = np.asarray(samples_us, dtype=np.float64).ravel()
        if arr.size == 0:
            raise ValueError("samples_us: expected at least one sample, got none")
        if not np.all(np.isfinite(arr)):
            raise ValueError("samples_us: expected finite timings, got NaN or inf")
        return cls(
            median_us=float(np.median(arr)),
            mean_us=float(arr.mean()),
            std_us=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            p10_us=float(np.percentile(arr, 10)),
            p90_us=float(np.percentile(arr, 90)),
            n=int(arr.size),
            min_us=float(arr.min()),
            max_us=float(arr.max()),
            samples_us=tuple(float(v) for v in arr),
        )

    def to_dict(self, with_samples: bool = False) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "samples_us"}
        if with_samples:
            d["samples_us"] = list(self.samples_us)
        return d


def summarize(samples_us) -> Stats:
    """Stats of raw per-call samples in microseconds."""
    return Stats.from_samples(samples_us)


def cleanup(device: torch.device | str | None = None) -> None:
    """Free what the previous case left behind: Python garbage, then the device allocator cache."""
    gc.collect()
    if device is not None:
        synchronize(device)
        empty_cache(device)


def _check_counts(warmup, repeats, inner, graph_calls):
    for name, value, lo in (("warmup", warmup, 0), ("repeats", repeats, 1), ("inner", inner, 1),
                            ("graph_calls", graph_calls, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {value}")


class _Flusher:
    """Writes a buffer larger than the last-level cache, so the next sample starts cold."""

    def __init__(self, device: torch.device, enabled: bool):
        self.buf = torch.empty(_FLUSH_BYTES, dtype=torch.uint8, device=device) if enabled else None

    def __call__(self):
        if self.buf is not None:
            self.buf.zero_()


def _time_host(fn, device, warmup, repeats, inner, flush, setup) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        flush()
        setup()
        synchronize(device)
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        synchronize(device)
        samples.append((time.perf_counter_ns() - t0) / 1e3 / inner)
    return samples


def _time_cuda_events(fn, device, warmup, repeats, inner, flush, setup) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    pairs = []
    for _ in range(repeats):
        flush()
        setup()
        # Start each sample from an idle device: the time includes launching fn.
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) * 1e3 / inner for s, e in pairs]


def _spin():
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        sleep(_SPIN_CYCLES)
    elif not _spin_warned:
        _spin_warned.append(True)
        import warnings
        warnings.warn("torch.cuda._sleep is missing: graph timings may include time the GPU waits for the CPU "
                      "to enqueue the replay (raise graph_calls to amortize it)", RuntimeWarning, stacklevel=3)


_spin_warned: list = []


def capture_graph(fn: Callable[[], object], device: torch.device, calls: int, warmup: int = 3):
    """Capture ``calls`` back-to-back calls of ``fn`` into a CUDA graph (after warmup on a side stream)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize(device)
    return graph


def _time_cuda_graph(fn, device, warmup, repeats, graph_calls, flush) -> list[float]:
    graph = capture_graph(fn, device, graph_calls, warmup=warmup)
    for _ in range(max(1, warmup // graph_calls)):
        graph.replay()
    torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        flush()
        _spin()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / graph_calls)
    del graph
    return samples


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str | None = None,
    warmup: int = 10,
    repeats: int = 50,
    cuda_graph: bool = False,
    *,
    inner: int = 1,
    graph_calls: int = 10,
    flush_cache: bool = False,
    clean: bool = True,
    setup: Callable[[], object] | None = None,
) -> Stats:
    """Time ``fn()`` on ``device`` and return per-call :class:`Stats` in microseconds.

    Args:
        fn: a callable taking no arguments (close over the inputs).
        device: where ``fn`` runs; decides how to synchronize. ``None`` means CPU.
        warmup: untimed calls first (compilation, autotuning, caches).
        repeats: timed samples.
        cuda_graph: time by CUDA-graph replay (launch overhead excluded); CUDA only.
        inner: calls per timed sample (plain mode); the sample is their mean. Use it when one call is
            shorter than the timer's resolution.
        graph_calls: calls of ``fn`` captured into the graph (graph mode).
        flush_cache: overwrite a 256 MB buffer before each sample so it starts with a cold cache. In graph mode
            only the first of the ``graph_calls`` calls starts cold: the others find a working set smaller than L2
            (50 MB on H100/H200) still there. For cold per-call figures use ``graph_calls=1, flush_cache=True``,
            or make ``fn`` cycle through copies of its inputs larger than L2 together.
        clean: ``gc.collect()`` and empty the device allocator cache before the warmup.
        setup: called before each timed sample, untimed (plain mode only), e.g. to reset state.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    _check_counts(warmup, repeats, inner, graph_calls)
    dev = torch.device("cpu") if device is None else torch.device(device)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}; pass "
                         f"cuda_graph=(device.type == 'cuda') to time plainly elsewhere")
    if cuda_graph and inner != 1:
        raise ValueError(f"inner={inner}: calls per sample in graph mode are set by graph_calls, not inner")
    if setup is not None and (cuda_graph or not callable(setup)):
        raise ValueError("setup: expected a callable, and only in plain mode (a graph replays without it)")
    if clean:
        cleanup(dev)
    flush = _Flusher(dev, flush_cache)
    setup = setup or (lambda: None)
    if dev.type == "cuda":
        with torch.cuda.device(dev):  # events and graphs live on the current device
            if cuda_graph:
                samples = _time_cuda_graph(fn, dev, warmup, repeats, graph_calls, flush)
            else:
                samples = _time_cuda_events(fn, dev, warmup, repeats, inner, flush, setup)
    else:
        samples = _time_host(fn, dev, warmup, repeats, inner, flush, setup)
    return Stats.from_samples(samples)

"""A/B comparison of two implementations: interleaved timing plus the statistics of :mod:`.stats`."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from . import stats as _st
from .timing import Stats, _Flusher, _spin, capture_graph, cleanup, _check_counts
from ..device import synchronize

__all__ = ["ABResult", "ab_compare", "ab_from_samples"]


@dataclasses.dataclass(frozen=True)
class ABResult:
    """Outcome of an A/B comparison. ``ratio`` = median(A) / median(B): below 1 means A is faster."""

    name_a: str
    name_b: str
    a: Stats
    b: Stats
    welch_t: float
    welch_p: float
    welch_df: float
    mwu_u: float
    mwu_p: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float
    confidence: float
    cohens_d: float
    cliffs_delta: float
    alpha: float
    significant: bool
    verdict: str

    @property
    def speedup_of_a(self) -> float:
        """How many times faster A is than B (median(B) / median(A))."""
        return 1.0 / self.ratio

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["a"] = self.a.to_dict()
        d["b"] = self.b.to_dict()
        return d

    def summary(self) -> str:
        return (f"{self.name_a}: {self.a.median_us:.4g} us, {self.name_b}: {self.b.median_us:.4g} us (medians); "
                f"ratio {self.ratio:.4f} [{self.ratio_ci_low:.4f}, {self.ratio_ci_high:.4f}] "
                f"({100 * self.confidence:.0f}% CI); Welch p={self.welch_p:.3g}, Mann-Whitney p={self.mwu_p:.3g}, "
                f"Cliff's delta={self.cliffs_delta:+.3f}, Cohen's d={self.cohens_d:+.3f} -> {self.verdict}")


def ab_from_samples(samples_a, samples_b, name_a: str = "A", name_b: str = "B", alpha: float = 0.05,
                    confidence: float = 0.95, n_boot: int = 4000, seed: int = 0) -> ABResult:
    """Compare two sets of timing samples (lower is better).

    The difference is called significant only when the Mann-Whitney test rejects at ``alpha`` AND the
    bootstrap CI of the ratio of medians excludes 1 (rank test robust to timing outliers, CI to say
    by how much); Welch's t-test and the effect sizes are reported beside it.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    a = Stats.from_samples(samples_a)
    b = Stats.from_samples(samples_b)
    if a.n < 2 or b.n < 2:
        raise ValueError(f"samples: expected at least 2 samples per side, got {a.n} and {b.n}")
    xa = np.asarray(a.samples_us)
    xb = np.asarray(b.samples_us)
    welch = _st.welch_t_test(xa, xb)
    mwu = _st.mann_whitney_u(xa, xb)
    ratio, lo, hi = _st.bootstrap_ratio_ci(xa, xb, confidence=confidence, n_boot=n_boot, seed=seed)
    significant = mwu.pvalue < alpha and (hi < 1.0 or lo > 1.0)
    if not significant:
        verdict = "no significant difference"
    elif ratio < 1.0:
        verdict = f"{name_a} faster"
    else:
        verdict = f"{name_b} faster"
    return ABResult(name_a, name_b, a, b, welch.statistic, welch.pvalue, welch.df, mwu.statistic, mwu.pvalue,
                    ratio, lo, hi, confidence, _st.cohens_d(xa, xb), _st.cliffs_delta(xa, xb), alpha,
                    significant, verdict)


def _sample_once(fn, dev, inner, flush, graph, graph_calls) -> float:
    flush()
    if dev.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        if graph is not None:
            _spin()
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e3 / graph_calls
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / inner
    import time
    synchronize(dev)
    t0 = time.perf_counter_ns()
    for _ in range(inner):
        fn()
    synchronize(dev)
    return (time.perf_counter_ns() - t0) / 1e3 / inner


def ab_compare(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    device: torch.device | str | None = None,
    warmup: int = 10,
    repeats: int = 50,
    cuda_graph: bool = False,
    *,
    names: tuple[str, str] = ("A", "B"),
    inner: int = 1,
    graph_calls: int = 10,
    flush_cache: bool = False,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> ABResult:
    """Time A and B interleaved (A B A B ...: drift in clocks or temperature hits both alike), then compare.

    Timing modes and arguments are those of :func:`~triton_marlin.bench.time_fn`.
    """
    for name, fn in (("fn_a", fn_a), ("fn_b", fn_b)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    _check_counts(warmup, repeats, inner, graph_calls)
    if repeats < 2:
        raise ValueError(f"repeats: expected >= 2 for a comparison, got {repeats}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if cuda_graph and inner != 1:
        raise ValueError(f"inner={inner}: calls per sample in graph mode are set by graph_calls, not inner")
    cleanup(dev)
    if dev.type == "cuda":
        with torch.cuda.device(dev):  # events and graphs live on the current device
            return _ab_compare(fn_a, fn_b, dev, warmup, repeats, cuda_graph, names, inner, graph_calls, flush_cache,
                               alpha, confidence, n_boot, seed)
    return _ab_compare(fn_a, fn_b, dev, warmup, repeats, cuda_graph, names, inner, graph_calls, flush_cache, alpha,
                       confidence, n_boot, seed)


def _ab_compare(fn_a, fn_b, dev, warmup, repeats, cuda_graph, names, inner, graph_calls, flush_cache, alpha,
                confidence, n_boot, seed) -> ABResult:
    flush = _Flusher(dev, flush_cache)
    graphs = [None, None]
    if cuda_graph:
        graphs = [capture_graph(fn_a, dev, graph_calls, warmup), capture_graph(fn_b, dev, graph_calls, warmup)]
    else:
        for _ in range(warmup):
            fn_a()
            fn_b()
    synchronize(dev)
    samples = ([], [])
    for _ in range(repeats):
        for side, fn in enumerate((fn_a, fn_b)):
            samples[side].append(_sample_once(fn, dev, inner, flush, graphs[side], graph_calls))
    return ab_from_samples(samples[0], samples[1], names[0], names[1], alpha=alpha, confidence=confidence,
                           n_boot=n_boot, seed=seed)

"""The one benchmark harness of triton_marlin.

A benchmark script declares its cases and calls this::

    from triton_marlin.bench import BenchRunner, time_fn, load_baseline

    runner = BenchRunner("bench_gemm", description="...", add_args=lambda p: p.add_argument("--sizes", ...))
    args = runner.args                      # args.device (torch.device), args.quick, args.warmup, args.repeats, ...
    base = load_baseline(args.device)       # {"copy_GBps": ..., "matmul_TFLOPs": {"float16": ..., ...}}
    for case in runner.progress(cases, desc="gemm"):
        st = time_fn(fn, device=args.device, warmup=args.warmup, repeats=args.repeats)
        runner.record(case={...}, metric="time", value=st.median_us, unit="us", stats=st)
        runner.record(case={...}, metric="bandwidth", value=gbps, unit="GB/s", roofline=gbps / base["copy_GBps"])
    runner.finish()                         # JSON lines to --output, table printed last

A/B comparisons: :func:`ab_compare` (interleaved timing) and :func:`ab_from_samples` give an :class:`ABResult`
with Welch's t-test, Mann-Whitney U, a bootstrap CI of the ratio of medians, effect sizes and a verdict.
"""
from .timing import Stats, cleanup, summarize, time_fn
from .stats import (bootstrap_ratio_ci, cliffs_delta, cohens_d, mann_whitney_u, welch_t_test)
from .ab import ABResult, ab_compare, ab_from_samples
from .baseline import baseline_path, load_baseline, save_baseline
from .runner import RECORD_FIELDS, BenchRunner, format_table
from .plots import have_matplotlib, plot_lines

__all__ = [
    "BenchRunner", "time_fn", "Stats", "load_baseline", "save_baseline", "baseline_path", "summarize", "cleanup",
    "ab_compare", "ab_from_samples", "ABResult", "welch_t_test", "mann_whitney_u", "bootstrap_ratio_ci",
    "cohens_d", "cliffs_delta", "RECORD_FIELDS", "format_table", "plot_lines", "have_matplotlib",
]

#!/usr/bin/env python
"""Quantization time and error for every (format, method) pair available.

rtn runs on every format in triton_marlin.available_formats(); every other method in available_methods() is
tried on every format and skipped, with the reason printed, where it refuses (ValueError). Methods are given
``hessian=H`` built from synthetic calibration activations in which a few input channels are much larger than
the rest (the case where Hessian-aware methods should win); a method that takes no Hessian is called without.

Per pair: quantize time, MSE and SQNR (dB) of the dequantized weight, bits per weight (scales and zero points
counted), and the proxy loss tr((W-Q) H (W-Q)^T) (also relative to tr(W H W^T)), the output error on the
calibration distribution."""
from __future__ import annotations

import math

import torch

import triton_marlin as tm
from triton_marlin.bench import BenchRunner, time_fn


def _add_args(p):
    p.add_argument("--shape", type=int, nargs=2, metavar=("N", "K"), default=None,
                   help="weight shape (default 4096 4096 on GPU, 256 512 on CPU; 16 256 quick)")
    p.add_argument("--formats", nargs="+", default=None, help="formats (default: every available format)")
    p.add_argument("--methods", nargs="+", default=None, help="methods (default: every available method)")
    p.add_argument("--group-size", type=int, default=None, help="group size (default: each format's default)")
    p.add_argument("--calib-samples", type=int, default=None, help="calibration rows (default 4*K; 2*K quick)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: a pair whose first call takes longer is timed by that one call only "
                        "(default 2; 0.2 quick)")
    p.add_argument("--outlier-channels", type=float, default=0.01,
                   help="fraction of input channels scaled up in the calibration activations")


def synthetic_problem(n, k, samples, outlier_frac, device, seed):
    """A heavy-tailed weight and a Hessian H = X^T X / samples of activations with a few large channels."""
    g = torch.Generator().manual_seed(seed)
    # Student-t(5)-like weights: normal divided by a chi-based scale, like trained LLM weights' heavy tails
    chi = torch.randn(5, n, k, generator=g).pow(2).mean(0).sqrt()
    w = (torch.randn(n, k, generator=g) / chi) * (0.5 / math.sqrt(k))
    x = torch.randn(samples, k, generator=g)
    n_out = max(2, int(round(outlier_frac * k)))
    outliers = torch.randperm(k, generator=g)[:n_out]
    x[:, outliers] *= 20.0
    h = x.t() @ x / samples
    return w.to(device), h.to(device), n_out


def main(argv=None):
    runner = BenchRunner("bench_quantization", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    n, k = a.shape or ((16, 256) if a.quick else ((4096, 4096) if dev.type == "cuda" else (256, 512)))
    samples = a.calib_samples or (2 * k if a.quick else 4 * k)
    formats = a.formats or tm.available_formats()
    methods = a.methods or tm.available_methods()
    for name in formats:
        tm.get_format(name)  # unknown name: a clear error before any work
    unknown = sorted(set(methods) - set(tm.available_methods()))
    if unknown:
        runner.parser.error(f"--methods: unknown {unknown}; available: {tm.available_methods()}")
    w, h, n_out = synthetic_problem(n, k, samples, a.outlier_channels, dev, a.seed)
    acc = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64
    w_acc, h_acc = w.to(acc), h.to(acc)
    w_energy = (w_acc ** 2).sum()
    proxy_ref = ((w_acc @ h_acc) * w_acc).sum()
    runner.note(f"weight {n}x{k}, calibration {samples} rows with {n_out} outlier channels (x20)")
    pairs = [(f, m) for m in methods for f in formats]
    repeats = min(a.repeats, 3)
    budget = a.time_budget if a.time_budget is not None else (0.2 if a.quick else 2.0)
    for fmt, method in runner.progress(pairs, desc="quantize"):
        kwargs = {} if method == "rtn" else {"hessian": h}
        made = []

        def run():
            made.append(tm.quantize(w, fmt, group_size=a.group_size, method=method, **kwargs))

        try:
            try:
                first = time_fn(run, device=dev, warmup=0, repeats=1)
            except (TypeError, ValueError) as exc:
                # a method that takes no calibration data says so naming the argument: call it without
                if not kwargs or not any(word in str(exc) for word in ("hessian", "calibration")):
                    raise
                kwargs = {}
                first = time_fn(run, device=dev, warmup=0, repeats=1)
        except ValueError as exc:
            runner.note(f"skipped {fmt} with {method}: {exc}")
            continue
        if first.median_us * 1e-6 > budget:
            st = first  # one call already costs more than the budget: it is the sample (it includes first-call costs)
        else:
            st = time_fn(run, device=dev, warmup=0, repeats=repeats)  # the first call served as warmup
        qt = made[-1]
        made.clear()
        deq = qt.dequantize(torch.float32).to(acc)
        err = w_acc - deq
        mse = (err ** 2).mean().item()
        sqnr = (10 * torch.log10(w_energy / (err ** 2).sum())).item()
        proxy = ((err @ h_acc) * err).sum()
        case = {"format": fmt, "method": method, "group_size": qt.group_size, "N": n, "K": k,
                "hessian": bool(kwargs)}
        runner.record(case, "quantize_time", st.median_us / 1e3, "ms", stats=st, timed_calls=st.n)
        runner.record(case, "mse", mse, "")
        runner.record(case, "sqnr", sqnr, "dB")
        runner.record(case, "bits_per_weight", qt.bits_per_weight, "bit")
        runner.record(case, "proxy_loss", proxy.item(), "", relative=(proxy / proxy_ref).item())
        runner.record(case, "proxy_loss_rel", (proxy / proxy_ref).item(), "")
        del qt, deq, err
    runner.finish()


if __name__ == "__main__":
    main()

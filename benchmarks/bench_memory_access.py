#!/usr/bin/env python
"""Coalesced vs strided reads.

For each stride s, n elements spaced s apart are gathered into a contiguous buffer: by torch (copy_ from a
strided view) and, where Triton runs, by a Triton gather kernel (triton_marlin.bench.probes). Bandwidth counts
useful bytes only (n elements read + n written), so it falls as the stride wastes more of every sector fetched.
A 2-D transpose copy (x.t().contiguous()) against a plain copy shows the same effect on a common layout."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.bench.probes import strided_copy, strided_copy_reference
from triton_marlin.device import triton_enabled_for


def _add_args(p):
    p.add_argument("--numel", type=int, default=None,
                   help="elements gathered per case (default 2^24 on GPU, 2^18 on CPU; 2^12 quick)")
    p.add_argument("--strides", type=int, nargs="+", default=None,
                   help="element strides (default 1 2 4 8 16 32; 1 4 16 quick)")
    p.add_argument("--side", type=int, default=None,
                   help="square side of the transpose case (default 8192 on GPU, 1024 on CPU; 128 quick)")


def main(argv=None):
    runner = BenchRunner("bench_memory_access", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    n = a.numel or (1 << 12 if a.quick else (1 << 24 if gpu else 1 << 18))
    strides = a.strides or ([1, 4, 16] if a.quick else [1, 2, 4, 8, 16, 32])
    side = a.side or (128 if a.quick else (8192 if gpu else 1024))
    base = load_baseline(dev)
    use_triton = triton_enabled_for(dev)
    triton_label = "triton gather" if gpu else "triton gather (CPU interpreter)"
    if not use_triton:
        runner.note(f"the Triton gather kernel cannot run on {dev} here; measuring torch only")
    elif not gpu:
        runner.note("the Triton kernel runs through the CPU interpreter here: its times are the interpreter's")
    src = torch.randn((n - 1) * max(strides) + 1, device=dev)
    out = torch.empty(n, device=dev)
    useful = 2 * n * out.element_size()
    for s in runner.progress(strides, desc="strides"):
        view = src[: (n - 1) * s + 1 : s]
        ref = strided_copy_reference(src, n, s)
        impls = [("torch copy_", lambda: out.copy_(view))]
        if use_triton:
            impls.append((triton_label, lambda: strided_copy(src, out, s)))
        for name, fn in impls:
            out.fill_(float("nan"))
            fn()
            if not torch.equal(out, ref):
                raise RuntimeError(f"{name} at stride {s}: wrong result")
            st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = useful / (st.median_us * 1e-6) / 1e9
            case = {"access": "gather", "stride": s, "numel": n, "impl": name}
            runner.record(case, "time", st.median_us, "us", stats=st)
            runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"],
                          bytes_counted="useful read+write")
    del src, out

    x = torch.randn(side, side, device=dev)
    y = torch.empty_like(x)
    for name, fn in (("plain copy", lambda: y.copy_(x)), ("transpose copy", lambda: y.copy_(x.t()))):
        st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
        gbps = 2 * x.numel() * x.element_size() / (st.median_us * 1e-6) / 1e9
        case = {"access": name, "side": side}
        runner.record(case, "time", st.median_us, "us", stats=st)
        runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
    runner.plot("stride", x="stride", series="impl", metric="bandwidth", logx=True,
                title=f"gather of {n} fp32 by stride, {runner.gpu}")
    runner.finish()


if __name__ == "__main__":
    main()

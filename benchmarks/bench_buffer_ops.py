#!/usr/bin/env python
"""Buffer operations: allocation (fresh from the driver vs reused from torch's caching allocator), copies
(copy_ into an existing buffer, clone = allocate + copy) and fills (fill_, zero_).

Copy bandwidth counts bytes read plus written; fill counts bytes written. On CPU torch has no caching allocator,
so the "fresh" allocation case does not apply there and the output says so."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn


def _add_args(p):
    p.add_argument("--mib", type=float, nargs="+", default=None,
                   help="buffer sizes in MiB (default 1 64 1024 on GPU, 1 64 on CPU; 0.0625 1 quick)")


def main(argv=None):
    runner = BenchRunner("bench_buffer_ops", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    sizes = a.mib or ([0.0625, 1] if a.quick else ([1, 64, 1024] if gpu else [1, 64]))
    base = load_baseline(dev)
    if not gpu:
        runner.note(f"{dev.type}: no caching device allocator to bypass, so 'fresh' allocation is measured on "
                    f"CUDA only")
    for mib in runner.progress(sizes, desc="sizes"):
        nbytes = int(mib * (1 << 20))
        n = nbytes // 4
        case = {"MiB": mib}

        def alloc():
            return torch.empty(n, device=dev)

        st = time_fn(alloc, device=dev, warmup=a.warmup, repeats=a.repeats)
        runner.record({**case, "op": "alloc (cached)" if gpu else "alloc"}, "time", st.median_us, "us", stats=st)
        if gpu:
            st = time_fn(alloc, device=dev, warmup=0, repeats=a.repeats, setup=torch.cuda.empty_cache)
            runner.record({**case, "op": "alloc (fresh: cudaMalloc)"}, "time", st.median_us, "us", stats=st)

        src = torch.randn(n, device=dev)
        dst = torch.empty_like(src)
        for op, fn, moved in (("copy_", lambda: dst.copy_(src), 2 * nbytes),
                              ("clone", lambda: src.clone(), 2 * nbytes),
                              ("fill_", lambda: dst.fill_(1.5), nbytes),
                              ("zero_", lambda: dst.zero_(), nbytes)):
            st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = moved / (st.median_us * 1e-6) / 1e9
            runner.record({**case, "op": op}, "time", st.median_us, "us", stats=st)
            runner.record({**case, "op": op}, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
        if not (torch.equal(dst, torch.zeros_like(dst)) and torch.equal(src.clone(), src)):
            raise RuntimeError("buffer ops produced wrong contents")
        del src, dst
    runner.finish()


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""torch's own dtype conversions to and from bfloat16 (``tensor.to(dtype)``): fp32->bf16, bf16->fp32,
fp16->bf16, bf16->fp16, from a contiguous source and from a transposed (strided) one. Bandwidth counts bytes
read plus bytes written, against the measured copy bandwidth. bench_bf16_optimized.py sets our Triton kernel
against these."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.kernels.bf16_convert import SUPPORTED


def _name(dt):
    return str(dt).removeprefix("torch.")


def _add_args(p):
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="elements per tensor, squares of a side (default 2^20 2^24 2^28 on GPU, 2^16 2^20 on CPU;"
                        " 2^14 quick)")


def main(argv=None):
    runner = BenchRunner("bench_bf16_conversion", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    sizes = a.sizes or ([1 << 14] if a.quick else ([1 << 20, 1 << 24, 1 << 28] if dev.type == "cuda"
                                                  else [1 << 16, 1 << 20]))
    base = load_baseline(dev)
    pairs = sorted(SUPPORTED, key=lambda p: (_name(p[0]), _name(p[1])))
    for src, dst in runner.progress(pairs, desc="pairs"):
        for numel in sizes:
            side = int(round(numel ** 0.5))
            x = torch.randn(side, side, device=dev).to(src)
            nbytes = x.numel() * (x.element_size() + torch.empty((), dtype=dst).element_size())
            for layout, view in (("contiguous", x), ("transposed", x.t())):
                out = view.to(dst)
                if not torch.equal(out.float(), view.float().to(dst).float()):
                    raise RuntimeError(f"{layout} {src}->{dst}: conversion result changed between calls")
                st = time_fn(lambda: view.to(dst), device=dev, warmup=a.warmup, repeats=a.repeats)
                gbps = nbytes / (st.median_us * 1e-6) / 1e9
                case = {"src": _name(src), "dst": _name(dst), "numel": side * side, "layout": layout,
                        "impl": "torch .to()"}
                runner.record(case, "time", st.median_us, "us", stats=st)
                runner.record(case, "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
            del x
    runner.finish()


if __name__ == "__main__":
    main()

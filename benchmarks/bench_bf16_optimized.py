#!/usr/bin/env python
"""Our Triton bf16 conversion kernel (triton_marlin.kernels.bf16_convert) against torch's own conversion.

Both write into a preallocated output, so allocation is timed on neither side: torch's side is
``out.copy_(x)`` (the conversion ``x.to(dtype)`` runs, without its allocation), labelled "torch copy_".

For each conversion (fp32->bf16, bf16->fp32, fp16->bf16, bf16->fp16) and size: the kernel's output is checked
bit for bit against torch's (NaN aside), then both are timed interleaved (A/B statistics), and the bandwidth
(bytes read + written) is set against the measured copy bandwidth. --blocks sweeps the kernel's block size.
Without CUDA the kernel can run only through the Triton CPU interpreter (TRITON_INTERPRET=1), whose time is
not a kernel's; without either, only torch's conversion is measured, and the output says so."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, ab_compare, load_baseline, time_fn
from triton_marlin.device import triton_enabled_for
from triton_marlin.kernels.bf16_convert import DEFAULT_BLOCK, SUPPORTED, convert_triton


def _name(dt):
    return str(dt).removeprefix("torch.")


def _add_args(p):
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="elements per tensor (default 2^20 2^24 2^28 on GPU, 2^16 2^20 on CPU; 2^14 quick)")
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help=f"kernel block sizes to sweep at the largest size (default: {DEFAULT_BLOCK} only)")
    p.add_argument("--warps", type=int, nargs="+", default=None,
                   help="num_warps values to sweep with each --blocks value (default: the launcher's choice)")
    p.add_argument("--graph", action="store_true", help="time by CUDA-graph replay (CUDA only)")


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def main(argv=None):
    runner = BenchRunner("bench_bf16_optimized", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    if a.graph and dev.type != "cuda":
        runner.parser.error("--graph needs a CUDA device")
    sizes = a.sizes or ([1 << 14] if a.quick else ([1 << 20, 1 << 24, 1 << 28] if dev.type == "cuda"
                                                  else [1 << 16, 1 << 20]))
    triton_ok = triton_enabled_for(dev)
    triton_label = "triton" if dev.type == "cuda" else "triton (CPU interpreter)"
    if not triton_ok:
        runner.note(f"the Triton kernel cannot run on {dev} here (it needs CUDA, or TRITON_INTERPRET=1 on CPU): "
                    f"measuring torch's conversion only")
    elif dev.type != "cuda":
        runner.note("Triton runs through the CPU interpreter here: its times measure the interpreter, not a "
                    "kernel; the bit-exactness check is what this run is good for")
    base = load_baseline(dev)
    pairs = sorted(SUPPORTED, key=lambda p: (_name(p[0]), _name(p[1])))
    for src, dst in runner.progress(pairs, desc="pairs"):
        for numel in sizes:
            x = torch.randn(numel, device=dev).mul_(100).to(src)
            out = torch.empty(numel, device=dev, dtype=dst)
            nbytes = numel * (x.element_size() + out.element_size())
            case = {"src": _name(src), "dst": _name(dst), "numel": numel}

            def torch_fn():
                return out.copy_(x)

            if not triton_ok:
                st = time_fn(torch_fn, device=dev, warmup=a.warmup, repeats=a.repeats)
                gbps = nbytes / (st.median_us * 1e-6) / 1e9
                runner.record({**case, "impl": "torch copy_"}, "time", st.median_us, "us", stats=st)
                runner.record({**case, "impl": "torch copy_"}, "bandwidth", gbps, "GB/s",
                              roofline=gbps / base["copy_GBps"])
                continue
            mine = torch.empty_like(out)

            def triton_fn():
                return convert_triton(x, dst, out=mine)

            _bits(mine).fill_(0x7FBF)  # poison: an unwritten element fails the check
            triton_fn()
            ref = x.to(dst)
            if not torch.equal(_bits(mine), _bits(ref)):
                bad = (_bits(mine) != _bits(ref)).sum().item()
                raise RuntimeError(f"{src}->{dst}: Triton output differs from torch in {bad} of {numel} elements")
            res = ab_compare(triton_fn, torch_fn, device=dev, warmup=a.warmup, repeats=max(a.repeats, 5),
                             cuda_graph=a.graph, names=(triton_label, "torch copy_"), seed=a.seed)
            print(f"  {case}: {res.summary()}")
            for impl, st in ((res.name_a, res.a), (res.name_b, res.b)):
                gbps = nbytes / (st.median_us * 1e-6) / 1e9
                runner.record({**case, "impl": impl, "block": DEFAULT_BLOCK if impl == triton_label else None},
                              "time", st.median_us, "us", stats=st)
                runner.record({**case, "impl": impl, "block": DEFAULT_BLOCK if impl == triton_label else None},
                              "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"])
            runner.record({**case, "impl": f"{res.name_a}/{res.name_b}", "block": DEFAULT_BLOCK}, "time_ratio",
                          res.ratio, "x", ci_low=res.ratio_ci_low, ci_high=res.ratio_ci_high, mwu_p=res.mwu_p,
                          welch_p=res.welch_p, cliffs_delta=res.cliffs_delta, verdict=res.verdict)
            if a.blocks and numel == max(sizes):
                for block in a.blocks:
                    for warps in a.warps or [None]:
                        st = time_fn(lambda: convert_triton(x, dst, out=mine, block=block, num_warps=warps),
                                     device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=a.graph)
                        gbps = nbytes / (st.median_us * 1e-6) / 1e9
                        runner.record({**case, "impl": triton_label, "block": block, "warps": warps or "auto"},
                                      "bandwidth", gbps, "GB/s", roofline=gbps / base["copy_GBps"], sweep="block",
                                      median_us=st.median_us)
            del x, out, mine
    for src, dst in pairs:
        runner.plot(f"{_name(src)}_to_{_name(dst)}", x="numel", series="impl", metric="bandwidth", logx=True,
                    where=lambda r, s=_name(src), d=_name(dst): (r["case"]["src"], r["case"]["dst"]) == (s, d)
                    and "sweep" not in r)
    runner.finish()


if __name__ == "__main__":
    main()

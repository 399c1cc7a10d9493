#!/usr/bin/env python
"""Host <-> device transfers: pageable vs pinned host memory, both directions.

On CUDA: host-to-device and device-to-host from/to pageable memory and from/to pinned (page-locked) memory
(non_blocking copies, timed to completion), plus the cost of pinning a buffer. On MPS the CPU <-> MPS copies
(one physical memory, still a copy). On CPU there is no device memory: the transfers do not apply, the output
says so, and the host-to-host copy at the same sizes is measured instead."""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, time_fn
from triton_marlin.device import synchronize


def _add_args(p):
    p.add_argument("--mib", type=float, nargs="+", default=None,
                   help="transfer sizes in MiB (default 1 16 256; 1 quick)")


def main(argv=None):
    runner = BenchRunner("bench_unified_memory", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    sizes = a.mib or ([1] if a.quick else [1, 16, 256])
    if dev.type == "cpu":
        runner.note("CPU: no separate device memory, so host<->device transfers and pinned memory do not apply; "
                    "measuring host-to-host copies instead")
    elif dev.type == "mps":
        runner.note("MPS: unified memory, but CPU<->MPS still copies; pinned memory does not apply")
    for mib in runner.progress(sizes, desc="sizes"):
        nbytes = int(mib * (1 << 20))
        n = nbytes // 4
        case = {"MiB": mib}
        host = torch.randn(n)
        if dev.type == "cpu":
            other = torch.empty_like(host)
            cases = [("host->host", lambda: other.copy_(host), lambda: other)]
        else:
            devbuf = torch.empty(n, device=dev)
            back = torch.empty_like(host)
            cases = [("h2d pageable", lambda: devbuf.copy_(host), lambda: devbuf),
                     ("d2h pageable", lambda: back.copy_(devbuf), lambda: back)]
            if dev.type == "cuda":
                pinned = torch.empty(n, pin_memory=True).copy_(host)
                pinned_back = torch.empty(n, pin_memory=True)
                cases += [("h2d pinned", lambda: devbuf.copy_(pinned, non_blocking=True), lambda: devbuf),
                          ("d2h pinned", lambda: pinned_back.copy_(devbuf, non_blocking=True), lambda: pinned_back)]
                st = time_fn(lambda: torch.empty(n).pin_memory(), device=dev, warmup=1, repeats=min(a.repeats, 10))
                runner.record({**case, "transfer": "pin a pageable buffer"}, "time", st.median_us, "us", stats=st)
        for name, fn, result in cases:
            fn()
            synchronize(dev)
            if not torch.equal(result().cpu(), host):
                raise RuntimeError(f"{name}: transferred data differs")
            st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
            gbps = nbytes / (st.median_us * 1e-6) / 1e9
            runner.record({**case, "transfer": name}, "time", st.median_us, "us", stats=st)
            runner.record({**case, "transfer": name}, "bandwidth", gbps, "GB/s", bytes_counted="bytes transferred")
    runner.finish()


if __name__ == "__main__":
    main()

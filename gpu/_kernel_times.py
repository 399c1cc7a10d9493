"""GPU time of each CUDA kernel a call launches, from the torch profiler (shared by the gpu/ scripts)."""
from __future__ import annotations

from collections import defaultdict

import torch


def cuda_kernel_times(fn, iters: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """``{kernel name: (us per call, launches per call)}`` over ``iters`` profiled calls of ``fn`` after
    ``warmup`` unprofiled ones."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    per, count = defaultdict(float), defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name] += getattr(ev, "device_time", None) or ev.cuda_time
            count[ev.name] += 1
    return {name: (us / iters, count[name] / iters) for name, us in per.items()}

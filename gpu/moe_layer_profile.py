"""Where one GLM-4.7-Flash MoE layer's GPU time goes: every CUDA kernel of the capturable forward
(``MoELayer.forward_static``, the path the CUDA graph replays) with its mean GPU time, from the torch profiler.

Usage (repository root, GPU machine): python gpu/moe_layer_profile.py [--tokens 1 256] [--recipe int4]
"""
import argparse
import os
import sys
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from _kernel_times import cuda_kernel_times  # noqa: E402
from _moe_common import glm_layer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 256], help="tokens per forward (default 1 256)")
    p.add_argument("--recipe", default="int4", choices=["int4", "glm4"], help="expert formats (default int4)")
    p.add_argument("--iters", type=int, default=20, help="profiled forwards per token count (default 20)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    layer = glm_layer(dev, shrink=False, recipe=a.recipe)
    for T in a.tokens:
        x = torch.randn(T, layer.hidden_size, device=dev, dtype=torch.float16)
        nv = torch.tensor([T], dtype=torch.int32, device=dev)
        times = cuda_kernel_times(lambda: layer.forward_static(x, nv), a.iters)
        total = sum(us for us, _ in times.values())
        print(f"T={T}: {total:.1f} us of kernel time per forward")
        for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
            print(f"  {us:8.2f} us  x{n:.0f}  {name[:110]}")


if __name__ == "__main__":
    main()

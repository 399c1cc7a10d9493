"""Run one quantized GEMM configuration a few times (for a profiler such as Nsight Compute to capture).

    python gpu/qgemm_one.py --shape 28672x8192 --m 1 [--format int4] [--config '{"family": "mma", ...}'] [--calls 5]

Without ``--config`` the packaged selection runs. Prints the configuration launched.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", required=True, help="NxK")
    p.add_argument("--m", type=int, default=1, help="activation rows")
    p.add_argument("--format", default="int4", help="weight format (group 128 where it has one)")
    p.add_argument("--config", default=None, help="KernelConfig as JSON (default: the packaged selection)")
    p.add_argument("--calls", type=int, default=5, help="launches (the first compiles)")
    args = p.parse_args()
    N, K = (int(v) for v in args.shape.split("x"))
    dev = torch.device("cuda")
    opts = {"mxfp4": dict(group_size=32), "nvfp4": dict(group_size=16), "fp8": dict(group_size=-1)}
    qt = tm.quantize(torch.randn(N, K) * 0.02, args.format, **opts.get(args.format, dict(group_size=128))).to(dev)
    x = torch.randn(args.m, K, device=dev, dtype=torch.float16)
    cfg = Q.KernelConfig.from_dict(json.loads(args.config)) if args.config else C.select_config(x, qt)
    print(json.dumps(cfg.as_dict()), flush=True)
    for _ in range(args.calls):
        Q.launch(x, qt, None, cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

"""Compile the quantized-GEMM kernels a benchmark run will use, one process per format in parallel.

Triton keeps compiled kernels in its on-disk cache, so the timed runs that follow (in other processes)
load them instead of compiling one by one. Runs every candidate configuration of
benchmarks/_gemm_common.candidate_configs (``--candidates``: all or swapab) for the given M values,
and every configuration of the packaged selection table, once on a small weight with the same
specialization (N, K multiples of 256).

    python gpu/qgemm_warm.py --formats int4,fp4 --m 1,16,64 --procs 12
"""
import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def warm(fmt: str, ms: list[int], part: int = 0, parts: int = 1, candidates: str = "all") -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    import _gemm_common as G
    from triton_marlin.kernels import qgemm as Q
    from triton_marlin.kernels import qgemm_config as C

    t0 = time.time()
    dev = torch.device("cuda")
    wc = G.make_weight("warm", fmt, 2048, 2048, dev, torch.float16, torch.Generator().manual_seed(0))
    configs = {(M, cfg) for M in ms for cfg in G.candidate_configs(M, which=candidates)}
    table = C.current_table(C.device_gpu_name(dev)) or {"entries": {}}
    for shapes in table["entries"].values():
        for buckets in shapes.values():
            for mb, d in buckets.items():
                configs.add((int(mb), Q.KernelConfig.from_dict(d)))
    failed = 0
    mine = sorted(configs, key=lambda mc: (mc[0], str(mc[1])))[part::parts]
    for M, cfg in mine:
        x = torch.randn(M, 2048, device=dev, dtype=torch.float16)
        try:
            Q.launch(x, wc.qt, None, cfg)
        except Exception:  # reported by the timed run that uses it
            failed += 1
    torch.cuda.synchronize()
    return (f"{fmt} part {part + 1}/{parts}: {len(mine)} configurations warmed in {time.time() - t0:.0f} s "
            f"({failed} failed)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default="int4")
    p.add_argument("--m", default="1,16,64,256,1024")
    p.add_argument("--procs", type=int, default=12, help="compile processes (configurations shared out)")
    p.add_argument("--candidates", default="all", help="candidate set of _gemm_common.candidate_configs")
    args = p.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    ms = [int(m) for m in args.m.split(",") if m]
    parts = max(1, args.procs // len(formats))
    jobs = [(f, ms, i, parts, args.candidates) for f in formats for i in range(parts)]
    with mp.get_context("spawn").Pool(min(len(jobs), max(args.procs, len(formats)))) as pool:
        for line in pool.starmap(warm, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()

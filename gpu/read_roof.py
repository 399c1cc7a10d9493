"""Read bandwidth of the access pattern the register-fragment GEMV uses, against contiguous reads of the same bytes.

    python gpu/read_roof.py [--rows 1024] [--cols 28672] [--out FILE]

The code words of an int4 weight are ``[K/8, N]`` int32 (row-major, a row = one word row across every column). A
GEMV program owns ``COLS`` columns and its ``NW`` warps walk the K tiles (16 word rows each) in step, warp w at tile
t0 + w: every 16-row x COLS block is ``16 * 4 * COLS`` bytes in 16 pieces ``N * 4`` bytes apart. This times a
kernel that only reads that pattern (and sums what it read, so nothing is optimized away) beside one that reads the
same bytes per program from one contiguous chunk, and fp16 ``torch.sum`` over the whole buffer: the read roof the GEMV
can reach with this layout, measured rather than assumed. CUDA-graph replay, the buffer larger than L2 by default.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from triton_marlin.bench import time_fn  # noqa: E402


@triton.jit
def _strip_read(w_ptr, out_ptr, R, N, COLS: tl.constexpr, NW: tl.constexpr):
    """Program p reads columns [COLS p, COLS (p + 1)) of every row, 16 NW rows a step."""
    pid = tl.program_id(0)
    rows = tl.arange(0, 16 * NW)[:, None]
    cols = pid * COLS + tl.arange(0, COLS)[None, :]
    acc = tl.zeros((16 * NW, COLS), dtype=tl.int32)
    for r0 in range(0, R, 16 * NW):
        acc += tl.load(w_ptr + (r0 + rows) * N + cols)
    tl.store(out_ptr + pid, tl.sum(acc))


@triton.jit
def _chunk_read(w_ptr, out_ptr, R, N, COLS: tl.constexpr, NW: tl.constexpr):
    """Program p reads the same number of words as a strip, from one contiguous chunk."""
    pid = tl.program_id(0)
    offs = tl.arange(0, 16 * NW)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    base = pid.to(tl.int64) * R * COLS
    acc = tl.zeros((16 * NW, COLS), dtype=tl.int32)
    for r0 in range(0, R, 16 * NW):
        acc += tl.load(w_ptr + base + r0 * COLS + offs)
    tl.store(out_ptr + pid, tl.sum(acc))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1024, help="word rows (K/8 for int4; default: K = 8192)")
    p.add_argument("--cols", type=int, default=28672, help="columns N (default 28672)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    args = p.parse_args()
    dev = torch.device("cuda")
    R, N = args.rows, args.cols
    w = torch.randint(-1000, 1000, (R, N), dtype=torch.int32, device=dev)
    nbytes = w.numel() * 4
    print(torch.cuda.get_device_name(), f"{R}x{N} int32 = {nbytes / 1e6:.1f} MB", flush=True)
    recs = []

    def record(name, us, **kw):
        rec = dict(name=name, us=us, TBps=nbytes / us / 1e6, rows=R, cols=N, **kw)
        recs.append(rec)
        print(json.dumps(rec), flush=True)

    h = w.view(torch.float16)
    record("torch_sum_fp16", time_fn(lambda: h.sum(dtype=torch.float32), device=dev, warmup=5, repeats=20,
                                     cuda_graph=True).median_us)
    for cols in (32, 64, 128):
        for nw in (1, 2, 4, 8):
            for stages in (1, 3):
                programs = N // cols
                out = torch.empty(programs, dtype=torch.int32, device=dev)
                for name, fn in (("strip", _strip_read), ("chunk", _chunk_read)):
                    def run():
                        fn[(programs,)](w, out, R, N, COLS=cols, NW=nw, num_warps=nw, num_stages=stages)
                    us = time_fn(run, device=dev, warmup=3, repeats=15, cuda_graph=True).median_us
                    record(name, us, block_cols=cols, warps=nw, stages=stages, programs=programs)
    if args.out:
        with open(args.out, "a") as f:
            for rec in recs:
                f.write(json.dumps(rec) + "\n")
    best = {}
    for rec in recs:
        best[rec["name"]] = max(best.get(rec["name"], 0), rec["TBps"])
    print("best TB/s:", json.dumps({k: round(v, 3) for k, v in best.items()}))


if __name__ == "__main__":
    main()

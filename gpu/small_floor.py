"""Floors of a small decode GEMV on the GPU (GLM-4.7-Flash expert shapes, int4, M=1), all timed by CUDA-graph
replay in one process: an empty kernel (one warp; one 256-thread program per SM), a read-only kernel that loads the
int4 weight words exactly as the mma GEMV's programs do (every load issued before the first use, one sum stored per
program), torch's int4 kernel and the table's qmatmul configuration.

    python gpu/small_floor.py [--out DIR]

What it answers: how much of the ~3.3-4 us a small GEMV takes is launch and one memory round trip, i.e. the part
no kernel change can remove, and how far above that floor each kernel sits. Writes ``small_floor.jsonl``.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402

SHAPES = {"glm47_expert_gate_up": (3072, 2048), "glm47_expert_down": (2048, 1536)}


@triton.jit
def _empty(out_ptr):
    if tl.program_id(0) == 0:
        tl.store(out_ptr, 1.0)


@triton.jit
def _read_words(qw_ptr, out_ptr, N, WORDS, ROWS: tl.constexpr, COLS: tl.constexpr):
    """One program: the WORDS x COLS int32 words of its column strip (all loads issued at once), summed."""
    pid = tl.program_id(0)
    r = tl.arange(0, ROWS)[:, None]
    c = pid * COLS + tl.arange(0, COLS)[None, :]
    w = tl.load(qw_ptr + r * N + c, mask=(c < N) & (r < WORDS), other=0)
    tl.store(out_ptr + pid, tl.sum(tl.sum(w, axis=1), axis=0).to(tl.float32))


def timed(fn, dev):
    return time_fn(fn, device=dev, warmup=10, repeats=50, cuda_graph=True).median_us


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for small_floor.jsonl")
    args = p.parse_args()
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "small_floor.jsonl", "w")
    sms = C.sm_count(dev)
    buf = torch.zeros(4096, device=dev)
    rows = []
    rows.append(("empty, 1 program x 1 warp", timed(lambda: _empty[(1,)](buf, num_warps=1), dev)))
    rows.append((f"empty, {sms} programs x 8 warps", timed(lambda: _empty[(sms,)](buf, num_warps=8), dev)))
    gen = torch.Generator().manual_seed(0)
    from _gemm_common import TorchInt4, WeightCase
    for name, (N, K) in SHAPES.items():
        qt = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, "int4", group_size=128).to(dev)
        qw = Q._operands(qt)[0]
        words = qw.shape[0]
        for cols in (16, 32):
            grid = (triton.cdiv(N, cols),)
            rows.append((f"{name}: read the {qw.numel() * 4 / 1e6:.2f} MB of words, {cols} columns a program "
                         f"({grid[0]} programs, 8 warps)",
                         timed(lambda: _read_words[grid](qw, buf, N, words, ROWS=triton.next_power_of_2(words), COLS=cols,
                                                           num_warps=8), dev)))
        x = torch.randn(1, K, generator=gen).to(dev, torch.float16)
        cfg = C.select_config(x, qt)
        rows.append((f"{name}: qmatmul's table configuration ({Q._config_key(cfg)})",
                     timed(lambda: Q.launch(x, qt, None, cfg), dev)))
        ti = TorchInt4(WeightCase(name, "int4", N, K, qt, qt.dequantize(torch.float16)))
        xb = x.to(torch.bfloat16)
        rows.append((f"{name}: torch int4 (_weight_int4pack_mm)", timed(lambda: ti(xb), dev)))
        w16 = qt.dequantize(torch.float16)
        rows.append((f"{name}: fp16 cuBLAS", timed(lambda: torch.nn.functional.linear(x, w16), dev)))
    for what, us in rows:
        rec.write(json.dumps({"what": what, "us": us}) + "\n")
        print(f"{us:8.2f} us  {what}", flush=True)
    rec.close()


if __name__ == "__main__":
    main()

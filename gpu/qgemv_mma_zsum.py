"""A/B of the mma GEMV's two ways to apply integer zero points, on the selection table's own entries: for every
int2/int3/int4 entry of the packaged table that runs the mma family, time it with ``fold=0`` (one packed subtract
a weight pair) and ``fold=1`` (operand 16 + q, zero point through the activation sums) in the same process
(CUDA-graph replay, the two interleaved over several rounds), and write the faster into the table.

    python gpu/qgemv_mma_zsum.py [--out DIR] [--rounds 3] [--dry-run]

Writes ``zsum_ab.jsonl`` (one line per entry: both times, the choice) under ``--out`` and, unless ``--dry-run``,
the updated table to the package (and a copy under ``--out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402

FORMATS = ("int4", "int2", "int3")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=".", help="folder for zsum_ab.jsonl and the table copy")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per configuration")
    p.add_argument("--dry-run", action="store_true", help="measure and report, leave the table alone")
    args = p.parse_args()
    dev = torch.device("cuda")
    gpu = C.device_gpu_name(dev)
    path = C.table_path(gpu)
    table = json.loads(path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "zsum_ab.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for fmt in FORMATS:
        for shape, buckets in sorted(table["entries"].get(fmt, {}).items()):
            N, K = (int(v) for v in shape.split("x"))
            mma = {mb: d for mb, d in buckets.items() if d.get("family") == "mma"}
            if not mma:
                continue
            qt = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, fmt, group_size=128).to(dev)
            ref_w = qt.dequantize(torch.float32)
            for mb, d in sorted(mma.items(), key=lambda kv: int(kv[0])):
                M = int(mb)
                x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
                ref = x.float() @ ref_w.T
                base = Q.KernelConfig.from_dict(d)
                cfgs = {0: replace(base, fold=0), 1: replace(base, fold=1)}
                times = {0: [], 1: []}
                errs = {}
                for f, cfg in cfgs.items():
                    y = Q.launch(x, qt, None, cfg)
                    errs[f] = ((y.float() - ref).norm() / ref.norm()).item()
                for _ in range(args.rounds):
                    for f, cfg in cfgs.items():
                        times[f].append(time_fn(lambda: Q.launch(x, qt, None, cfg), device=dev, warmup=3, repeats=15,
                                                cuda_graph=True).median_us)
                t0, t1 = sorted(times[0])[len(times[0]) // 2], sorted(times[1])[len(times[1]) // 2]
                ok = errs[1] < 1e-3 and errs[0] < 1e-3
                pick = 1 if ok and t1 < 0.99 * t0 else 0
                row = {"format": fmt, "shape": shape, "M": M, "config": base.as_dict(), "fold0_us": t0, "fold1_us": t1,
                       "fold0_times": times[0], "fold1_times": times[1], "err_fold0": errs[0], "err_fold1": errs[1],
                       "fold": pick}
                rec.write(json.dumps(row) + "\n")
                print(f"{fmt:5} {shape:11} M={M:<3} fold0 {t0:7.2f} us  fold1 {t1:7.2f} us  ({t1 / t0:.3f})  "
                      f"err {errs[0]:.1e} / {errs[1]:.1e}  -> fold={pick}", flush=True)
                if d.get("fold", 0) != pick:
                    buckets[mb] = cfgs[pick].as_dict()
                    changed += 1
    rec.close()
    C.validate_table(table)
    text = json.dumps(table, indent=1, sort_keys=True) + "\n"
    (out / path.name).write_text(text)
    if not args.dry_run:
        path.write_text(text)
        C.reset(gpu)
    print(f"{changed} entries changed; table {'not written (--dry-run)' if args.dry_run else f'written to {path}'}")


if __name__ == "__main__":
    main()

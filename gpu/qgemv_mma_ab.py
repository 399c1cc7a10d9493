"""A/B of one knob of the mma GEMV on the selection table's own entries: for every entry of the packaged table that
runs the mma family (of the formats the knob applies to), time it with each value of the knob in the same process
(CUDA-graph replay, the values interleaved over several rounds), and write the fastest into the table (a new value
only where it is at least 1% faster than the entry's own).

    python gpu/qgemv_mma_ab.py --knob fold|maxnreg [--values 0,96,128] [--out DIR] [--rounds 3] [--dry-run]

Knobs: ``fold`` (int2/int3/int4; 0 = one packed subtract a weight pair, 1 = operand 16 + q, zero point through the
activation sums), ``maxnreg`` (every mma format; the register cap ptxas compiles to, 0 = its own choice: more
registers let it issue the next tile's loads earlier, fewer let more warps share an SM). Writes ``<knob>_ab.jsonl``
(one line per entry: the times per value, the choice) under ``--out`` and, unless ``--dry-run``, the updated table to
the package (and a copy under ``--out``).
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

KNOBS = {"fold": (("int4", "int2", "int3"), (0, 1)),
         "maxnreg": (("int4", "fp4", "mxfp4", "nvfp4", "int2", "int3", "int8", "fp8"), (0, 96, 128))}
QUANT = {"mxfp4": dict(group_size=32), "nvfp4": dict(group_size=16), "fp8": dict(group_size=-1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--knob", required=True, choices=sorted(KNOBS), help="the KernelConfig field to A/B")
    p.add_argument("--values", default=None, help="comma-separated values (default: fold 0,1; maxnreg 0,96,128)")
    p.add_argument("--out", default=".", help="folder for <knob>_ab.jsonl and the table copy")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per configuration")
    p.add_argument("--dry-run", action="store_true", help="measure and report, leave the table alone")
    args = p.parse_args()
    formats, values = KNOBS[args.knob]
    if args.values:
        values = tuple(int(v) for v in args.values.split(","))
    dev = torch.device("cuda")
    gpu = C.device_gpu_name(dev)
    path = C.table_path(gpu)
    table = json.loads(path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / f"{args.knob}_ab.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for fmt in formats:
        for shape, buckets in sorted(table["entries"].get(fmt, {}).items()):
            N, K = (int(v) for v in shape.split("x"))
            mma = {mb: d for mb, d in buckets.items() if d.get("family") == "mma"}
            if not mma:
                continue
            qt = tm.quantize(torch.randn(N, K, generator=gen) * 0.02, fmt,
                             **QUANT.get(fmt, dict(group_size=128))).to(dev)
            ref_w = qt.dequantize(torch.float32)
            for mb, d in sorted(mma.items(), key=lambda kv: int(kv[0])):
                M = int(mb)
                x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
                ref = x.float() @ ref_w.T
                base = Q.KernelConfig.from_dict(d)
                own = getattr(base, args.knob)
                cfgs = {v: replace(base, **{args.knob: v}) for v in dict.fromkeys((own,) + tuple(values))}
                times = {v: [] for v in cfgs}
                errs = {}
                for v, cfg in cfgs.items():
                    y = Q.launch(x, qt, None, cfg)
                    errs[v] = ((y.float() - ref).norm() / ref.norm()).item()
                for _ in range(args.rounds):
                    for v, cfg in cfgs.items():
                        times[v].append(time_fn(lambda: Q.launch(x, qt, None, cfg), device=dev, warmup=3, repeats=15,
                                                cuda_graph=True).median_us)
                med = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
                ok = [v for v in cfgs if errs[v] < 2e-3]
                pick = min(ok, key=lambda v: med[v]) if own in ok else own
                if pick != own and med[pick] >= 0.99 * med[own]:
                    pick = own
                row = {"format": fmt, "shape": shape, "M": M, "config": base.as_dict(), "knob": args.knob,
                       "us": {str(v): med[v] for v in cfgs}, "times": {str(v): times[v] for v in cfgs},
                       "err": {str(v): errs[v] for v in cfgs}, "choice": pick}
                rec.write(json.dumps(row) + "\n")
                print(f"{fmt:5} {shape:11} M={M:<3} " + "  ".join(f"{args.knob}={v}: {med[v]:7.2f} us" for v in cfgs)
                      + f"  err {max(errs.values()):.1e}  -> {pick}", flush=True)
                if pick != own:
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

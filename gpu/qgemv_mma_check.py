"""GPU check of the register-fragment GEMV (``KernelConfig(family="mma")``): correctness of its PTX path, then a
sweep of its configurations at small M beside what the packaged selection table runs, fp16 cuBLAS and torch's
int4 kernel, all timed by CUDA-graph replay in one process.

    python gpu/qgemv_mma_check.py [--formats int4,fp4,...] [--shapes 8192x8192,...] [--m 1,4,8] [--out DIR] [--quick]
        [--refine 6 --regs 0,72,96,128 --folds 0,1 --xahead 0,1 [--write-table]]

``--formats`` (default int4): each format is checked and swept (int and fp4 at group 128, mxfp4 32, nvfp4 16, fp8
per-channel).
``--refine N``: the N fastest configurations of the sweep are timed again with every register cap of ``--regs``,
every zero-point mode of ``--folds`` (fold applies to int2/int3/int4) and activation load of ``--xahead``; then the
three fastest of everything and the table's own configuration are timed interleaved over three rounds (the
confirmation: a sweep's minimum is biased low), and with ``--write-table`` the fastest replaces the table's entry
when it is at least 1% faster there.
Writes ``mma_sweep.jsonl`` (one line per timed case) and prints a summary table: per format, shape and M the best
mma configuration, the table's configuration, cuBLAS and torch int4 (int4 only), speedups from the same run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import triton_marlin as tm  # noqa: E402
from triton_marlin.bench import time_fn  # noqa: E402
from triton_marlin.kernels import qgemm as Q  # noqa: E402
from triton_marlin.kernels import qgemm_config as C  # noqa: E402
from triton_marlin.kernels.qgemv_mma import MMA_FORMATS  # noqa: E402


def quant_opts(fmt: str, group: int, sym: bool) -> dict:
    """quantize() options of a check case for ``fmt``: mxfp4/nvfp4 take their fixed groups, the minifloats have no
    zero point."""
    if fmt == "mxfp4":
        return dict(group_size=32)
    if fmt == "nvfp4":
        return dict(group_size=16)
    if fmt in ("fp4", "fp8"):
        return dict(group_size=group)
    return dict(group_size=group, symmetric=sym)


def write_entry(fmt: str, shape: str, M: int, cfg, dev) -> None:
    """Put ``cfg`` into the packaged table at (format, shape, M bucket of M) and reload it."""
    gpu = C.device_gpu_name(dev)
    path = C.table_path(gpu)
    table = json.loads(path.read_text())
    table["entries"].setdefault(fmt, {}).setdefault(shape, {})[str(C.m_bucket(M))] = cfg.as_dict()
    C.validate_table(table)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    C.reset(gpu)


def check(dev, fmt: str) -> int:
    """The PTX path against an fp64 product on the dequantized weight (tolerance: fp16 output rounding plus
    fp32 accumulation, 2e-3 relative Frobenius; bf16 output 8e-3)."""
    failures = 0
    gen = torch.Generator().manual_seed(1)
    cases = [(128, 256, 1, 128, True, torch.float16, 16, 1, 1, 0), (333, 96, 8, 32, True, torch.float16, 32, 2, 1, 0),
             (256, 1024, 3, 128, False, torch.float16, 64, 2, 4, 1), (512, 512, 5, -1, True, torch.float16, 32, 4, 2, 1),
             (384, 640, 2, 64, False, torch.bfloat16, 64, 2, 3, 1), (1024, 2048, 8, 128, True, torch.float16, 64, 8, 2, 1),
             (300, 1408, 1, 128, True, torch.float16, 32, 4, 3, 2),
             (96, 4096, 1, 256, True, torch.bfloat16, 32, 1, 16, 0), (256, 1024, 16, 128, True, torch.float16, 32, 1, 4, 2),
             (200, 768, 11, 64, False, torch.bfloat16, 64, 2, 2, 2), (128, 512, 13, -1, True, torch.float16, 16, 1, 2, 1)]
    for N, K, M, group, sym, dtype, bn, nw, split, pf in cases:
        w = torch.randn(N, K, generator=gen)
        if fmt == "nvfp4" and K % 16 or fmt == "mxfp4" and K % 32 or group > 0 and K % group:
            continue
        qt = tm.quantize(w, fmt, **quant_opts(fmt, group, sym)).to(dev)
        x = torch.randn(M, K, generator=gen).to(dev, dtype)
        bias = torch.randn(N, generator=gen).to(dev, dtype)
        cfg = Q.KernelConfig("mma", block_m=16, block_n=bn, num_warps=nw, split_k=split, prefetch=pf)
        out = Q.launch(x, qt, bias, cfg)
        out2 = Q.launch(x, qt, bias, cfg)      # the split-K tickets reset themselves
        ref = x.double() @ qt.dequantize(torch.float64).T + bias.double()
        err = ((out.double() - ref).norm() / ref.norm()).item()
        err2 = ((out2.double() - ref).norm() / ref.norm()).item()
        tol = 8e-3 if dtype == torch.bfloat16 else 2e-3
        ok = err < tol and err2 < tol and torch.isfinite(out).all().item()
        failures += not ok
        print(f"check {fmt} N={N} K={K} M={M} g={qt.group_size} sym={sym} {dtype} bn={bn} w={nw} split={split} "
              f"pf={pf}: "
              f"err {err:.2e} / {err2:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return failures


def mma_configs(N: int, K: int, M: int, tile_k: int, quick: bool) -> list:
    """TN 16-column tiles a thread (block_n 16 TN) x NW warps (up to 16) splitting a program's K tiles x tiles ahead x
    split-K, kept where the grid holds 1000-8000 warps (the range where the first sweeps found the best); quick:
    the default rule's configuration and its neighbours (16/32/64 columns, 4/8 warps, one tile ahead)."""
    tiles = -(-K // tile_k)
    if quick:
        base = C.mma_default(N, tiles, C.sm_count(torch.device("cuda")))
        out = [base]
        for bn, nw in ((16, 8), (32, 4), (32, 8), (64, 4)):
            cfg = Q.KernelConfig("mma", block_m=8 if M <= 8 else 16, block_n=bn, num_warps=nw, split_k=base.split_k,
                                 prefetch=1)
            if cfg not in out and nw * cfg.split_k <= tiles:
                out.append(cfg)
        return out
    out = []
    for tn in (1, 2, 4):
        for nw in (1, 2, 4, 8, 16):
            for pf in (0, 1, 2):
                for split in (1, 2, 4, 8, 16):
                    warps = -(-N // (16 * tn)) * split * nw
                    if split * nw > tiles or not 1000 <= warps <= 8000 or (pf == 2 and tn == 4):
                        continue
                    out.append(Q.KernelConfig("mma", block_m=8 if M <= 8 else 16, block_n=16 * tn, num_warps=nw,
                                              split_k=split, prefetch=pf))
    return out


def timed(fn, dev, repeats=30):
    return time_fn(fn, device=dev, warmup=5, repeats=repeats, cuda_graph=True).median_us


def refined(ranked: list, regs: list, folds: list, xahead: list, fmt: str, top: int) -> list:
    """The ``top`` fastest swept configurations with every register cap, zero-point mode (fold: integer codes of up to
    4 bits only) and activation load (x_ahead), those already timed left out."""
    folds = folds if fmt in ("int2", "int3", "int4") else [0]
    seen = {cfg for _, cfg in ranked}
    out = []
    for _, cfg in ranked[:top]:
        for r in regs:
            for f in folds:
                for xa in xahead:
                    c = replace(cfg, maxnreg=r, fold=f, x_ahead=xa)
                    if c not in seen:
                        seen.add(c)
                        out.append(c)
    return out


def confirm(cands: list, launch, dev, rounds: int = 3) -> list:
    """Median of ``rounds`` interleaved graph-replay timings per configuration, fastest first."""
    times = {c: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            times[c].append(timed(lambda: launch(c), dev, repeats=20))
    return sorted(((sorted(t)[len(t) // 2], c) for c, t in times.items()), key=lambda tc: tc[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default="int4", help=f"comma-separated, of {','.join(MMA_FORMATS)}")
    p.add_argument("--shapes", default="8192x8192,28672x8192,3072x2048,2048x1536,4096x4096")
    p.add_argument("--m", default="1,4,8", help="activation rows to time")
    p.add_argument("--out", default=".", help="folder for mma_sweep.jsonl")
    p.add_argument("--quick", action="store_true", help="fewer configurations")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--refine", type=int, default=0, help="re-time the N fastest with --regs x --folds, then confirm")
    p.add_argument("--regs", default="0", help="register caps of the refine step (0 = the compiler's choice)")
    p.add_argument("--folds", default="0", help="zero-point modes of the refine step (integer codes up to 4 bits)")
    p.add_argument("--xahead", default="0", help="activation loads of the refine step (x_ahead: 0 per slot, 1 with "
                                                 "the words)")
    p.add_argument("--write-table", action="store_true",
                   help="write a confirmed configuration >= 1%% faster than the table's into the packaged table")
    args = p.parse_args()
    regs = [int(v) for v in args.regs.split(",")]
    folds = [int(v) for v in args.folds.split(",")]
    xahead = [int(v) for v in args.xahead.split(",")]
    formats = args.formats.split(",")
    unknown = set(formats) - set(MMA_FORMATS)
    if unknown:
        p.error(f"the mma family reads {MMA_FORMATS}, not {sorted(unknown)}")
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    failures = 0
    if not args.no_check:
        for fmt in formats:
            failures += check(dev, fmt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = open(out / "mma_sweep.jsonl", "w")
    gen = torch.Generator().manual_seed(0)
    summary = []
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        w = torch.randn(N, K, generator=gen) * 0.02
        w16 = w.to(dev, torch.float16)                  # cuBLAS's operand (its time does not depend on values)
        qts = {}
        for fmt in formats:
            qt = tm.quantize(w, fmt, **quant_opts(fmt, -1 if fmt == "fp8" else 128, True)).to(dev)
            qts[fmt] = (qt, qt.dequantize(torch.float64).T.contiguous())
        for M in (int(v) for v in args.m.split(",")):
            x = torch.randn(M, K, generator=gen).to(dev, torch.float16)
            cublas = timed(lambda: torch.nn.functional.linear(x, w16), dev)
            for fmt in formats:
                qt, wt = qts[fmt]
                ref = x.double() @ wt
                t0 = time.time()
                table_cfg = C.select_config(x, qt)
                table_us = timed(lambda: Q.launch(x, qt, None, table_cfg), dev)
                tint4 = None
                if fmt == "int4":
                    try:
                        from _gemm_common import TorchInt4, WeightCase
                        ti = TorchInt4(WeightCase(shape, "int4", N, K, qt, qt.dequantize(torch.float16)))
                        xb = x.to(torch.bfloat16)
                        tint4 = timed(lambda: ti(xb), dev)
                    except Exception as e:  # noqa: BLE001
                        print(f"torch int4 unavailable: {e}")
                def launch(cfg):
                    return Q.launch(x, qt, None, cfg)

                ranked = []
                for stage in (0, 1):
                    cfgs = (mma_configs(N, K, M, Q.format_spec(qt).tile_k, args.quick) if stage == 0
                            else refined(ranked, regs, folds, xahead, fmt, args.refine) if args.refine else [])
                    for cfg in cfgs:
                        try:
                            y = launch(cfg)
                            err = ((y.double() - ref).norm() / ref.norm()).item()
                            us = timed(lambda: launch(cfg), dev, repeats=15)
                        except Exception as e:  # noqa: BLE001
                            print(f"{fmt} {shape} M={M} {Q._config_key(cfg)}: {type(e).__name__}: {str(e)[:200]}")
                            continue
                        rec.write(json.dumps({"format": fmt, "shape": shape, "M": M, "config": cfg.as_dict(),
                                              "us": us, "err": err, "stage": stage}) + "\n")
                        if err > 2e-3:
                            failures += 1
                            print(f"{fmt} {shape} M={M} {Q._config_key(cfg)}: error {err:.2e} FAIL")
                            continue
                        ranked.append((us, cfg))
                    ranked.sort(key=lambda tc: tc[0])
                best = ranked[0] if ranked else None
                confirmed = None
                if args.refine and ranked:
                    cands = list(dict.fromkeys([table_cfg] + [c for _, c in ranked[:3]]))
                    conf = confirm(cands, launch, dev)
                    table_conf = next(us for us, c in conf if c == table_cfg)
                    best = conf[0]
                    confirmed = {"table_us": table_conf, "best_us": best[0], "best_cfg": best[1].as_dict(),
                                 "all": [(us, c.as_dict()) for us, c in conf]}
                    if args.write_table and best[1] != table_cfg and best[0] <= 0.99 * table_conf:
                        write_entry(fmt, shape, M, best[1], dev)
                        confirmed["written"] = True
                    print(f"confirm {fmt} {shape} M={M}: table {table_conf:.2f} us, best {best[0]:.2f} us "
                          f"{Q._config_key(best[1])}{' (written)' if confirmed.get('written') else ''}", flush=True)
                line = {"format": fmt, "group": qt.group_size, "shape": shape, "M": M, "cublas_us": cublas,
                        "table_us": table_us, "table_cfg": table_cfg.as_dict(), "torch_int4_us": tint4,
                        "mma_best_us": best[0] if best else None,
                        "mma_best_cfg": best[1].as_dict() if best else None, "confirmed": confirmed,
                        "sweep_s": round(time.time() - t0, 1)}
                rec.write(json.dumps(line) + "\n")
                rec.flush()
                summary.append(line)
                print(json.dumps(line), flush=True)
    print("\nformat shape        M  cuBLAS  table  table-cfg  mma-best  torch-int4  mma x cuBLAS  mma x table  "
          "mma x tint4  best cfg")
    for s in summary:
        b = s["mma_best_us"]
        ti = s["torch_int4_us"]
        cfg = s["mma_best_cfg"] or {}
        tc = s["table_cfg"]
        print(f"{s['format']:<6} {s['shape']:<12} {s['M']:>2} {s['cublas_us']:7.2f} {s['table_us']:6.2f} "
              f"{tc['family'] + '/bn' + str(tc['block_n']):>10} {b or float('nan'):9.2f} "
              f"{ti or float('nan'):10.2f} {s['cublas_us'] / b if b else 0:12.2f} "
              f"{s['table_us'] / b if b else 0:11.2f} "
              f"{(ti / b) if (b and ti) else 0:11.2f}  bn{cfg.get('block_n')} w{cfg.get('num_warps')} "
              f"sk{cfg.get('split_k')} pf{cfg.get('prefetch')}")  # w = warps splitting K in a program
    rec.close()
    print(f"failures: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

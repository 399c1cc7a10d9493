"""Find the fastest quantized-GEMM kernel per (format, shape, M bucket) and write the selection table.

Runs the variant sweep of bench_kernel_variants, keeps the fastest configuration of each case,
reports the crossover points (the M where the winning family changes) and how the default rule
(no table) compares with the measured best, then writes the table the library loads:
``src/triton_marlin/kernels/tuned/<gpu-slug>.json`` (or ``--table PATH``). Run it on the GPU the
table is for; ``--dry-run`` measures without writing.

    python benchmarks/bench_kernel_selection.py --shapes 8192x8192,3072x2048 --formats int4,fp4
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402
import bench_kernel_variants as V  # noqa: E402

from triton_marlin.bench import BenchRunner  # noqa: E402


def add_args(p):
    V.add_args(p)
    p.add_argument("--table", default=None,
                   help="where to write the table (default: the package's kernels/tuned/<gpu-slug>.json)")
    p.add_argument("--merge", action="store_true",
                   help="keep entries of an existing table that this run did not measure")
    p.add_argument("--dry-run", action="store_true", help="measure and report, write nothing")


def main(argv=None):
    runner = BenchRunner("bench_kernel_selection", description=__doc__.split("\n\n")[0],
                         add_args=add_args, argv=argv)
    args = runner.args
    G.prepare(args.device)
    import triton
    from triton_marlin.kernels import qgemm as Q
    from triton_marlin.kernels import qgemm_config as C

    if args.device.type == "cpu":
        runner.note("CPU: Triton kernels run in the interpreter; times are not performance figures")
    dtype = G.act_dtype(args)
    default_gap = []

    def on_case(name, fmt, M, timed, fp_t):
        if not timed:
            return
        N, K = G.shapes_from(args)[name]
        best_cfg, best_t = timed[0]
        qt = G.make_weight(name, fmt, 64, 256, torch.device("cpu"), dtype, torch.Generator()).qt
        dflt = C.default_config(M, N, K, qt, args.device)
        dflt_t = next((t for c, t in timed if c == dflt), None)
        case = {"shape": name, "N": N, "K": K, "M": M, "format": fmt, "dtype": args.dtype}
        runner.record(dict(case, variant=Q._config_key(best_cfg)), "selected_time", best_t, "us",
                      speedup_vs_fp16=fp_t / best_t)
        if dflt_t is not None:
            runner.record(dict(case, variant=Q._config_key(dflt)), "default_rule_slowdown",
                          dflt_t / best_t, "x")
            default_gap.append(dflt_t / best_t)

    results = V.sweep(runner, args, on_case=on_case)

    entries: dict = {}
    for (name, fmt, M), timed in results.items():
        if not timed:
            continue
        N, K = G.shapes_from(args)[name]
        entries.setdefault(fmt, {}).setdefault(f"{N}x{K}", {})[str(C.m_bucket(M))] = timed[0][0].as_dict()

    # crossovers: M at which the winning family changes, per (format, shape)
    for fmt, shapes in entries.items():
        for shape, buckets in shapes.items():
            prev = None
            for mb in sorted(buckets, key=int):
                fam = buckets[mb]["family"]
                if prev is not None and fam != prev[1]:
                    runner.record({"format": fmt, "shape": shape, "from": prev[1], "to": fam},
                                  "crossover_M", int(mb), "rows", after_M=int(prev[0]))
                prev = (mb, fam)
    if default_gap:
        runner.note(f"default rule vs measured best: median slowdown {sorted(default_gap)[len(default_gap) // 2]:.2f}x, "
                    f"worst {max(default_gap):.2f}x over {len(default_gap)} cases")

    gpu = C.device_gpu_name(args.device)
    table = {"gpu": gpu, "triton": triton.__version__, "torch": torch.__version__,
             "dtype": args.dtype, "source": "benchmarks/bench_kernel_selection.py", "entries": entries}
    path = Path(args.table) if args.table else C.table_path(gpu)
    if args.merge and path.is_file():
        old = json.loads(path.read_text())
        for fmt, shapes in old.get("entries", {}).items():
            for shape, buckets in shapes.items():
                for mb, cfg in buckets.items():
                    entries.setdefault(fmt, {}).setdefault(shape, {}).setdefault(mb, cfg)
    C.validate_table(table)
    if args.dry_run or args.quick and args.table is None:
        runner.note(f"table not written ({'--dry-run' if args.dry_run else '--quick without --table'})")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        C.reset(gpu)
        runner.note(f"wrote selection table {path}")
    runner.finish()


if __name__ == "__main__":
    main()

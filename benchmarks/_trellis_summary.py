"""Short table of bench_gemm_trellis records (JSON lines): per case the full path, the decode kernel
(and the path the default dispatch took: static / tc / generic), the tensor-core and FMA GEMVs forced,
each Hadamard launch and fp16 cuBLAS (graph-replay medians, us), the speedups, and per swept case
the fastest static-GEMV configuration and the default's time; where two codes were timed on the same case
(e.g. 1mad2 and 1mad2r), the ratio of their kernel and full-path times. Used by gpu/trellis_check.sh.

    python benchmarks/_trellis_summary.py trellis.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    times = defaultdict(dict)
    sweeps = defaultdict(list)
    for line in open(path):
        r = json.loads(line)
        if r.get("benchmark") != "bench_gemm_trellis":
            continue
        c = r["case"]
        shape = c["shape"] if c.get("dtype", "float16") == "float16" else f"{c['shape']}/{c['dtype'][:4]}"
        key = (shape, c["M"], c["format"], c["code"])
        if r["metric"] in ("time", "time_launch") and c["format"] != "int4":
            # graph replay when measured (CUDA), else launch-inclusive
            slot = times[(shape, c["M"])] if c["format"] == "fp16" else times[key]
            name = "fp16" if c["format"] == "fp16" else c["impl"]
            if r["metric"] == "time" or name not in slot:
                slot[name] = r["value"]
            if c.get("path") and c["impl"] == "trellis_kernel":
                slot["path"] = c["path"]
        elif r["metric"] == "sweep_time":
            sweeps[key].append((r["value"], c["config"]))
    print(f"{'shape':16s} {'M':>3s} {'format':8s} {'code':6s} {'full':>7s} {'kernel':>7s} {'h_in':>6s} "
          f"{'h_out':>6s} {'fp16':>7s} {'full x':>7s} {'kern x':>7s} {'fused_in':>8s} {'tc full':>7s} {'tc kern':>7s} "
          f"{'tc k x':>7s} {'fma k':>7s} {'path':>6s}")
    for key in sorted(k for k in times if len(k) == 4):
        t = times[key]
        fp = times.get(key[:2], {}).get("fp16")
        full, kern = t.get("trellis_full"), t.get("trellis_kernel")
        f = lambda v, w=7: f"{v:{w}.1f}" if v is not None else " " * (w - 1) + "-"  # noqa: E731
        sx = lambda v: f"{fp / v:7.2f}" if fp and v else "      -"  # noqa: E731
        print(f"{key[0]:16s} {key[1]:3d} {key[2]:8s} {key[3]:6s} {f(full)} {f(kern)} {f(t.get('hadamard_in'), 6)} "
              f"{f(t.get('hadamard_out'), 6)} {f(fp)} {sx(full)} {sx(kern)} {f(t.get('trellis_full_fused_in'), 8)} "
              f"{f(t.get('trellis_full_tc'))} {f(t.get('trellis_kernel_tc'))} {sx(t.get('trellis_kernel_tc'))} "
              f"{f(t.get('trellis_kernel_fma'))} {t.get('path', '-'):>6s}")
    pairs = [("1mad2", "1mad2r")]    # (base, new): new / base time, same run
    for base, new in pairs:
        rows = [k for k in sorted(times) if len(k) == 4 and k[3] == new and k[:3] + (base,) in times]
        if rows:
            print(f"{new} / {base} time (same run; < 1: {new} faster): kernel as dispatched, tc forced, full path")
        for key in rows:
            t_new, t_base = times[key], times[key[:3] + (base,)]
            r = lambda impl: (f"{t_new[impl] / t_base[impl]:6.3f}" if impl in t_new and impl in t_base  # noqa: E731
                              else "     -")
            print(f"  {key[0]:16s} M={key[1]:<2d} {key[2]:8s} {r('trellis_kernel')} {r('trellis_kernel_tc')} "
                  f"{r('trellis_full')}")
    for key in sorted(sweeps):
        rows = sorted(sweeps[key])
        print(f"sweep {key[0]} M={key[1]} {key[2]} {key[3]}: best {rows[0][0]:.1f} us {rows[0][1]}; "
              f"worst {rows[-1][0]:.1f}; all: " + "; ".join(f"{v:.1f} {c.replace('gemv=static,', '')}"
                                                           for v, c in rows))


if __name__ == "__main__":
    main(sys.argv[1])

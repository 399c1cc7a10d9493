"""Compact tables from the quantized-GEMM benchmark JSON lines (printed last by gpu/qgemm_check.sh)."""
import json
import sys
from collections import defaultdict


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def variants(path):
    recs = load(path)
    if not recs:
        return
    fp16 = {}
    best = {}
    per_family = defaultdict(lambda: float("inf"))
    for r in recs:
        c = r["case"]
        if "M" not in c:
            continue
        key = (c["shape"], c["format"], c["M"])
        if r["metric"] == "time" and c.get("variant") == "fp16_dense":
            fp16[key] = r["value"]
        if r["metric"] == "time" and "family" in c:
            per_family[key + (c["family"],)] = min(per_family[key + (c["family"],)], r["value"])
        if r["metric"] == "best_time":
            best[key] = (r["value"], c["variant"])
    print(f"\n{'shape':12} {'fmt':6} {'M':>5} {'fp16us':>8} {'gemv':>8} {'dot':>8} {'dequant':>8} {'best x':>7}  best variant")
    for key in sorted(best, key=lambda k: (k[0], k[1], k[2])):
        t, v = best[key]
        fams = [per_family.get(key + (f,), float("nan")) for f in ("gemv", "dot", "dequant")]
        print(f"{key[0][:12]:12} {key[1]:6} {key[2]:5d} {fp16.get(key, float('nan')):8.2f} "
              + " ".join(f"{x:8.2f}" for x in fams)
              + f" {fp16.get(key, float('nan')) / t:7.2f}  {v.replace('family=', '').replace(',num_stages', ',st').replace(',group_m=8', '').replace(',swap_ab=0', '').replace(',dot_k=16', '')}")


def gemm(path):
    recs = load(path)
    if not recs:
        return
    rows = defaultdict(dict)
    for r in recs:
        c = r["case"]
        key = (c["shape"], c["format"], c["M"])
        rows[key][(c["impl"], r["metric"])] = r["value"]
        if r["metric"] == "bandwidth" and c["impl"] == "triton_marlin":
            rows[key]["roof"] = r.get("roofline")
    print(f"\n{'shape':12} {'fmt':6} {'M':>5} {'ours us':>8} {'launch':>8} {'fp16 us':>8} {'int4tg':>8} {'x fp16':>7} {'x tg':>6} {'copy%':>6} {'err':>8}")
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2])):
        d = rows[key]
        dense = next((v for k, v in d.items() if isinstance(k, tuple) and k[0].endswith("cublas")
                      and k[1] == "time"), float("nan"))
        print(f"{key[0][:12]:12} {key[1]:6} {key[2]:5d} {d.get(('triton_marlin', 'time'), float('nan')):8.2f} "
              f"{d.get(('triton_marlin', 'time_launch'), float('nan')):8.2f} {dense:8.2f} "
              f"{d.get(('torch_int4', 'time'), float('nan')):8.2f} {d.get(('triton_marlin', 'speedup_vs_fp16'), float('nan')):7.2f} "
              f"{d.get(('triton_marlin', 'speedup_vs_torch_int4'), float('nan')):6.2f} {100 * (d.get('roof') or float('nan')):6.1f} "
              f"{d.get(('triton_marlin', 'rel_err_vs_fp32'), float('nan')):8.1e}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        kind, path = arg.split("=", 1)
        {"variants": variants, "gemm": gemm}[kind](path)

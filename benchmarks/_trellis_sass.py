"""Compile the trellis decode GEMV for a GPU architecture (no GPU needed: Triton bundles ptxas and
nvdisasm) and count the SASS instructions of its K loop per decoded weight.

Run as a script (bench_trellis_performance.py --sections sass does, in a subprocess without
TRITON_INTERPRET); prints one JSON object.

    python benchmarks/_trellis_sass.py --bits 3 --code 3inst --asm 1
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re


def loop_counts(sass: str) -> tuple[int, dict]:
    """Instructions of the longest backward-branch loop of a SASS listing, and their opcodes."""
    ins, labels = [], {}
    for line in sass.splitlines():
        m = re.match(r"\s*(\.?L\w+):", line)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = re.match(r"\S+\t(.*?);", line)
        if m:
            ins.append(m.group(1).strip())
    best = None
    for i, t in enumerate(ins):
        m = re.search(r"BRA\s+(\.?L\w+)", t)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            a = labels[m.group(1)]
            if best is None or i - a > best[1] - best[0]:
                best = (a, i)
    if best is None:
        raise RuntimeError("no loop found in the SASS listing")
    body = ins[best[0]:best[1] + 1]
    ops = collections.Counter()
    for t in body:
        parts = t.split()
        op = parts[1] if parts[0].startswith("@") else parts[0]
        ops[op.split(".")[0]] += 1
    return len(body), dict(ops.most_common())


def tc_counts(a, tg, triton, GPUTarget, ASTSource, get_sass) -> dict:
    """The tensor-core GEMV's loop: instructions per weight (64 * tn weights per thread and K step), its
    opcodes, and the layout checks its inline PTX relies on (every inline-asm operand one element per
    thread; no shared-memory staging of operands in the loop)."""
    cfg = tg.TC_CONFIGS[(a.bits, bool(a.wide))]
    tn = a.block_tn or cfg["tn"]
    nw = a.num_warps or cfg["num_warps"]
    sig = {"x_ptr": "*fp32", "qw_ptr": "*i32", "s_ptr": "*fp16", "out_ptr": "*fp32", "N": "i32", "K": "i32",
           "stride_xm": "i32", "stride_om": "i32", "ITERS_PER_SPLIT": "i32", "M": "i32", "BITS": "constexpr",
           "CODE": "constexpr", "TN": "constexpr", "NW": "constexpr", "ASM": "constexpr",
           "USE_ATOMIC": "constexpr", "stride_os": "i32", "PREFETCH": "constexpr", "PREFETCH_X": "constexpr"}
    prefetch = int(cfg.get("prefetch", False) if a.prefetch is None else a.prefetch)
    prefetch_x = bool(cfg.get("prefetch_x", False) if a.prefetch_x is None else a.prefetch_x) and prefetch >= 1
    const = {"BITS": a.bits, "CODE": tg.CODE_IDS[a.code], "TN": tn, "NW": nw, "ASM": bool(a.asm),
             "USE_ATOMIC": False, "PREFETCH": prefetch, "PREFETCH_X": prefetch_x}
    k = triton.compile(ASTSource(fn=tg._trellis_gemv_tc_kernel, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", a.arch, 32), options={"num_warps": nw})
    sass = get_sass(k.asm["cubin"])
    n, ops = loop_counts(sass)
    total = sum(1 for line in sass.splitlines() if re.match(r"\S+\t", line))
    defs = dict(re.findall(r"^(#\w+) = (.*)$", k.asm["ttgir"], re.M))
    asm_layouts = sorted({defs.get(name, name) for name in
                          re.findall(r"elementwise_inline_asm.*?: .*?-> .*?(#\w+)", k.asm["ttgir"])})
    wpt = 64 * tn
    # the decode's mix per weight: IMAD and IDP (dp4a) share the FMA-heavy pipe, SHF (funnel shifts:
    # windows, 1mad2r's rotation) and LOP3 run on the ALU pipe
    mix = {op: ops.get(op, 0) / wpt for op in ("IMAD", "IDP", "SHF", "LOP3", "HMMA")}
    return {"kernel": "tc", "bits": a.bits, "code": a.code, "asm": bool(a.asm), "arch": a.arch, "block_tn": tn,
            "num_warps": nw, "prefetch": prefetch, "prefetch_x": prefetch_x, "loop_instructions": n, "kernel_instructions": total, "weights_per_thread": wpt,
            "instr_per_weight": n / wpt, "per_weight": mix, "opcodes": ops, "asm_layouts": asm_layouts,
            "local_alloc": k.asm["ttgir"].count("local_alloc"), **occupancy(k, nw, a.arch),
            "triton": triton.__version__}


def occupancy(k, num_warps: int, arch: int) -> dict:
    """Registers and spills (``ptxas -v`` on the kernel's PTX, the ptxas Triton bundles) and the CTAs and
    warps an SM can hold: 64K registers (allocated per warp in units of 256), at most 32 CTAs and 64
    warps (sm_80/sm_90), shared memory as compiled (+1 KB reserved per CTA, 228 KB per SM on sm_90)."""
    import subprocess
    import tempfile
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    proc = subprocess.run([get_ptxas(arch).path, "-v", f"-arch={sm}", f.name, "-o", os.devnull],
                          capture_output=True, text=True)
    os.unlink(f.name)
    txt = proc.stdout + proc.stderr
    regs = int(re.search(r"Used (\d+) registers", txt).group(1))
    sp = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", txt)
    per_warp = -(-regs * 32 // 256) * 256
    smem = k.metadata.shared + 1024
    ctas = min(32, 64 // num_warps, (65536 // per_warp) // num_warps, (228 * 1024) // smem)
    return {"registers": regs, "spill_store_bytes": int(sp.group(1)), "spill_load_bytes": int(sp.group(2)),
            "shared_bytes": k.metadata.shared, "ctas_per_sm": ctas, "warps_per_sm": ctas * num_warps}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--code", default="3inst", choices=["3inst", "1mad", "hyb", "1mad2", "1mad2r"])
    p.add_argument("--asm", type=int, default=1, help="1: inline-PTX decode (what CUDA runs), 0: portable")
    p.add_argument("--block-tn", type=int, default=None, help="default 8 (static), TC_CONFIGS (tc)")
    p.add_argument("--wide", type=int, default=0, help="tc: 1 = the config of N >= TC_WIDE_N (TC_CONFIGS)")
    p.add_argument("--block-tk", type=int, default=None)
    p.add_argument("--num-warps", type=int, default=None, help="default 4 (static), TC_CONFIGS (tc)")
    p.add_argument("--prefetch", type=int, default=None, help="1/0: software prefetch of the next words "
                   "(default: the launcher's default; tc: 2 = two K steps ahead)")
    p.add_argument("--prefetch-x", type=int, default=None, help="tc: 1 = the next step's activations load with "
                   "its words (needs --prefetch >= 1; default TC_CONFIGS)")
    p.add_argument("--rows", type=int, default=1, help="rows of x per program (M <= rows costs one decode)")
    p.add_argument("--rotate", type=int, default=0, help="1: the variant that applies the input Hadamard "
                   "transform itself (block 128)")
    p.add_argument("--arch", type=int, default=90, help="SM architecture (90 = Hopper)")
    p.add_argument("--kernel", default="static", choices=["static", "tc"],
                   help="static: the FMA GEMV (_trellis_gemv_static_kernel); tc: the tensor-core GEMV "
                        "(_trellis_gemv_tc_kernel, 1mad/1mad2/1mad2r; --block-tn = its tiles per thread, default "
                        "TC_CONFIGS; registers, spills and CTAs per SM from ptxas -v)")
    a = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1: the kernel must be compiled, not interpreted")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.tools.disasm import get_sass

    from triton_marlin.kernels import trellis_gemm as tg

    if a.kernel == "tc":
        print(json.dumps(tc_counts(a, tg, triton, GPUTarget, ASTSource, get_sass)))
        return
    a.block_tn = a.block_tn or 8
    a.num_warps = a.num_warps or 4
    default_tk, default_prefetch = tg.GEMV_DEFAULTS["m1"][(a.code, a.bits)]
    tk = a.block_tk or default_tk
    prefetch = default_prefetch if a.prefetch is None else bool(a.prefetch)
    sig = {"x_ptr": "*fp32", "qw_ptr": "*i32", "s_ptr": "*fp16", "lut_ptr": "*fp16", "out_ptr": "*fp32",
           "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32", "group": "i32",
           "ITERS_PER_SPLIT": "i32", "BITS": "constexpr", "CODE": "constexpr", "BLOCK_TN": "constexpr",
           "BLOCK_TK": "constexpr", "USE_ATOMIC": "constexpr", "GROUPED": "constexpr", "ASM": "constexpr",
           "GATHER": "constexpr", "stride_os": "i32", "PREFETCH": "constexpr", "M": "i32",
           "ROWS": "constexpr"}
    sig.update({"sv_ptr": "constexpr", "xr_ptr": "constexpr", "ROTATE_HB": "constexpr",
                "ROTATE_F1": "constexpr", "ROTATE_F2": "constexpr", "rotate_scale": "fp32"})
    if a.rotate:
        sig.update({"x_ptr": "*fp16", "sv_ptr": "*i8", "xr_ptr": "*fp32"})
    const = {"BITS": a.bits, "CODE": tg.CODE_IDS[a.code], "BLOCK_TN": a.block_tn, "BLOCK_TK": tk,
             "USE_ATOMIC": False, "GROUPED": False, "ASM": bool(a.asm), "GATHER": tg.HAS_GATHER,
             "PREFETCH": prefetch, "ROWS": a.rows}
    if a.rotate:
        const.update({"ROTATE_HB": 128, "ROTATE_F1": 8, "ROTATE_F2": 16})
    else:
        const.update({"sv_ptr": None, "xr_ptr": None, "ROTATE_HB": 0, "ROTATE_F1": 1, "ROTATE_F2": 1})
    k = triton.compile(ASTSource(fn=tg._trellis_gemv_static_kernel, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", a.arch, 32), options={"num_warps": a.num_warps})
    n, ops = loop_counts(get_sass(k.asm["cubin"]))
    weights_per_thread = a.block_tn * tk * 256 / (32 * a.num_warps)   # decoded once for all rows
    print(json.dumps({"bits": a.bits, "code": a.code, "asm": bool(a.asm), "arch": a.arch, "block_tn": a.block_tn,
                      "block_tk": tk, "prefetch": prefetch, "rows": a.rows, "rotate": bool(a.rotate), "num_warps": a.num_warps, "loop_instructions": n,
                      "weights_per_thread": weights_per_thread, "instr_per_weight": n / weights_per_thread,
                      "opcodes": ops, "triton": triton.__version__}))


if __name__ == "__main__":
    main()

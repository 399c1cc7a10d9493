"""Offline sm_90 compile of dot-kernel variants (Triton's own compiler, no GPU): instruction counts from the
TTGIR and PTX, to see whether the swap-AB variant feeds ``wgmma`` its weight operand from registers.

    python gpu/qgemm_ptx.py [--dump DIR] [--only NAME,...]

Counts are over the whole kernel and over the K loop's body (the PTX basic blocks between the loop
header label and its back branch, the largest such region). ``wgmma_rA``: wgmma instructions whose A
operand is a register list (``{...}``) rather than a shared-memory descriptor.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from triton_marlin.kernels import qgemm as Q  # noqa: E402

PTRS = {"x_ptr": "*fp16", "qw_ptr": "*i32", "qh_ptr": "*i16", "s_ptr": "*fp16", "z_ptr": "*u8",
        "gs_ptr": "*fp32", "bias_ptr": "*fp16", "out_ptr": "*fp16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}


def build(consts, num_warps, num_stages, dtype="fp16"):
    fn = Q._qgemm_dot_kernel
    names = fn.arg_names
    consts = dict(consts, stride_xk=1)
    ptrs = dict(PTRS)
    for p in ("x_ptr", "bias_ptr", "out_ptr", "s_ptr"):
        ptrs[p] = "*" + dtype
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and (n in ptrs or n in ("N", "K", "stride_xm", "stride_om"))}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def loop_body(ptx: str) -> str:
    """The longest region between a label and a later branch back to it (the K loop, as a rule)."""
    lines = ptx.splitlines()
    labels = {}
    best = (0, 0)
    for i, line in enumerate(lines):
        m = re.match(r"^\$(\w+):", line.strip())
        if m:
            labels[m.group(1)] = i
        m = re.search(r"bra(?:\.uni)?\s+\$(\w+);", line)
        if m and m.group(1) in labels and i - labels[m.group(1)] > best[1] - best[0]:
            best = (labels[m.group(1)], i)
    return "\n".join(lines[best[0]:best[1] + 1])


PATTERNS = {
    "wgmma": r"wgmma\.mma_async",
    "wgmma_rA": r"wgmma\.mma_async[^\n]*?\{[^}]*\},\s*\{",  # A as a register list, then the accumulator
    "mma.sync": r"mma\.sync",
    "ldmatrix": r"ldmatrix",
    "st.shared": r"st\.shared",
    "ld.shared": r"ld\.shared",
    "stmatrix": r"stmatrix",
    "cp.async": r"cp\.async\.(?:ca|cg)",
    "bar.sync": r"bar\.sync|barrier\.sync",
    "fence.proxy": r"fence\.proxy\.async",
    "ld.global": r"ld\.global",
    "lop3_magic": r"0x64006400",
    "wgmma_wait": r"wgmma\.wait_group",
}


def counts(text: str) -> dict:
    out = {k: len(re.findall(v, text)) for k, v in PATTERNS.items()}
    out["instr"] = sum(1 for line in text.splitlines()
                       if line.strip() and line.strip()[0].isalpha() and line.strip().endswith(";"))
    return out


def ttgir_facts(ttgir: str) -> dict:
    dots = [line for line in ttgir.splitlines() if "ttng.warp_group_dot " in line]
    return {"local_alloc": ttgir.count("ttg.local_alloc"), "local_load": ttgir.count("ttg.local_load"),
            "convert_layout": ttgir.count("ttg.convert_layout"), "warp_group_dot": len(dots),
            "dot(mma v2)": ttgir.count("tt.dot "),
            # warp_group_dot whose A operand is a register tensor (dot_op layout), not a memdesc
            "warp_group_dot_A_regs": sum(1 for line in dots if re.search(r": tensor<[^>]*#ttg\.dot_op", line))}


def fmt(kind=0, bits=4, slots=8, gs=8, sym=True):
    return dict(KIND=kind, BITS=bits, SYMMETRIC=sym, SCALE_KIND=0, GROUP=128, GROUP_SLOTS=gs, SLOTS=slots,
                EVEN_K=True, EVEN_N=True)


def variants():
    base = dict(fmt(), IS_BF16=False, DOT_FP32=False, GROUP_M=8, HAS_BIAS=False, PREFETCH=True, FOLD=True,
                WIDE=False, SPLIT=True)
    out = {}
    out["fold_asm_bm16_bn128_w4"] = (dict(base, ASM=True, SWAP=False, BLOCK_M=16, BLOCK_N=128), 4, 3)
    out["fold_asm_bm32_bn128_w4"] = (dict(base, ASM=True, SWAP=False, BLOCK_M=32, BLOCK_N=128), 4, 3)
    out["fold_asm_bm64_bn128_w4"] = (dict(base, ASM=True, SWAP=False, BLOCK_M=64, BLOCK_N=128), 4, 3)
    out["dot_bm64_bn256_w4"] = (dict(base, FOLD=False, ASM=False, SWAP=False, BLOCK_M=64, BLOCK_N=256), 4, 3)
    out["wide_bm128_bn128_w8"] = (dict(base, FOLD=False, WIDE=True, ASM=False, SWAP=False, BLOCK_M=128,
                                       BLOCK_N=128), 8, 3)
    for bm in (16, 64):
        for w in (4, 8):
            for asm in (True, False):
                name = f"swap_{'asm' if asm else 'tri'}_bm{bm}_bn128_w{w}"
                out[name] = (dict(base, ASM=asm, SWAP=True, BLOCK_M=bm, BLOCK_N=128), w, 3)
    out["swap_asm_bm128_bn128_w8"] = (dict(base, ASM=True, SWAP=True, BLOCK_M=128, BLOCK_N=128), 8, 3)
    out["swap_asm_bm64_bn256_w8"] = (dict(base, ASM=True, SWAP=True, BLOCK_M=64, BLOCK_N=256), 8, 3)
    out["swap_dequant_bm64_bn128_w4"] = (dict(base, FOLD=False, ASM=False, SWAP=True, BLOCK_M=64, BLOCK_N=128),
                                         4, 3)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump", default=None, help="write each variant's TTGIR and PTX to this folder")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    args = p.parse_args()
    todo = variants()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    print(f"triton {triton.__version__}, target sm_90")
    res = {}
    for name, (consts, warps, stages) in todo.items():
        try:
            k = build(consts, warps, stages)
        except Exception as e:  # report, keep going
            print(f"{name}: compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
        if args.dump:
            d = Path(args.dump)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.ptx").write_text(ptx)
            (d / f"{name}.ttgir").write_text(ttgir)
        res[name] = {"shared": k.metadata.shared, "kernel": counts(ptx), "loop": counts(loop_body(ptx)),
                     "ttgir": ttgir_facts(ttgir)}
        print(name, json.dumps(res[name]))
    print(json.dumps(res))


if __name__ == "__main__":
    main()

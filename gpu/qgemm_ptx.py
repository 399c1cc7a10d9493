"""Offline sm_90 compile of dot-kernel variants (Triton's own compiler, no GPU): instruction counts from the
TTGIR and PTX, to see whether the swap-AB variant feeds ``wgmma`` its weight operand from registers.

    python gpu/qgemm_ptx.py [--dump DIR] [--only NAME,...] [--sass]

Counts are over the whole kernel and over the K loop's body (the PTX basic blocks between the loop
header label and its back branch, the largest such region). ``wgmma_rA``: wgmma instructions whose A
operand is a register list (``{...}``) rather than a shared-memory descriptor. ``wait0``/``waitN``: wgmma waits
that drain every group / leave some in flight. ``--sass``: registers, spills (``cuobjdump -res-usage`` STACK bytes on
the cubin Triton built) and the SASS instructions of the K loop (the longest backward branch's body), per weight:
loop SASS x threads / (TILE_K x BLOCK_N), i.e. lane-instructions per weight and M block.
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


def compile_sm90(fn, ptrs, divisible, consts, num_warps, num_stages):
    """Compile ``fn`` for sm_90: ``ptrs`` the pointer types by name (other arguments i32), pointers and the
    ``divisible`` integer arguments marked 16-divisible, ``consts`` the constexprs."""
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and (n in ptrs or n in divisible)}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def build(consts, num_warps, num_stages, dtype="fp16", fn=None):
    ptrs = dict(PTRS)
    for p in ("x_ptr", "bias_ptr", "out_ptr", "s_ptr"):
        ptrs[p] = "*" + dtype
    return compile_sm90(fn or Q._qgemm_dot_kernel, ptrs, ("N", "K", "stride_xm", "stride_om"),
                        dict(consts, stride_xk=1), num_warps, num_stages)


def compile_or_report(name: str, make):
    """``make()`` (a compile), or None after printing why it failed: a sweep reports and keeps going."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001
        print(f"{name}: compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return None


def dump(args, name: str, kernel, kinds: tuple) -> None:
    """With ``--dump DIR``: the kernel's ``kinds`` of assembly (ptx, ttgir, sass) as DIR/name.kind."""
    if args.dump:
        d = Path(args.dump)
        d.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            (d / f"{name}.{kind}").write_text(str(kernel.asm.get(kind, "")))


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
    "wait0": r"wgmma\.wait_group\.sync\.aligned 0;",
}


def counts(text: str) -> dict:
    out = {k: len(re.findall(v, text)) for k, v in PATTERNS.items()}
    out["waitN"] = out["wgmma_wait"] - out["wait0"]
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
                WIDE=False, SPLIT=True, DOT_SLOTS=1)
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
    # today's M = 128/256 winner on 28672x8192: per-weight scales, Triton's shifts and masks, one dot per slot
    out["swap_dequant_bm128_bn128_w8"] = (dict(base, FOLD=False, ASM=False, SWAP=True, BLOCK_M=128, BLOCK_N=128,
                                               SPLIT=False), 8, 3)
    # one tl.dot per DOT_SLOTS slots (dot_k = 16 * DOT_SLOTS): fold (one wait per group) and per-weight scales
    # with the PTX unpack (no wait inside the loop)
    for bm, bn, w in ((16, 128, 4), (64, 128, 4), (64, 256, 8), (128, 128, 8), (128, 256, 8), (256, 128, 8)):
        for ds in (2, 8):
            for fold in (True, False):
                if ds == 2 and (bm, bn) not in ((64, 128), (128, 128)):
                    continue
                name = f"swapk{16 * ds}_{'fold' if fold else 'scaled'}_bm{bm}_bn{bn}_w{w}"
                out[name] = (dict(base, ASM=True, FOLD=fold, SWAP=True, DOT_SLOTS=ds, BLOCK_M=bm, BLOCK_N=bn,
                                  SPLIT=bm < 128), w, 3)
    for bm, bn, w in ((128, 128, 4), (256, 64, 4), (64, 128, 8), (32, 128, 4), (32, 256, 8)):
        for fold in (True, False):
            name = f"swapk128_{'fold' if fold else 'scaled'}_bm{bm}_bn{bn}_w{w}"
            out[name] = (dict(base, ASM=True, FOLD=fold, SWAP=True, DOT_SLOTS=8, BLOCK_M=bm, BLOCK_N=bn,
                              SPLIT=bm < 128), w, 3)
    out["swapk128_scaled_bm128_bn128_w8_st4"] = (dict(base, ASM=True, FOLD=False, SWAP=True, DOT_SLOTS=8,
                                                      BLOCK_M=128, BLOCK_N=128, SPLIT=False), 8, 4)
    out["swapk128_scaled_bm64_bn256_w8_st4"] = (dict(base, ASM=True, FOLD=False, SWAP=True, DOT_SLOTS=8,
                                                     BLOCK_M=64, BLOCK_N=256), 8, 4)
    return out


def cuobjdump(cubin: bytes, flag: str, check: bool = True) -> str:
    """``cuobjdump FLAG`` on a cubin (Triton's bundled tool, else the one on PATH)."""
    import subprocess
    import tempfile

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool) if tool.exists() else "cuobjdump", flag, f.name], capture_output=True,
                              text=True, check=check).stdout


def sass_facts(kernel, consts, num_warps) -> dict:
    """Registers and spills of the cubin Triton built, and the K loop's SASS per weight."""
    res = cuobjdump(kernel.asm["cubin"], "-res-usage", check=False)
    sass = cuobjdump(kernel.asm["cubin"], "-sass", check=False)
    regs = re.search(r"REG:(\d+)", res)
    local = re.search(r"STACK:(\d+)", res)  # spilled registers live on the stack
    lines = [ln for ln in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/", ln)]
    addr = [int(re.match(r"\s*/\*([0-9a-f]+)\*/", ln).group(1), 16) for ln in lines]
    best = (0, 0)
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", ln)
        if m is None:
            m = re.search(r"BRA .*\.L_x_(\d+)", ln)
            continue
        target = int(m.group(1), 16)
        if target < addr[i] and target in addr:
            j = addr.index(target)
            if i - j > best[1] - best[0]:
                best = (j, i)
    body = lines[best[0]:best[1] + 1]
    ops = {}
    for ln in body:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", ln)
        if m:
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
    tile_k = 16 * consts["SLOTS"]
    per_weight = len(body) * 32 * num_warps / (tile_k * consts["BLOCK_N"])
    top = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:10])
    return {"regs": int(regs.group(1)) if regs else None, "stack_bytes": int(local.group(1)) if local else None,
            "loop_sass": len(body), "sass_per_weight": round(per_weight, 2), "top_ops": top}


def oneshot_variants():
    """The gemv-oneshot kernel (``KernelConfig(family="gemv", oneshot=1)``) on the GLM-4.7-Flash expert shapes,
    int4 g128 fp16, M = 1: K = 2048 (16 tiles: one block) and K = 1536 (12 tiles: blocks of 8 + 4), and the
    looped gemv (today's best: bn32 split 4 with the scales a tile ahead) for comparison."""
    base = dict(fmt(), HAS_BIAS=False, BLOCK_M=1)
    base.pop("EVEN_K")
    out = {}
    for K, (na, nb) in ((2048, (16, 0)), (1536, (8, 4))):
        for bn, w in ((8, 2), (8, 4), (16, 2), (16, 4), (16, 8), (32, 4), (32, 8), (32, 16), (64, 8), (128, 8)):
            out[f"oneshot_K{K}_bn{bn}_w{w}"] = (dict(base, EVEN_N=True, MASK_K=False, MASK_B=False, SPLIT=False,
                                                     NA=na, NB=nb, TILES_PER_PROGRAM=na + nb, BLOCK_N=bn), w, 1)
    out["oneshot_K1536_split3_bn64_w4"] = (dict(base, EVEN_N=True, MASK_K=False, MASK_B=False, SPLIT=True, NA=4,
                                                NB=0, TILES_PER_PROGRAM=4, BLOCK_N=64), 4, 1)
    out["gemv_loop_bn32_pf"] = (dict(base, EVEN_K=True, EVEN_N=True, SPLIT=True, BLOCK_N=32, PREFETCH=True), 4, 2)
    return out


def oneshot_facts(kernel, consts, num_warps, K) -> dict:
    """Whole-kernel SASS of a gemv variant: registers, spills, instruction count, global loads, and where the
    last global load sits against the first FFMA (all loads issued before the first use: last_ldg < first_ffma)."""
    res = cuobjdump(kernel.asm["cubin"], "-res-usage", check=False)
    sass = cuobjdump(kernel.asm["cubin"], "-sass", check=False)
    regs = re.search(r"REG:(\d+)", res)
    local = re.search(r"STACK:(\d+)", res)
    ops = []
    for ln in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", ln)
        if m:
            ops.append(m.group(1))
    ldg = [i for i, o in enumerate(ops) if o == "LDG"]
    ffma = [i for i, o in enumerate(ops) if o in ("FFMA", "FMUL", "FADD")]
    bra_back = sum(1 for ln in sass.splitlines() if "BRA" in ln)
    weights = K * consts["BLOCK_N"] if "TILES_PER_PROGRAM" in consts else None
    if weights and consts.get("SPLIT") and consts["TILES_PER_PROGRAM"] * 128 < K:
        weights = consts["TILES_PER_PROGRAM"] * 128 * consts["BLOCK_N"]
    return {"regs": int(regs.group(1)) if regs else None, "stack_bytes": int(local.group(1)) if local else None,
            "sass": len(ops), "LDG": len(ldg), "last_ldg": ldg[-1] if ldg else None,
            "first_ffma": ffma[0] if ffma else None, "branches": bra_back,
            "lane_instr_per_weight": round(len(ops) * 32 * num_warps / weights, 2) if weights else None}


def main_oneshot(args):
    print(f"triton {triton.__version__}, target sm_90 (gemv oneshot)")
    res = {}
    for name, (consts, warps, stages) in oneshot_variants().items():
        if args.only and name not in args.only.split(","):
            continue
        fn = Q._qgemv_kernel if name.startswith("gemv_loop") else Q._qgemv_oneshot_kernel
        k = compile_or_report(name, lambda: build(consts, warps, stages, fn=fn))
        if k is None:
            continue
        dump(args, name, k, ("ptx", "sass"))
        K = int(re.search(r"_K(\d+)", name).group(1)) if "_K" in name else 2048
        res[name] = oneshot_facts(k, consts, warps, K)
        print(name, json.dumps(res[name]))
    print(json.dumps(res))


# the formats of the register-fragment GEMV: (KIND, BITS, SCALE_KIND, scale pointer type, group, SLOTS)
MMA_FORMAT_CONSTS = {"int4": (0, 4, 0, "*fp16", 128, 8), "fp4": (1, 4, 0, "*fp16", 128, 8),
                     "mxfp4": (1, 4, 1, "*u8", 32, 8), "nvfp4": (1, 4, 2, "*u8", 16, 8),
                     "int2": (0, 2, 0, "*fp16", 128, 16), "int3": (0, 3, 0, "*fp16", 128, 16),
                     "int8": (0, 8, 0, "*fp16", 128, 8), "fp8": (2, 8, 0, "*fp16", 0, 8)}


def mma_variants():
    """The register-fragment GEMV (``KernelConfig(family="mma")``), fp16: int4 at group 128 and per-channel with TN
    16-column tiles a thread, NW warps splitting a program's K tiles, words 0-2 tiles ahead, 1-2 row blocks; the
    other formats (fp4 g128, mxfp4 g32, nvfp4 g16, int2 g128, int3 g128, int8 g128, fp8 per-channel) at TN 1-2,
    4 warps, one tile ahead, and at TN 2 with bf16 activations."""
    out = {}

    def consts(fmt, gs_per_channel, tn, nw, pf, mt, bf16=False, zsum=False):
        kind, bits, scale_kind, _, group, slots = MMA_FORMAT_CONSTS[fmt]
        gs = 0 if gs_per_channel or not group else min(group // 16, slots)
        return dict(KIND=kind, BITS=bits, SYMMETRIC=True, SCALE_KIND=scale_kind, SLOTS=slots,
                    GROUP=group if gs else 1, GROUP_SLOTS=gs, HAS_BIAS=False, SPLIT=True, SPLIT_P2=8, IS_BF16=bf16,
                    ALIGNED=bits == 8,
                    ASM=True, EVEN_K=True, TN=tn, NW=nw, MT=mt, PREFETCH=pf, ZSUM=zsum)
    for tn in (1, 2, 4):
        for nw in (1, 2, 4):
            for pf in (0, 1, 2):
                for mt in (1, 2):
                    for pc, name in ((False, "g128"), (True, "pc")):
                        out[f"mma_int4_{name}_tn{tn}_w{nw}_pf{pf}_mt{mt}"] = (consts("int4", pc, tn, nw, pf, mt), nw, 1)
    for fmt, (_, _, _, _, group, _) in MMA_FORMAT_CONSTS.items():
        if fmt == "int4":
            continue
        for tn in (1, 2):
            for mt in (1, 2):
                out[f"mma_{fmt}_g{group or 'pc'}_tn{tn}_w4_pf1_mt{mt}"] = (consts(fmt, False, tn, 4, 1, mt), 4, 1)
        # bf16 activations (E2M1: the raw fp16 pairs converted to bf16x2)
        out[f"mma_{fmt}_g{group or 'pc'}_tn2_w4_pf1_mt1_bf16"] = (consts(fmt, False, 2, 4, 1, 1, bf16=True), 4, 1)
    # zero points through the activation sums (fold=1) for the integer planes, beside their plain variants above
    for fmt in ("int4", "int2", "int3"):
        for tn, nw in ((2, 8), (2, 4), (1, 8)):
            out[f"mma_{fmt}_zsum_tn{tn}_w{nw}_pf1_mt1"] = (consts(fmt, False, tn, nw, 1, 1, zsum=True), nw, 1)
            out[f"mma_{fmt}_plain_tn{tn}_w{nw}_pf1_mt1"] = (consts(fmt, False, tn, nw, 1, 1), nw, 1)
    return out


def mma_facts(kernel, consts, num_warps) -> dict:
    """Registers, spills, the K loop's SASS per weight (one K tile of 128 x 16 TN columns a warp) and whether
    shared memory or barriers appear in the loop."""
    facts = sass_facts(kernel, dict(consts, BLOCK_N=16 * consts["TN"] * num_warps), num_warps)  # per warp-tile
    sass = cuobjdump(kernel.asm["cubin"], "-sass", check=False)
    facts["kernel_sass"] = sum(1 for ln in sass.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/", ln))
    facts["smem_or_bar_in_loop"] = {op: n for op, n in facts["top_ops"].items() if op in ("LDS", "STS", "BAR")}
    return facts


def main_mma(args):
    print(f"triton {triton.__version__}, target sm_90 (mma GEMV)")
    res = {}
    for name, (consts, warps, stages) in mma_variants().items():
        if args.only and name not in args.only.split(","):
            continue
        if args.formats and name.split("_")[1] not in args.formats.split(","):
            continue
        ptrs = {"xw_ptr": "*i32", "qw_ptr": "*u8" if consts["BITS"] == 8 else "*i32", "qh_ptr": "*i16",
                "s_ptr": MMA_FORMAT_CONSTS[name.split("_")[1]][3], "z_ptr": "*u8", "gs_ptr": "*fp32", "bias_ptr": "*fp16", "out_ptr": "*fp16", "ws_ptr": "*fp32",
                "cnt_ptr": "*i32"}
        if consts["IS_BF16"]:
            ptrs.update(bias_ptr="*bf16", out_ptr="*bf16")
        consts = dict(consts, XA=args.x_ahead)
        k = compile_or_report(name, lambda: compile_sm90(Q._qgemv_mma_kernel, ptrs, ("N", "K", "stride_xw",
                                                                                    "stride_om"), consts, warps, stages))
        if k is None:
            continue
        dump(args, name, k, ("ptx", "ttgir"))
        res[name] = mma_facts(k, consts, warps)
        print(name, json.dumps(res[name]))
    print(json.dumps(res))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dump", default=None, help="write each variant's TTGIR and PTX to this folder")
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--sass", action="store_true", help="registers, spills and the K loop's SASS (cuobjdump)")
    p.add_argument("--oneshot", action="store_true",
                   help="the gemv-oneshot kernel instead: registers, SASS, global loads vs the first FFMA")
    p.add_argument("--formats", default=None, help="with --mma: comma-separated formats (default: every one)")
    p.add_argument("--mma", action="store_true",
                   help="the register-fragment GEMV (family mma) instead: registers, SASS per weight, smem in loop")
    p.add_argument("--x-ahead", action="store_true",
                   help="with --mma: activations loaded with the words (KernelConfig.x_ahead)")
    args = p.parse_args()
    if args.oneshot:
        return main_oneshot(args)
    if args.mma:
        return main_mma(args)
    todo = variants()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    print(f"triton {triton.__version__}, target sm_90")
    res = {}
    for name, (consts, warps, stages) in todo.items():
        k = compile_or_report(name, lambda: build(consts, warps, stages))
        if k is None:
            continue
        dump(args, name, k, ("ptx", "ttgir"))
        ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
        res[name] = {"shared": k.metadata.shared, "kernel": counts(ptx), "loop": counts(loop_body(ptx)),
                     "ttgir": ttgir_facts(ttgir)}
        if args.sass:
            res[name]["sass"] = sass_facts(k, consts, warps)
        print(name, json.dumps(res[name]))
    print(json.dumps(res))


if __name__ == "__main__":
    main()

"""Offline sm_90 compile of the MoE tensor-core kernels (Triton's own compiler, no GPU): per K-loop body
counts from the PTX (tensor-core instructions, shared-memory traffic, barriers) and the SASS (lane
instructions per weight), to compare the MoE tiles with qgemm's fold tiles (``gpu/qgemm_ptx.py``).

    python gpu/moe_ptx.py [--only NAME,...] [--dump DIR] [--mixed]

Run it with the GPU machine's Triton (3.6) where it is installed apart, e.g. ``/tmp/t36/bin/python``.
"Loop" is the K loop of one projection (the longest backward-branch region of the PTX / SASS); the gate_up
kernel with two K loops (gate, then up) has two such loops, the fused one (``FUSE_GU``) one loop with both
projections. SASS per weight: loop SASS instructions x threads / (weights per loop iteration).
``--mixed`` compiles as ``gpu/moe_explore.py`` launches (``uniform=False``: the kind read from the table, one
kind compiled in) instead of the uniform compile; registers differ (e.g. the 32x64 swapped gate_up: 110 before
b2154e1 and 115 after mixed, 152 and 109 uniform).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from qgemm_ptx import counts, cuobjdump, loop_body, ttgir_facts  # noqa: E402
from triton_marlin.kernels import moe_gemm as MG  # noqa: E402


def _flat(prefix, scale):
    return {prefix + "c32": "*i32", prefix + "c16": "*i16", prefix + "c8": "*u8", prefix + "s16": scale,
            prefix + "s8": "*u8", prefix + "z8": "*u8", prefix + "gs": "*fp32", prefix + "tab": "*i32"}


def _build(fn, types, consts, num_warps, num_stages):
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)  # as the JIT specializes the GLM launch
             if n not in consts and (sig[n].startswith("*") or n in ("H", "I", "stride_x", "num_slots", "zero_numel",
                                                                      "split_stride"))}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    opts = dict(num_warps=num_warps)
    if num_stages:
        opts["num_stages"] = num_stages
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)



def _swap(bm, bn, swap, dot_k, prefetch, K, N):
    """The kernels' SWAP constexpr for the GLM shapes (K, N), as the launcher computes it."""
    if not swap:
        return 0
    return MG.swap_mode(MG.MoEGemmConfig(bm, bn, 4, bn, 1, 4, swap_ab=1, dot_k=dot_k, prefetch=prefetch),
                        K, N, bn)


def gate_up(bm, bn, warps, kind=2, asm=True, swap=0, stages=0, dt="fp16", dot_k=16, prefetch=0, fuse=0, mixed=False):
    uni = -1 if mixed else kind
    consts = dict(SLOTS_PER_TOKEN=5, G_KINDS=1 << kind, G_UNIFORM=uni, U_KINDS=1 << kind, U_UNIFORM=uni,
                  IS_BF16=dt == "bf16", BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=1, ZERO_BLOCK=1024, UNROLL=1, G_GK=128,
                  U_GK=128, ASM=asm, DIRECT=False)
    consts["SWAP"] = _swap(bm, bn, swap, dot_k, prefetch, 2048, 1536)
    consts["FUSE_GU"] = fuse
    types = {"x_ptr": "*" + dt, "sorted_ptr": "*i32", "eids_ptr": "*i32", "npost_ptr": "*i32",
             "inter_ptr": "*" + dt, "zero_ptr": "*fp32", **_flat("g", "*" + dt), **_flat("u", "*" + dt)}
    return _build(MG._moe_gate_up_kernel, types, consts, warps, stages)


def down(bm, bn, warps, kind=2, asm=True, swap=0, stages=0, dt="fp16", dot_k=16, prefetch=0, fuse=0, mixed=False):
    consts = dict(SLOTS_PER_TOKEN=5, D_KINDS=1 << kind, D_UNIFORM=-1 if mixed else kind, IS_BF16=dt == "bf16",
                  BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=1, A_SWIGLU=False, UNROLL=1, D_GK=128, ASM=asm, A_SPLITS=1,
                  DIRECT=False)
    consts["SWAP"] = _swap(bm, bn, swap, dot_k, prefetch, 1536, 2048)
    types = {"inter_ptr": "*" + dt, "sorted_ptr": "*i32", "eids_ptr": "*i32", "npost_ptr": "*i32",
             "w_ptr": "*fp32", "out_ptr": "*fp32", **_flat("d", "*" + dt)}
    return _build(MG._moe_down_kernel, types, consts, warps, stages)


def sass_of(cubin: bytes) -> str:
    return cuobjdump(cubin, "-sass")


def regs_of(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes) from ``cuobjdump -res-usage``."""
    txt = cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", txt)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def sass_loops(sass: str) -> list[int]:
    """Instruction counts of the backward-branch regions (loops) of the SASS, largest first, nested ones
    dropped (16-byte instructions; ``BRA <address>``)."""
    regions = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/[^\n;]*?\bBRA\s+(?:`\()?0x([0-9a-f]+)", sass):
        here, target = int(m.group(1), 16), int(m.group(2), 16)
        if target <= here:
            regions.append((target, here))
    regions.sort(key=lambda r: r[0] - r[1])
    out = []
    for r in regions:
        if not any(o[0] <= r[0] and r[1] <= o[1] for o in out):
            out.append(r)
    return sorted(((hi - lo) // 16 + 1 for lo, hi in out), reverse=True)


def variants():
    out = {}
    for name_fn, fn in (("gate_up", gate_up), ("down", down)):
        for bm, bn, w in ((16, 64, 4), (16, 128, 4), (32, 128, 4), (32, 128, 8), (32, 64, 4)):
            out[f"{name_fn}_bm{bm}_bn{bn}_w{w}"] = (fn, dict(bm=bm, bn=bn, warps=w))
        for bm, bn, w in ((16, 64, 4), (16, 128, 4), (32, 128, 4), (16, 128, 8), (32, 128, 8), (16, 256, 8),
                          (32, 64, 4)):
            out[f"{name_fn}_swap_bm{bm}_bn{bn}_w{w}"] = (fn, dict(bm=bm, bn=bn, warps=w, swap=1))
        # the swapped 256-token candidates: one dot per scale group (d), scales a tile ahead (p), gate+up fused (f)
        for bm, bn, w in ((32, 64, 4), (32, 128, 4), (32, 128, 8), (32, 256, 8), (16, 128, 4)):
            for tag, extra in (("d", dict(dot_k=128)), ("p", dict(prefetch=1)), ("dp", dict(dot_k=128, prefetch=1)),
                               ("f", dict(fuse=1)), ("fd", dict(fuse=1, dot_k=128)),
                               ("fdp", dict(fuse=1, dot_k=128, prefetch=1))):
                if "f" in tag and name_fn != "gate_up":
                    continue
                out[f"{name_fn}_swap{tag}_bm{bm}_bn{bn}_w{w}"] = (fn, dict(bm=bm, bn=bn, warps=w, swap=1, **extra))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None)
    p.add_argument("--dump", default=None)
    p.add_argument("--mixed", action="store_true", help="compile as moe_explore launches (kind from the table)")
    a = p.parse_args()
    todo = variants()
    if a.only:
        todo = {k: v for k, v in todo.items() if any(re.fullmatch(pat, k) for pat in a.only.split(","))}
    print(f"triton {triton.__version__}, target sm_90")
    res = {}
    for name, (fn, kw) in todo.items():
        try:
            k = fn(**kw, mixed=a.mixed)
        except Exception as e:  # report, keep going
            print(f"{name}: compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            continue
        ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
        sass = sass_of(k.asm["cubin"])
        if a.dump:
            d = Path(a.dump)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.ptx").write_text(ptx)
            (d / f"{name}.ttgir").write_text(ttgir)
            (d / f"{name}.sass").write_text(sass)
        loops = sass_loops(sass)
        threads = 32 * kw["warps"]
        # one K tile (8 int4 slots of 16 k) of BLOCK_N columns, one projection (two: the fused gate+up loop)
        weights = 128 * kw["bn"] * (2 if kw.get("fuse") else 1)
        regs, stack = regs_of(k.asm["cubin"])
        # CTAs per SM: registers (allocated in 8s), shared memory (+1 KB reserved per CTA), 64 warps
        sm_ctas = min(65536 // (-(-regs // 8) * 8 * threads), 228 * 1024 // (k.metadata.shared + 1024),
                      2048 // threads)
        res[name] = {"regs": regs, "stack": stack, "shared": k.metadata.shared, "ctas_per_sm": sm_ctas,
                     "ldgsts": {w or "32": len(re.findall(rf"LDGSTS\.E(?:\.BYPASS)?(?:\.LTC128B)?{w}(?![.\w])", sass))
                               for w in ("", ".64", ".128")},
                     "loop": counts(loop_body(ptx)), "ttgir": ttgir_facts(ttgir), "sass_loops": loops[:3],
                     "sass_per_weight": round(loops[0] * threads / weights, 2) if loops else None}
        print(name, json.dumps(res[name]), flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

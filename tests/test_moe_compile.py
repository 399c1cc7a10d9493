"""The MoE kernels compile for Hopper (sm_90, Triton's own toolchain, no GPU needed).

The CPU interpreter runs Python semantics, so it accepts things the compiler rejects (a constexpr computed by a
tuple assignment, say); this compiles the variants the strategies launch: the router (logits + routing + chunk
counts, one token and 256), the routing and alignment kernels (one program; counts + scatter), the decode (one
slot per program, split-K, SwiGLU on load) and tensor-core paths, fp16 and bf16, one kind and every kind behind
the table branch."""
import json
import os
import subprocess
import sys

import pytest

_AOT_SCRIPT = r"""
import json
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton_marlin.kernels import moe_align as MA, moe_gemm as MG, moe_router as MR

def build(fn, types, consts, num_warps):
    # as the JIT launches it: pointers and the listed ints with divisibility 16, the rest plain i32
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in consts and sig[n].startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    # wgmma whose A operand is a register list (the swapped tensor-core path: weights from registers)
    return {"shared": k.metadata.shared, "wgmma_rA": len(re.findall(r"wgmma\.mma_async[^\n]*?\{[^}]*\},\s*\{", k.asm["ptx"]))}

def flat(prefix, scale):
    return {prefix + "c32": "*i32", prefix + "c16": "*i16", prefix + "c8": "*u8", prefix + "s16": scale,
            prefix + "s8": "*u8", prefix + "z8": "*u8", prefix + "gs": "*fp32", prefix + "tab": "*i32"}

out = {}
route_types = {"logits_ptr": "*fp32", "bias_ptr": "*fp32", "ids_ptr": "*i32", "w_ptr": "*fp32", "nvalid_ptr": "*i32"}
out["route_grouped"] = build(MA._route_kernel, route_types,
    dict(TOP_K=8, K_TOTAL=9, N_SHARED=1, SIGMOID=True, HAS_BIAS=True, N_GROUP=8, TOPK_GROUP=4, GROUP_SIZE=32,
         NORM=True, SCALE=2.5, HAS_NVALID=True, BLOCK_T=8, BLOCK_E=256, BLOCK_K=16, BLOCK_G=8), 4)
out["route_glm"] = build(MA._route_kernel, route_types,
    dict(TOP_K=4, K_TOTAL=5, N_SHARED=1, SIGMOID=True, HAS_BIAS=True, N_GROUP=1, TOPK_GROUP=1, GROUP_SIZE=64,
         NORM=True, SCALE=1.8, HAS_NVALID=False, BLOCK_T=16, BLOCK_E=64, BLOCK_K=8, BLOCK_G=1), 4)
router_types = {"x_ptr": "*fp16", "w_ptr": "*fp32", "parts_ptr": "*fp32", "counter_ptr": "*i32", "bias_ptr": "*fp32",
                "ids_ptr": "*i32", "wts_ptr": "*fp32", "nvalid_ptr": "*i32", "counts_ptr": "*i32"}
router_glm = dict(TOP_K=4, K_TOTAL=5, N_SHARED=1, SIGMOID=True, HAS_BIAS=True, N_GROUP=1, TOPK_GROUP=1, GROUP_SIZE=64,
                  NORM=True, SCALE=1.8, HAS_NVALID=True, BLOCK_ER=64, BLOCK_KR=8, BLOCK_G=1, BLOCK_SH=1)
out["router_logits"] = build(MR._router_route_kernel, router_types,  # 256 GLM tokens: tensor cores, 16 splits
    dict(BLOCK_T=16, BLOCK_E=64, BLOCK_K=64, NUM_SPLITS=16, **router_glm), 4)
out["router_logits_one"] = build(MR._router_route_kernel, router_types,  # one token: 8 E blocks x 8 splits
    dict(BLOCK_T=1, BLOCK_E=8, BLOCK_K=64, NUM_SPLITS=8, **router_glm), 4)
out["align"] = build(MA._align_kernel, {"ids_ptr": "*i32", "sorted_ptr": "*i32", "expert_ids_ptr": "*i32",
                                        "npost_ptr": "*i32"},
    dict(BLOCK_M=16, BLOCK_S=64, BLOCK_E=128, BLOCK_B=64), 4)
align_types = {"ids_ptr": "*i32", "counts_ptr": "*i32", "sorted_ptr": "*i32", "expert_ids_ptr": "*i32",
               "npost_ptr": "*i32"}
out["align_count_e257"] = build(MA._align_count_kernel, align_types, dict(BLOCK_S=64, BLOCK_E=512), 4)
out["align_scatter_glm"] = build(MA._align_scatter_kernel, align_types,  # 65 experts, 32-row blocks, 80-slot chunks
    dict(BLOCK_M=32, BLOCK_S=128, BLOCK_E=128, BLOCK_C=16, BLOCK_B=32, FROM_IDS=False), 4)
out["align_fused_bm1"] = build(MA._align_scatter_kernel, align_types,  # one launch; BLOCK_M 1, 257 experts
    dict(BLOCK_M=1, BLOCK_S=16, BLOCK_E=512, BLOCK_C=8, BLOCK_B=32, FROM_IDS=True), 4)
# SWAP bits (MG.swap_mode) other than the default 1 (swapped) / 31 (``_dk``: dot_k 128, EVEN_K, EVEN_N, prefetch)
SWAP_OF = {"gate_up_dot_swap_even_asm_mixed_fp16": 1 | 4 | 8,
           "gate_up_dot_swap_dk_fused_odd_mixed_bf16": 1 | 2,
           "down_dot_swap_even_asm_int4_fp16": 1 | 4 | 8}
every_kind = (1 << MG.NUM_KINDS) - 1
some_kinds = (1 << 0) | (1 << 5) | (1 << 7) | (1 << 9)  # int2, mxfp4, fp8, asymmetric int3
asm_kinds = (1 << 1) | (1 << 4) | (1 << 10)  # the PTX unpackers: int3, fp4 (E2M1), asymmetric int4
for name, dt, kinds, uniform, bm, bn, split, warps, gk, asm in (
        ("gate_up_decode_mixed_fp16", "fp16", every_kind, -1, 1, 32, 4, 4, 0, False),
        ("gate_up_decode_int4_nosplit_bf16", "bf16", 1 << 2, 2, 1, 32, 1, 4, 128, False),
        ("gate_up_dot_mixed_bf16", "bf16", some_kinds, -1, 16, 64, 1, 4, 32, False),
        ("gate_up_dot_int4_fp16", "fp16", 1 << 2, 2, 64, 128, 1, 8, 0, False),
        ("gate_up_dot_asm_fold_fp16", "fp16", asm_kinds, -1, 16, 128, 1, 4, 128, True),
        ("gate_up_dot_asm_int4_fp16", "fp16", 1 << 2, 2, 32, 128, 1, 8, 128, True),
        ("gate_up_dot_swap_asm_int4_fp16", "fp16", 1 << 2, 2, 16, 128, 1, 4, 128, True),
        ("gate_up_dot_swap_asm_mixed_fp16", "fp16", asm_kinds, -1, 32, 64, 1, 4, 128, True),
        ("gate_up_dot_swap_mixed_bf16", "bf16", some_kinds, -1, 16, 64, 1, 4, 32, False),
        ("gate_up_dot_swap_dk_fused_asm_int4_fp16", "fp16", 1 << 2, 2, 32, 64, 1, 4, 128, True),
        ("gate_up_dot_swap_dk_fused_asm_mixed_fp16", "fp16", asm_kinds, -1, 32, 64, 1, 4, 128, True),
        ("gate_up_dot_swap_dk_fused_mixed_bf16", "bf16", some_kinds, -1, 16, 64, 1, 4, 32, False),
        ("gate_up_dot_swap_even_asm_mixed_fp16", "fp16", asm_kinds, -1, 32, 64, 1, 4, 128, True),
        ("gate_up_dot_swap_dk_fused_odd_mixed_bf16", "bf16", some_kinds, -1, 16, 64, 1, 4, 32, False)):
    types = {"x_ptr": "*" + dt, "sorted_ptr": "*i32", "eids_ptr": "*i32", "npost_ptr": "*i32",
             "inter_ptr": "*fp32" if split > 1 else "*" + dt, "zero_ptr": "*fp32",
             **flat("g", "*" + dt), **flat("u", "*" + dt)}
    out[name] = build(MG._moe_gate_up_kernel, types,
        dict(SLOTS_PER_TOKEN=5, G_KINDS=kinds, G_UNIFORM=uniform, U_KINDS=kinds, U_UNIFORM=uniform,
             IS_BF16=dt == "bf16", BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=split, ZERO_BLOCK=1024,
             UNROLL=2 if bm == 1 else 1, G_GK=gk, U_GK=gk, ASM=asm, DIRECT=bm == 1,
             SWAP=SWAP_OF.get(name, (31 if "_dk" in name else 1) if "swap" in name else 0),
             FUSE_GU=int("fused" in name)), warps)
for name, dt, kinds, uniform, bm, bn, split, swiglu, warps, gk, asm in (
        ("down_decode_swiglu_mixed", "fp16", some_kinds, -1, 1, 32, 4, True, 4, 0, False),
        ("down_dot_split_int8_bf16", "bf16", 1 << 3, 3, 32, 64, 3, False, 4, 128, False),
        ("down_dot_asm_split_fp16", "fp16", asm_kinds, -1, 16, 128, 2, False, 4, 128, True),
        ("down_dot_swap_asm_split_fp16", "fp16", asm_kinds, -1, 16, 128, 2, False, 4, 128, True),
        ("down_dot_swap_dk_asm_int4_fp16", "fp16", 1 << 2, 2, 32, 64, 1, False, 4, 128, True),
        ("down_dot_swap_even_asm_int4_fp16", "fp16", 1 << 2, 2, 32, 64, 1, False, 4, 128, True)):
    types = {"inter_ptr": "*fp32" if swiglu else "*" + dt, "sorted_ptr": "*i32", "eids_ptr": "*i32",
             "npost_ptr": "*i32", "w_ptr": "*fp32", "out_ptr": "*fp32", **flat("d", "*" + dt)}
    out[name] = build(MG._moe_down_kernel, types,
        dict(SLOTS_PER_TOKEN=5, D_KINDS=kinds, D_UNIFORM=uniform, IS_BF16=dt == "bf16", BLOCK_M=bm, BLOCK_N=bn,
             SPLIT_K=split, A_SWIGLU=swiglu, UNROLL=2 if bm == 1 else 1, D_GK=gk, ASM=asm,
             A_SPLITS=4 if swiglu else 1, DIRECT=bm == 1,
             SWAP=SWAP_OF.get(name, (31 if "_dk" in name else 1) if "swap" in name else 0)),
        warps)
print(json.dumps(out))
"""


def test_moe_kernels_compile_for_hopper():
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(info) == 28 and {"route_glm", "router_logits", "align"} <= set(info)
    for name, meta in info.items():
        assert 0 <= meta["shared"] <= 227 * 1024, (name, meta)
        # swapped tensor-core tiles: wgmma reads the (unpacked) weights from registers, the others use none
        assert (meta["wgmma_rA"] > 0) == ("swap" in name), (name, meta)

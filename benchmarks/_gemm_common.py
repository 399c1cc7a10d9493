"""Shared cases for the quantized-GEMM benchmarks (bench_gemm, bench_kernel_variants,
bench_kernel_selection, bench_fused_vs_pytorch): shapes, byte/FLOP counts, the fp16 cuBLAS and torch
int4 (tinygemm) baselines, and the candidate kernel configurations.

On CPU the Triton kernels run through the interpreter (TRITON_INTERPRET=1, set by :func:`prepare`
before triton_marlin's kernels are imported): the path is real, the timings say nothing about speed.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

# name -> (N, K): out_features x in_features
SHAPES = {
    "glm47_expert_gate_up": (3072, 2048),   # GLM-4.7-Flash routed expert, gate+up fused (2 x 1536)
    "glm47_expert_down": (2048, 1536),
    "glm47_dense_gate_up": (20480, 2048),   # first (dense) layer MLP; intermediate 10240 assumed
    "glm47_dense_down": (2048, 10240),
    "4096x4096": (4096, 4096),
    "14336x4096": (14336, 4096),
    "8192x8192": (8192, 8192),
    "28672x8192": (28672, 8192),
    "8192x28672": (8192, 28672),
}
QUICK_SHAPES = {"tiny_160x256": (160, 256)}
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)
QUICK_M = (1, 16)
DEFAULT_GROUP = {"int2": 128, "int3": 128, "int4": 128, "int8": 128, "fp4": 128, "mxfp4": 32,
                 "nvfp4": 16, "fp8": -1}


def _interpret_on_cpu(argv: list[str]) -> None:
    """Run Triton kernels through the interpreter when the benchmark will run on CPU.

    Triton reads TRITON_INTERPRET when its functions are decorated, i.e. at ``import triton``, so this
    looks at ``--device`` before anything imports triton (the harness parses it properly later).
    """
    device = "auto"
    for i, arg in enumerate(argv):
        if arg == "--device" and i + 1 < len(argv):
            device = argv[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    on_cpu = device.startswith("cpu") or (device in ("auto", "cuda") and not torch.cuda.is_available())
    if on_cpu and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_on_cpu(sys.argv[1:])


def prepare(device: torch.device) -> None:
    """Refuse a CPU run whose Triton was imported before the interpreter could be switched on."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on CPU the Triton kernels need TRITON_INTERPRET=1 set before triton is imported")


def parse_list(text: str, cast=str) -> list:
    return [cast(v) for v in text.split(",") if v.strip()]


def add_case_args(p, default_formats="int4"):
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated shape names from {sorted(SHAPES)} or NxK (default: all; "
                        f"--quick: a tiny one)")
    p.add_argument("--m", default=None, help=f"comma-separated batch sizes (default {M_VALUES})")
    p.add_argument("--formats", default=default_formats,
                   help="comma-separated weight formats: int2,int3,int4,int8,fp4,mxfp4,nvfp4,fp8")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"],
                   help="activation dtype")
    p.add_argument("--no-graph", action="store_true",
                   help="skip the CUDA-graph replay timing (report launch-inclusive time only)")
    p.add_argument("--candidates", default="all", choices=CANDIDATE_SETS, action=_CandidateSet,
                   help="kernel configurations the variant/selection sweeps time: all, swapab (the "
                        "swap-AB tensor-core candidates plus what the packaged tables select now) or swapab2 "
                        "(only the swap-AB tiles with one tl.dot per K tile, plus the tables' choice) or small "
                        "(the one-shot gemv for small weights, the measured small-weight bests and the tables' "
                        "choice) or mma (the register-fragment GEMV up to 16 rows, plus the tables' choice)")


CANDIDATE_SETS = ("all", "swapab", "swapab2", "small", "mma")
_candidate_set = "all"  # set by --candidates when a benchmark parses its arguments


class _CandidateSet(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        global _candidate_set
        _candidate_set = values
        setattr(namespace, self.dest, values)


def shapes_from(args) -> dict:
    if args.shapes is None:
        return dict(QUICK_SHAPES if args.quick else SHAPES)
    out = {}
    for name in parse_list(args.shapes):
        if name in SHAPES:
            out[name] = SHAPES[name]
        elif "x" in name and all(v.isdigit() for v in name.split("x")):
            n, k = (int(v) for v in name.split("x"))
            out[name] = (n, k)
        else:
            raise SystemExit(f"--shapes: unknown shape {name!r}; expected one of {sorted(SHAPES)} or NxK")
    return out


def m_values_from(args) -> list[int]:
    if args.m is None:
        return list(QUICK_M if args.quick else M_VALUES)
    return parse_list(args.m, int)


def act_dtype(args) -> torch.dtype:
    return getattr(torch, args.dtype)


@dataclass
class WeightCase:
    name: str
    fmt: str
    N: int
    K: int
    qt: object            # QuantizedTensor on the device
    w16: torch.Tensor     # the dequantized weight [N, K] in the activation dtype (for cuBLAS)

    @property
    def weight_bytes(self) -> int:
        return self.qt.nbytes

    def io_bytes(self, M: int, elem: int = 2) -> int:
        """Fewest bytes one call must move: the packed weight (scales included), x and out."""
        return self.qt.nbytes + M * self.K * elem + M * self.N * elem

    def fp16_bytes(self, M: int, elem: int = 2) -> int:
        return self.N * self.K * elem + M * self.K * elem + M * self.N * elem

    def flops(self, M: int) -> int:
        return 2 * M * self.N * self.K


def make_weight(name: str, fmt: str, N: int, K: int, device: torch.device, dtype: torch.dtype,
                gen: torch.Generator) -> WeightCase:
    import triton_marlin as tm

    w = torch.randn(N, K, generator=gen, dtype=torch.float32) * 0.02
    group = DEFAULT_GROUP[fmt]
    if group != -1 and K % group:
        group = -1
    qt = tm.quantize(w, fmt, group_size=group).to(device)
    return WeightCase(name, fmt, N, K, qt, qt.dequantize(dtype))


class TorchInt4:
    """torch's int4 kernel (``torch._weight_int4pack_mm``, tinygemm) on the same int4 codes (CUDA, bf16)."""

    def __init__(self, case: WeightCase):
        from triton_marlin.formats.packing import unpack_codes

        qt = case.qt
        if qt.format != "int4" or not qt.meta.get("symmetric", True) or qt.group_size not in (32, 64, 128, 256):
            raise ValueError("torch's int4 kernel takes symmetric int4 with group 32..256")
        codes = unpack_codes(qt.tensors, 4, case.K).to(torch.int32)  # [N, K]
        packed_u8 = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        self.weight = torch._convert_weight_to_int4pack(packed_u8, 8)
        scales = qt.tensors["scales"].to(torch.bfloat16)              # [G, N]
        # tinygemm dequantizes (q - 8) * scale + zero: our symmetric codes have zero = 0
        self.scales_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=2).contiguous()
        self.group = qt.group_size

    def __call__(self, x_bf16: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm(x_bf16, self.weight, self.group, self.scales_zeros)


def torch_int4_available(device: torch.device) -> str | None:
    """None when torch's int4 kernel can run here, else why not."""
    if device.type != "cuda":
        return "torch's int4 kernel needs CUDA"
    if not hasattr(torch, "_weight_int4pack_mm") or not hasattr(torch, "_convert_weight_to_int4pack"):
        return "this torch has no _weight_int4pack_mm"
    return None


def time_both(fn, args, graph: bool):
    """(graph-replay Stats or None, launch-inclusive Stats)."""
    from triton_marlin.bench import time_fn

    launch = time_fn(fn, device=args.device, warmup=args.warmup, repeats=args.repeats)
    replay = None
    if graph and args.device.type == "cuda":
        replay = time_fn(fn, device=args.device, warmup=args.warmup, repeats=args.repeats, cuda_graph=True)
    return replay, launch


def headline(replay, launch):
    """The figure a speedup is computed from: graph replay when measured, else launch-inclusive."""
    return replay.median_us if replay is not None else launch.median_us


def swapab_configs(M: int) -> list:
    """Swap-AB candidates for M >= 16 (weights the left tensor-core operand, fed to Hopper's ``wgmma``
    from registers; tokens the MMA's N dimension): fold operands with the scales loaded ahead, rows
    per tile the next power of two of M (16..128), 128 or 256 output columns, a few split-K choices
    and one deeper pipeline. Short on purpose: every (block_m, block_n, warps, stages) is a compile."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC

    if M < 16:
        return []
    bm = min(128, 1 << (M - 1).bit_length())
    splits = (2, 4) if M <= 64 else (1, 2)
    tiles = [(bm, 128, 4 if bm <= 64 else 8)]
    if bm <= 64:
        tiles.append((bm, 256, 8))
    else:
        tiles.append((64, 128, 4))
    out = []
    for bm_, bn, warps in tiles:
        for split in splits:
            out.append(KC("dot", block_m=bm_, block_n=bn, split_k=split, num_warps=warps, num_stages=3, fold=1,
                          prefetch=1, swap_ab=1))
    out.append(KC("dot", block_m=bm, block_n=128, split_k=splits[0], num_warps=tiles[0][2], num_stages=4,
                  fold=1, prefetch=1, swap_ab=1))
    if bm >= 128:
        # the fold epilogue costs BM/128 FFMA per weight and group: per-weight scales instead
        out.append(KC("dot", block_m=bm, block_n=128, split_k=1, num_warps=8, num_stages=3, swap_ab=1))
    return out + swapab_k_configs(M)


def swapab_k_configs(M: int) -> list:
    """Swap-AB tiles with one ``tl.dot`` per K tile (``dot_k=128``; docs/perf/gemm.md "Swap AB, one dot per K
    tile"): no ``wgmma.wait_group 0`` inside the K loop with per-weight scales (``fold=0``: PTX unpack, then
    ``(q - z) * s`` in fp16), one per tile with fold. Tiles from the offline sm_90 counts: no spills, the weight
    operand built in registers (per-weight scales need >= 128 weight rows per warpgroup: at 64, Triton 3.6
    converts the operand through shared memory), scales loaded a tile ahead."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC

    if M < 16:
        return []

    def cfg(bm, bn, warps, split, fold, stages=3):
        return KC("dot", block_m=bm, block_n=bn, split_k=split, num_warps=warps, num_stages=stages, fold=fold,
                  prefetch=1, swap_ab=1, dot_k=128)

    if M <= 16:
        return [cfg(16, 128, 4, 4, 1), cfg(16, 128, 4, 2, 1), cfg(16, 128, 4, 4, 0)]
    if M <= 32:
        return [cfg(32, 128, 4, 4, 1), cfg(32, 256, 8, 2, 0), cfg(32, 128, 4, 4, 0)]
    if M <= 64:
        return [cfg(64, 256, 8, 2, 0), cfg(64, 256, 8, 4, 0), cfg(64, 256, 8, 4, 0, stages=4), cfg(64, 256, 8, 4, 1),
                cfg(64, 128, 4, 2, 0), cfg(64, 128, 4, 4, 0), cfg(64, 128, 4, 4, 1)]
    if M <= 128:
        return [cfg(128, 256, 8, 1, 0), cfg(128, 256, 8, 2, 0), cfg(128, 128, 4, 1, 0), cfg(128, 128, 4, 2, 0),
                cfg(64, 256, 8, 1, 0), cfg(64, 256, 8, 2, 0), cfg(128, 128, 8, 1, 1)]
    # M > 128: 128 tokens per tile at most (256 needs 64 weight rows per warpgroup or more registers than exist)
    return [cfg(128, 256, 8, 1, 0), cfg(128, 256, 8, 2, 0), cfg(128, 256, 8, 1, 0, stages=4),
            cfg(128, 128, 4, 1, 0), cfg(128, 128, 4, 2, 0), cfg(64, 256, 8, 1, 0)]


def oneshot_configs(M: int) -> list:
    """One-shot gemv candidates for M <= 4 (``oneshot=1``: the K loop unrolled, every load of a program issued
    before the first decode; for the small GLM-4.7-Flash expert weights, where the time is latency). Column
    blocks x warps chosen from the offline sm_90 compile (``gpu/qgemm_ptx.py --oneshot``): no spills and all
    loads ahead of the first FFMA on K = 2048 and 1536, int4 g128; split 1 (one CTA reduces K across its
    warps, no partials) and split 2 for the narrowest grids."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC

    if M > 4:
        return []
    bm = 1 << max(0, (M - 1).bit_length())
    shapes = ((8, 2, 1), (8, 4, 1), (16, 2, 1), (16, 4, 1), (16, 8, 1), (32, 4, 1), (32, 8, 1), (64, 8, 1),
              (32, 4, 2), (64, 8, 2))
    if bm > 1:  # one accumulator per token row: narrower blocks keep the registers in check
        shapes = ((16, 2, 1), (16, 4, 1), (32, 8, 1), (16, 4, 2))
    return [KC("gemv", block_m=bm, block_n=bn, num_warps=w, split_k=sk, oneshot=1) for bn, w, sk in shapes]


def mma_configs(M: int) -> list:
    """The register-fragment GEMV (``family="mma"``, up to 16 rows): 16-column tiles a thread (block_n 16 TN) x
    warps splitting a program's K tiles x tiles loaded ahead x split-K, around what won the first H200 sweeps
    (docs/perf/gemm.md: one program per 32 columns with 4-8 K warps and no split on the large shapes, 16 columns
    and 8 warps on the GLM expert shapes), those shapes with 96 / 128-register caps, and the activations loaded with
    the words (``x_ahead``) where the refined sweeps found it faster."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC
    from triton_marlin.kernels.qgemv_mma import MMA_MAX_M

    if M > MMA_MAX_M:
        return []
    bm = 8 if M <= 8 else 16
    out = []
    for bn in (16, 32, 64):
        for warps in (4, 8, 16):
            for prefetch in (0, 1):
                for split in (1, 2, 4):
                    out.append(KC("mma", block_m=bm, block_n=bn, num_warps=warps, split_k=split, prefetch=prefetch))
        for split in (4, 8):
            out.append(KC("mma", block_m=bm, block_n=bn, num_warps=1, split_k=split, prefetch=1))
    # register caps on the shapes that won (more registers: the next tile's loads issued earlier, where the grid
    # leaves room for them)
    for bn, warps in ((16, 8), (32, 4), (32, 8), (64, 4)):
        for prefetch in (0, 1):
            for cap in (96, 128):
                out.append(KC("mma", block_m=bm, block_n=bn, num_warps=warps, prefetch=prefetch, maxnreg=cap))
    # activations loaded with the words (x_ahead): what won the refined sweeps of the GLM expert shapes (M 1-2) and
    # of M=8 on the large shapes
    for bn, warps, fold, prefetch in ((16, 8, 1, 0), (16, 8, 0, 1), (64, 4, 0, 1)):
        out.append(KC("mma", block_m=bm, block_n=bn, num_warps=warps, prefetch=prefetch, fold=fold, maxnreg=128,
                      x_ahead=1))
    return out


def small_configs(M: int) -> list:
    """``--candidates small``: the one-shot gemv (M <= 4), the configurations that won the GLM expert shapes in
    the 2026-11-26 H200 sweep (gemv bn32/64 split 4, 16x128 fold tiles split 4/8 with the scales ahead) and
    what the packaged tables pick."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC

    out = oneshot_configs(M)
    if M <= 4:
        bm = 1 << max(0, (M - 1).bit_length())
        for bn in (32, 64):
            for pf in (0, 1):
                out.append(KC("gemv", block_m=bm, block_n=bn, split_k=4, num_warps=4, prefetch=pf))
    if M <= 64:
        for split in (4, 8):
            out.append(KC("dot", block_m=16, block_n=128, split_k=split, num_warps=4, num_stages=3, fold=1,
                          prefetch=1))
    if M >= 16:
        out.append(KC("dot", block_m=16, block_n=128, split_k=4, num_warps=4, num_stages=3, fold=1, prefetch=1,
                      swap_ab=1))
    if M >= 64:
        out.append(KC("dequant"))
    for cfg in table_configs(M):
        if cfg not in out:
            out.append(cfg)
    return out


def table_configs(M: int, fmt: str = "int4") -> list:
    """What the packaged selection tables run for ``fmt`` at M rows on each shape they measured (the
    current best, to time beside new candidates)."""
    import json

    from triton_marlin.kernels import qgemm_config as C

    out = []
    for path in sorted(C.TUNED_DIR.glob("*.json")):
        table = C.validate_table(json.loads(path.read_text()), str(path))
        for shape in table["entries"].get(fmt, {}):
            n, k = (int(v) for v in shape.split("x"))
            found = C.lookup(table, fmt, n, k, M)
            if found is not None and found[0] not in out:
                out.append(found[0])
    return out


def candidate_configs(M: int, quick: bool = False, which: str | None = None) -> list:
    """The kernel configurations bench_kernel_variants times for a batch of M rows (split-K is a
    run-time argument: it costs no extra compile). ``which`` (default: the benchmark's
    ``--candidates``): ``all``; ``swapab`` = :func:`swapab_configs` plus :func:`table_configs`; ``swapab2`` =
    :func:`swapab_k_configs` plus :func:`table_configs`; ``small`` = :func:`small_configs` (one-shot gemv:
    its tiles per program are a compile-time constant, so each split costs a compile)."""
    from triton_marlin.kernels.qgemm import KernelConfig as KC

    which = which or _candidate_set
    if which not in CANDIDATE_SETS:
        raise ValueError(f"candidate set must be one of {CANDIDATE_SETS}, got {which!r}")
    if quick:
        if M <= 4:
            out = [KC("gemv", block_m=1 if M == 1 else 4, block_n=64),
                   KC("dot", block_m=16, block_n=64, fold=1, split_k=2, prefetch=1),
                   KC("gemv", block_m=1 if M == 1 else 4, block_n=16, num_warps=2, oneshot=1),
                   KC("mma", block_m=8, block_n=32, num_warps=2, split_k=1, prefetch=1)]
        else:
            out = [KC("dot", block_m=16, block_n=64, fold=1), KC("dot", block_m=16, block_n=64, wide=1),
                   KC("dequant"), KC("dot", block_m=16, block_n=64, fold=1, prefetch=1, swap_ab=1),
                   KC("dot", block_m=16, block_n=64, prefetch=1, swap_ab=1, dot_k=128)]
        if which == "swapab2":
            return [c for c in out if c.dot_k != 16 or c.family == "dequant"]
        if which == "small":
            return [c for c in out if c.oneshot or c.family == "dequant"] or out[:1]
        if which == "mma":
            return [c for c in out if c.family == "mma"] or out[:1]
        return out if which == "all" else [c for c in out if c.swap_ab or c.family == "dequant"]
    if which == "small":
        return small_configs(M)
    if which == "mma":
        out = mma_configs(M)
        for cfg in table_configs(M):
            if cfg not in out:
                out.append(cfg)
        return out
    if which in ("swapab", "swapab2"):
        out = swapab_configs(M) if which == "swapab" else swapab_k_configs(M)
        for cfg in table_configs(M):
            if cfg not in out:
                out.append(cfg)
        return out
    out = []
    if M <= 4:
        bm = 1 << max(0, (M - 1).bit_length())
        # scales loaded a tile ahead or in the tile that uses them (prefetch)
        for prefetch in (0, 1):
            for split in (8, 16):
                out.append(KC("gemv", block_m=bm, block_n=256, split_k=split, num_warps=4, prefetch=prefetch))
            # small weights (GLM-4.7-Flash experts, 3-6 MB): narrow column blocks give enough programs with
            # little or no K split (each split adds a partial store, a counter and a re-read)
            for bn in (32, 64, 128):
                for split in (1, 2, 4):
                    out.append(KC("gemv", block_m=bm, block_n=bn, split_k=split, num_warps=4, prefetch=prefetch))
        out.extend(oneshot_configs(M))
    if M <= 64:
        # 16-row fold tiles: width x pipeline depth x split-K x scales loaded a tile ahead (6 stages,
        # 8 warps and unrolling K tiles measured slower on the H200: docs/perf/gemm.md)
        for bn in (128, 256):
            for stages in (3, 4):
                for split in (4, 8, 16):
                    for prefetch in (0, 1):
                        out.append(KC("dot", block_m=16, block_n=bn, split_k=split, num_warps=4,
                                      num_stages=stages, fold=1, prefetch=prefetch))
            # longer programs (32-64 K tiles on K = 8192): with the scales loaded ahead, fewer splits won
            # down to the fewest measured (4), docs/perf/gemm.md v4
            for split in (1, 2):
                out.append(KC("dot", block_m=16, block_n=bn, split_k=split, num_warps=4, num_stages=3,
                              fold=1, prefetch=1))
        out.append(KC("dot", block_m=16, block_n=256, split_k=8, num_warps=4, num_stages=3))
    if 16 < M <= 256:
        for stages in (3, 4):
            for split in (2, 4, 8):
                for prefetch in (0, 1):
                    out.append(KC("dot", block_m=32, block_n=128, split_k=split, num_warps=4,
                                  num_stages=stages, fold=1, prefetch=prefetch))
        for split in (2, 4):
            out.append(KC("dot", block_m=64, block_n=128, split_k=split, num_warps=4, num_stages=3, fold=1))
        # per-weight dequant on 64x256 tiles (38.3 us at M=64 on 8192x8192 in the first sweep)
        for split in (4, 8):
            out.append(KC("dot", block_m=64, block_n=256, split_k=split, num_warps=4, num_stages=3))
    if M >= 32:
        for bm, bn, warps in ((64, 128, 4), (128, 128, 8), (128, 256, 8)):
            if bm > 2 * M:
                continue
            for split in ((1, 2) if M <= 256 and bn == 128 else (1,)):
                out.append(KC("dot", block_m=bm, block_n=bn, num_warps=warps, num_stages=3, wide=1,
                              split_k=split))
    if M >= 64:
        out.append(KC("dequant"))
    out.extend(swapab_configs(M))
    out.extend(mma_configs(M))
    return out

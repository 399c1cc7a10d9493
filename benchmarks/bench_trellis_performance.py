"""Trellis quantization: distortion per code and bits on i.i.d. Gaussian data, encode time, decode
throughput, proxy loss with a correlated Hessian (LDLQ vs Viterbi vs GPTQ/MR-GPTQ int4), and the
SASS instruction mix per weight of the decode GEMV (compiled for sm_90 on any machine).

Distortion is the mean squared error per weight of the stored artifact (scales in fp16 included) on
unit Gaussian weights. It is printed beside three published constants, labelled as references: the
rate-distortion bound 2^(-2R), the best scalar (Lloyd-Max) quantizer, and the bar issue 5 sets.

    python benchmarks/bench_trellis_performance.py                      # everything, default sizes
    python benchmarks/bench_trellis_performance.py --sections encode --encode-shape 4096x4096
    python benchmarks/bench_trellis_performance.py --sections sass     # SASS counts, no GPU needed
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402

from triton_marlin.bench import BenchRunner, time_fn  # noqa: E402
from triton_marlin.device import synchronize  # noqa: E402

# Published constants (MSE per weight of a unit Gaussian), printed as references, never measured here.
RD_BOUND = {2: 0.0625, 3: 0.015625, 4: 0.00390625}      # D(R) = 2^(-2R)
LLOYD_MAX = {2: 0.1175, 3: 0.03454, 4: 0.009497}        # best scalar quantizer (Max 1960)
ISSUE_BAR = {2: 0.072, 3: 0.019, 4: 0.0050}             # issue 5 "done when"
SECTIONS = ("distortion", "encode", "decode", "proxy", "sass")
# SASS opcode -> the pipe it issues to (for the per-weight instruction mix of the decode loop)
PIPES = {"int": ("IMAD", "IADD3", "LOP3", "SHF", "PRMT", "SGXT", "LEA", "VIADD", "IDP", "ISETP", "SEL", "IABS",
                 "MOV", "UIADD3", "UIMAD", "ULEA", "USHF", "UISETP", "UMOV", "PLOP3"),
         "fp32": ("FFMA", "FADD", "FMUL", "FSETP", "FSEL"),
         "fp16": ("HADD2", "HFMA2", "HMUL2"),
         "convert": ("I2FP", "F2FP", "I2F", "F2I", "MUFU"),
         "memory": ("LDG", "LDS", "STS", "LDC", "BAR", "ATOM", "RED", "STG"),
         "tensor": ("HMMA",)}


def add_args(p):
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--bits", default="2,3,4", help="bits per weight to measure (trellis2/3/4)")
    p.add_argument("--codes", default="3inst,1mad,hyb,1mad2",
                   help="trellis codes to measure, some of 3inst,1mad,hyb,1mad2,1mad2r (formats.trellis.CODES)")
    p.add_argument("--distortion-shape", default=None,
                   help="NxK of the Gaussian matrix for distortion (default 256x256 on GPU, 64x64 on CPU; "
                        "--quick 16x32)")
    p.add_argument("--encode-shape", default=None,
                   help="NxK encoded for the timing (default 4096x4096 on GPU, 64x64 on CPU; --quick 16x32)")
    p.add_argument("--encode-bits", type=int, default=3, help="bits of the timed encode")
    p.add_argument("--decode-shape", default=None, help="NxK for decode throughput (default 8192x8192 on GPU)")
    p.add_argument("--proxy-shape", default=None,
                   help="NxK for the proxy-loss comparison (default 512x1024 on GPU, 32x128 on CPU)")
    p.add_argument("--scale-sweep", default=None, metavar="F1,F2,...",
                   help="also measure 3inst distortion at these initial scale factors (the SCALE_FACTOR tuning)")


def _shape(text, default):
    n, k = (int(v) for v in (text or default).split("x"))
    return n, k


def distortion(runner, args, bits_list, codes):
    import triton_marlin as tm
    cuda = args.device.type == "cuda"
    N, K = _shape(args.distortion_shape, "16x32" if args.quick else ("256x256" if cuda else "64x64"))
    gen = torch.Generator().manual_seed(args.seed)
    w = torch.randn(N, K, generator=gen).to(args.device)
    for bits in bits_list:
        for code in codes:
            qt = tm.quantize(w, f"trellis{bits}", method="viterbi", code=code, seed=args.seed)
            mse = ((qt.dequantize(torch.float64) - w.double()) ** 2).mean().item()
            case = {"section": "distortion", "format": f"trellis{bits}", "code": code, "shape": f"{N}x{K}",
                    "samples": N * K}
            runner.record(case, "mse", mse, "per weight", rd_bound_ref=RD_BOUND[bits],
                          lloyd_max_ref=LLOYD_MAX[bits], issue_bar_ref=ISSUE_BAR[bits],
                          meets_bar=mse <= ISSUE_BAR[bits])
            runner.record(case, "gap_to_rd_bound", 10 * math.log10(mse / RD_BOUND[bits]), "dB")
            runner.record(case, "sqnr", -10 * math.log10(mse), "dB")
            runner.record(case, "bits_per_weight", qt.bits_per_weight, "bit")


def scale_sweep(runner, args, bits_list, factors):
    from triton_marlin.formats import trellis as tf
    from triton_marlin.quantize.viterbi import encode_tiles
    cuda = args.device.type == "cuda"
    tiles = 4 if args.quick else (512 if cuda else 32)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(tiles, tf.TILE_WEIGHTS, generator=gen).to(args.device)
    v = tf.code_table("3inst", device=args.device)
    rms = v.square().mean().sqrt()
    for bits in bits_list:
        for f in factors:
            s = f / rms
            q = v[encode_tiles(x / s, v, bits)] * s
            mse = ((q - x) ** 2).mean().item()
            runner.record({"section": "scale_sweep", "format": f"trellis{bits}", "code": "3inst",
                           "scale_factor": f, "samples": x.numel()}, "mse", mse, "per weight")


def encode(runner, args):
    import triton_marlin as tm
    cuda = args.device.type == "cuda"
    N, K = _shape(args.encode_shape, "16x32" if args.quick else ("4096x4096" if cuda else "64x64"))
    bits = args.encode_bits
    w = (torch.randn(N, K, generator=torch.Generator().manual_seed(args.seed)) * 0.02).to(args.device)
    tm.quantize(w[:16, :16].contiguous(), f"trellis{bits}", method="viterbi")    # warm up the device
    synchronize(args.device)
    t0 = time.perf_counter()
    qt = tm.quantize(w, f"trellis{bits}", method="viterbi", code="3inst", progress=not args.quick)
    synchronize(args.device)
    dt = time.perf_counter() - t0
    tiles = N * K // 256
    case = {"section": "encode", "format": f"trellis{bits}", "code": "3inst", "shape": f"{N}x{K}", "tiles": tiles}
    runner.record(case, "encode_time", dt, "s", limit_ref_s=60.0 if (N, K, bits) == (4096, 4096, 3) else None)
    runner.record(case, "encode_rate", tiles / dt, "tile/s")
    # the work the search does: tiles x 256 steps x 2 passes x 2^16 states x 2^K predecessors
    runner.record(case, "trellis_edges_per_s", tiles * 256 * 2 * 65536 * 2 ** bits / dt, "edge/s")
    rel = ((qt.dequantize(torch.float64) - w.double()).norm() / w.double().norm()).item()
    runner.record(case, "rel_err", rel, "")


def decode(runner, args, bits_list, codes):
    from triton_marlin.formats import trellis as tf
    cuda = args.device.type == "cuda"
    N, K = _shape(args.decode_shape, "32x64" if args.quick else ("8192x8192" if cuda else "64x128"))
    gen = torch.Generator().manual_seed(args.seed)
    for bits in bits_list:
        for code in codes:
            qt = tf.random_trellis_weight(N, K, bits, code, -1, gen, device=args.device)
            case = {"section": "decode", "format": f"trellis{bits}", "code": code, "shape": f"{N}x{K}"}
            st = time_fn(lambda: qt.dequantize(torch.float16), device=args.device, warmup=1,
                         repeats=max(1, min(args.repeats, 5)))
            runner.record(dict(case, impl="torch_reference_dequantize"), "decode_rate",
                          N * K / (st.median_us * 1e-6) / 1e9, "Gweight/s", stats=st)
            if args.device.type == "cuda" or G.os.environ.get("TRITON_INTERPRET") == "1":
                from triton_marlin.kernels import trellis_gemm as tg
                xr = torch.randn(1, K, generator=gen).to(args.device)
                st = time_fn(lambda: tg.trellis_matmul_rotated(xr, qt), device=args.device,
                             warmup=args.warmup, repeats=args.repeats, cuda_graph=cuda)
                runner.record(dict(case, impl="triton_fused_gemv_m1"), "decode_rate",
                              N * K / (st.median_us * 1e-6) / 1e9, "Gweight/s", stats=st,
                              timing="graph" if cuda else "launch")


def proxy(runner, args, bits_list, codes):
    import triton_marlin as tm
    from triton_marlin.quantize.gptq import proxy_loss
    cuda = args.device.type == "cuda"
    N, K = _shape(args.proxy_shape, "16x32" if args.quick else ("512x1024" if cuda else "32x128"))
    gen = torch.Generator().manual_seed(args.seed)
    w = torch.randn(N, K, generator=gen).to(args.device)
    # calibration activations with a few large channels and correlated inputs
    X = torch.randn(4 * K, K, generator=gen, dtype=torch.float64)
    X[:, : max(1, K // 64)] *= 20.0
    X = X @ (torch.eye(K, dtype=torch.float64) + 0.5 * torch.randn(K, K, generator=gen, dtype=torch.float64) / K ** 0.5)
    H = (X.t() @ X).float().to(args.device)
    group = 128 if K % 128 == 0 else 32
    runs = [("rtn", "int4", dict(group_size=group)),
            ("gptq", "int4", dict(group_size=group, method="gptq", hessian=H)),
            ("gptq_act_order", "int4", dict(group_size=group, method="gptq", hessian=H, act_order=True)),
            ("mr_gptq", "int4", dict(group_size=group, method="gptq", hessian=H, rotate=True))]
    code = codes[0]
    for bits in bits_list:
        runs.append(("viterbi", f"trellis{bits}", dict(method="viterbi", code=code)))
        runs.append(("ldlq", f"trellis{bits}", dict(method="ldlq", hessian=H, code=code)))
    losses = {}
    for method, fmt, kw in runs:
        t0 = time.perf_counter()
        qt = tm.quantize(w, fmt, **kw)
        synchronize(args.device)
        dt = time.perf_counter() - t0
        deq = qt.dequantize(torch.float64)
        loss = proxy_loss(w, deq, H)
        losses[(method, fmt)] = loss
        case = {"section": "proxy", "method": method, "format": fmt, "shape": f"{N}x{K}",
                "group_size": qt.group_size, "code": qt.meta.get("code", "")}
        runner.record(case, "proxy_loss", loss, "tr(E H E^T)")
        runner.record(case, "mse", ((deq - w.double()) ** 2).mean().item(), "per weight")
        runner.record(case, "quantize_time", dt, "s")
    ref = losses[("gptq", "int4")]
    for (method, fmt), loss in losses.items():
        runner.record({"section": "proxy", "method": method, "format": fmt, "shape": f"{N}x{K}"},
                      "proxy_loss_vs_gptq_int4", loss / ref, "x")


def sass(runner, args, bits_list, codes):
    """Instructions per weight of the decode GEMV's K loop, from SASS compiled for sm_90 here."""
    import json
    import os
    import subprocess
    helper = Path(__file__).resolve().parent / "_trellis_sass.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    for bits in bits_list:
        for code in codes:
            for asm in ((1,) if args.quick else (1, 0)):
                proc = subprocess.run([sys.executable, str(helper), "--bits", str(bits), "--code", code,
                                       "--asm", str(asm)], env=env, capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    runner.note(f"sass: trellis{bits} {code} asm={asm} did not compile: {proc.stderr[-500:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                case = {"section": "sass", "format": f"trellis{bits}", "code": code, "asm": bool(asm),
                        "arch": f"sm_{r['arch']}", "block": f"{r['block_tn']}x{r['block_tk']}"}
                runner.record(case, "instr_per_weight", r["instr_per_weight"], "instr", opcodes=r["opcodes"],
                              triton_compiler=r["triton"])
                wpt = r["weights_per_thread"]
                for pipe, names in PIPES.items():
                    n = sum(v for k, v in r["opcodes"].items() if k in names)
                    runner.record(case, f"{pipe}_per_weight", n / wpt, "instr")
            if code in ("1mad", "1mad2", "1mad2r"):    # the tensor-core GEMV (inline PTX only: mma.sync)
                proc = subprocess.run([sys.executable, str(helper), "--bits", str(bits), "--code", code,
                                       "--kernel", "tc"], env=env, capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    runner.note(f"sass: trellis{bits} {code} tc did not compile: {proc.stderr[-500:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                case = {"section": "sass", "format": f"trellis{bits}", "code": code, "asm": True, "kernel": "tc",
                        "arch": f"sm_{r['arch']}", "block": f"tn{r['block_tn']}x{r['num_warps']}w"}
                runner.record(case, "instr_per_weight", r["instr_per_weight"], "instr", opcodes=r["opcodes"],
                              triton_compiler=r["triton"], kernel_instructions=r["kernel_instructions"],
                              asm_layouts=r["asm_layouts"], local_alloc=r["local_alloc"])
                for pipe, names in PIPES.items():
                    n = sum(v for k, v in r["opcodes"].items() if k in names)
                    runner.record(case, f"{pipe}_per_weight", n / r["weights_per_thread"], "instr")


def main(argv=None):
    runner = BenchRunner("bench_trellis_performance", description=__doc__.split("\n\n")[0], add_args=add_args,
                         argv=argv)
    args = runner.args
    G.prepare(args.device)
    sections = G.parse_list(args.sections)
    for s in sections:
        if s not in SECTIONS:
            raise SystemExit(f"--sections: unknown section {s!r}; expected some of {SECTIONS}")
    bits_list = G.parse_list(args.bits, int)
    if args.quick and args.bits == "2,3,4":
        bits_list = [3]
    codes = G.parse_list(args.codes)
    from triton_marlin.formats.trellis import CODES
    for c in codes:
        if c not in CODES:
            raise SystemExit(f"--codes: unknown trellis code {c!r}; expected some of {CODES}")
    if args.quick and args.codes == "3inst,1mad,hyb,1mad2":
        codes = ["3inst"]
    if args.device.type == "cpu" and not args.quick:
        runner.note("CPU: the Viterbi search over 2^16 states is slow here; default sizes are small")
    if "distortion" in sections:
        distortion(runner, args, bits_list, codes)
    if args.scale_sweep:
        scale_sweep(runner, args, bits_list, G.parse_list(args.scale_sweep, float))
    if "encode" in sections:
        encode(runner, args)
    if "decode" in sections:
        decode(runner, args, bits_list, codes)
    if "proxy" in sections:
        proxy(runner, args, bits_list, codes)
    if "sass" in sections:
        sass(runner, args, bits_list, codes)
    runner.finish()


if __name__ == "__main__":
    main()

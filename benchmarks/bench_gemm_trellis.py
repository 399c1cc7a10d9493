"""Fused trellis GEMV/GEMM (trellis2/3/4) against fp16 cuBLAS and int4 qmatmul, same run.

Per case (shape x format x code x M): the full path (Hadamard on x, fused decode GEMM, Hadamard on y)
and the decode GEMM alone, plus each Hadamard launch alone (hadamard_in, hadamard_out) and, at
M <= 4, the variant with the input transform inside the decode kernel (trellis_full_fused_in), timed by CUDA-graph replay (launch excluded) and launch-inclusive; GB/s of
the bytes the call must move (codes, scales, signs, x, out) and the fraction of the measured copy
bandwidth; decode rate (weights/s); speedup against fp16 cuBLAS (F.linear on the dequantized weight)
and against int4 group-128 qmatmul; relative error against an fp64 reference.

Kernel speed does not depend on which codes are stored, so weights hold random streams by default
(--encode runs the Viterbi encoder instead; quality is measured by bench_trellis_performance.py).

    python benchmarks/bench_gemm_trellis.py --shapes 8192x8192,28672x8192 --m 1 --formats trellis2,trellis3,trellis4
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _gemm_common as G  # noqa: E402

from triton_marlin.bench import BenchRunner, load_baseline  # noqa: E402


def add_args(p):
    G.add_case_args(p, default_formats="trellis2,trellis3,trellis4")
    p.add_argument("--codes", default="3inst,1mad,hyb,1mad2",
                   help="comma-separated trellis codes, some of 3inst,1mad,hyb,1mad2,1mad2r (formats.trellis.CODES)")
    p.add_argument("--encode", action="store_true",
                   help="encode a Gaussian weight with Viterbi instead of random streams (slow on big shapes)")
    p.add_argument("--no-int4", action="store_true", help="skip the int4 qmatmul comparison")
    p.add_argument("--sweep", action="store_true",
                   help="also time the static decode GEMV over K step x prefetch x K-split target x warps "
                        "(and hyb's table reads) configurations (M <= 4); tiled row blocks (M > 4)")
    p.add_argument("--sweep-gemv", default="all", choices=["all", "static", "tc"],
                   help="with --sweep at M <= 4: time only the configs of this decode kernel (tc: the tensor-core "
                        "GEMV's, for the codes it decodes)")
    p.add_argument("--pipe-rates", action="store_true",
                   help="CUDA only: time the decode's per-weight instructions alone (dp4a = IDP, mad.lo = IMAD, "
                        "both, prmt, lop3) in independent chains at full occupancy; records cycles per warp "
                        "instruction per SM sub-partition (clock from --clock-ghz) and the ratio to IMAD")
    p.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock for --pipe-rates (H200: 1.98)")
    p.add_argument("--asm-dir", default=None, metavar="DIR",
                   help="write the PTX of each compiled decode kernel into DIR with an op count of it")


def sweep_configs(quick: bool, bits: int, code: str, M: int = 1):
    """Keyword sets for trellis_matmul_rotated (all with parts=True, as qmatmul runs it): the static
    GEMV's K step (tiles), software prefetch, K-split target (programs per SM), warps, and for hyb
    the table in shared memory (gather) or read by global loads."""
    if quick:
        return [{"gemv": "static"}, {"gemv": "static", "prefetch": False}, {"gemv": "generic"}]
    if M > 1:                # several rows per program: K step and prefetch only
        return [{"gemv": "static", "block_tk": tk, "prefetch": pf} for tk in (1, 2) for pf in (False, True)]
    if code != "3inst":      # the code changes the decode, not the blocking: a shorter list
        out = [{"gemv": "static", "block_tk": tk, "prefetch": True, "programs_per_sm": 8} for tk in (1, 2, 4)]
        out.append({"gemv": "static", "block_tk": 2, "prefetch": False, "programs_per_sm": 8})
        if code in ("1mad2", "1mad2r"):  # fewest instructions per weight at 4 tiles a step (5.5-5.6 vs 5.8-5.9)
            out.append({"gemv": "static", "block_tk": 4, "prefetch": False, "programs_per_sm": 8})
    else:
        out = [{"gemv": "static", "block_tk": tk, "prefetch": True, "programs_per_sm": pps}
               for tk in (1, 2, 4) for pps in (4, 8, 16)]
        out += [{"gemv": "static", "block_tk": tk, "prefetch": False, "programs_per_sm": 8} for tk in (1, 2, 4)]
        out += [{"gemv": "static", "block_tk": 2, "prefetch": True, "programs_per_sm": pps, "num_warps": 8}
                for pps in (4, 8)]
    if code == "hyb":
        out += [{"gemv": "static", "block_tk": tk, "prefetch": True, "programs_per_sm": 8, "gather": False}
                for tk in (1, 2)]
    if code in ("1mad", "1mad2", "1mad2r"):
        # the tensor-core GEMV: tiles per thread x K-split target (one warp a program: 4 warps and 8
        # programs per SM lost everywhere in the 2026-11-26 sweep), then at 32 programs per SM the K split
        # counted in waves of resident programs and the prefetch of the next K step's words
        out += [{"gemv": "tc", "block_tn_tc": tn, "programs_per_sm": pps, "num_warps": 1}
                for tn in (1, 2) for pps in (16, 32)]
        out += [{"gemv": "tc", "block_tn_tc": tn, "programs_per_sm": 32, "num_warps": 1, **extra}
                for extra in ({"tc_resident_split": True}, {"prefetch": True},
                              {"tc_resident_split": True, "prefetch": True}) for tn in (1, 2)]
        # deeper loads in flight (2026-11-27, offline): the activations one step ahead with the words
        # (tc_prefetch_x), the words two steps ahead (prefetch=2), both; with the resident-wave split
        out += [{"gemv": "tc", "block_tn_tc": tn, "programs_per_sm": 32, "num_warps": 1, "tc_resident_split": True,
                 **extra}
                for extra in ({"prefetch": True, "tc_prefetch_x": True}, {"prefetch": 2},
                              {"prefetch": 2, "tc_prefetch_x": True}) for tn in (1, 2)]
    return out


def _full_tc(x, qt):
    """qmatmul's whole path with the tensor-core GEMV forced on for this call (``gemv="tc"``; the
    module's own import: ``tg`` is local to ``main``, and a module-level reference to it was the
    NameError of the first GPU run)."""
    from triton_marlin.kernels import trellis_gemm as tg
    return tg._trellis_qgemm_impl(x, qt, None, gemv="tc")


PIPE_OPS = {   # one instruction of each of 8 independent chains; $0..$7 in/out, constants inline
    "idp": "dp4a.u32.u32 {r}, {r}, 0x01010101, 0xE5FE6400;",
    "imad": "mad.lo.u32 {r}, {r}, 34038481, 76625530;",
    "prmt": "prmt.b32 {r}, {r}, 0x64646464, 0x7160;",
    "lop3": "lop3.b32 {r}, {r}, 0x0000FFFF, 0x5A5A5A5A, 0x6A;",
}


def pipe_rates(runner, device, clock_ghz: float, repeats: int):
    """Cycles per warp instruction per SM sub-partition of the tensor-core GEMV's per-weight opcodes (IDP,
    IMAD), alone and mixed 1:1 as the decode issues them, and of two ALU opcodes: 8 independent chains per
    thread, 16 warps x 8 programs per SM, 64 instructions per chain and loop trip. Which pipe binds the
    decode (IMAD and IDP are 2 cycles each if both are half rate on one pipe) is what this measures."""
    import triton
    import triton.language as tl

    @triton.jit
    def _pipe_kernel(out_ptr, ITERS, ASM: tl.constexpr):
        e = tl.arange(0, 512).to(tl.uint32)
        r = (e, e + 1, e + 2, e + 3, e + 4, e + 5, e + 6, e + 7)
        for _ in range(ITERS):
            r = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r,0,1,2,3,4,5,6,7", list(r),
                                          dtype=(tl.uint32,) * 8, is_pure=True, pack=1)
        t = r[0] ^ r[1] ^ r[2] ^ r[3] ^ r[4] ^ r[5] ^ r[6] ^ r[7]
        tl.store(out_ptr + tl.program_id(0) * 512 + tl.arange(0, 512), t.to(tl.int32, bitcast=True))

    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs, iters, unroll = sms * 8, 256, 8
    out = torch.empty(programs * 512, dtype=torch.int32, device=device)
    mixes = {"idp": ["idp"], "imad": ["imad"], "imad+idp": ["imad", "idp"], "prmt": ["prmt"], "lop3": ["lop3"]}
    res = {}
    for name, ops in mixes.items():
        body = "".join(PIPE_OPS[ops[(u + i) % len(ops)]].format(r=f"${i}") for u in range(unroll) for i in range(8))
        asm = "{ " + body + " }"
        kern = lambda: _pipe_kernel[(programs,)](out, iters, ASM=asm, num_warps=16)   # noqa: E731
        kern()
        torch.cuda.synchronize()
        times = []
        for _ in range(max(3, repeats)):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            kern()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        t_us = sorted(times)[len(times) // 2]
        warp_instr = programs * 16 * iters * unroll * 8
        cyc = t_us * 1e-6 * clock_ghz * 1e9 * sms * 4 / warp_instr
        res[name] = cyc
        runner.record({"shape": "pipe", "impl": f"pipe_{name}", "ops": "+".join(ops)}, "cycles_per_warp_instr",
                      cyc, "cycles", timing="events")
        runner.note(f"pipe {name}: {cyc:.2f} cycles per warp instruction per SM sub-partition "
                    f"({t_us:.1f} us, clock {clock_ghz} GHz)")
    for name in ("idp", "imad+idp", "prmt", "lop3"):
        runner.record({"shape": "pipe", "impl": f"pipe_{name}"}, "ratio_to_imad", res[name] / res["imad"], "x",
                      timing="events")


def tiled_configs(M: int):
    """Tiled GEMM (M > 4) row blocks: every row block decodes the whole weight once."""
    out = [{"block_m": bm} for bm in (16, 32, 64) if bm <= max(16, M)]
    if M > 64:
        out.append({"block_m": 128, "num_warps": 8})
    return out


def ptx_op_counts(ptx: str) -> dict:
    """Instruction mnemonics (first token of each PTX instruction line) and their counts."""
    counts: dict = {}
    for line in ptx.splitlines():
        t = line.strip()
        if not t or t.startswith(("//", ".", "{", "}", "$", "@%p")) or t.endswith(":"):
            if t.startswith("@%p"):
                t = t.split(None, 1)[1] if " " in t else t
            else:
                continue
        op = t.split()[0].rstrip(";")
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv=None):
    runner = BenchRunner("bench_gemm_trellis", description=__doc__.split("\n\n")[0], add_args=add_args, argv=argv)
    args = runner.args
    G.prepare(args.device)
    import triton_marlin as tm
    from triton_marlin import dispatch
    from triton_marlin.formats import trellis as tf
    from triton_marlin.kernels import hadamard as kh
    from triton_marlin.kernels import trellis_gemm as tg

    dtype = G.act_dtype(args)
    base = load_baseline(args.device)
    copy_gbps = base["copy_GBps"]
    gen = torch.Generator().manual_seed(args.seed)
    graph = not args.no_graph
    if args.device.type == "cpu":
        runner.note("CPU: Triton kernels run in the interpreter; times are not performance figures")
    shapes = G.shapes_from(args)
    if args.quick and args.shapes is None:
        shapes = {"tiny_128x256": (128, 256)}   # whole 8-tile blocks: the static GEMV runs
    formats = G.parse_list(args.formats)
    if args.quick and args.formats == "trellis2,trellis3,trellis4":
        formats = ["trellis3"]
    codes = G.parse_list(args.codes)
    for c in codes:
        if c not in tf.CODES:
            raise SystemExit(f"--codes: unknown trellis code {c!r}; expected some of {tf.CODES}")
    if args.quick and args.codes == "3inst,1mad,hyb,1mad2":
        codes = ["3inst"]
    for f in formats:
        if f not in ("trellis2", "trellis3", "trellis4"):
            raise SystemExit(f"--formats: {f!r} is not trellis2, trellis3 or trellis4")
    asm_dir = Path(args.asm_dir) if args.asm_dir else None
    failures = []
    if args.pipe_rates:
        if args.device.type == "cuda":
            pipe_rates(runner, args.device, args.clock_ghz, args.repeats)
        else:
            runner.note("--pipe-rates: CUDA only, skipped")
    if asm_dir:
        asm_dir.mkdir(parents=True, exist_ok=True)

    for name, (N, K) in shapes.items():
        fp_cache = {}
        w_fp = (torch.randn(N, K, generator=gen) * 0.02).to(dtype).to(args.device)
        int4_qt = None
        if not args.no_int4:   # quantized where the weight lives (fast on the GPU)
            int4_qt = tm.quantize(w_fp.float(), "int4", group_size=128 if K % 128 == 0 else -1)
        for fmt in formats:
            bits = int(fmt[-1])
            for code in codes:
                if args.encode:
                    qt = tm.quantize(w_fp.float(), fmt, method="viterbi", code=code)
                else:
                    qt = tf.random_trellis_weight(N, K, bits, code, -1, gen, device=args.device)
                w_deq = qt.dequantize(torch.float64)
                for M in runner.progress(G.m_values_from(args), desc=f"{name} {fmt} {code}"):
                    x = torch.randn(M, K, generator=gen).to(dtype).to(args.device)
                    case = {"shape": name, "N": N, "K": K, "M": M, "format": fmt, "code": code,
                            "dtype": args.dtype, "weights": "viterbi" if args.encode else "random"}
                    ref = x.double() @ w_deq.t()
                    out = torch.full((M, N), float("nan"), dtype=dtype, device=args.device)
                    out.copy_(tg.trellis_qgemm(x, qt))
                    err = ((out.double() - ref).norm() / ref.norm()).item()
                    xr = kh.rotate(x, qt.tensors["sv"], qt.meta["had_block_in"],
                                   out_dtype=torch.float32 if M <= tg.GEMV_MAX_M else dtype)
                    full_g, full_l = G.time_both(lambda: tg.trellis_qgemm(x, qt), args, graph)
                    if M <= tg.GEMV_MAX_M and tg.fused_input_ok(M, qt):
                        # the variant with the input transform inside the decode kernel (two launches);
                        # experimental: a failure is reported, the other figures are still measured
                        try:
                            fz = torch.full((M, N), float("nan"), dtype=dtype, device=args.device)
                            fz.copy_(tg._trellis_qgemm_impl(x, qt, None, fuse_input=True))
                            fz_err = ((fz.double() - ref).norm() / ref.norm()).item()
                            fz_g, fz_l = G.time_both(lambda: tg._trellis_qgemm_impl(x, qt, None, fuse_input=True),
                                                     args, graph)
                        except Exception as exc:  # noqa: BLE001  (recorded below, never hidden)
                            runner.note(f"{name} {fmt} {code} M={M}: trellis_full_fused_in failed: "
                                        f"{type(exc).__name__}: {str(exc)[:300]}")
                        else:
                            fc = dict(case, impl="trellis_full_fused_in")
                            if fz_g is not None:
                                runner.record(fc, "time", fz_g.median_us, "us", stats=fz_g, timing="graph")
                            runner.record(fc, "time_launch", fz_l.median_us, "us", stats=fz_l, timing="launch")
                            runner.record(fc, "rel_err_vs_fp64", fz_err, "")
                    if tg.tc_gemv_reason(M, qt) is None:
                        # both M <= 4 decode kernels forced, whichever the default is: the tensor-core GEMV
                        # (its tc_config) and the FMA GEMV (its GEMV_DEFAULTS); a failure is reported and
                        # makes the run exit non-zero
                        try:
                            fma_g, fma_l = G.time_both(
                                lambda: tg.trellis_matmul_rotated(xr, qt, parts=True, gemv="static"), args, graph)
                            tcf = torch.full((M, N), float("nan"), dtype=dtype, device=args.device)
                            tcf.copy_(_full_tc(x, qt))
                            tc_err = ((tcf.double() - ref).norm() / ref.norm()).item()
                            tck = tg.trellis_matmul_rotated(xr, qt, parts=True, gemv="tc").sum(0).double()
                            ref_r = xr.double() @ qt.fmt.rotated_weight(qt).double().t()
                            tck_err = ((tck - ref_r).norm() / ref_r.norm()).item()
                            tcf_g, tcf_l = G.time_both(lambda: _full_tc(x, qt), args, graph)
                            tck_g, tck_l = G.time_both(
                                lambda: tg.trellis_matmul_rotated(xr, qt, parts=True, gemv="tc"), args, graph)
                        except Exception as exc:  # noqa: BLE001  (recorded below, never hidden)
                            failures.append(f"{name} {fmt} {code} M={M}")
                            runner.note(f"{name} {fmt} {code} M={M}: tensor-core GEMV failed: "
                                        f"{type(exc).__name__}: {str(exc)[:300]}")
                        else:
                            cfg = tg.tc_config(qt)
                            tc_cfg = f"tn={cfg['tn']},programs_per_sm={cfg['programs_per_sm']},num_warps={cfg['num_warps']}"
                            for impl, st_g, st_l, e in (("trellis_full_tc", tcf_g, tcf_l, tc_err),
                                                        ("trellis_kernel_tc", tck_g, tck_l, tck_err),
                                                        ("trellis_kernel_fma", fma_g, fma_l, None)):
                                tcase = dict(case, impl=impl, config=tc_cfg if "tc" in impl else "GEMV_DEFAULTS")
                                if st_g is not None:
                                    runner.record(tcase, "time", st_g.median_us, "us", stats=st_g, timing="graph")
                                runner.record(tcase, "time_launch", st_l.median_us, "us", stats=st_l, timing="launch")
                                if e is not None:
                                    runner.record(tcase, "rel_err_vs_fp64", e, "")
                    # the decode kernel as qmatmul launches it (split-K partials, no zeroing)
                    kern_g, kern_l = G.time_both(lambda: tg.trellis_matmul_rotated(xr, qt, parts=True),
                                                 args, graph)
                    dispatch.reset()
                    yparts = tg.trellis_matmul_rotated(xr, qt, parts=True)
                    paths = sorted(p for (op, p) in dispatch.counts() if op == "trellis_gemv")
                    path = ",".join(paths) if paths else "gemm"   # M > 4: the tiled GEMM (not recorded there)
                    for impl, fn in (("hadamard_in", lambda: kh.rotate(x, qt.tensors["sv"], qt.meta["had_block_in"],
                                                                      out_dtype=xr.dtype)),
                                     ("hadamard_out", lambda: kh.unrotate_parts(yparts, qt.tensors["su"],
                                                                                qt.meta["had_block_out"],
                                                                                out_dtype=dtype))):
                        h_g, h_l = G.time_both(fn, args, graph)
                        hc = dict(case, impl=impl, splits=int(yparts.shape[0]))
                        if h_g is not None:
                            runner.record(hc, "time", h_g.median_us, "us", stats=h_g, timing="graph")
                        runner.record(hc, "time_launch", h_l.median_us, "us", stats=h_l, timing="launch")
                    if M not in fp_cache:
                        fp_cache[M] = G.time_both(lambda: F.linear(x, w_fp), args, graph)
                    fp_g, fp_l = fp_cache[M]
                    timing = "graph" if full_g is not None else "launch"
                    full_t, kern_t, fp_t = G.headline(full_g, full_l), G.headline(kern_g, kern_l), G.headline(fp_g, fp_l)
                    io = qt.nbytes + M * K * x.element_size() + M * N * x.element_size()
                    for impl, st_g, st_l, t in (("trellis_full", full_g, full_l, full_t),
                                                ("trellis_kernel", kern_g, kern_l, kern_t)):
                        c = dict(case, impl=impl, path=path)    # the decode kernel the default dispatch ran
                        if st_g is not None:
                            runner.record(c, "time", st_g.median_us, "us", stats=st_g, timing="graph")
                        runner.record(c, "time_launch", st_l.median_us, "us", stats=st_l, timing="launch")
                        gbps = io / (t * 1e-6) / 1e9
                        runner.record(c, "bandwidth", gbps, "GB/s", roofline=gbps / copy_gbps, timing=timing)
                        runner.record(c, "decode_rate", N * K / (t * 1e-6) / 1e9, "Gweight/s", timing=timing)
                        runner.record(c, "speedup_vs_fp16", fp_t / t, "x", timing=timing)
                    runner.record(dict(case, impl="trellis_full"), "rel_err_vs_fp64", err, "", timing=timing)
                    runner.record(dict(case, impl="trellis_full"), "bits_per_weight", qt.bits_per_weight, "bit")
                    fcase = dict(case, impl="fp16_cublas" if args.device.type == "cuda" else "fp16_torch",
                                 format="fp16", code="")
                    if fp_g is not None:
                        runner.record(fcase, "time", fp_g.median_us, "us", stats=fp_g, timing="graph")
                    runner.record(fcase, "time_launch", fp_l.median_us, "us", stats=fp_l, timing="launch")
                    fgbps = (N * K + M * K + M * N) * x.element_size() / (fp_t * 1e-6) / 1e9
                    runner.record(fcase, "bandwidth", fgbps, "GB/s", roofline=fgbps / copy_gbps, timing=timing)
                    if int4_qt is not None:
                        i_g, i_l = G.time_both(lambda: tm.qmatmul(x, int4_qt), args, graph)
                        i_t = G.headline(i_g, i_l)
                        icase = dict(case, impl="int4_g128_qmatmul", format="int4", code="")
                        if i_g is not None:
                            runner.record(icase, "time", i_g.median_us, "us", stats=i_g, timing="graph")
                        runner.record(icase, "time_launch", i_l.median_us, "us", stats=i_l, timing="launch")
                        runner.record(dict(case, impl="trellis_full"), "speedup_vs_int4", i_t / full_t, "x",
                                      timing=timing)
                    if asm_dir and args.device.type == "cuda":
                        path = "gemv" if M <= tg.GEMV_MAX_M else "gemm"
                        compiled = tg.LAST_COMPILED.get(path)
                        if compiled is not None and "ptx" in getattr(compiled, "asm", {}):
                            stem = asm_dir / f"{path}_{fmt}_{code}"
                            stem.with_suffix(".ptx").write_text(compiled.asm["ptx"])
                            counts = ptx_op_counts(compiled.asm["ptx"])
                            stem.with_suffix(".ops.txt").write_text(
                                "\n".join(f"{v:6d} {k}" for k, v in counts.items()) + "\n")
                    if args.sweep:
                        best = None
                        for kw in (sweep_configs(args.quick, bits, code, M) if M <= tg.GEMV_MAX_M
                                   else tiled_configs(M)):
                            if M <= tg.GEMV_MAX_M and args.sweep_gemv not in ("all", kw.get("gemv")):
                                continue
                            if kw.get("gemv") == "static" and (N % (16 * kw.get("block_tn", 8))
                                                           or K % (16 * (kw.get("block_tk") or 2))):
                                continue
                            if kw.get("gemv") == "tc" and tg.tc_gemv_reason(M, qt, kw.get("block_tn_tc"),
                                                                            kw.get("num_warps")) is not None:
                                continue
                            st_g, st_l = G.time_both(lambda: tg.trellis_matmul_rotated(xr, qt, parts=True, **kw),
                                                     args, graph)
                            t = G.headline(st_g, st_l)
                            c = dict(case, impl="trellis_kernel", config=",".join(f"{k}={v}" for k, v in kw.items()))
                            runner.record(c, "sweep_time", t, "us", stats=st_g or st_l, timing=timing)
                            if best is None or t < best[0]:
                                best = (t, kw)
                        if best is None:
                            runner.note(f"{name} {fmt} {code} M={M}: no {args.sweep_gemv} config applies")
                        else:
                            runner.note(f"{name} {fmt} {code} M={M}: fastest decode GEMV {best[1]}: {best[0]:.1f} us")
    runner.finish()
    if failures:
        raise SystemExit(f"the tensor-core GEMV failed in {len(failures)} case(s): {'; '.join(failures)}")


if __name__ == "__main__":
    main()

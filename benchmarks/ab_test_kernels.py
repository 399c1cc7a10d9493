#!/usr/bin/env python
"""A/B tests of two implementations of the same op: interleaved timing (A B A B ...), Welch's t-test,
Mann-Whitney U, a bootstrap CI of the ratio of medians, effect sizes, and a verdict only when significant.

Pairs (--pair):
  gemm       qmatmul (int4 by default) vs dequantize + torch.matmul on the same quantized weight, and dense
             fp16 torch.matmul vs qmatmul (the speed a quantized weight buys or costs).
             On CPU qmatmul runs its torch reference path (the Triton kernel needs CUDA), and says so.
  attention  torch scaled_dot_product_attention vs a plain softmax(Q K^T / sqrt(d)) V.
  moe        a Python loop over experts vs a gather + bmm batched version (SwiGLU experts, fp16 on GPU).
Before timing, the two sides of each pair are checked to compute the same result.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import triton_marlin as tm
from triton_marlin import dispatch
from triton_marlin.bench import BenchRunner, ab_compare

PAIRS = ("gemm", "attention", "moe")


def _add_args(p):
    p.add_argument("--pair", nargs="+", choices=PAIRS + ("all",), default=["all"], help="which pairs to test")
    p.add_argument("--format", default="int4", help="weight format of the GEMM pair")
    p.add_argument("--group-size", type=int, default=128, help="group size of the GEMM pair's weight")
    p.add_argument("--graph", action="store_true",
                   help="time by CUDA-graph replay (launch overhead excluded; CUDA only)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--causal", action="store_true", help="causal attention")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="activation/expert dtype (default float16 on GPU, float32 on CPU)")


def _rel_err(out, ref):
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def _check_same(name, out, ref, dtype):
    # fp16/bf16 outputs of the same math differ by rounding (~1e-3); a wrong kernel misses by orders more.
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    err = _rel_err(out, ref)
    if not err < tol:
        raise RuntimeError(f"{name}: the two implementations disagree (relative error {err:.3g} > {tol})")
    return err


def _report(runner, case, res):
    print(f"  {case}: {res.summary()}")
    for side, st in ((res.name_a, res.a), (res.name_b, res.b)):
        runner.record({**case, "impl": side}, "time", st.median_us, "us", stats=st)
    runner.record({**case, "impl": f"{res.name_a}/{res.name_b}"}, "time_ratio", res.ratio, "x",
                  ci_low=res.ratio_ci_low, ci_high=res.ratio_ci_high, confidence=res.confidence,
                  welch_p=res.welch_p, mwu_p=res.mwu_p, cliffs_delta=res.cliffs_delta, cohens_d=res.cohens_d,
                  verdict=res.verdict)


def _compare(runner, a, fn_a, fn_b, names):
    return ab_compare(fn_a, fn_b, device=a.device, warmup=a.warmup, repeats=max(a.repeats, 5),
                      cuda_graph=a.graph, names=names, alpha=a.alpha, seed=a.seed)


def run_gemm(runner, a, dtype):
    dev = a.device
    backend = "auto" if dev.type == "cuda" else "torch"
    if dev.type != "cuda":
        runner.note("GEMM pair on CPU: qmatmul runs its torch reference path (dequantize + matmul), so the first "
                    "pair compares that path with the same work written inline")
    if a.quick:
        shapes, ms = [(256, 384)], [1, 5]
    elif dev.type == "cuda":
        shapes, ms = [(3072, 2048), (4096, 4096), (8192, 8192)], [1, 16, 64]
    else:
        shapes, ms = [(1024, 1024)], [1, 16]
    for (n, k) in shapes:
        w = torch.randn(n, k, device=dev) / math.sqrt(k)
        qw = tm.quantize(w, a.format, group_size=a.group_size)
        w16 = w.to(dtype)
        for m in runner.progress(ms, desc=f"gemm {n}x{k}"):
            x = torch.randn(m, k, device=dev, dtype=dtype)
            dispatch.reset()
            out_q = tm.qmatmul(x, qw, backend=backend)
            path = "+".join(p for (op, p) in dispatch.counts() if op == "qmatmul")
            ref = x.double() @ qw.dequantize(torch.float32).double().t()
            _check_same("qmatmul vs fp64 reference", out_q, ref, dtype)
            case = {"pair": "gemm", "N": n, "K": k, "M": m, "format": a.format, "dtype": dtype,
                    "qmatmul_path": path}

            def q_fn():
                return tm.qmatmul(x, qw, backend=backend)

            def deq_fn():
                return x @ qw.dequantize(dtype).t()

            _check_same("qmatmul vs dequantize+matmul", q_fn(), deq_fn(), dtype)
            _report(runner, {**case, "vs": "dequant+matmul"},
                    _compare(runner, a, q_fn, deq_fn, ("qmatmul", "dequant+matmul")))

            def dense_fn():
                return x @ w16.t()

            # Different weights (dense vs quantized): their outputs differ by the quantization error, reported.
            qerr = _rel_err(q_fn(), dense_fn().double())
            runner.record({**case, "vs": "dense"}, "quantization_output_rel_err", qerr, "")
            _report(runner, {**case, "vs": "dense"},
                    _compare(runner, a, dense_fn, q_fn, (f"dense {str(dtype)[6:]} matmul", "qmatmul")))


def naive_attention(q, k, v, causal):
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        s = q.shape[-2]
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def run_attention(runner, a, dtype):
    dev = a.device
    if a.quick:
        shapes = [(1, 2, 64, 32)]
    elif dev.type == "cuda":
        shapes = [(1, 32, 512, 128), (1, 32, 2048, 128), (4, 32, 1024, 128)]
    else:
        shapes = [(1, 8, 256, 64)]
    for (b, h, s, d) in runner.progress(shapes, desc="attention"):
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=dtype) for _ in range(3))

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)

        def naive():
            return naive_attention(q, k, v, a.causal)

        ref = naive_attention(q.double(), k.double(), v.double(), a.causal)
        _check_same("sdpa", sdpa(), ref, dtype)
        _check_same("naive attention", naive(), ref, dtype)
        case = {"pair": "attention", "B": b, "H": h, "S": s, "D": d, "dtype": dtype, "causal": a.causal}
        _report(runner, case, _compare(runner, a, sdpa, naive, ("sdpa", "softmax(QK^T)V")))


def moe_loop(x, w_gu, w_down, ids, weights):
    """One expert at a time: gather its tokens, run its SwiGLU MLP, scatter-add the weighted result."""
    out = torch.zeros_like(x)
    flat_ids = ids.reshape(-1)
    token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(ids.shape[1])
    flat_w = weights.reshape(-1, 1).to(x.dtype)
    for e in flat_ids.unique().tolist():  # .tolist() syncs: the loop's real cost on a GPU
        sel = (flat_ids == e).nonzero().squeeze(1)
        tok = token_of[sel]
        gate, up = (x[tok] @ w_gu[e].t()).chunk(2, dim=-1)
        y = (F.silu(gate) * up) @ w_down[e].t()
        out.index_add_(0, tok, y * flat_w[sel])
    return out


def moe_gather_bmm(x, w_gu, w_down, ids, weights):
    """All (token, expert) assignments at once: gather each assignment's expert weights, batched matmul."""
    t, k = ids.shape
    flat_ids = ids.reshape(-1)
    xs = x.repeat_interleave(k, dim=0).unsqueeze(-1)                  # [T*k, d, 1]
    gate, up = torch.bmm(w_gu[flat_ids], xs).squeeze(-1).chunk(2, dim=-1)
    y = torch.bmm(w_down[flat_ids], (F.silu(gate) * up).unsqueeze(-1)).squeeze(-1)  # [T*k, d]
    return (y.view(t, k, -1) * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1)


def run_moe(runner, a, dtype):
    dev = a.device
    if a.quick:
        dims, tokens = (4, 2, 64, 32), [1, 4]
    elif dev.type == "cuda":
        dims, tokens = (64, 4, 2048, 1536), [1, 4, 16]
    else:
        dims, tokens = (8, 2, 256, 128), [1, 8]
    e, topk, d, f = dims
    w_gu = (torch.randn(e, 2 * f, d, device=dev) / math.sqrt(d)).to(dtype)
    w_down = (torch.randn(e, d, f, device=dev) / math.sqrt(f)).to(dtype)
    for t in runner.progress(tokens, desc="moe"):
        x = torch.randn(t, d, device=dev, dtype=dtype)
        logits = torch.randn(t, e, device=dev)
        weights, ids = torch.softmax(logits, dim=-1).topk(topk, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)

        def loop():
            return moe_loop(x, w_gu, w_down, ids, weights)

        def batched():
            return moe_gather_bmm(x, w_gu, w_down, ids, weights)

        ref = moe_loop(x.double(), w_gu.double(), w_down.double(), ids, weights.double())
        _check_same("moe loop", loop(), ref, dtype)
        _check_same("moe gather+bmm", batched(), ref, dtype)
        case = {"pair": "moe", "tokens": t, "experts": e, "topk": topk, "hidden": d, "ffn": f, "dtype": dtype}
        _report(runner, case, _compare(runner, a, loop, batched, ("expert loop", "gather+bmm")))


def main(argv=None):
    runner = BenchRunner("ab_test_kernels", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    if a.graph and a.device.type != "cuda":
        runner.parser.error("--graph needs a CUDA device")
    if a.graph and ("moe" in a.pair or "all" in a.pair):
        runner.note("the MoE expert loop syncs with the host (.tolist()), so it cannot be graph-captured: "
                    "--graph skips the moe pair")
    pairs = PAIRS if "all" in a.pair else tuple(dict.fromkeys(a.pair))
    if a.dtype is not None:
        dtype = getattr(torch, a.dtype)
    elif a.device.type == "cuda":
        dtype = torch.float16
    else:
        dtype = torch.float32
        runner.note("on CPU the pairs run in float32 by default (CPU fp16 matmul is an unoptimized path, not a "
                    "kernel worth comparing); --dtype float16 forces fp16")
    for pair in pairs:
        if pair == "gemm":
            run_gemm(runner, a, dtype)
        elif pair == "attention":
            run_attention(runner, a, dtype)
        elif pair == "moe" and not a.graph:
            run_moe(runner, a, dtype)
    runner.finish()


if __name__ == "__main__":
    main()

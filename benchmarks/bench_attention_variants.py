#!/usr/bin/env python
"""Prefill attention variants on the same inputs in the same run.

Variants: our FlashAttention-2-style Triton kernel (default launch config, plus --configs alternatives on the
GPU), each torch scaled_dot_product_attention backend this device offers (flash, efficient, math, cudnn;
forced one at a time with torch.nn.attention.sdpa_kernel: a backend that refuses the case is reported as
unavailable, with torch's reason), and a plain softmax(Q K^T * scale) V that materializes the score matrix
in fp32. Per variant: time, TFLOP/s of the useful work against the measured matmul rate, and the relative
error against an fp32 reference (when the score matrix fits --max-score-gib).

GQA: SDPA gets enable_gqa=True; a backend that rejects it is run on K/V expanded to every query head
beforehand (outside the timed region; marked gqa=expanded).
"""
from __future__ import annotations

import torch

from triton_marlin.bench import BenchRunner, load_baseline, time_fn
from triton_marlin.kernels.attention import (HEAD_CONFIGS, PrefillConfig, attention_flops, attention_reference,
                                             default_prefill_config, flash_attention_triton, path_label)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SMOKE_HEADS = {"smoke-gqa": {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64}}
ALL_HEADS = {**HEAD_CONFIGS, **SMOKE_HEADS}
SDPA_BACKENDS = ("flash", "efficient", "math", "cudnn")
# Alternative launch configs timed beside the default on the GPU, per head dim (each fits an H100's shared
# memory; sm_90 compiles use at most 255 registers per thread with little or no spilling).
GPU_ALT_CONFIGS = {64: ("m64n64w4s3", "m128n128w8s2"), 128: ("m64n64w4s3", "m128n128w8s2"),
                   256: ("m128n32w8s2", "m64n64w8s2")}


def _parse_config(text: str) -> PrefillConfig:
    import re
    m = re.fullmatch(r"m(\d+)n(\d+)w(\d+)s(\d+)", text)
    if not m:
        raise ValueError(f"--configs: expected entries like m128n64w8s3, got {text!r}")
    return PrefillConfig(*(int(g) for g in m.groups()))


def _add_args(p):
    p.add_argument("--heads", nargs="+", choices=sorted(ALL_HEADS), default=None,
                   help="head configurations (default glm47-flash-mla-prefill and glm47-flash-gqa-standin on GPU, "
                        "smoke-gqa elsewhere)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None, help="sequence lengths (default 1024 4096)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per case: batch = tokens // seq_len")
    p.add_argument("--configs", nargs="*", default=None,
                   help=f"extra launch configs of our kernel, like m128n64w8s3 (default on GPU, by head dim: "
                        f"{GPU_ALT_CONFIGS})")
    p.add_argument("--max-score-gib", type=float, default=4.0,
                   help="skip the naive variant and the fp32 reference when B*H*S*S*4 bytes exceed this")


def _sdpa_backend(name):
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]


def _sdpa_fn(backend, q, k, v, causal):
    """A callable running SDPA forced to ``backend``, and how GQA is handled; (None, reason) if it refuses."""
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F
    group = q.shape[1] // k.shape[1]
    attempts = [("native", k, v, group > 1)]
    if group > 1:
        attempts.append(("expanded", k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), False))
    reason = ""
    for gqa, kk, vv, native in attempts:
        def fn(kk=kk, vv=vv, native=native):
            with sdpa_kernel(_sdpa_backend(backend)):
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=native)
        try:
            fn()  # availability probe: torch raises when the forced backend cannot take this case
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            continue
        return fn, (gqa if group > 1 else "n/a")
    return None, reason


def _naive(q, k, v, causal, scale, mask):
    group = q.shape[1] // k.shape[1]
    kk = k.repeat_interleave(group, 1) if group > 1 else k
    vv = v.repeat_interleave(group, 1) if group > 1 else v
    s = torch.matmul(q, kk.transpose(-1, -2)).float() * scale
    if causal:
        s.masked_fill_(mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1).to(q.dtype), vv)


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def main(argv=None):
    runner = BenchRunner("bench_attention_variants", description=__doc__, add_args=_add_args, argv=argv)
    a = runner.args
    dev = a.device
    gpu = dev.type == "cuda"
    path = path_label(dev)
    if path is None:
        runner.note(f"our Triton kernel cannot run on {dev} (CUDA, or CPU with TRITON_INTERPRET=1): not measured")
    elif path == "triton-interpreter":
        runner.note("our kernel runs through the CPU interpreter here: its times say nothing about kernel speed")
    heads = a.heads or (["glm47-flash-mla-prefill", "glm47-flash-gqa-standin"] if gpu else list(SMOKE_HEADS))
    seq_lens = a.seq_lens or (([1024] if a.quick else [1024, 4096]) if gpu else [33])
    tokens = a.tokens if gpu or a.seq_lens else max(seq_lens)
    given = [_parse_config(c) for c in a.configs] if a.configs is not None else None
    dtype = DTYPES[a.dtype]
    peak = load_baseline(dev)["matmul_TFLOPs"].get(a.dtype)
    unavailable = {}
    cases = [(h, S, causal) for h in heads for S in seq_lens for causal in (True, False)]
    for h, S, causal in runner.progress(cases, desc="variants"):
        cfg = ALL_HEADS[h]
        Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
        B = max(1, tokens // S)
        q = torch.randn(B, Hq, S, D, device=dev, dtype=dtype)
        k = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
        v = torch.randn(B, Hkv, S, D, device=dev, dtype=dtype)
        scale = D ** -0.5
        flops = attention_flops(B, Hq, S, S, D, causal)
        fits = B * Hq * S * S * 4 <= a.max_score_gib * 2 ** 30
        ref = attention_reference(q, k, v, causal).float() if fits else None
        variants = []  # (name, fn, extra case fields)
        if path is not None:
            default = default_prefill_config(D, dev)
            alt = given if given is not None else \
                [_parse_config(c) for c in GPU_ALT_CONFIGS.get(D, ())] if gpu and not a.quick else []
            for pc in [default] + [c for c in alt if c != default]:
                out = torch.empty_like(q)
                variants.append((f"ours[{pc.label()}]" + ("" if pc != default else "*"),
                                 lambda pc=pc, out=out: flash_attention_triton(q, k, v, causal, scale, config=pc,
                                                                               out=out), {}))
        for backend in SDPA_BACKENDS:
            fn, how = _sdpa_fn(backend, q, k, v, causal)
            if fn is None:
                unavailable.setdefault(backend, set()).add(how)
                continue
            variants.append((f"sdpa-{backend}", fn, {"gqa": how}))
        if fits:
            mask = torch.ones(S, S, dtype=torch.bool, device=dev).triu(1) if causal else None
            variants.append(("naive", lambda mask=mask: _naive(q, k, v, causal, scale, mask), {}))
        else:
            runner.note(f"{h} S={S} B={B}: naive variant and fp32 reference skipped (score matrix > "
                        f"{a.max_score_gib} GiB)")
        for name, fn, extra in variants:
            case = {"heads": h, "B": B, "S": S, "causal": causal, "dtype": a.dtype, "variant": name, **extra}
            try:
                st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
            except Exception as exc:  # a launch config the compiler rejects (e.g. out of shared memory)
                if not name.startswith("ours[") or "OutOfResources" not in type(exc).__name__:
                    raise
                runner.note(f"{name} on {h} S={S}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            runner.record(case, "time", st.median_us, "us", stats=st)
            tflops = flops / (st.median_us * 1e-6) / 1e12
            runner.record(case, "rate", tflops, "TFLOP/s", roofline=tflops / peak if peak else None)
            if ref is not None:
                runner.record(case, "rel_err_vs_fp32", _rel(fn(), ref), "1")
        del q, k, v, ref, variants
    for backend, reasons in unavailable.items():
        runner.note(f"sdpa-{backend} unavailable on {dev} for some cases: {'; '.join(sorted(reasons))}")
    runner.note("* marks our default launch config; configs are m<BLOCK_M>n<BLOCK_N>w<warps>s<stages>")
    runner.finish()


if __name__ == "__main__":
    main()

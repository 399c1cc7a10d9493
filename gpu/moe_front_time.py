#!/usr/bin/env python
"""The MoE layer's front end (router logits, routing, alignment) on the GLM-4.7-Flash layer (64 routed experts +
1 shared, top-4, hidden 2048, int4 experts), at 1, 16 and 256 tokens:

- every CUDA kernel of ``MoELayer.forward_static`` with its mean device time (torch profiler, as
  gpu/moe_layer_profile.py), the front end's kernels marked ``*``;
- by CUDA-graph replay (``--graph-calls`` per graph, per-call time): the routing alone, the front end
  (routing + alignment at the block_m the layer's default config picks; none at block_m 1), the whole
  ``forward_static``;
- checks: the ids equal ``route_reference`` on ``F.linear`` logits (near-ties may flip on last-bit logit
  differences: counted, not fatal) and the alignment equals ``align_reference`` bit for bit (fatal).

Works on this tree's API (``router_route``: one launch for logits + routing + chunk counts, then the scatter
launch) and on the one before it (``router_logit_parts`` + ``route_triton`` + ``align_triton``), so a baseline
runs in the same session: with ``--baseline-src DIR`` (the ``src`` folder of an older checkout) the script runs
itself again on it in a subprocess and prints both. On the GPU machine, from the repository root:

    mkdir -p .front_base && git archive 7809d5b src/triton_marlin | tar -x -C .front_base   # here, once
    echo /.front_base/ >> .git/info/exclude                                                  # (carry it)
    python gpu/moe_front_time.py --baseline-src .front_base/src --output $OUT/moe_front.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONT_MARKS = ("router", "route", "align")


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--iters", type=int, default=30, help="profiled forwards per token count (default 30)")
    p.add_argument("--graph-calls", type=int, default=20, help="calls per captured graph (default 20)")
    p.add_argument("--repeats", type=int, default=50, help="timed graph replays (default 50)")
    p.add_argument("--src", default=str(ROOT / "src"), help="the triton_marlin source tree to time")
    p.add_argument("--label", default="this tree")
    p.add_argument("--baseline-src", default=None, help="also time this older src tree (subprocess)")
    p.add_argument("--json", default=None, help="write the records here (JSON lines)")
    p.add_argument("--output", default=None, help="write this run's and the baseline's records here")
    return p.parse_args(argv)


def measure(a) -> list[dict]:
    sys.path.insert(0, a.src)
    sys.path.insert(1, str(ROOT / "benchmarks"))
    import torch
    import torch.nn.functional as F

    import triton_marlin
    if not Path(triton_marlin.__file__).resolve().is_relative_to(Path(a.src).resolve()):
        raise RuntimeError(f"imported {triton_marlin.__file__}, not the tree under {a.src}")
    from _kernel_times import cuda_kernel_times
    from _moe_common import glm_layer
    from triton_marlin.bench import time_fn
    from triton_marlin.kernels import moe_align as MA
    from triton_marlin.kernels import moe_router as MR
    from triton_marlin.kernels.moe_gemm import default_config
    from triton_marlin.moe.align import align_capacity, align_reference
    from triton_marlin.moe.routing import route_reference

    dev = torch.device("cuda")
    layer = glm_layer(dev, shrink=False, recipe="int4")
    E, S, k = layer.routing.num_experts, layer.experts.num_shared, layer.routing.top_k
    E_tot = E + S
    new_api = hasattr(MR, "router_route")
    recs = []

    def rec(T, metric, value, unit="us", **kw):
        recs.append({"label": a.label, "tokens": T, "metric": metric, "value": value, "unit": unit,
                     "gpu": torch.cuda.get_device_name(), **kw})

    for T in a.tokens:
        x = torch.randn(T, layer.hidden_size, device=dev, dtype=torch.float16)
        nv = torch.tensor([T], dtype=torch.int32, device=dev)
        slots = T * (k + S)
        bm = default_config(slots, E_tot, layer.hidden_size, layer.experts.intermediate_size).block_m
        cap, blocks = align_capacity(slots, E_tot, bm)
        if new_api:
            def route():
                r = MR.router_route(x, layer.router_weight, layer.routing, layer.correction_bias, nv, num_shared=S)
                return r.ids, r.chunk_counts
        else:
            def route():
                parts = MR.router_logit_parts(x, layer.router_weight)
                return MA.route_triton(parts, layer.routing, layer.correction_bias, nv, num_shared=S)[0], None

        def front():
            ids, counts = route()
            if bm == 1:
                return ids, None
            kw = {"chunk_counts": counts} if counts is not None else {}
            return ids, MA.align_triton(ids, E_tot, bm, cap, blocks, **kw)

        ids, al = front()
        ref_ids = route_reference(F.linear(x.float(), layer.router_weight), layer.routing, layer.correction_bias).topk_ids
        flips = int((ids[:, :k] != ref_ids).any(dim=1).sum())
        if al is not None:
            ref = align_reference(ids, E_tot, bm)
            if not (torch.equal(al[0], ref.sorted_ids) and torch.equal(al[1], ref.expert_ids)
                    and torch.equal(al[2], ref.num_tokens_post_pad)):
                raise RuntimeError(f"{a.label}: the alignment disagrees with align_reference at T={T}")
        rec(T, "route_rows_differing_from_reference", flips, "rows", block_m=bm)
        for name, fn in (("route", route), ("front", front), ("layer", lambda: layer.forward_static(x, nv))):
            st = time_fn(fn, device=dev, warmup=5, repeats=a.repeats, cuda_graph=True, graph_calls=a.graph_calls)
            rec(T, f"graph_{name}", st.median_us, p10=st.p10_us, p90=st.p90_us)
        times = cuda_kernel_times(lambda: layer.forward_static(x, nv), a.iters)
        for name, (us, n) in times.items():
            rec(T, "kernel", us, kernel=name[:100], per_forward=n, front=any(m in name for m in FRONT_MARKS))
    return recs


def table(recs: list[dict]) -> str:
    out = []
    labels = list(dict.fromkeys(r["label"] for r in recs))
    for T in sorted({r["tokens"] for r in recs}):
        out.append(f"\n== T={T} ({recs[0]['gpu']}) ==")
        for lab in labels:
            rs = [r for r in recs if r["label"] == lab and r["tokens"] == T]
            g = {r["metric"]: r["value"] for r in rs if r["metric"] != "kernel"}
            ks = sorted((r for r in rs if r["metric"] == "kernel"), key=lambda r: -r["value"])
            front = [r for r in ks if r["front"]]
            out.append(f"[{lab}] graph replay: route {g['graph_route']:.2f} us, front end {g['graph_front']:.2f} us, "
                       f"layer {g['graph_layer']:.1f} us; ids differing from F.linear routing: "
                       f"{g['route_rows_differing_from_reference']:.0f} rows")
            out.append(f"[{lab}] profiler: front-end kernels {sum(r['value'] for r in front):.2f} us in "
                       f"{sum(r['per_forward'] for r in front):.0f} launches; all kernels "
                       f"{sum(r['value'] for r in ks):.1f} us")
            for r in ks:
                out.append(f"  {'*' if r['front'] else ' '} {r['value']:8.2f} us  x{r['per_forward']:.0f}  {r['kernel']}")
    return "\n".join(out)


def main(argv=None):
    a = _args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    recs = measure(a)
    if a.json:
        Path(a.json).write_text("".join(json.dumps(r) + "\n" for r in recs))
        return
    if a.baseline_src:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "base.jsonl")
            cmd = [sys.executable, __file__, "--src", a.baseline_src, "--label", "baseline", "--json", path,
                   "--iters", str(a.iters), "--graph-calls", str(a.graph_calls), "--repeats", str(a.repeats),
                   "--tokens", *map(str, a.tokens)]
            subprocess.run(cmd, check=True)
            recs = [json.loads(line) for line in Path(path).read_text().splitlines()] + recs
    if a.output:
        Path(a.output).write_text("".join(json.dumps(r) + "\n" for r in recs))
    print(table(recs))


if __name__ == "__main__":
    main()

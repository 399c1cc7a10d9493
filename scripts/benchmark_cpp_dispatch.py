#!/usr/bin/env python
"""Per-dispatch latency of MoE expert kernels: launched one by one from a Python loop, replayed from a CUDA
graph (native dispatch: the launches recorded once, replayed without Python), or merged into one fused launch.

One dispatch = the fused expert kernels for one token routed to its top-2 of 8 small int4 experts (hidden 256,
intermediate 256), alignment precomputed: the gate_up kernel (SwiGLU fused) and the down kernel (routing
weight and scatter-add fused), two launches (K is too small here for the split-K decode configuration). The GPU work of one dispatch is about a microsecond, so the loop
measures launch overhead. For each count N:

- ``python_loop``: N calls of the launcher from Python; time / N.
- ``graph_replay``: the same N calls captured in one CUDA graph, replayed; time / N.
- ``one_launch_n_tokens``: a different quantity, for scale: one launcher call that serves N tokens at once
  (one dispatch of N tokens, not N dispatches); its time / N is a cost per token, not per dispatch.

and the speedup of graph replay over the loop (per dispatch, the same work both ways), and the ratio of the
batched per-token cost to the loop's per-dispatch cost. Without CUDA nothing of the Triton path is measured (a CPU
interpreter launch is not a GPU launch); the Python loop is measured on the torch reference path instead,
and the script says so.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton_marlin.bench import BenchRunner, time_fn  # noqa: E402
from triton_marlin.ops import qmatmul  # noqa: E402
from triton_marlin.moe.align import align_tokens  # noqa: E402
from triton_marlin.moe.experts import QuantizedExperts  # noqa: E402

E, TOPK, H, I = 8, 2, 256, 256


def add_args(p):
    p.add_argument("--counts", type=int, nargs="+", default=None, metavar="N",
                   help="dispatch counts per measurement (default 100 1000 5000; 100 1000 with --quick; "
                        "10 50 off CUDA)")


def build(dev, seed):
    g = torch.Generator(device=dev).manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g, device=dev) * 0.05

    return QuantizedExperts.from_float(w(E, I, H), w(E, I, H), w(E, H, I), ("int4", 64))


def routed(T, dev, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:TOPK] for _ in range(T)]).int().to(dev)
    return ids, (torch.rand(T, TOPK, generator=g) + 0.1).to(dev)


def main(argv=None):
    runner = BenchRunner("benchmark_cpp_dispatch", description=__doc__, add_args=add_args, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    counts = a.counts or ([100, 1000, 5000] if cuda and not a.quick else [100, 1000] if cuda else [10, 50])
    if any(n < 1 for n in counts):
        runner.parser.error("--counts: expected positive integers")
    experts = build(dev, a.seed)
    x1 = torch.randn(1, H, device=dev).half()
    ids1, w1 = routed(1, dev, a.seed)
    runner.note(f"one dispatch = the fused expert kernels for 1 token, top-{TOPK} of {E} int4 experts, hidden {H}, "
                f"intermediate {I}; one_launch_n_tokens is one launch serving all N tokens (time per token, "
                f"not per dispatch)")

    if not cuda:
        runner.note(f"no CUDA on {dev}: Triton launches, CUDA-graph replay and one_launch_n_tokens are not measured; "
                    f"python_loop times one expert forward through the torch reference qmatmul instead")
        ex = experts.experts[int(ids1[0, 0])]

        def one():
            gu = qmatmul(x1, ex["gate"], backend="torch")
            up = qmatmul(x1, ex["up"], backend="torch")
            h = (torch.nn.functional.silu(gu.float()) * up.float()).half()
            return qmatmul(h, ex["down"], backend="torch")

        for n in counts:
            def loop(n=n):
                for _ in range(n):
                    one()
            st = time_fn(loop, device=dev, warmup=min(a.warmup, 1), repeats=max(2, min(a.repeats, 2000 // n)))
            runner.record({"count": n, "path": "python_loop_torch_reference"}, "per_dispatch", st.median_us / n,
                          "us", stats=st)
        return runner.finish()

    from triton_marlin.kernels.moe_gemm import default_config, fused_moe_reference, moe_gemm_launch

    gate, up, down = experts.flat("gate"), experts.flat("up"), experts.flat("down")
    cfg1 = default_config(TOPK, E, H, I)
    al1 = align_tokens(ids1, E, cfg1.block_m)
    out1 = torch.empty(1, H, device=dev)

    def dispatch_one():
        moe_gemm_launch(x1, w1, al1.sorted_ids, al1.expert_ids, al1.num_tokens_post_pad, gate, up, down,
                        config=cfg1, uniform=True, out=out1)

    dispatch_one()  # checked against the float64 reference before anything is timed
    expect = fused_moe_reference(x1, ids1, w1, experts)
    err = ((out1.double() - expect).norm() / expect.norm()).item()
    if not err < 1.5e-3:
        raise RuntimeError(f"one dispatch is wrong: relative error {err:.3g}")

    for n in runner.progress(counts, desc="counts"):
        reps = max(3, min(a.repeats, 20000 // n))

        def loop(n=n):
            for _ in range(n):
                dispatch_one()

        st_loop = time_fn(loop, device=dev, warmup=min(a.warmup, 2), repeats=reps)
        loop_us = st_loop.median_us / n
        runner.record({"count": n, "path": "python_loop"}, "per_dispatch", loop_us, "us", stats=st_loop)

        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            dispatch_one()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            for _ in range(n):
                dispatch_one()
        st_graph = time_fn(graph.replay, device=dev, warmup=min(a.warmup, 2), repeats=reps)
        graph_us = st_graph.median_us / n
        runner.record({"count": n, "path": "graph_replay"}, "per_dispatch", graph_us, "us", stats=st_graph)
        runner.record({"count": n, "path": "graph_replay"}, "speedup_vs_python_loop", loop_us / graph_us, "x")
        del graph

        xs = torch.randn(n, H, device=dev).half()
        ids, w = routed(n, dev, a.seed + n)
        cfg = default_config(n * TOPK, E, H, I)
        al = align_tokens(ids, E, cfg.block_m)
        out = torch.empty(n, H, device=dev)

        def fused():
            moe_gemm_launch(xs, w, al.sorted_ids, al.expert_ids, al.num_tokens_post_pad, gate, up, down,
                            config=cfg, uniform=True, out=out)

        st_fused = time_fn(fused, device=dev, warmup=a.warmup, repeats=a.repeats)
        fused_us = st_fused.median_us / n
        runner.record({"count": n, "path": "one_launch_n_tokens"}, "per_token", fused_us, "us", stats=st_fused)
        runner.record({"count": n, "path": "one_launch_n_tokens"}, "loop_per_dispatch_over_per_token",
                      loop_us / fused_us, "x")
    return runner.finish()


if __name__ == "__main__":
    main()

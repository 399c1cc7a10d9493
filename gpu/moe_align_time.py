#!/usr/bin/env python
"""Token/expert alignment alone (issue 4): the single-program kernel against the multi-program ones.

GLM-4.7-Flash routing (top-4 of 64 routed experts + 1 shared: 65 table rows, 5 slots per token), block_m 16.
For each token count, each method is first checked against ``align_reference`` (bit for bit), then timed by
CUDA-graph replay (``--graph-calls`` alignments per graph, per-call time reported; the GPU time of the work)
and, beside it, launched from Python from an idle GPU (what an eager caller pays). Methods:

  single  the one-program ``_align_kernel`` (the old path)
  fused   ``_align_scatter_kernel`` counting the slots itself: one launch, several programs
  split   ``_align_count_kernel`` + ``_align_scatter_kernel``: two launches
  routed  ``_align_scatter_kernel`` alone on chunk counts given (16 tokens x 5 slots a chunk, as the MoE router
          kernel writes them; computed here on the host, untimed): what the MoE layer runs
  auto    what ``align_triton`` picks by slot count without counts (``align_method``)

Prints a table (speedup = single's median / this method's median, same run) and writes JSON lines to
``--output``. On the GPU machine, from the repository root:

    python gpu/moe_align_time.py --output $OUT/moe_align.jsonl     (src/ is put on the path)

Without a GPU it runs under the Triton interpreter with ``--quick --device cpu`` (a smoke test of the script,
host timings that say nothing about the GPU).
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the kernels' import (Triton reads it at decoration)
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from triton_marlin.bench import BenchRunner, time_fn  # noqa: E402
from triton_marlin.kernels import moe_align as MA  # noqa: E402
from triton_marlin.moe.align import align_capacity, align_reference  # noqa: E402

ROUTED, TOP_K, SHARED = 64, 4, 1
METHODS = ("single", "fused", "split", "routed", "auto")


def glm_ids(T: int, gen: torch.Generator) -> torch.Tensor:
    """[T, 5] int32: 4 distinct routed experts per token (uniform), then the shared expert (id 64)."""
    routed = torch.rand(T, ROUTED, generator=gen).argsort(dim=1)[:, :TOP_K]
    return torch.cat([routed, torch.full((T, SHARED), ROUTED)], dim=1).int()


def chunk_counts(ids: torch.Tensor, num_experts: int, chunk: int) -> torch.Tensor:
    """int32 [chunks, E + chunk]: per chunk of ``chunk`` slots its slots per expert, then each slot's rank among
    the chunk's earlier slots of its expert (the layout of :mod:`triton_marlin.kernels.moe_align`)."""
    flat = ids.reshape(-1).long()
    chunks = -(-flat.numel() // chunk)
    pad = torch.full((chunks * chunk,), -1, dtype=torch.long)
    pad[:flat.numel()] = flat
    onehot = torch.nn.functional.one_hot(pad.clamp(min=0), num_experts) * (pad >= 0)[:, None]
    onehot = onehot.view(chunks, chunk, num_experts)
    before = onehot.cumsum(1) - onehot
    rank = before.gather(2, pad.clamp(min=0).view(chunks, chunk, 1)).squeeze(2)
    return torch.cat([onehot.sum(1), rank], dim=1).int()


def main(argv=None):
    def add(p):
        p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256, 1024],
                       help="token counts (default: 1 16 64 256 1024)")
        p.add_argument("--block-m", type=int, default=16, help="rows per GEMM block (default 16)")
        p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
        p.add_argument("--graph-calls", type=int, default=20, help="alignments captured per CUDA graph (default 20)")

    runner = BenchRunner("moe_align_time", description=__doc__, add_args=add, argv=argv)
    a = runner.args
    dev = a.device
    cuda = dev.type == "cuda"
    tokens = [t for t in a.tokens if t <= 16] or a.tokens[:1] if (a.quick and not cuda) else a.tokens
    E = ROUTED + SHARED
    gen = torch.Generator().manual_seed(a.seed)
    for T in tokens:
        ids_cpu = glm_ids(T, gen)
        ids = ids_cpu.to(dev)
        cap, blocks = align_capacity(ids.numel(), E, a.block_m)
        ref = align_reference(ids_cpu, E, a.block_m)
        picked = MA.align_method(ids.numel(), E)
        medians = {}

        def case_of(T, method, picked=picked, slots=ids.numel()):
            runs = picked if method == "auto" else method
            return {"tokens": T, "slots": slots, "experts": E, "block_m": a.block_m, "method": method,
                    "runs": runs, "launches": 2 if runs == "split" else 1}
        counts = chunk_counts(ids_cpu, E, 16 * (TOP_K + SHARED)).to(dev)
        for method in a.methods:
            def fn(method=method):
                kw = {"chunk_counts": counts} if method == "routed" else {}
                return MA.align_triton(ids, E, a.block_m, cap, blocks, method=method, **kw)

            sorted_ids, expert_ids, npost = fn()
            if not (torch.equal(sorted_ids.cpu(), ref.sorted_ids) and torch.equal(expert_ids.cpu(), ref.expert_ids)
                    and torch.equal(npost.cpu(), ref.num_tokens_post_pad)):
                raise RuntimeError(f"alignment method {method!r} disagrees with align_reference at T={T}")
            case = case_of(T, method)
            if cuda:
                st = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats, cuda_graph=True,
                             graph_calls=a.graph_calls)
                runner.record(case, "time_graph", st.median_us, "us", stats=st)
                medians[method] = st.median_us
            st_l = time_fn(fn, device=dev, warmup=a.warmup, repeats=a.repeats)
            runner.record(case, "time_launch", st_l.median_us, "us", stats=st_l)
            if not cuda:
                medians[method] = st_l.median_us
        if "single" in medians:
            for method, us in medians.items():
                if method != "single":
                    runner.record(case_of(T, method), "speedup_vs_single", medians["single"] / us, "x",
                                  timing="time_graph" if cuda else "time_launch")
    if not cuda:
        runner.note("no CUDA device: Triton interpreter on the host; these times say nothing about the GPU")
    runner.finish()


if __name__ == "__main__":
    main()

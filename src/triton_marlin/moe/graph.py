"""Native dispatch: an MoE layer captured once per batch bucket as a CUDA graph and replayed.

A Python launch of a Triton kernel costs ~13 us on the H200 here, a kernel replayed inside a CUDA graph
~0.5 us (shared/anchors/h200-baseline.jsonl), so at decode batch sizes the launches, not the GPU work,
set the time of an MoE layer. :class:`GraphedMoE` keeps static input/output buffers per bucket (1, 2, 4,
... tokens by default), captures the layer's capturable forward on first use of a bucket, and replays it:

- a batch of ``T <= bucket`` tokens is copied into the bucket's static input; the token count goes into a
  device scalar so the rows past ``T`` route to no expert (nothing is read past the static buffer, and the
  padding costs no expert work);
- a batch larger than every bucket runs eagerly with a warning (recorded in :mod:`triton_marlin.dispatch`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import dispatch
from .layer import CAPTURABLE_STRATEGIES, MoELayer

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_x: torch.Tensor
    static_n: torch.Tensor
    static_out: torch.Tensor


class GraphedMoE:
    """CUDA-graph replay of ``layer.forward_static`` per batch bucket (see the module docstring)."""

    def __init__(self, layer: MoELayer, buckets=DEFAULT_BUCKETS, strategy: str = "fast_mixed",
                 dtype: torch.dtype = torch.float16, warmup: int = 2):
        if not isinstance(layer, MoELayer):
            raise TypeError(f"layer must be an MoELayer, got {type(layer).__name__}")
        buckets = sorted(set(int(b) for b in buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(f"buckets must be positive token counts, got {buckets}")
        if strategy not in CAPTURABLE_STRATEGIES:
            raise ValueError(f"strategy {strategy!r} cannot be captured; use one of {CAPTURABLE_STRATEGIES}")
        if dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float16 or bfloat16, got {dtype}")
        dev = layer.router_weight.device
        if dev.type != "cuda":
            raise RuntimeError(f"CUDA graphs need the layer on a CUDA device; it is on {dev}")
        self.layer = layer
        self.buckets = tuple(buckets)
        self.strategy = strategy
        self.dtype = dtype
        self.device = dev
        self.warmup = warmup
        self.captured: dict[int, _Captured] = {}
        self.captures = 0

    def bucket_for(self, T: int) -> int | None:
        for b in self.buckets:
            if b >= T:
                return b
        return None

    def capture(self, bucket: int) -> _Captured:
        """Capture the layer for ``bucket`` tokens (warm-up runs first compile the kernels, outside the graph)."""
        H = self.layer.hidden_size
        static_x = torch.randn((bucket, H), device=self.device).to(self.dtype)
        static_n = torch.full((1,), bucket, dtype=torch.int32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.layer.forward_static(static_x, static_n, self.strategy)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.layer.forward_static(static_x, static_n, self.strategy)
        cap = _Captured(graph, static_x, static_n, static_out)
        self.captured[bucket] = cap
        self.captures += 1
        return cap

    def __call__(self, x: torch.Tensor, *, copy_out: bool = True) -> torch.Tensor:
        """The layer's output for ``x [T, H]``. ``copy_out=False`` returns a view of the static output,
        valid until the next call."""
        H = self.layer.hidden_size
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != H:
            raise ValueError(f"x must be [num_tokens, {H}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"x is {x.dtype}; this graph was built for {self.dtype}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device}, the layer on {self.device}")
        T = x.shape[0]
        bucket = self.bucket_for(T)
        if bucket is None:
            dispatch.warn_fallback("moe_graph", f"a batch of {T} tokens exceeds the largest captured bucket "
                                   f"({self.buckets[-1]}); running the layer eagerly")
            dispatch.record("moe_graph", "eager")
            return self.layer.get_strategy(self.strategy)(x, *self.layer.route(x))
        cap = self.captured.get(bucket) or self.capture(bucket)
        cap.static_x[:T].copy_(x)
        cap.static_n.fill_(T)
        cap.graph.replay()
        dispatch.record("moe_graph", "replay")
        out = cap.static_out[:T]
        return out.clone() if copy_out else out

    def replay(self, bucket: int) -> torch.Tensor:
        """Replay a captured bucket on whatever its static input holds (for timing the graph alone)."""
        cap = self.captured.get(bucket) or self.capture(bucket)
        cap.graph.replay()
        return cap.static_out

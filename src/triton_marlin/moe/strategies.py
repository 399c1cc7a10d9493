"""The five ways to run the experts of one MoE layer. All compute the same function on the same quantized
weights::

    out[t] = sum_j  w[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t)),   e = ids[t, j]  (slots with e = -1 skipped)

- ``slow_path``: a Python loop over the experts that received tokens, three :func:`triton_marlin.qmatmul`
  calls each (the reference; one host sync to learn which experts are active).
- ``fast_uniform``: one fused launch per projection with each projection's width a compile-time constant;
  needs a uniformly quantized model (one format per projection across experts) and refuses others.
- ``fast_mixed``: one fused launch per projection, each expert's width read from the per-expert table
  inside the kernel (experts of different widths in the same launch).
- ``hybrid``: the experts with the most common (gate, up, down) format tuple run in one fused launch per
  projection compiled for that tuple; the rare ones run sequentially like ``slow_path``.
- ``max_bits_padded``: every expert re-packed losslessly at the widest format of its projection
  (:func:`triton_marlin.moe.experts.pad_to_max_bits`), then one uniform fused launch per projection; the
  extra memory of the padded copy is reported.

The fused strategies run Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``) and raise a clear
error elsewhere: there is no silent fallback to the loop.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .. import dispatch
from ..device import triton_enabled_for
from ..ops import qmatmul
from .align import align_tokens
from .experts import PROJECTIONS, QuantizedExperts, pad_to_max_bits

STRATEGIES = ("slow_path", "fast_uniform", "fast_mixed", "hybrid", "max_bits_padded")


def check_forward_args(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                       experts: QuantizedExperts) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != experts.hidden_size:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be [num_tokens, hidden_size={experts.hidden_size}], got {shape}")
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"x must be float16 or bfloat16, got {x.dtype}")
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [num_tokens={x.shape[0]}, k], got "
                         f"{tuple(topk_ids.shape) if isinstance(topk_ids, torch.Tensor) else topk_ids!r}")
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if not isinstance(topk_weights, torch.Tensor) or topk_weights.shape != topk_ids.shape:
        raise ValueError(f"topk_weights must have topk_ids' shape {tuple(topk_ids.shape)}, got "
                         f"{tuple(topk_weights.shape) if isinstance(topk_weights, torch.Tensor) else topk_weights!r}")
    if not topk_weights.is_floating_point():
        raise TypeError(f"topk_weights must be a float tensor, got {topk_weights.dtype}")
    for name, t in (("x", x), ("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if t.device != experts.device:
            raise ValueError(f"{name} is on {t.device}, the experts on {experts.device}")


def expert_forward(x: torch.Tensor, ex: dict) -> torch.Tensor:
    """One expert on its tokens through the public qmatmul: ``down(silu(gate(x)) * up(x))``."""
    g = qmatmul(x, ex["gate"])
    u = qmatmul(x, ex["up"])
    h = (F.silu(g.float()) * u.float()).to(x.dtype)
    return qmatmul(h, ex["down"])


def _sequential(x, ids_cpu, topk_weights, experts: QuantizedExperts, acc: torch.Tensor, only=None) -> list[int]:
    """Add each expert's weighted output into ``acc`` (fp32 [T, H]), one expert at a time."""
    ran = []
    present = torch.unique(ids_cpu).tolist()
    for e in present:
        if e < 0 or e >= experts.num_total or (only is not None and not only[e]):
            continue
        tok_cpu, j_cpu = torch.nonzero(ids_cpu == e, as_tuple=True)
        tok, j = tok_cpu.to(x.device), j_cpu.to(x.device)
        y = expert_forward(x.index_select(0, tok), experts.experts[e])
        acc.index_add_(0, tok, y.float() * topk_weights[tok, j].float()[:, None])
        ran.append(e)
    return ran


def _need_triton(name: str, device: torch.device) -> None:
    if not triton_enabled_for(device):
        raise RuntimeError(f"strategy {name!r} runs fused Triton kernels, which need CUDA (or CPU with "
                           f"TRITON_INTERPRET=1); on {device} only 'slow_path' runs")


def tuning_enabled() -> bool:
    """Launch configurations are tuned by measurement when ``TRITON_MARLIN_MOE_TUNE=1`` (CUDA only)."""
    return os.environ.get("TRITON_MARLIN_MOE_TUNE", "0") == "1"


def _launch(x, topk_ids, weights, experts, config, uniform, uniform_kinds, out, chunk_counts=None):
    """Alignment (one launch when ``chunk_counts`` describe ``topk_ids``) and the expert kernels."""
    from .. import dispatch
    from ..kernels.moe_gemm import direct_ids, moe_gemm_launch

    flats = (experts.flat("gate"), experts.flat("up"), experts.flat("down"))
    if config.block_m == 1:  # one slot per program: nothing to sort
        dispatch.record("moe_align", "none (one slot per program)")
        return moe_gemm_launch(x, weights, None, direct_ids(topk_ids), None, *flats, config=config,
                               uniform=uniform, uniform_kinds=uniform_kinds, out=out)
    al = align_tokens(topk_ids, experts.num_total, config.block_m, backend="triton", chunk_counts=chunk_counts)
    return moe_gemm_launch(x, weights, al.sorted_ids, al.expert_ids, al.num_tokens_post_pad, *flats,
                           config=config, uniform=uniform, uniform_kinds=uniform_kinds, out=out)


def select_config(x, topk_ids, weights, experts: QuantizedExperts, uniform: bool, uniform_kinds=None, *,
                  tune: bool | None = None, chunk_counts=None):
    """The kernels' launch configuration for this problem: measured once per problem key when tuning is on
    (and the stream is not being captured into a CUDA graph), else the heuristic default."""
    from ..kernels import moe_gemm as mg

    gate, up, down = (experts.flat(p) for p in PROJECTIONS)
    key = mg.config_key(x, topk_ids.numel(), gate, up, down, uniform)
    if key in mg._TUNED:
        return mg._TUNED[key]
    default = mg.default_config(topk_ids.numel(), experts.num_total, experts.hidden_size,
                                experts.intermediate_size)
    tune = tuning_enabled() if tune is None else tune
    if not tune or x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return default
    best, best_us = default, float("inf")
    for cfg in mg.candidate_configs(topk_ids.numel(), experts.num_total, experts.hidden_size,
                                    experts.intermediate_size):
        fn = lambda: _launch(x, topk_ids, weights, experts, cfg, uniform, uniform_kinds, None,  # noqa: E731
                             chunk_counts)
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            fn()
        end.record()
        torch.cuda.synchronize()
        us = start.elapsed_time(end) * 100.0  # ms for 10 calls -> us per call
        if us < best_us:
            best, best_us = cfg, us
    mg._TUNED[key] = best
    return best


def fused_experts_op(x, topk_ids, topk_weights, experts: QuantizedExperts, *, uniform: bool, config=None):
    """The fused experts through the registered custom op ``triton_marlin::moe_experts`` (what runs under
    ``torch.compile``); output in x's dtype."""
    from ..kernels.moe_gemm import default_config, moe_experts_op

    flats = [experts.flat(p) for p in PROJECTIONS]
    cfg = config or default_config(topk_ids.numel(), experts.num_total, experts.hidden_size,
                                   experts.intermediate_size)
    uniform_kinds = [(f.uniform_kind if uniform else -1) for f in flats]
    if uniform and None in uniform_kinds:
        raise ValueError("uniform launch needs one format per projection")
    return moe_experts_op(x, topk_ids, topk_weights, [*flats[0].launch_args()], [*flats[1].launch_args()],
                          [*flats[2].launch_args()], experts.intermediate_size, [f.kinds_mask for f in flats],
                          uniform_kinds, uniform, list(dataclasses.astuple(cfg)), [f.group_k for f in flats])


def _fused_acc(x, topk_ids, topk_weights, experts: QuantizedExperts, *, uniform: bool,
               uniform_kinds=None, out=None, config=None, chunk_counts=None) -> torch.Tensor:
    """``chunk_counts``: the alignment's per-chunk counts of exactly ``topk_ids`` (from the router kernel), or
    None (the alignment counts)."""
    weights = topk_weights if topk_weights.dtype == torch.float32 and topk_weights.is_contiguous() \
        else topk_weights.float().contiguous()
    x = x if x.stride(1) == 1 else x.contiguous()
    if config is None:
        config = select_config(x, topk_ids, weights, experts, uniform, uniform_kinds, chunk_counts=chunk_counts)
    return _launch(x, topk_ids, weights, experts, config, uniform, uniform_kinds, out, chunk_counts)


class MoEStrategy:
    """Base: ``strategy(x, topk_ids, topk_weights) -> [T, H]`` in x's dtype."""

    name = ""
    fused = True

    def __init__(self, experts: QuantizedExperts):
        if not isinstance(experts, QuantizedExperts):
            raise TypeError(f"experts must be QuantizedExperts, got {type(experts).__name__}")
        self.experts = experts

    @property
    def weights(self) -> QuantizedExperts:
        """The expert weights this strategy reads."""
        return self.experts

    @property
    def extra_memory_bytes(self) -> int:
        """Weight memory held beyond the original experts (the padded copy of max_bits_padded)."""
        return 0

    def active_weight_bytes(self, topk_ids: torch.Tensor) -> int:
        """Bytes of the weights of the experts the slots reach, each counted once: what one forward must
        read at least."""
        w = self.weights
        return sum(w.expert_nbytes(e) for e in torch.unique(topk_ids.cpu()).tolist() if 0 <= e < w.num_total)

    def __call__(self, x, topk_ids, topk_weights, *, chunk_counts=None):
        """``chunk_counts``: the alignment's per-chunk counts of ``topk_ids`` from the router kernel
        (:func:`triton_marlin.kernels.moe_router.router_route`), or None (the alignment counts)."""
        check_forward_args(x, topk_ids, topk_weights, self.experts)
        if torch.compiler.is_compiling():  # traced once: the custom op is what runs (no Python bookkeeping)
            return self.forward(x, topk_ids, topk_weights, chunk_counts)
        if self.fused:
            _need_triton(self.name, x.device)
        dispatch.record("moe_experts", self.name)
        if x.shape[0] == 0:
            return x.new_zeros((0, self.experts.hidden_size))
        return self.forward(x, topk_ids, topk_weights, chunk_counts)

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        raise NotImplementedError


class SlowPath(MoEStrategy):
    name = "slow_path"
    fused = False

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        acc = torch.zeros((x.shape[0], self.experts.hidden_size), dtype=torch.float32, device=x.device)
        _sequential(x, topk_ids.cpu(), topk_weights, self.experts, acc)
        return acc.to(x.dtype)


def _fused(x, topk_ids, topk_weights, experts, uniform: bool, chunk_counts=None) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return fused_experts_op(x, topk_ids, topk_weights, experts, uniform=uniform)
    return _fused_acc(x, topk_ids, topk_weights, experts, uniform=uniform, chunk_counts=chunk_counts).to(x.dtype)


class FastUniform(MoEStrategy):
    name = "fast_uniform"

    def __init__(self, experts):
        super().__init__(experts)
        if not experts.is_uniform():
            fmts = {p: sorted({experts.experts[e][p].format for e in range(experts.num_total)})
                    for p in PROJECTIONS}
            raise ValueError(f"fast_uniform needs one format per projection across all experts; these experts "
                             f"have {fmts} (use fast_mixed, hybrid or max_bits_padded)")

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        return _fused(x, topk_ids, topk_weights, self.experts, uniform=True, chunk_counts=chunk_counts)


class FastMixed(MoEStrategy):
    name = "fast_mixed"

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        return _fused(x, topk_ids, topk_weights, self.experts, uniform=False, chunk_counts=chunk_counts)


class Hybrid(MoEStrategy):
    name = "hybrid"

    def __init__(self, experts):
        super().__init__(experts)
        sigs = [tuple(experts.flat(p).kinds[e] for p in PROJECTIONS) for e in range(experts.num_total)]
        counts = collections.Counter(sigs)
        self.common_kinds = counts.most_common(1)[0][0]
        self.batched_mask = [s == self.common_kinds for s in sigs]
        self.num_batched = sum(self.batched_mask)
        self._mask_dev = torch.tensor(self.batched_mask, dtype=torch.bool, device=experts.device)

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        # the batched launch sees filtered ids: the router's counts do not describe them (the alignment counts)
        ids = topk_ids.to(torch.int64)
        in_range = (ids >= 0) & (ids < self.experts.num_total)
        batched = in_range & self._mask_dev[ids.clamp(0, self.experts.num_total - 1)]
        ids_batched = torch.where(batched, ids, torch.full_like(ids, -1)).to(torch.int32)
        acc = _fused_acc(x, ids_batched, topk_weights, self.experts, uniform=True, uniform_kinds=self.common_kinds)
        ids_rare = torch.where(in_range & ~batched, ids, torch.full_like(ids, -1))
        _sequential(x, ids_rare.cpu(), topk_weights, self.experts, acc)
        return acc.to(x.dtype)


class MaxBitsPadded(MoEStrategy):
    name = "max_bits_padded"

    def __init__(self, experts):
        super().__init__(experts)
        self.padded = experts if experts.is_uniform() else pad_to_max_bits(experts)

    @property
    def weights(self):
        return self.padded

    @property
    def extra_memory_bytes(self) -> int:
        return self.padded.nbytes - self.experts.nbytes if self.padded is not self.experts else 0

    def forward(self, x, topk_ids, topk_weights, chunk_counts=None):
        return _fused(x, topk_ids, topk_weights, self.padded, uniform=True, chunk_counts=chunk_counts)


_CLASSES = {c.name: c for c in (SlowPath, FastUniform, FastMixed, Hybrid, MaxBitsPadded)}


def make_strategy(name: str, experts: QuantizedExperts) -> MoEStrategy:
    if name not in _CLASSES:
        raise ValueError(f"unknown strategy {name!r}: expected one of {STRATEGIES}")
    return _CLASSES[name](experts)


# -- per-run facts: launches, bytes, memory, error -------------------------------------------------

@dataclass
class StrategyReport:
    strategy: str
    kernel_launches: int | None      # CUDA kernels (and memsets/copies) per forward, from the profiler
    weight_bytes: int                 # active experts' weights, each counted once
    resident_weight_bytes: int        # all weights the strategy holds
    extra_memory_bytes: int           # beyond the original experts (padded copy)
    peak_memory_bytes: int | None     # CUDA allocator peak during a forward, above what was allocated before
    rel_error_vs_slow_path: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def count_kernel_launches(fn, device: torch.device) -> int | None:
    """GPU kernels (plus memsets and copies) one call of ``fn`` issues, counted by the CUDA profiler; None
    off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import DeviceType, ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for ev in prof.events() if ev.device_type == DeviceType.CUDA)


def peak_memory(fn, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN/inf."""
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return float("inf")
    return ((o - r).norm() / r.norm().clamp_min(1e-300)).item()


def report(strategy: MoEStrategy, x, topk_ids, topk_weights, reference: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, StrategyReport]:
    """Run ``strategy`` once and collect its facts; ``reference`` is slow_path's output on the same input."""
    dev = x.device
    out = strategy(x, topk_ids, topk_weights)
    launches = count_kernel_launches(lambda: strategy(x, topk_ids, topk_weights), dev)
    peak = peak_memory(lambda: strategy(x, topk_ids, topk_weights), dev)
    notes = []
    if launches is None:
        notes.append("kernel launches and peak memory are measured on CUDA only")
    err = rel_error(out, reference) if reference is not None else None
    rep = StrategyReport(strategy.name, launches, strategy.active_weight_bytes(topk_ids), strategy.weights.nbytes,
                         strategy.extra_memory_bytes, peak, err, notes)
    return out, rep

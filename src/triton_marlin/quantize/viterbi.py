"""Viterbi encoding of trellis formats: the minimum-squared-error path of each 16x16 tile.

The trellis (docs/formats-trellis.md): ``L`` state bits, ``K`` bits per step,
``s_t = ((s_{t-1} << K) | c_t) mod 2^L``; the weight of step t is ``value[s_t]``. The predecessors of
state ``s`` are ``(s >> K) | (p << (L-K))`` for ``p < 2^K``, so one step is a min over the ``2^K``
slices of the cost vector viewed as ``[2^K, 2^(L-K)]``, then the new error of every state.

Work per tile: 256 steps x 2^L states x 2^K predecessors; memory: backpointers of ``K`` bits per
(step, state >> K), kept as uint8 ``[256, tiles, 2^(L-K)]``, so tiles are encoded in chunks sized to
the device's memory.

Tail-biting (start state = end state) uses two passes: a free pass over the tile's sequence rotated
by half fixes the ``L-K`` bits the end and the start share (read at the original end, which sits in
the middle of the rotated sequence, away from boundary effects); a second pass finds the exact
optimum among paths whose start and end carry those bits.
"""
from __future__ import annotations

import math

import torch

from ..formats import QuantizedTensor
from ..formats import hadamard
from ..formats import trellis as tf
from ..formats.base import check_weight
from . import register_method

# Initial per-row scale = rms(row) * SCALE_FACTOR[K] / rms(code table), then refined per row by least
# squares. The factors minimize distortion on i.i.d. Gaussian data for code 3inst (sweep with
# benchmarks/bench_trellis_performance.py --scale-sweep); the other codes share them.
SCALE_FACTOR = {2: 1.0, 3: 1.1, 4: 1.15}


def _forward(x: torch.Tensor, values: torch.Tensor, K: int, L: int,
             start_low: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Viterbi forward pass over ``x [B, T]`` (or ``[B, T, V]`` with values ``[2^L, V]``). Returns
    (final costs ``[B, 2^L]``, backpointers).

    ``start_low``: if given ``[B]``, the state before step 0 must have these low ``L-K`` bits.
    Costs drop the per-step constant ``x^2`` (it does not change the argmin).
    """
    B, T = x.shape[:2]
    S, P = 1 << L, 1 << K
    M = S >> K
    v = values.to(device=x.device, dtype=torch.float32)
    if v.dim() == 1:                     # scalar values: x [B, T]
        v, x = v[:, None], x[..., None]
    v2 = (v * v).sum(1).unsqueeze(0)
    vneg2 = (-2.0 * v).t().unsqueeze(1)  # [V, 1, S]
    if start_low is None:
        cost = torch.zeros(B, S, device=x.device, dtype=torch.float32)
    else:
        cost = torch.full((B, P, M), math.inf, device=x.device, dtype=torch.float32)
        cost[torch.arange(B, device=x.device), :, start_low] = 0.0
        cost = cost.reshape(B, S)
    bp = torch.empty(T, B, M, device=x.device, dtype=torch.uint8)
    xf = x.to(torch.float32)
    for t in range(T):
        minv, arg = cost.view(B, P, M).min(dim=1)
        bp[t].copy_(arg)
        cost = torch.addcmul(v2, xf[:, t, 0:1], vneg2[0])
        for c in range(1, vneg2.shape[0]):           # 2-D values (pair codes)
            cost.addcmul_(xf[:, t, c:c + 1], vneg2[c])
        cost.view(B, M, P).add_(minv.unsqueeze(-1))
    return cost, bp


def _backtrack(bp: torch.Tensor, last: torch.Tensor, K: int, L: int, stop: int = 0) -> torch.Tensor:
    """States ``[B, T]`` of the path ending in state ``last`` (entries before ``stop`` left 0)."""
    T, B, M = bp.shape
    states = torch.zeros(B, T, device=bp.device, dtype=torch.int64)
    s = last.to(torch.int64)
    states[:, T - 1] = s
    for t in range(T - 1, stop, -1):
        m = s >> K
        p = bp[t].gather(1, m.unsqueeze(1)).squeeze(1).to(torch.int64)
        s = p * M + m
        states[:, t - 1] = s
    return states


def viterbi(x: torch.Tensor, values: torch.Tensor, K: int, L: int = tf.STATE_BITS,
            tail_biting: bool = True, start_low: torch.Tensor | None = None) -> torch.Tensor:
    """Minimum-squared-error trellis paths for sequences ``x [B, T]``; returns states ``[B, T]``.

    ``values``: the code value of each of the ``2^L`` states: ``[2^L]``, or ``[2^L, V]`` for a code
    with V-dimensional values, in which case ``x`` is ``[B, T, V]`` (``K`` bits per step of V weights). Without tail-biting (and no
    ``start_low``) the result is the exact optimum over all paths. With ``start_low`` it is the exact
    optimum over paths whose start state carries those low bits and (if ``tail_biting``) whose end
    state carries them too. With ``tail_biting`` and no ``start_low``, the shared bits are chosen by
    a free pass over the sequence rotated by half (see the module docstring).
    """
    vector = values.dim() == 2
    if x.dim() != (3 if vector else 2) or (vector and x.shape[2] != values.shape[1]):
        raise ValueError(f"x must be [B, T] ([B, T, V] for values [2^L, V]), got {tuple(x.shape)} with values "
                         f"{tuple(values.shape)}")
    if values.shape[0] != 1 << L or values.dim() > 2:
        raise ValueError(f"values must have {1 << L} entries (2^L), got {tuple(values.shape)}")
    if not 0 < K < L:
        raise ValueError(f"need 0 < K < L, got K={K}, L={L}")
    B, T = x.shape[:2]
    P, M = 1 << K, 1 << (L - K)
    if tail_biting and start_low is None:
        half = T // 2
        rolled = torch.roll(x, shifts=-half, dims=1)       # rolled[j] = x[(j + half) % T]
        cost, bp = _forward(rolled, values, K, L, None)
        ends = _backtrack(bp, cost.argmin(dim=1), K, L, stop=T - half - 1)
        del bp
        start_low = ends[:, T - half - 1] & (M - 1)         # state at original step T-1
    cost, bp = _forward(x, values, K, L, start_low)
    if tail_biting:
        last_p = cost.view(B, P, M)[torch.arange(B, device=x.device), :, start_low].argmin(dim=1)
        last = last_p * M + start_low
    else:
        last = cost.argmin(dim=1)
    return _backtrack(bp, last, K, L)


def _chunk_tiles(device: torch.device, K: int, L: int, T: int) -> int:
    """Tiles per chunk so that backpointers + cost temporaries fit the device's free memory."""
    per_tile = T * (1 << (L - K)) + 6 * 4 * (1 << L)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.6)
    else:
        budget = 1 << 30
    return max(1, budget // per_tile)


def encode_tiles(targets: torch.Tensor, values: torch.Tensor, K: int, progress=None,
                 chunk: int | None = None) -> torch.Tensor:
    """Tail-biting Viterbi states for tile sequences ``targets [B, 256]``, in chunks of tiles; ``K``
    bits per weight. A pair code (``values [2^L, 2]``) is searched as 128 steps of ``2K`` bits with 2-D
    targets; its per-step states come back expanded (:func:`formats.trellis.pair_to_step_states`)."""
    B, T = targets.shape
    V = 1 if values.dim() == 1 else values.shape[1]
    chunk = chunk or _chunk_tiles(targets.device, K * V, tf.STATE_BITS, T // V)
    out = torch.empty(B, T, dtype=torch.int64, device=targets.device)
    for lo in range(0, B, chunk):
        hi = min(B, lo + chunk)
        if V == 1:
            out[lo:hi] = viterbi(targets[lo:hi], values, K)
        else:
            pairs = viterbi(targets[lo:hi].reshape(hi - lo, T // V, V), values, K * V)
            out[lo:hi] = tf.pair_to_step_states(pairs, K)
        if progress is not None:
            progress.update(hi - lo)
    return out


class _Progress:
    """tqdm bar over tiles (with its time estimate), or nothing when disabled."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="tile", smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def want_progress(progress, n_tiles: int) -> bool:
    """``progress=None`` shows a bar for large matrices (more than 4096 tiles)."""
    return bool(progress) if progress is not None else n_tiles > 4096


class TrellisSetup:
    """Shared front end of the trellis methods: checks, rotation, code table, scales."""

    def __init__(self, weight: torch.Tensor, format: str, group_size: int, code: str = "3inst",
                 scale_dtype: torch.dtype = torch.float16, seed: int = 0, lut: torch.Tensor | None = None,
                 scale_factor: float | None = None, device=None):
        check_weight(weight)
        fmt = tf.TRELLIS_FORMATS.get(int(format[-1])) if format.startswith("trellis") else None
        if fmt is None or fmt.name != format:
            raise ValueError(f"format must be one of trellis2/3/4 for this method, got {format!r}")
        if code not in tf.CODES:
            raise ValueError(f"code must be one of {tf.CODES}, got {code!r}")
        N, K = weight.shape
        tf.check_trellis_shape(N, K)
        self.group = fmt.check_group_size(group_size, K)
        self.fmt, self.bits, self.code, self.N, self.K = fmt, fmt.bits, code, N, K
        self.group_size = group_size
        self.scale_dtype = scale_dtype
        self.meta = tf.make_meta(fmt.bits, code, N, K, scale_dtype, method="")
        self.device = torch.device(device) if device is not None else weight.device
        gen = torch.Generator().manual_seed(int(seed))
        self.su = hadamard.random_signs(N, gen)
        self.sv = hadamard.random_signs(K, gen)
        if code == "hyb":
            self.lut = (lut if lut is not None else tf.default_hyb_lut()).to(torch.float16).cpu()
            if self.lut.shape != (tf.HYB_LUT_SIZE,):
                raise ValueError(f"lut must have shape ({tf.HYB_LUT_SIZE},), got {tuple(self.lut.shape)}")
        else:
            self.lut = None
        self.values = tf.code_table(code, self.lut, device=self.device)
        self.code_rms = self.values.square().mean().sqrt().item()
        self.scale_factor = scale_factor if scale_factor is not None else SCALE_FACTOR[fmt.bits]

    def rotate_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``Wt = U W V^T`` (float32, on the encode device)."""
        w = weight.to(device=self.device, dtype=torch.float64)
        w = hadamard.rotate(w, self.sv.to(self.device), self.meta["had_block_in"])
        w = hadamard.rotate(w.t(), self.su.to(self.device), self.meta["had_block_out"]).t()
        return w.to(torch.float32).contiguous()

    def initial_scales(self, wt: torch.Tensor) -> torch.Tensor:
        """Per (group, row) scales ``[G, N]`` (float32, already rounded to the stored dtype)."""
        G = self.K // self.group
        rms = wt.reshape(self.N, G, self.group).square().mean(-1).sqrt()     # [N, G]
        s = (rms * self.scale_factor / self.code_rms).t()
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s.to(self.scale_dtype).to(torch.float32).contiguous()

    def expand_scales(self, scales: torch.Tensor) -> torch.Tensor:
        return scales.t().repeat_interleave(self.group, dim=1)                 # [N, K]

    def refit_scales(self, wt: torch.Tensor, code_vals: torch.Tensor) -> torch.Tensor:
        """Least-squares scale per (group, row) for fixed codes: ``<w, v> / <v, v>``."""
        G = self.K // self.group
        w = wt.reshape(self.N, G, self.group).to(torch.float64)
        v = code_vals.reshape(self.N, G, self.group).to(torch.float64)
        s = (w * v).sum(-1) / (v * v).sum(-1).clamp_min(1e-30)
        s = torch.where(s > 0, s, torch.ones_like(s)).t()
        return s.to(self.scale_dtype).to(torch.float32).contiguous()

    def train_lut(self, targets: torch.Tensor, states: torch.Tensor) -> None:
        """Lloyd update of the hyb table: each entry becomes the mean target of the steps using it."""
        idx = tf.hyb_index(states).reshape(-1)
        sums = torch.zeros(tf.HYB_LUT_SIZE, dtype=torch.float64, device=idx.device)
        sums.index_add_(0, idx, targets.reshape(-1).to(torch.float64))
        counts = torch.bincount(idx, minlength=tf.HYB_LUT_SIZE)
        old = self.lut.to(device=idx.device, dtype=torch.float64)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), old)
        self.lut = new.to(torch.float16).cpu()
        self.values = tf.code_table("hyb", self.lut, device=self.device)

    def finish(self, states: torch.Tensor, scales: torch.Tensor, method: str, **extra_meta) -> QuantizedTensor:
        """Pack the states ``[K/16, N/16, 256]`` and build the artifact (tensors on the CPU's device
        of the input weight's choosing: the encode device)."""
        codes = tf.states_to_codes(states.reshape(-1, tf.TILE_WEIGHTS), self.bits)
        words = tf.pack_stream(codes, self.bits).reshape(self.K // tf.TILE, self.N // tf.TILE, -1)
        tensors = {"qweight": tf.words_to_qweight(words), "scales": scales.to(self.scale_dtype).contiguous(),
                   "su": self.su.to(self.device), "sv": self.sv.to(self.device)}
        if self.lut is not None:
            tensors["lut"] = self.lut.to(self.device)
        meta = dict(self.meta, method=method, **extra_meta)
        return QuantizedTensor(self.fmt.name, (self.N, self.K), self.group_size, tensors, meta)


@register_method("viterbi")
def quantize_viterbi(weight: torch.Tensor, format: str, group_size: int, *, code: str = "3inst",
                     scale_dtype: torch.dtype = torch.float16, seed: int = 0,
                     lut: torch.Tensor | None = None, scale_factor: float | None = None,
                     refit: bool = True, progress: bool | None = None, device=None,
                     chunk_tiles: int | None = None, lut_iters: int = 0, hessian=None) -> QuantizedTensor:
    """Trellis-quantize ``weight [N, K]`` tile by tile with tail-biting Viterbi (no Hessian).

    Options: ``code`` (3inst | 1mad | hyb | 1mad2 | 1mad2r: ``formats.trellis.CODES``), ``scale_dtype``,
    ``seed`` (Hadamard signs), ``lut`` (hyb table, fp16 [256]), ``scale_factor`` (override the tuned default), ``refit`` (least-squares
    rescale of each row after the search), ``progress`` (tqdm bar; default on above 4096 tiles),
    ``device`` (where to encode; default the weight's), ``chunk_tiles``, ``lut_iters`` (code hyb:
    rounds of table training, each a Lloyd update of the 256 entries from the current paths followed
    by a new search; the trained table is stored in the artifact).
    """
    if hessian is not None:
        raise ValueError("method 'viterbi' ignores calibration data; pass hessian= to method='ldlq'")
    setup = TrellisSetup(weight, format, group_size, code, scale_dtype, seed, lut, scale_factor, device)
    wt = setup.rotate_weight(weight)
    scales = setup.initial_scales(wt)
    targets = tf.matrix_to_tiles(wt / setup.expand_scales(scales)).reshape(-1, tf.TILE_WEIGHTS)
    bar = _Progress(targets.shape[0], want_progress(progress, targets.shape[0]), f"viterbi {format}")
    if not isinstance(lut_iters, int) or lut_iters < 0 or (lut_iters and code != "hyb"):
        raise ValueError(f"lut_iters must be an int >= 0, and only code 'hyb' has a table; got {lut_iters!r} "
                         f"with code {code!r}")
    try:
        states = encode_tiles(targets, setup.values, setup.bits, bar, chunk_tiles)
        for _ in range(lut_iters):
            setup.train_lut(targets, states)
            states = encode_tiles(targets, setup.values, setup.bits, None, chunk_tiles)
    finally:
        bar.close()
    states = states.reshape(setup.K // tf.TILE, setup.N // tf.TILE, tf.TILE_WEIGHTS)
    if refit:
        code_vals = tf.tiles_to_matrix(tf.path_values(states, setup.values), setup.N, setup.K)
        scales = setup.refit_scales(wt, code_vals)
    return setup.finish(states, scales, "viterbi")

"""Quantized experts: E routed (+ S shared) SwiGLU experts whose gate, up and down projections each carry
their own format and bit width.

Expert ``e`` computes ``down_e(silu(gate_e(x)) * up_e(x))`` with ``gate_e, up_e: [I, H]`` and
``down_e: [H, I]`` quantized weights (:class:`triton_marlin.QuantizedTensor`). Shared experts are stored
after the routed ones (indices ``E .. E+S-1``) with the same shapes; a shared MLP of intermediate size
``S * I`` is split into S experts of size I, which computes exactly the same function (SwiGLU acts per
intermediate column and the down projection sums over them).

For the fused kernels each projection is flattened (:meth:`QuantizedExperts.flat`): the packed codes of
all experts concatenated into one buffer per word type, scales and zero points likewise, and a small
int32 table giving each expert's format, offsets and group size. One kernel launch then reads experts of
different widths; the kernel branches on the table, and a program only ever serves one expert.

The flat buffers hold packed words tile-interleaved: a ``[rows, N]`` plane (16 word rows per K tile, see
:mod:`triton_marlin.formats.packing`) is stored ``[rows / 16, N, 16]``, so the 16 words a kernel unpacks for
one output column and K tile are 64 contiguous bytes (16-byte copies into the tensor-core tiles' shared
memory, whose word tile is ``[BLOCK_N, 16]``, instead of 4-byte ones); 8-bit codes ``[K, N]`` likewise by 16
k. Every part starts at a multiple of 16 elements of its buffer, which the kernels rely on for those copies.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..formats import FormatError, QuantizedTensor, get_format
from ..formats.base import dtype_name, read_safetensors, write_safetensors_atomic
from ..formats.packing import pack_codes
from ..quantize import quantize

PROJECTIONS = ("gate", "up", "down")
ARTIFACT_KIND = "triton_marlin.QuantizedExperts"
ARTIFACT_VERSION = 1

# Format kinds as the fused kernels number them (a table column and a compile-time bit mask).
KIND_CODES = {"int2": 0, "int3": 1, "int4": 2, "int8": 3, "fp4": 4, "mxfp4": 5, "nvfp4": 6, "fp8": 7}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
ASYM_KIND = 8  # added to an integer kind with zero points
# Columns of the per-expert table of a flattened projection.
T_KIND, T_CODE, T_HI, T_SCALE, T_ZERO, T_GROUP, T_FIELDS = 0, 1, 2, 3, 4, 5, 8

def _norm_spec(spec, where: str) -> tuple[str, int | None]:
    if isinstance(spec, str):
        fmt, gs = spec, None
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        fmt, gs = spec[0], spec[1]
    else:
        raise ValueError(f"{where}: expected a format name or (format, group_size), got {spec!r}")
    if fmt not in KIND_CODES:
        raise ValueError(f"{where}: format {fmt!r} is not supported for experts; expected one of "
                         f"{sorted(KIND_CODES)}")
    if gs is not None and not isinstance(gs, int):
        raise ValueError(f"{where}: group_size must be an int or None, got {gs!r}")
    return fmt, gs


def normalize_recipe(recipe, num_experts: int) -> list[tuple[tuple[str, int | None], ...]]:
    """A recipe -> per-expert ``((gate fmt, gs), (up fmt, gs), (down fmt, gs))``.

    Accepted: one format (``"int4"``) for everything; a (gate, up, down) triple for every expert; a list of
    E triples; or a callable ``e -> triple``. A format may carry its group size: ``("int4", 64)``.
    """
    def triple(t, e):
        if isinstance(t, str) or (isinstance(t, (tuple, list)) and len(t) == 2 and isinstance(t[0], str)
                                  and not isinstance(t[1], str)):
            t = (t, t, t)
        if not isinstance(t, (tuple, list)) or len(t) != 3:
            raise ValueError(f"recipe for expert {e}: expected (gate, up, down) formats, got {t!r}")
        return tuple(_norm_spec(s, f"recipe for expert {e}, {p}") for s, p in zip(t, PROJECTIONS))

    if callable(recipe):
        return [triple(recipe(e), e) for e in range(num_experts)]
    if isinstance(recipe, (list,)) and len(recipe) == num_experts and not isinstance(recipe[0], str):
        return [triple(recipe[e], e) for e in range(num_experts)]
    return [triple(recipe, e) for e in range(num_experts)]


def _bits(qt: QuantizedTensor) -> int:
    return qt.bits


@dataclass
class FlatProjection:
    """One projection of all experts, flattened for a single kernel launch (see the module docstring).

    Buffers hold element offsets given by ``table`` (int32 ``[num_experts, T_FIELDS]``): kind, code offset,
    high-plane offset (int3), scale offset, zero-point offset (-1: symmetric), group size along K; every
    offset is a multiple of 16. Packed words (``codes32``, ``codes16``) are tile-interleaved
    (:func:`interleave_word_tiles`), 8-bit codes by 16 k (:func:`interleave_k16`); scales and zero points are
    ``[rows, N]`` row-major.
    """

    N: int
    K: int
    codes32: torch.Tensor
    codes16: torch.Tensor
    codes8: torch.Tensor
    scales16: torch.Tensor
    scales8: torch.Tensor
    zeros8: torch.Tensor
    gscale: torch.Tensor
    table: torch.Tensor
    kinds: tuple[int, ...]       # per expert
    expert_nbytes: tuple[int, ...]

    group_k: int = 0              # the group size (along K) every expert shares, 0 when they differ

    kinds_mask: int = field(init=False)           # bit k set when some expert has kind k
    uniform_kind: int | None = field(init=False)  # the kind every expert has, else None

    def __post_init__(self):
        self.kinds_mask = sum(1 << k for k in set(self.kinds))
        self.uniform_kind = self.kinds[0] if len(set(self.kinds)) == 1 else None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.codes32, self.codes16, self.codes8, self.scales16, self.scales8, self.zeros8,
                    self.gscale, self.table))

    def launch_args(self) -> tuple:
        return (self.codes32, self.codes16, self.codes8, self.scales16, self.scales8, self.zeros8, self.gscale,
                self.table)


PART_ALIGN = 16  # elements: every part of a flat buffer starts at a multiple of this


def interleave_word_tiles(words: torch.Tensor) -> torch.Tensor:
    """Packed words ``[rows, N]`` (rows a multiple of 16) -> ``[rows / 16, N, 16]``: word ``(r, n)`` moves to
    ``(r // 16, n, r % 16)``, so each column's 16 word rows of a K tile are contiguous."""
    rows, N = words.shape
    if rows % 16:
        raise ValueError(f"packed words need a multiple of 16 rows (whole K tiles), got {rows}")
    return words.reshape(rows // 16, 16, N).transpose(1, 2).contiguous()


def interleave_k16(codes: torch.Tensor) -> torch.Tensor:
    """8-bit codes ``[K, N]`` -> ``[ceil(K / 16), N, 16]``: code ``(k, n)`` moves to ``(k // 16, n, k % 16)``, so
    the 16 codes of one column and one 16-k slot are 16 contiguous bytes (as :func:`interleave_word_tiles` does
    for packed words); a partial last slot is padded with code 0 (the kernels mask k >= K)."""
    K, N = codes.shape
    pad = -K % 16
    if pad:
        codes = torch.cat([codes, codes.new_zeros((pad, N))])
    return codes.reshape(-1, 16, N).transpose(1, 2).contiguous()


def flatten_projection(qts: Sequence[QuantizedTensor]) -> FlatProjection:
    """Concatenate one projection of every expert into a :class:`FlatProjection`."""
    N, K = qts[0].shape
    dev = qts[0].device
    parts = {"codes32": [], "codes16": [], "codes8": [], "scales16": [], "scales8": [], "zeros8": []}
    sizes = dict.fromkeys(parts, 0)
    table = torch.zeros((len(qts), T_FIELDS), dtype=torch.int64)
    gscale = torch.ones(len(qts), dtype=torch.float32)
    scale16_dtype = None
    kinds = []

    def put(name: str, t: torch.Tensor) -> int:
        pad = -sizes[name] % PART_ALIGN
        if pad:
            parts[name].append(torch.zeros(pad, dtype=t.dtype, device=t.device))
            sizes[name] += pad
        off = sizes[name]
        flat = t.reshape(-1)
        parts[name].append(flat)
        sizes[name] += flat.numel()
        return off

    for e, qt in enumerate(qts):
        kind = KIND_CODES[qt.format]
        if qt.format.startswith("int") and not qt.meta.get("symmetric", True):
            kind += ASYM_KIND
        kinds.append(kind)
        t = qt.tensors
        table[e, T_KIND] = kind
        if qt.format in ("int8", "fp8"):
            table[e, T_CODE] = put("codes8", interleave_k16(t["qweight"]))
        else:
            table[e, T_CODE] = put("codes32", interleave_word_tiles(t["qweight"]))
        table[e, T_HI] = put("codes16", interleave_word_tiles(t["qweight_hi"])) if "qweight_hi" in t else 0
        if qt.format in ("mxfp4", "nvfp4"):
            table[e, T_SCALE] = put("scales8", t["scales"])
        else:
            if scale16_dtype is None:
                scale16_dtype = t["scales"].dtype
            elif t["scales"].dtype != scale16_dtype:
                raise ValueError(f"expert {e}: scales are {t['scales'].dtype} but earlier experts of this "
                                 f"projection use {scale16_dtype}; one projection needs one scale dtype")
            table[e, T_SCALE] = put("scales16", t["scales"])
        table[e, T_ZERO] = put("zeros8", t["zeros"]) if "zeros" in t else -1
        table[e, T_GROUP] = K if qt.group_size == -1 else qt.group_size
        if qt.format == "nvfp4":
            gscale[e] = t["global_scale"].reshape(()).to(torch.float32).cpu()
    if max(sizes.values()) >= 2**31:
        raise ValueError("a flattened expert buffer exceeds 2**31 elements (int32 offsets)")
    dummy = {"codes32": torch.int32, "codes16": torch.int16, "codes8": torch.uint8,
             "scales16": scale16_dtype or torch.float16, "scales8": torch.uint8, "zeros8": torch.uint8}
    bufs = {}
    for name, lst in parts.items():
        bufs[name] = torch.cat(lst).contiguous() if lst else torch.zeros(1, dtype=dummy[name], device=dev)
    groups = {K if qt.group_size == -1 else qt.group_size for qt in qts}
    return FlatProjection(N, K, table=table.to(torch.int32).to(dev), gscale=gscale.to(dev), kinds=tuple(kinds),
                          expert_nbytes=tuple(q.nbytes for q in qts), group_k=groups.pop() if len(groups) == 1 else 0,
                          **bufs)


class QuantizedExperts:
    """E routed + S shared quantized SwiGLU experts (see the module docstring)."""

    def __init__(self, experts: Sequence[dict[str, QuantizedTensor]], hidden_size: int, intermediate_size: int,
                 num_shared: int = 0):
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
        if not isinstance(intermediate_size, int) or intermediate_size < 1:
            raise ValueError(f"intermediate_size must be a positive int, got {intermediate_size!r}")
        if not isinstance(num_shared, int) or num_shared < 0:
            raise ValueError(f"num_shared must be an int >= 0, got {num_shared!r}")
        experts = list(experts)
        if len(experts) <= num_shared:
            raise ValueError(f"need at least one routed expert: got {len(experts)} experts with "
                             f"num_shared={num_shared}")
        H, I = hidden_size, intermediate_size
        want = {"gate": (I, H), "up": (I, H), "down": (H, I)}
        device = None
        for e, ex in enumerate(experts):
            if not isinstance(ex, dict) or set(ex) != set(PROJECTIONS):
                got = sorted(ex) if isinstance(ex, dict) else type(ex).__name__
                raise ValueError(f"expert {e}: expected a dict with keys {PROJECTIONS}, got {got}")
            for p in PROJECTIONS:
                qt = ex[p]
                if not isinstance(qt, QuantizedTensor):
                    raise TypeError(f"expert {e} {p}: expected a QuantizedTensor, got {type(qt).__name__}")
                if tuple(qt.shape) != want[p]:
                    raise ValueError(f"expert {e} {p}: weight shape {list(qt.shape)} does not match "
                                     f"{list(want[p])} (hidden_size={H}, intermediate_size={I})")
                if qt.format not in KIND_CODES:
                    raise ValueError(f"expert {e} {p}: format {qt.format!r} is not supported for experts; "
                                     f"expected one of {sorted(KIND_CODES)}")
                gs = qt.shape[1] if qt.group_size == -1 else qt.group_size
                if gs % 16:
                    raise ValueError(f"expert {e} {p}: group size {qt.group_size} is not a multiple of 16")
                if device is None:
                    device = qt.device
                elif qt.device != device:
                    raise ValueError(f"expert {e} {p} is on {qt.device}, expert 0 on {device}")
        self.experts = experts
        self.hidden_size = H
        self.intermediate_size = I
        self.num_shared = num_shared
        self._flat: dict[str, FlatProjection] = {}

    # -- facts ---------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        return len(self.experts)

    @property
    def num_experts(self) -> int:
        """Routed experts (shared ones excluded)."""
        return len(self.experts) - self.num_shared

    @property
    def device(self) -> torch.device:
        return self.experts[0]["gate"].device

    def formats(self, e: int) -> tuple[str, str, str]:
        return tuple(self.experts[e][p].format for p in PROJECTIONS)

    def widths(self, e: int) -> tuple[int, int, int]:
        """Nominal bits of (gate, up, down) codes of expert ``e``."""
        return tuple(_bits(self.experts[e][p]) for p in PROJECTIONS)

    def signature(self, e: int) -> tuple[str, str, str]:
        """What decides which kernel branch an expert takes: its (gate, up, down) formats."""
        return self.formats(e)

    def expert_nbytes(self, e: int) -> int:
        return sum(self.experts[e][p].nbytes for p in PROJECTIONS)

    @property
    def nbytes(self) -> int:
        return sum(self.expert_nbytes(e) for e in range(self.num_total))

    def is_uniform(self) -> bool:
        """Every projection has one format across all experts (gate, up and down may differ)."""
        return all(len({self.experts[e][p].format for e in range(self.num_total)}) == 1 for p in PROJECTIONS)

    def describe(self) -> str:
        counts: dict[tuple, int] = {}
        for e in range(self.num_experts):
            counts[self.formats(e)] = counts.get(self.formats(e), 0) + 1
        parts = [f"{n} x {'/'.join(f)}" for f, n in sorted(counts.items(), key=lambda kv: -kv[1])]
        s = f"{self.num_experts} routed experts ({', '.join(parts)})"
        if self.num_shared:
            shared = sorted({'/'.join(self.formats(e)) for e in range(self.num_experts, self.num_total)})
            s += f" + {self.num_shared} shared ({', '.join(shared)})"
        return s + f", gate/up/down formats, H={self.hidden_size}, I={self.intermediate_size}"

    def flat(self, proj: str) -> FlatProjection:
        """The flattened projection for the fused kernels (built once, cached)."""
        if proj not in PROJECTIONS:
            raise ValueError(f"proj must be one of {PROJECTIONS}, got {proj!r}")
        if proj not in self._flat:
            self._flat[proj] = flatten_projection([ex[proj] for ex in self.experts])
        return self._flat[proj]

    def to(self, device) -> "QuantizedExperts":
        return QuantizedExperts([{p: ex[p].to(device) for p in PROJECTIONS} for ex in self.experts],
                                self.hidden_size, self.intermediate_size, self.num_shared)

    def __repr__(self) -> str:
        return f"QuantizedExperts({self.describe()}, {self.nbytes} bytes, device={self.device})"

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_float(cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, recipe="int4", *,
                   shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, shared_recipe=None,
                   method: str = "rtn", **options) -> "QuantizedExperts":
        """Quantize a float MoE: ``gate, up [E, I, H]``, ``down [E, H, I]``; ``shared`` = a shared MLP's
        ``(gate [S*I, H], up [S*I, H], down [H, S*I])``, split into S experts of size I.

        ``recipe`` (see :func:`normalize_recipe`) picks each expert's (gate, up, down) formats;
        ``shared_recipe`` the shared experts' (default: the recipe of expert 0).
        """
        for name, t in (("gate", gate), ("up", up), ("down", down)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"{name} must be a 3-D tensor [E, out, in], got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        E, I, H = gate.shape
        if up.shape != (E, I, H):
            raise ValueError(f"up has shape {tuple(up.shape)}, expected {(E, I, H)} like gate")
        if down.shape != (E, H, I):
            raise ValueError(f"down has shape {tuple(down.shape)}, expected {(E, H, I)}")
        specs = normalize_recipe(recipe, E)
        experts = []
        for e in range(E):
            experts.append({p: quantize(w[e], fmt, gs, method, **options)
                            for p, w, (fmt, gs) in zip(PROJECTIONS, (gate, up, down), specs[e])})
        num_shared = 0
        if shared is not None:
            sg, su, sd = shared
            if sg.dim() != 2 or sg.shape[1] != H or sg.shape[0] % I or su.shape != sg.shape \
                    or sd.shape != (H, sg.shape[0]):
                raise ValueError(f"shared must be (gate [S*{I}, {H}], up [S*{I}, {H}], down [{H}, S*{I}]), got "
                                 f"{tuple(sg.shape)}, {tuple(su.shape)}, {tuple(sd.shape)}")
            num_shared = sg.shape[0] // I
            sspec = normalize_recipe(shared_recipe if shared_recipe is not None else [specs[0]], 1)[0]
            for s in range(num_shared):
                rows = slice(s * I, (s + 1) * I)
                ws = (sg[rows], su[rows], sd[:, rows])
                experts.append({p: quantize(w.contiguous(), fmt, gs, method, **options)
                                for p, w, (fmt, gs) in zip(PROJECTIONS, ws, sspec)})
        return cls(experts, H, I, num_shared)

    # -- artifact ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file: tensors ``e{e}.{proj}.{name}``, per-weight headers in the metadata."""
        tensors, headers = {}, []
        for e, ex in enumerate(self.experts):
            headers.append({p: ex[p].header() for p in PROJECTIONS})
            for p in PROJECTIONS:
                for name, t in ex[p].tensors.items():
                    tensors[f"e{e}.{p}.{name}"] = t.detach().contiguous().cpu()
        meta = {"kind": ARTIFACT_KIND, "version": str(ARTIFACT_VERSION), "hidden_size": str(self.hidden_size),
                "intermediate_size": str(self.intermediate_size), "num_shared": str(self.num_shared),
                "experts": json.dumps(headers)}
        write_safetensors_atomic(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "QuantizedExperts":
        path = os.fspath(path)
        meta, tensors = read_safetensors(path)
        if meta.get("kind") != ARTIFACT_KIND:
            raise FormatError(f"{path}: not a triton_marlin experts artifact (kind {meta.get('kind')!r})")
        if meta.get("version") != str(ARTIFACT_VERSION):
            raise FormatError(f"{path}: experts artifact version {meta.get('version')!r} is not supported; "
                              f"this triton_marlin reads version {ARTIFACT_VERSION}")
        try:
            headers = json.loads(meta["experts"])
            H, I, S = int(meta["hidden_size"]), int(meta["intermediate_size"]), int(meta["num_shared"])
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: corrupt experts metadata: {e}") from None
        experts, used = [], set()
        for e, hdr in enumerate(headers):
            ex = {}
            for p in PROJECTIONS:
                prefix = f"e{e}.{p}."
                own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                used.update(prefix + k for k in own)
                ex[p] = QuantizedTensor.from_state(hdr[p], own, source=f"{path} expert {e} {p}")
            experts.append(ex)
        extra = set(tensors) - used
        if extra:
            raise FormatError(f"{path}: unexpected tensors {sorted(extra)[:5]}")
        return cls(experts, H, I, S).to(device)


# -- lossless re-packing at a wider width (the max_bits_padded strategy) ----------------------------

def _int_meta(bits: int, symmetric: bool, scale_dtype: torch.dtype) -> dict:
    return {"format": f"int{bits}", "bits": bits, "symmetric": symmetric, "scale_dtype": dtype_name(scale_dtype),
            "layout": "kn_uint8" if bits == 8 else "k16_interleaved"}


def _codes(qt: QuantizedTensor) -> torch.Tensor:
    return get_format(qt.format).codes(qt) if qt.format != "fp8" else qt.tensors["qweight"].t()


def repack_lossless(qt: QuantizedTensor, target: str) -> QuantizedTensor:
    """Re-encode ``qt`` in the wider format ``target`` (``int{b}`` or ``fp8``) so that it dequantizes to
    exactly the same weight; raises ValueError when that is impossible (checked bit for bit)."""
    if target == qt.format:
        return qt
    src, N, K = qt.format, qt.shape[0], qt.shape[1]
    t = qt.tensors
    out: QuantizedTensor | None = None
    if target.startswith("int") and target in KIND_CODES:
        tb = int(target[3:])
        if src.startswith("int"):
            sb = qt.bits
            if sb > tb:
                raise ValueError(f"cannot pad {src} down to {target}")
            q = _codes(qt).to(torch.int32)
            sym = qt.meta["symmetric"]
            if sym:
                q = q - 2 ** (sb - 1) + 2 ** (tb - 1)
            tensors = pack_codes(q.to(torch.uint8), tb)
            tensors["scales"] = t["scales"]
            if not sym:
                tensors["zeros"] = t["zeros"]
            out = QuantizedTensor(target, (N, K), qt.group_size, tensors, _int_meta(tb, sym, t["scales"].dtype))
        elif src in ("fp4", "mxfp4", "nvfp4") and tb == 8:
            from ..formats.minifloat import decode_e2m1
            # e2m1 values are multiples of 0.5 in [-6, 6]: int8 code 2*v + 128 with half the scale
            v = decode_e2m1(_codes(qt))
            q = (2 * v + 128).to(torch.uint8)
            block = get_format(src).block_scales(qt)  # float32 [G, N]
            scale_dtype = t["scales"].dtype if src == "fp4" else torch.float16
            half = (block / 2).to(scale_dtype)
            tensors = pack_codes(q, 8)
            tensors["scales"] = half.contiguous()
            out = QuantizedTensor("int8", (N, K), qt.group_size, tensors, _int_meta(8, True, scale_dtype))
    elif target == "fp8":
        if src.startswith("int") and qt.bits <= 4 or src in ("fp4", "mxfp4", "nvfp4"):
            from ..formats.minifloat import decode_e2m1, encode_e4m3fn
            if src.startswith("int"):
                q = _codes(qt).to(torch.float32)
                if qt.meta["symmetric"]:
                    z = float(2 ** (qt.bits - 1))
                else:
                    from ..formats.integer import expand_groups
                    gs = K if qt.group_size == -1 else qt.group_size
                    z = expand_groups(t["zeros"].to(torch.float32), gs)
                v = q - z  # integers in [-15, 15]: exact in E4M3
                scales = t["scales"]
            else:
                v = decode_e2m1(_codes(qt))
                block = get_format(src).block_scales(qt)
                scales = t["scales"] if src == "fp4" else block.to(torch.float16)
            tensors = {"qweight": encode_e4m3fn(v).t().contiguous(), "scales": scales.contiguous()}
            meta = {"format": "fp8", "bits": 8, "scale_dtype": dtype_name(scales.dtype), "layout": "kn_uint8"}
            out = QuantizedTensor("fp8", (N, K), qt.group_size, tensors, meta)
    if out is None:
        raise ValueError(f"no lossless re-packing of {src} as {target}")
    if not torch.equal(out.dequantize(torch.float32), qt.dequantize(torch.float32)):
        raise ValueError(f"re-packing {src} as {target} is not lossless for this weight (scales out of the "
                         f"target scale type's exact range)")
    return out


def padded_target(formats: Sequence[str], bits: Sequence[int]) -> list[str]:
    """Candidate wider formats that can hold every one of ``formats`` losslessly, narrowest first."""
    cands = []
    if all(f.startswith("int") for f in formats):
        cands.append(f"int{max(bits)}")
    if "fp8" not in formats:
        cands.append("int8")
    if "int8" not in formats:
        cands.append("fp8")
    return list(dict.fromkeys(cands))


def pad_to_max_bits(experts: QuantizedExperts) -> QuantizedExperts:
    """Every expert's projection re-packed at the widest format present in that projection (lossless)."""
    new = [dict(ex) for ex in experts.experts]
    for p in PROJECTIONS:
        qts = [ex[p] for ex in experts.experts]
        fmts = [q.format for q in qts]
        if len(set(fmts)) == 1:
            continue
        errors = []
        for target in padded_target(fmts, [q.bits for q in qts]):
            try:
                repacked = [repack_lossless(q, target) for q in qts]
            except ValueError as err:
                errors.append(f"{target}: {err}")
                continue
            for e, q in enumerate(repacked):
                new[e][p] = q
            break
        else:
            raise ValueError(f"projection {p}: formats {sorted(set(fmts))} have no common lossless wider "
                             f"format ({'; '.join(errors)})")
    return QuantizedExperts(new, experts.hidden_size, experts.intermediate_size, experts.num_shared)

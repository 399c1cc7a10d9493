"""Integer weight formats: int2, int3, int4, int8, symmetric or asymmetric, grouped along K.

Stored tensors (N = out_features, K = in_features, G = K // group_size, or 1 per-channel):
- ``qweight`` (+ ``qweight_hi`` for int3): codes ``q`` in ``[0, 2**bits)``, packed by
  :mod:`triton_marlin.formats.packing` (int8: plain ``uint8 [K, N]``).
- ``scales``: ``[G, N]`` float16 or bfloat16.
- ``zeros`` (asymmetric only): ``[G, N]`` uint8 zero-point codes.

Dequantization: ``w = (q - z) * s`` with ``z = 2**(bits-1)`` when symmetric.
"""
from __future__ import annotations

import torch

from .base import (QuantizedTensor, WeightFormat, check_scale_dtype, check_weight, dtype_from_name,
                   dtype_name, register_format)
from .packing import pack_codes, packed_shapes, unpack_codes


def group_view(weight: torch.Tensor, group: int) -> torch.Tensor:
    """``[N, K]`` -> ``[N, G, group]``."""
    N, K = weight.shape
    return weight.reshape(N, K // group, group)


def expand_groups(per_group: torch.Tensor, group: int) -> torch.Tensor:
    """``[G, N]`` per-group values -> ``[N, K]`` per-weight values."""
    return per_group.t().repeat_interleave(group, dim=1)


class IntFormat(WeightFormat):
    def __init__(self, bits: int):
        self.bits = bits
        self.name = f"int{bits}"

    def quantize_rtn(self, weight: torch.Tensor, group_size: int = 128, *, symmetric: bool = True,
                     scale_dtype: torch.dtype = torch.float16) -> QuantizedTensor:
        check_weight(weight)
        check_scale_dtype(scale_dtype)
        N, K = weight.shape
        group = self.check_group_size(group_size, K)
        w = group_view(weight.to(torch.float32), group)
        if symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            scale = w.abs().amax(dim=-1, keepdim=True) / qmax
            scale = scale.to(scale_dtype).to(torch.float32)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.full_like(scale, 2 ** (self.bits - 1))
        else:
            lo = w.amin(dim=-1, keepdim=True).clamp(max=0)
            hi = w.amax(dim=-1, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / (2 ** self.bits - 1)).to(scale_dtype).to(torch.float32)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            zero = torch.round(-lo / safe).clamp(0, 2 ** self.bits - 1)
        q = torch.clamp(torch.round(w / safe) + zero, 0, 2 ** self.bits - 1)
        codes = q.reshape(N, K).to(torch.uint8)
        tensors = pack_codes(codes, self.bits)
        tensors["scales"] = scale.squeeze(-1).t().contiguous().to(scale_dtype)
        if not symmetric:
            tensors["zeros"] = zero.squeeze(-1).t().contiguous().to(torch.uint8)
        meta = {"format": self.name, "bits": self.bits, "symmetric": bool(symmetric),
                "scale_dtype": dtype_name(scale_dtype), "layout": self.layout_name()}
        return QuantizedTensor(self.name, (N, K), group_size, tensors, meta)

    def layout_name(self) -> str:
        return "kn_uint8" if self.bits == 8 else "k16_interleaved"

    def codes(self, qt: QuantizedTensor) -> torch.Tensor:
        return unpack_codes(qt.tensors, self.bits, qt.shape[1])

    def dequantize(self, qt: QuantizedTensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        N, K = qt.shape
        group = K if qt.group_size == -1 else qt.group_size
        q = self.codes(qt).to(torch.float32)
        s = expand_groups(qt.tensors["scales"].to(torch.float32), group)
        if qt.meta["symmetric"]:
            z = float(2 ** (self.bits - 1))
        else:
            z = expand_groups(qt.tensors["zeros"].to(torch.float32), group)
        w = (q - z) * s
        if qt.meta.get("hadamard_block"):  # quantized in a Hadamard-rotated basis (MR-GPTQ)
            from .hadamard import unrotate
            w = unrotate(w, qt.tensors["had_signs"], qt.meta["hadamard_block"])
        return w.to(dtype)

    def expected_tensors(self, shape, group_size, meta) -> dict:
        N, K = shape
        G = self.num_groups(shape, group_size)
        out = packed_shapes(self.bits, N, K)
        out["scales"] = ((G, N), dtype_from_name(meta["scale_dtype"]))
        if not meta["symmetric"]:
            out["zeros"] = ((G, N), torch.uint8)
        if meta.get("hadamard_block"):
            out["had_signs"] = ((K,), torch.int8)
        return out

    def options_from_meta(self, meta: dict) -> dict:
        return {"symmetric": meta["symmetric"], "scale_dtype": dtype_from_name(meta["scale_dtype"])}


INT_FORMATS = {b: register_format(IntFormat(b)) for b in (2, 3, 4, 8)}

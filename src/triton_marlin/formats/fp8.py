"""FP8 E4M3FN weights with per-channel (or per-group) scales.

Stored: ``qweight uint8 [K, N]`` (E4M3FN bit patterns, N contiguous) and ``scales [G, N]`` in
float16/bfloat16 (``s = amax / 448``). Dequantization: ``w = e4m3fn(q) * s``.
"""
from __future__ import annotations

import torch

from .base import (QuantizedTensor, WeightFormat, check_scale_dtype, check_weight, dtype_from_name,
                   dtype_name, register_format)
from .integer import expand_groups, group_view
from .minifloat import E4M3_MAX, decode_e4m3fn, encode_e4m3fn


class FP8Format(WeightFormat):
    name = "fp8"
    bits = 8

    def quantize_rtn(self, weight, group_size=-1, *, scale_dtype=torch.float16) -> QuantizedTensor:
        check_weight(weight)
        check_scale_dtype(scale_dtype)
        N, K = weight.shape
        group = self.check_group_size(group_size, K)
        w = group_view(weight.to(torch.float32), group)
        scale = (w.abs().amax(-1, keepdim=True) / E4M3_MAX).to(scale_dtype).to(torch.float32)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = encode_e4m3fn(w / safe).reshape(N, K)
        tensors = {"qweight": codes.t().contiguous(),
                   "scales": scale.squeeze(-1).t().contiguous().to(scale_dtype)}
        meta = {"format": self.name, "bits": 8, "scale_dtype": dtype_name(scale_dtype),
                "layout": "kn_uint8"}
        return QuantizedTensor(self.name, (N, K), group_size, tensors, meta)

    def dequantize(self, qt, dtype=torch.float16):
        N, K = qt.shape
        group = K if qt.group_size == -1 else qt.group_size
        vals = decode_e4m3fn(qt.tensors["qweight"].t())
        return (vals * expand_groups(qt.tensors["scales"].to(torch.float32), group)).to(dtype)

    def expected_tensors(self, shape, group_size, meta):
        N, K = shape
        return {"qweight": ((K, N), torch.uint8),
                "scales": ((self.num_groups(shape, group_size), N), dtype_from_name(meta["scale_dtype"]))}

    def options_from_meta(self, meta):
        return {"scale_dtype": dtype_from_name(meta["scale_dtype"])}


FP8 = register_format(FP8Format())

"""FP4 (E2M1) weight formats. Codes are packed exactly like int4 codes (k16-interleaved int32).

- ``fp4``:   E2M1 codes, one float16/bfloat16 scale per group (``s = amax / 6``), ``scales [G, N]``.
- ``mxfp4``: OCP MX: blocks of 32 along K, E8M0 power-of-two scales ``scales uint8 [K/32, N]``,
             shared exponent ``floor(log2(amax)) - 2`` (2 = E2M1's largest exponent).
- ``nvfp4``: blocks of 16, E4M3FN block scales ``scales uint8 [K/16, N]`` and one fp32 tensor scale
             ``global_scale [1]`` chosen so every block scale fits E4M3 (``amax / (6 * 448)``).
"""
from __future__ import annotations

import torch

from .base import (QuantizedTensor, WeightFormat, check_scale_dtype, check_weight, dtype_from_name,
                   dtype_name, register_format)
from .integer import expand_groups, group_view
from .minifloat import (E2M1_MAX, E4M3_MAX, decode_e2m1, decode_e4m3fn, decode_e8m0, encode_e2m1,
                        encode_e4m3fn, encode_e8m0_floor)
from .packing import pack_codes, packed_shapes, unpack_codes


class _E2M1Base(WeightFormat):
    bits = 4

    def _pack(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        return pack_codes(codes, 4)

    def codes(self, qt: QuantizedTensor) -> torch.Tensor:
        return unpack_codes(qt.tensors, 4, qt.shape[1])

    def block_scales(self, qt: QuantizedTensor) -> torch.Tensor:
        """Per-group scale as float32 ``[G, N]`` (tensor scale folded in)."""
        raise NotImplementedError

    def dequantize(self, qt: QuantizedTensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        N, K = qt.shape
        group = K if qt.group_size == -1 else qt.group_size
        vals = decode_e2m1(self.codes(qt))
        return (vals * expand_groups(self.block_scales(qt), group)).to(dtype)

    def _codes_for(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return encode_e2m1(w / safe)


class FP4Format(_E2M1Base):
    name = "fp4"

    def quantize_rtn(self, weight, group_size=128, *, scale_dtype=torch.float16) -> QuantizedTensor:
        check_weight(weight)
        check_scale_dtype(scale_dtype)
        N, K = weight.shape
        group = self.check_group_size(group_size, K)
        w = group_view(weight.to(torch.float32), group)
        scale = (w.abs().amax(-1, keepdim=True) / E2M1_MAX).to(scale_dtype).to(torch.float32)
        codes = self._codes_for(w, scale).reshape(N, K)
        tensors = self._pack(codes)
        tensors["scales"] = scale.squeeze(-1).t().contiguous().to(scale_dtype)
        meta = {"format": self.name, "bits": 4, "scale_dtype": dtype_name(scale_dtype),
                "layout": "k16_interleaved"}
        return QuantizedTensor(self.name, (N, K), group_size, tensors, meta)

    def block_scales(self, qt):
        return qt.tensors["scales"].to(torch.float32)

    def expected_tensors(self, shape, group_size, meta):
        N, K = shape
        out = packed_shapes(4, N, K)
        out["scales"] = ((self.num_groups(shape, group_size), N), dtype_from_name(meta["scale_dtype"]))
        return out

    def options_from_meta(self, meta):
        return {"scale_dtype": dtype_from_name(meta["scale_dtype"])}


class MXFP4Format(_E2M1Base):
    name = "mxfp4"
    allowed_group_sizes = (32,)

    def quantize_rtn(self, weight, group_size=32) -> QuantizedTensor:
        check_weight(weight)
        N, K = weight.shape
        self.check_group_size(group_size, K)
        w = group_view(weight.to(torch.float32), 32)
        amax = w.abs().amax(-1, keepdim=True)
        # 2**floor(log2(amax)) / 2**2: the block max lands in [4, 8), saturating above 6 as the spec does
        ecode = (encode_e8m0_floor(amax).to(torch.int32) - 2).clamp(0, 254).to(torch.uint8)
        scale = decode_e8m0(ecode)
        codes = self._codes_for(w, scale).reshape(N, K)
        tensors = self._pack(codes)
        tensors["scales"] = ecode.squeeze(-1).t().contiguous()
        meta = {"format": self.name, "bits": 4, "scale_format": "e8m0", "layout": "k16_interleaved"}
        return QuantizedTensor(self.name, (N, K), 32, tensors, meta)

    def block_scales(self, qt):
        return decode_e8m0(qt.tensors["scales"])

    def expected_tensors(self, shape, group_size, meta):
        N, K = shape
        out = packed_shapes(4, N, K)
        out["scales"] = ((K // 32, N), torch.uint8)
        return out


class NVFP4Format(_E2M1Base):
    name = "nvfp4"
    allowed_group_sizes = (16,)

    def quantize_rtn(self, weight, group_size=16) -> QuantizedTensor:
        check_weight(weight)
        N, K = weight.shape
        self.check_group_size(group_size, K)
        w = group_view(weight.to(torch.float32), 16)
        tensor_amax = w.abs().max()
        global_scale = (tensor_amax / (E2M1_MAX * E4M3_MAX)).clamp(min=torch.finfo(torch.float32).tiny)
        block = w.abs().amax(-1, keepdim=True) / E2M1_MAX / global_scale
        scode = encode_e4m3fn(block)
        scale = decode_e4m3fn(scode) * global_scale
        codes = self._codes_for(w, scale).reshape(N, K)
        tensors = self._pack(codes)
        tensors["scales"] = scode.squeeze(-1).t().contiguous()
        tensors["global_scale"] = global_scale.reshape(1).to(torch.float32)
        meta = {"format": self.name, "bits": 4, "scale_format": "e4m3fn", "layout": "k16_interleaved"}
        return QuantizedTensor(self.name, (N, K), 16, tensors, meta)

    def block_scales(self, qt):
        return decode_e4m3fn(qt.tensors["scales"]) * qt.tensors["global_scale"].to(torch.float32)

    def expected_tensors(self, shape, group_size, meta):
        N, K = shape
        out = packed_shapes(4, N, K)
        out["scales"] = ((K // 16, N), torch.uint8)
        out["global_scale"] = ((1,), torch.float32)
        return out


FP4 = register_format(FP4Format())
MXFP4 = register_format(MXFP4Format())
NVFP4 = register_format(NVFP4Format())

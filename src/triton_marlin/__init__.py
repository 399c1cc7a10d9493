"""triton_marlin: quantized Mixture-of-Experts inference kernels in Triton, with a torch reference path.

Public API::

    qw = triton_marlin.quantize(weight, "int4", group_size=128)        # -> QuantizedTensor
    y = triton_marlin.qmatmul(x, qw, bias)                              # x[..., K] @ W.T
    layer = triton_marlin.QuantizedLinear.from_linear(linear, "fp4")
    report = triton_marlin.replace_linear_layers(model, format="int4", skip=["lm_head"])
"""
from .formats import FormatError, QuantizedTensor, available_formats, get_format
from .quantize import available_methods, quantize
from .ops import qmatmul
from .nn import QuantizedLinear, replace_linear_layers
from .device import select_device
from .kernels.attention import attention, decode_attention, mla_decode_attention
from .kvcache import KVCache, LatentKVCache

__version__ = "0.1.0"

__all__ = [
    "FormatError", "QuantizedTensor", "available_formats", "get_format", "available_methods",
    "quantize", "qmatmul", "QuantizedLinear", "replace_linear_layers", "select_device", "attention", "decode_attention",
    "mla_decode_attention", "KVCache", "LatentKVCache", "__version__",
]

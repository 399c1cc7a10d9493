"""Weight formats: packing, bit layouts and exact reference dequantizers (see docs/formats.md)."""
from .base import (ARTIFACT_VERSION, FormatError, QuantizedTensor, WeightFormat, available_formats,
                   get_format, register_format)
from . import integer, fp4, fp8, trellis  # noqa: F401  (register the formats)

__all__ = ["ARTIFACT_VERSION", "FormatError", "QuantizedTensor", "WeightFormat", "available_formats",
           "get_format", "register_format"]

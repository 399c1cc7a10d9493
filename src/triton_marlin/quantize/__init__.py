"""Quantization algorithms. ``quantize`` is the single entry point; methods register here.

- ``rtn``: round-to-nearest, every format (the formats implement it next to their packing).
Further methods (``gptq``, ``viterbi``, ``ldlq``) register through :func:`register_method`.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..formats import QuantizedTensor, get_format
from ..formats.base import check_weight

_METHODS: dict[str, Callable[..., QuantizedTensor]] = {}


def register_method(name: str):
    def deco(fn):
        if name in _METHODS:
            raise ValueError(f"quantization method {name!r} registered twice")
        _METHODS[name] = fn
        return fn
    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def default_group_size(format: str) -> int:
    """The group size a format uses when none is given."""
    fmt = get_format(format)
    if getattr(fmt, "default_group_size", None) is not None:
        return fmt.default_group_size
    if len(fmt.allowed_group_sizes) == 1:
        return fmt.allowed_group_sizes[0]
    if fmt.name == "fp8":
        return -1
    return 128 if 128 in fmt.allowed_group_sizes else fmt.allowed_group_sizes[0]


@register_method("rtn")
def _rtn(weight: torch.Tensor, format: str, group_size: int, **options) -> QuantizedTensor:
    return get_format(format).quantize_rtn(weight, group_size, **options)


def quantize(weight: torch.Tensor, format: str, group_size: int | None = None, method: str = "rtn",
             **options) -> QuantizedTensor:
    """Quantize a float weight ``[N, K]`` (out_features x in_features, as ``nn.Linear.weight``).

    Args:
        weight: 2-D float tensor, finite.
        format: one of :func:`triton_marlin.formats.available_formats` (int2/3/4/8, fp4, mxfp4,
            nvfp4, fp8, ...).
        group_size: weights per scale along K: 32, 64, 128, 256 or -1 (one scale per output
            channel). ``None`` takes the format's default: 128, except mxfp4 (32), nvfp4 (16) and
            fp8 (per-channel).
        method: ``rtn`` (round to nearest) or another registered method (:func:`available_methods`).
        **options: format/method options, e.g. ``symmetric=False``, ``scale_dtype=torch.bfloat16``,
            ``hessian=H`` for GPTQ-style methods.
    """
    fmt = get_format(format)
    check_weight(weight)
    if group_size is None:
        group_size = default_group_size(fmt.name)
    if method not in _METHODS:
        raise ValueError(f"unknown quantization method {method!r}: expected one of {available_methods()}")
    return _METHODS[method](weight, fmt.name, group_size, **options)
from . import gptq, ldlq, viterbi  # noqa: E402,F401  (register the GPTQ and trellis methods)

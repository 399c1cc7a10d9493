"""``QuantizedLinear`` and ``replace_linear_layers``."""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

import torch
from torch import nn

from .formats import QuantizedTensor
from .ops import qmatmul
from .quantize import quantize


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is a :class:`QuantizedTensor`; ``forward`` is :func:`qmatmul`.

    The packed tensors are registered as buffers (so ``.to()``, ``state_dict`` and CUDA graphs see
    them); the format metadata lives on the module and in :meth:`quantized_weight`'s artifact.
    """

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.format = qweight.format
        self.group_size = qweight.group_size
        self._meta = dict(qweight.meta)
        self._tensor_names = tuple(qweight.tensors)
        for name, t in qweight.tensors.items():
            self.register_buffer(f"q_{name}", t)
        if bias is not None:
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str, group_size: int | None = None,
                    method: str = "rtn", **options) -> "QuantizedLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        qw = quantize(linear.weight.detach(), format, group_size, method, **options)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(qw, bias)

    def quantized_weight(self) -> QuantizedTensor:
        tensors = {name: getattr(self, f"q_{name}") for name in self._tensor_names}
        return QuantizedTensor(self.format, (self.out_features, self.in_features), self.group_size,
                               tensors, dict(self._meta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return qmatmul(x, self.quantized_weight(), bias)

    def extra_repr(self) -> str:
        qw = self.quantized_weight()
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format}, group_size={self.group_size}, "
                f"bits_per_weight={qw.bits_per_weight:.3f}, bias={self.bias is not None}")


def _skipped(name: str, skip) -> bool:
    if skip is None:
        return False
    if callable(skip):
        return bool(skip(name))
    if isinstance(skip, str):
        skip = [skip]
    return any(fnmatch.fnmatchcase(name, pat) or name.split(".")[-1] == pat for pat in skip)


def replace_linear_layers(model: nn.Module, format: str, group_size: int | None = None, *,
                          skip: Iterable[str] | Callable[[str], bool] | str | None = None,
                          method: str = "rtn", verbose: bool = False, **options) -> list[dict]:
    """Swap every ``nn.Linear`` of ``model`` for a :class:`QuantizedLinear`, in place.

    ``skip`` names layers to keep in float: glob patterns over the qualified name (``"lm_head"``,
    ``"*.gate"``) or a predicate. Returns one record per replaced layer (name, shape, format,
    bits per weight, bytes before and after); ``verbose`` also prints them.
    """
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and not _skipped(name, skip)]
    report = []
    for name, lin in targets:
        qlin = QuantizedLinear.from_linear(lin, format, group_size, method, **options)
        qlin.to(lin.weight.device)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, qlin)
        qw = qlin.quantized_weight()
        rec = {"name": name, "shape": [qlin.out_features, qlin.in_features], "format": format,
               "group_size": qlin.group_size, "bits_per_weight": qw.bits_per_weight,
               "bytes_before": lin.weight.numel() * lin.weight.element_size(), "bytes_after": qw.nbytes}
        report.append(rec)
        if verbose:
            print(f"replaced {name}: {rec['shape']} -> {format} ({rec['bits_per_weight']:.2f} bits/weight)")
    return report

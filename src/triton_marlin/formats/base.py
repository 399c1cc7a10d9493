"""QuantizedTensor, the format registry, and the safetensors artifact.

A quantized weight is a set of named tensors plus a small metadata dict. The metadata travels inside
the artifact (safetensors header), never in a file name, and loading refuses anything it cannot
interpret exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

ARTIFACT_VERSION = 1
ARTIFACT_KIND = "triton_marlin.QuantizedTensor"

_REGISTRY: dict[str, "WeightFormat"] = {}


class FormatError(ValueError):
    """A quantized artifact or tensor does not match what its format requires."""


def register_format(fmt: "WeightFormat") -> "WeightFormat":
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} registered twice")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> "WeightFormat":
    if not isinstance(name, str):
        raise TypeError(f"format must be a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}: expected one of {sorted(_REGISTRY)}") from None


def available_formats() -> list[str]:
    return sorted(_REGISTRY)


class WeightFormat:
    """One weight format: packing, the exact reference dequantizer, and round-to-nearest quantization.

    Subclasses set ``name`` and ``bits`` and implement ``quantize_rtn``, ``dequantize`` and
    ``expected_tensors`` (name -> (shape, dtype) for a given metadata dict, used to validate loads).
    """

    name: ClassVar[str] = ""
    bits: ClassVar[int] = 0
    allowed_group_sizes: ClassVar[tuple[int, ...]] = (32, 64, 128, 256, -1)

    def check_group_size(self, group_size: int, K: int) -> int:
        if not isinstance(group_size, int):
            raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
        if group_size not in self.allowed_group_sizes:
            raise ValueError(f"format {self.name!r} supports group_size in {self.allowed_group_sizes}, "
                             f"got {group_size}")
        if group_size != -1 and K % group_size != 0:
            raise ValueError(f"K={K} (in_features) is not a multiple of group_size={group_size}; "
                             f"pick a group size that divides K or group_size=-1 (per-channel)")
        return K if group_size == -1 else group_size

    def quantize_rtn(self, weight: torch.Tensor, group_size: int, **options) -> "QuantizedTensor":
        raise NotImplementedError

    def dequantize(self, qt: "QuantizedTensor", dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def expected_tensors(self, shape: tuple[int, int], group_size: int,
                         meta: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) of every tensor an artifact of this format must hold."""
        raise NotImplementedError

    @staticmethod
    def num_groups(shape: tuple[int, int], group_size: int) -> int:
        return 1 if group_size == -1 else shape[1] // group_size

    def options_from_meta(self, meta: dict) -> dict:
        """The quantization options recorded in ``meta`` (what a re-quantization would need)."""
        return {}


def check_weight(weight: torch.Tensor) -> None:
    """Validate a float weight [N, K] before quantizing it."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (out_features x in_features), got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"weight dtype must be float16, bfloat16, float32 or float64, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty: shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        bad = (~torch.isfinite(weight)).sum().item()
        raise ValueError(f"weight contains {bad} NaN/inf values; quantization needs finite weights")


def check_scale_dtype(scale_dtype: torch.dtype) -> torch.dtype:
    if scale_dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"scale_dtype must be torch.float16 or torch.bfloat16, got {scale_dtype}")
    return scale_dtype


_DTYPE_NAMES = {
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16",
    torch.int32: "int32", torch.int64: "int64",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


def dtype_from_name(name: str) -> torch.dtype:
    for dt, n in _DTYPE_NAMES.items():
        if n == name:
            return dt
    raise FormatError(f"unknown dtype name {name!r}")


@dataclass
class QuantizedTensor:
    """A quantized weight of logical shape ``[N, K]`` (out_features x in_features).

    ``tensors`` holds the packed codes, scales and whatever else the format needs; ``meta`` holds
    JSON-serializable facts (format, bits, group size, layout, options). Both are written into the
    safetensors artifact by :meth:`save`.
    """

    format: str
    shape: tuple[int, int]
    group_size: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    # -- facts ---------------------------------------------------------------------------------
    @property
    def fmt(self) -> WeightFormat:
        return get_format(self.format)

    @property
    def bits(self) -> int:
        """Nominal bits of one weight code."""
        return int(self.meta.get("bits", self.fmt.bits))

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, scales, zero points, tables, sign vectors)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per logical weight, scales and zero points (and any padding) included."""
        N, K = self.shape
        return 8.0 * self.nbytes / (N * K)

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def dequantize(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """The exact weight these codes represent, ``[N, K]`` in ``dtype``."""
        return self.fmt.dequantize(self, dtype)

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        return QuantizedTensor(self.format, self.shape, self.group_size,
                               {k: v.to(device) for k, v in self.tensors.items()}, dict(self.meta))

    def __repr__(self) -> str:
        N, K = self.shape
        gs = "per-channel" if self.group_size == -1 else f"group {self.group_size}"
        return (f"QuantizedTensor(format={self.format!r}, shape=[{N}, {K}], {gs}, "
                f"{self.bits_per_weight:.3f} bits/weight, {self.nbytes} bytes, device={self.device})")

    # -- artifact ------------------------------------------------------------------------------
    def header(self) -> dict[str, str]:
        return {
            "kind": ARTIFACT_KIND,
            "version": str(ARTIFACT_VERSION),
            "format": self.format,
            "shape": json.dumps(list(self.shape)),
            "group_size": str(self.group_size),
            "meta": json.dumps(self.meta, sort_keys=True),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors artifact atomically (a temp file renamed into place)."""
        write_safetensors_atomic(path, self.tensors, self.header())

    @classmethod
    def from_state(cls, header: dict[str, str], tensors: dict[str, torch.Tensor],
                   source: str = "artifact") -> "QuantizedTensor":
        """Rebuild from a header and tensors, refusing any mismatch with a clear message."""
        if header.get("kind") != ARTIFACT_KIND:
            raise FormatError(f"{source}: not a triton_marlin quantized tensor "
                              f"(header kind {header.get('kind')!r})")
        version = header.get("version")
        if version != str(ARTIFACT_VERSION):
            raise FormatError(f"{source}: artifact format version {version!r} is not supported; "
                              f"this triton_marlin reads version {ARTIFACT_VERSION}")
        try:
            fmt = get_format(header["format"])
            shape = tuple(json.loads(header["shape"]))
            group_size = int(header["group_size"])
            meta = json.loads(header["meta"])
        except (KeyError, json.JSONDecodeError, ValueError) as e:
            raise FormatError(f"{source}: corrupt or incomplete header: {e}") from None
        if meta.get("format") != fmt.name:
            raise FormatError(f"{source}: header format {fmt.name!r} disagrees with metadata "
                              f"format {meta.get('format')!r}")
        try:
            expected = fmt.expected_tensors(shape, group_size, meta)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{source}: metadata incomplete for format {fmt.name!r}: {e}") from None
        if set(expected) != set(tensors):
            raise FormatError(f"{source}: format {fmt.name!r} expects tensors {sorted(expected)}, "
                              f"found {sorted(tensors)}")
        for name, (shp, dt) in expected.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(shp) or t.dtype != dt:
                raise FormatError(f"{source}: tensor {name!r} is {tuple(t.shape)} {t.dtype}, "
                                  f"format {fmt.name!r} expects {tuple(shp)} {dt}")
        return cls(fmt.name, (int(shape[0]), int(shape[1])), group_size, dict(tensors), meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
             expect_format: str | None = None) -> "QuantizedTensor":
        """Read an artifact written by :meth:`save`; ``expect_format`` refuses any other format."""
        path = os.fspath(path)
        header, tensors = read_safetensors(path)
        qt = cls.from_state(header, tensors, source=path)
        if expect_format is not None and qt.format != expect_format:
            raise FormatError(f"{path}: holds a {qt.format!r} weight, expected {expect_format!r}")
        return qt.to(device)


Quantizer = Callable[..., QuantizedTensor]


def write_safetensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                             metadata: dict[str, str]) -> None:
    """Write ``tensors`` + string ``metadata`` to ``path`` through a temp file renamed into place, so
    a failed write never leaves a partial artifact behind."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_safetensors(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; an unreadable or truncated file is a FormatError."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None

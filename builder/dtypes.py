"""One table relating Triton, NumPy, ONNX and PyTorch data types, so no module keeps its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import torch

__all__ = ["DType", "TritonDType", "by_onnx_elem_type", "by_triton"]

TritonDType = Literal[
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
]
"""Data types a tensor of an exported model may have (TYPE_STRING and TYPE_BF16 cannot be
exported to ONNX Runtime, so the spec does not offer them for model inputs and outputs)."""


@dataclass(frozen=True)
class DType:
    """One data type as each library names it."""

    triton: str
    numpy: np.dtype[np.generic]
    onnx: int
    torch: torch.dtype

    @property
    def is_floating(self) -> bool:
        return bool(np.issubdtype(self.numpy, np.floating))

    @property
    def is_integer(self) -> bool:
        return bool(np.issubdtype(self.numpy, np.integer))


_T = onnx.TensorProto
_TABLE = (
    DType("TYPE_BOOL", np.dtype(np.bool_), _T.BOOL, torch.bool),
    DType("TYPE_UINT8", np.dtype(np.uint8), _T.UINT8, torch.uint8),
    DType("TYPE_UINT16", np.dtype(np.uint16), _T.UINT16, torch.uint16),
    DType("TYPE_UINT32", np.dtype(np.uint32), _T.UINT32, torch.uint32),
    DType("TYPE_UINT64", np.dtype(np.uint64), _T.UINT64, torch.uint64),
    DType("TYPE_INT8", np.dtype(np.int8), _T.INT8, torch.int8),
    DType("TYPE_INT16", np.dtype(np.int16), _T.INT16, torch.int16),
    DType("TYPE_INT32", np.dtype(np.int32), _T.INT32, torch.int32),
    DType("TYPE_INT64", np.dtype(np.int64), _T.INT64, torch.int64),
    DType("TYPE_FP16", np.dtype(np.float16), _T.FLOAT16, torch.float16),
    DType("TYPE_FP32", np.dtype(np.float32), _T.FLOAT, torch.float32),
    DType("TYPE_FP64", np.dtype(np.float64), _T.DOUBLE, torch.float64),
)
_BY_TRITON = {d.triton: d for d in _TABLE}
_BY_ONNX = {d.onnx: d for d in _TABLE}


def by_triton(name: str) -> DType:
    """Return the data type Triton calls `name` (e.g. ``TYPE_FP32``)."""
    return _BY_TRITON[name]


def by_onnx_elem_type(elem_type: int) -> DType | None:
    """Return the data type of an ONNX tensor element type, or None for one Triton cannot carry."""
    return _BY_ONNX.get(elem_type)

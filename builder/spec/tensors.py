"""Tensors as the spec declares them: Triton's view (dims exclude the batch dimension)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from builder.dtypes import TritonDType
from builder.spec._base import Dim, Strict

__all__ = ["InputSpec", "OutputSpec", "ShapeRange", "TensorDType"]

TensorDType = Literal[TritonDType, "TYPE_STRING"]
"""Any tensor dtype: the numeric ones of builder.dtypes, and TYPE_STRING (bytes) for Python and
ensemble models."""


class ShapeRange(Strict):
    """Smallest, typical and largest shape (batch dimension excluded) an input is sent with.

    Verification runs at `min` and `max`; warmup and TensorRT profiles use `opt` too.
    """

    min: tuple[Annotated[int, Field(ge=1)], ...]
    """The smallest shape, one value per dim."""
    opt: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    """The typical shape; default: the midpoint of `min` and `max`."""
    max: tuple[Annotated[int, Field(ge=1)], ...]
    """The largest shape, one value per dim."""

    @property
    def typical(self) -> tuple[int, ...]:
        """`opt` when declared, else the midpoint of each dimension."""
        if self.opt is not None:
            return self.opt
        return tuple((lo + hi) // 2 for lo, hi in zip(self.min, self.max, strict=True))


class InputSpec(Strict):
    """One model input, in Triton's terms: `dims` excludes the batch dimension, -1 is variable."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")]
    """The tensor's name in the ONNX graph, the config and requests."""
    dtype: TensorDType
    """Triton's data type; `TYPE_STRING` only for Python models and ensembles."""
    dims: tuple[Dim, ...]
    """The shape without the batch dimension; -1 is variable."""
    shape_range: ShapeRange | None = None
    """Required where `dims` has a -1: the shapes verification, warmup and clients use."""
    value_range: tuple[float, float] | None = None
    """`[low, high)` of generated test inputs (integers default to `[0, 16)`, floats to a standard normal); for an integer input also the range the clients accept."""
    optional: bool = False
    """Whether a request may leave the input out."""

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Positions in `dims` declared variable (-1)."""
        return tuple(i for i, d in enumerate(self.dims) if d == -1)

    @property
    def typical_dims(self) -> tuple[int, ...]:
        """Concrete dims for warmup: `shape_range.opt` (or its midpoint) for variable ones."""
        return self.shape_range.typical if self.shape_range else self.dims


class OutputSpec(Strict):
    """One model output; `atol`/`rtol` bound its difference from PyTorch during verification,
    `labels` names a file of class labels (one per line) for Triton's classification extension."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")]
    """The tensor's name in the ONNX graph, the config and responses."""
    dtype: TensorDType
    """Triton's data type; `TYPE_STRING` only for Python models and ensembles."""
    dims: tuple[Dim, ...]
    """The shape without the batch dimension; -1 is variable."""
    atol: Annotated[float, Field(ge=0)] = 1e-4
    """Absolute tolerance of the verification against PyTorch."""
    rtol: Annotated[float, Field(ge=0)] = 1e-3
    """Relative tolerance of the verification against PyTorch."""
    labels: Path | None = None
    """A text file of class labels, one per line, for Triton's classification extension."""

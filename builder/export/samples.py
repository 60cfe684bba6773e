"""Seeded inputs generated from a model's input specs, for export tracing and verification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from builder.dtypes import by_triton
from builder.spec import InputSpec, OnnxModelSpec

__all__ = ["Case", "cases", "export_case", "make_inputs"]

# Integer inputs without a value_range draw from [0, 16): small enough to be a valid index
# for most embeddings, while still exercising more than one value.
_DEFAULT_INT_RANGE = (0.0, 16.0)


@dataclass(frozen=True)
class Case:
    """One verification shape: a batch size (None when the model does not batch) and, per
    input, the concrete dims substituted for its variable ones."""

    batch: int | None
    dims: dict[str, tuple[int, ...]]

    def describe(self) -> str:
        shapes = ", ".join(f"{name}={list(self.shape(name))}" for name in self.dims)
        return shapes

    def shape(self, name: str) -> tuple[int, ...]:
        prefix = () if self.batch is None else (self.batch,)
        return (*prefix, *self.dims[name])


def cases(model: OnnxModelSpec) -> list[Case]:
    """Batch 1, a middle size and max_batch_size, each at the smallest and largest declared dims."""
    if model.max_batch_size > 0:
        mbs = model.max_batch_size
        batches: list[int | None] = [*sorted({1, max(1, (mbs + 1) // 2), mbs})]
    else:
        batches = [None]
    extremes = ["min", "max"] if any(t.dynamic_axes for t in model.inputs) else ["min"]
    return [
        Case(batch, {t.name: _concrete_dims(t, extreme) for t in model.inputs})
        for batch in batches
        for extreme in extremes
    ]


def export_case(model: OnnxModelSpec) -> Case:
    """The shape used to trace the export: no dimension 1, so the tracer cannot specialise
    a variable dimension to a constant (PyTorch treats sizes 0 and 1 as static)."""
    batch = None if model.max_batch_size == 0 else 2
    dims = {}
    for tensor in model.inputs:
        typical = tensor.shape_range.typical if tensor.shape_range else tensor.dims
        upper = tensor.shape_range.max if tensor.shape_range else tensor.dims
        dims[tensor.name] = tuple(
            min(max(2, t), u) if d == -1 else d for d, t, u in zip(tensor.dims, typical, upper, strict=True)
        )
    return Case(batch, dims)


def make_inputs(model: OnnxModelSpec, case: Case, rng: np.random.Generator) -> dict[str, NDArray[Any]]:
    """Random tensors of the case's shapes: normal floats, integers from `value_range`."""
    return {t.name: _random(t, case.shape(t.name), rng) for t in model.inputs}


def _concrete_dims(tensor: InputSpec, extreme: str) -> tuple[int, ...]:
    if tensor.shape_range is None:
        return tensor.dims
    return tensor.shape_range.min if extreme == "min" else tensor.shape_range.max


def _random(tensor: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> NDArray[Any]:
    dtype = by_triton(tensor.dtype)
    if dtype.numpy == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.is_integer:
        low, high = tensor.value_range or _DEFAULT_INT_RANGE
        return rng.integers(int(low), int(high), size=shape).astype(dtype.numpy)
    if tensor.value_range is not None:
        return rng.uniform(*tensor.value_range, size=shape).astype(dtype.numpy)
    return rng.standard_normal(size=shape).astype(dtype.numpy)

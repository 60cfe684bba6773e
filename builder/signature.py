"""Does an ONNX graph's signature match a declared one (the spec's, or a config.pbtxt's)?

Used by the verify step against the spec and by the repository check against each config, so a
config can never disagree with the model file Triton will load.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import onnx

from builder.dtypes import by_onnx_elem_type

__all__ = ["DeclaredTensor", "check_signature"]


class DeclaredTensor(Protocol):
    """A tensor as a spec or config declares it: dims exclude the batch dimension, -1 is variable."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def dims(self) -> Sequence[int]: ...


def check_signature(
    proto: onnx.ModelProto,
    max_batch_size: int,
    inputs: Sequence[DeclaredTensor],
    outputs: Sequence[DeclaredTensor],
) -> list[str]:
    """Problems between the graph's inputs/outputs and the declared ones, one line each."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in graph.output}
    problems: list[str] = []
    for kind, declared, actual in (("input", inputs, graph_inputs), ("output", outputs, graph_outputs)):
        names = [t.name for t in declared]
        if set(names) != set(actual):
            problems.append(f"{kind} names differ: declared {names}, the graph has {sorted(actual)}")
        for tensor in declared:
            if tensor.name in actual:
                problems.extend(_tensor_problems(max_batch_size, kind, tensor, actual[tensor.name]))
    return problems


def _tensor_problems(
    max_batch_size: int, kind: str, tensor: DeclaredTensor, value: onnx.ValueInfoProto
) -> Iterator[str]:
    label = f"{kind} {tensor.name!r}"
    tensor_type = value.type.tensor_type
    dtype = by_onnx_elem_type(tensor_type.elem_type)
    actual_dtype = dtype.triton if dtype else onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    if actual_dtype != tensor.dtype:
        yield f"{label}: declared dtype {tensor.dtype} but the graph has {actual_dtype}; declare {actual_dtype} or cast in the model"
    dims: list[int | None] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    batched = max_batch_size > 0
    declared = list(tensor.dims)
    expected_rank = len(declared) + (1 if batched else 0)
    if len(dims) != expected_rank:
        batch_note = " plus the batch dimension" if batched else ""
        shape = [d if d is not None else "?" for d in dims]
        yield (
            f"{label}: declared dims {declared}{batch_note} make rank {expected_rank}, the graph's rank is {len(dims)} "
            f"(shape {shape}); declare dims without the batch dimension"
        )
        return
    if batched and dims[0] is not None:
        yield (
            f"{label}: the graph fixes the batch dimension at {dims[0]}, but max_batch_size {max_batch_size} needs it "
            "variable; make forward() independent of the batch size, or set max_batch_size: 0"
        )
    for axis, (want, actual) in enumerate(zip(declared, dims[1:] if batched else dims, strict=True)):
        if want == -1 and actual is not None:
            yield (
                f"{label}: dims[{axis}] is variable (-1) as declared, but the graph fixes it at {actual}; "
                f"the model cannot take other sizes: declare {actual}, or remove what specialises it in forward()"
            )
        elif want != -1 and actual is not None and actual != want:
            yield f"{label}: dims[{axis}] is {want} as declared but {actual} in the graph; declare {actual}"

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
    model: str | None = None,
) -> list[str]:
    """Problems between the graph's inputs/outputs and the declared ones, one line each; with
    `model` (a config being checked), each also in the words Triton's ONNX Runtime backend uses."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in graph.output}
    problems: list[str] = []
    for kind, declared, actual in (("input", inputs, graph_inputs), ("output", outputs, graph_outputs)):
        names = [t.name for t in declared]
        if set(names) != set(actual):
            line = f"{kind} names differ: declared {names}, the graph has {sorted(actual)}"
            if model is not None:
                line += _triton_names(model, kind, names, sorted(actual))
            problems.append(line)
        for tensor in declared:
            if tensor.name in actual:
                problems.extend(_tensor_problems(max_batch_size, kind, tensor, actual[tensor.name], model))
    return problems


def _triton_names(model: str, kind: str, declared: list[str], actual: list[str]) -> str:
    if kind == "input" and len(declared) != len(actual):
        return f" [Triton: unable to load model '{model}', configuration expects {len(declared)} inputs, model provides {len(actual)}]"
    unknown = [name for name in declared if name not in actual]
    if unknown:
        return f" [Triton: unexpected inference {kind} '{unknown[0]}', allowed {kind}s are: {', '.join(actual)}]"
    return ""


def _triton_dims(model: str, tensor: DeclaredTensor, dims: list[int | None], max_batch_size: int) -> str:
    """The ONNX Runtime backend's words for a config whose dims disagree with the graph's."""
    graph = ",".join("-1" if d is None else str(d) for d in dims)
    full = ",".join(map(str, [*([-1] if max_batch_size > 0 else []), *tensor.dims]))
    batch = (
        "an initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, making complete shape"
        if max_batch_size > 0
        else "shape"
    )
    rank = len(tensor.dims) + (1 if max_batch_size > 0 else 0)
    return (
        f" [Triton: model '{model}', tensor '{tensor.name}': the model expects {len(dims)} dimensions (shape [{graph}]) "
        f"but the model configuration specifies {rank} dimensions ({batch} [{full}])]"
    )


def _tensor_problems(
    max_batch_size: int, kind: str, tensor: DeclaredTensor, value: onnx.ValueInfoProto, model: str | None = None
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
    triton = "" if model is None else _triton_dims(model, tensor, dims, max_batch_size)
    if len(dims) != expected_rank:
        batch_note = " plus the batch dimension" if batched else ""
        shape = [d if d is not None else "?" for d in dims]
        yield (
            f"{label}: declared dims {declared}{batch_note} make rank {expected_rank}, the graph's rank is {len(dims)} "
            f"(shape {shape}); declare dims without the batch dimension{triton}"
        )
        return
    if batched and dims[0] is not None:
        yield (
            f"{label}: the graph fixes the batch dimension at {dims[0]}, but max_batch_size {max_batch_size} needs it "
            "variable; make forward() independent of the batch size, or set max_batch_size: 0"
            + (
                ""
                if model is None
                else " [Triton: model does not support batching while non-zero max_batch_size is specified]"
            )
        )
    for axis, (want, actual) in enumerate(zip(declared, dims[1:] if batched else dims, strict=True)):
        if want == -1 and actual is not None:
            yield (
                f"{label}: dims[{axis}] is variable (-1) as declared, but the graph fixes it at {actual}; "
                f"the model cannot take other sizes: declare {actual}, or remove what specialises it in forward()"
            )
        elif want != -1 and actual is not None and actual != want:
            yield f"{label}: dims[{axis}] is {want} as declared but {actual} in the graph; declare {actual}{triton}"

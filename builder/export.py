"""Export step: PyTorch module -> ONNX file with the spec's tensor names and dynamic axes."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim

from builder.errors import ExportError
from builder.samples import export_case, make_inputs
from builder.spec import OnnxModelSpec

__all__ = ["dynamic_axes", "export_onnx"]


def export_onnx(module: nn.Module, model: OnnxModelSpec, path: Path) -> None:
    """Export `module` to `path` with torch.onnx's exporter (torch.export based).

    The batch axis and every variable (-1) dim are exported as symbolic dimensions; whether the
    exporter really kept them symbolic is checked by the verify step, not assumed here.

    Raises:
        ExportError: the exporter failed, or the graph's input/output counts differ from the spec.
    """
    case = export_case(model)
    example = make_inputs(model, case, np.random.default_rng(model.seed))
    args = tuple(torch.from_numpy(example[t.name]) for t in model.inputs)
    dynamic_shapes = tuple(dynamic_axes(model, i) for i in range(len(model.inputs)))
    log = io.StringIO()
    try:
        with _quiet(log):
            program = torch.onnx.export(
                module, args, dynamic_shapes=dynamic_shapes, opset_version=model.opset, dynamo=True, verbose=False
            )
    except Exception as exc:
        raise ExportError(
            f"model {model.name!r}: torch.onnx.export failed with {type(exc).__name__}",
            problems=[*_summary(str(exc)), f"traced with inputs of shape {case.describe()}"],
        ) from exc
    if program is None:  # only without dynamo=True; keeps the type checker honest
        raise ExportError(f"model {model.name!r}: torch.onnx.export returned no program")
    graph = program.model.graph
    _check_count(model, "input", len(graph.inputs), len(model.inputs))
    _check_count(model, "output", len(graph.outputs), len(model.outputs))
    _rename(graph, [v for v in graph.inputs], [t.name for t in model.inputs])
    _rename(graph, [v for v in graph.outputs], [t.name for t in model.outputs])
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))


def dynamic_axes(model: OnnxModelSpec, index: int) -> dict[int, object]:
    """Axes to export as symbolic; Dim.AUTO lets inputs sharing a length share one symbol."""
    tensor = model.inputs[index]
    offset = 0 if model.max_batch_size == 0 else 1
    axes: dict[int, object] = {0: Dim.AUTO} if offset else {}
    axes.update({axis + offset: Dim.AUTO for axis in tensor.dynamic_axes})
    return axes


def _check_count(model: OnnxModelSpec, kind: str, got: int, declared: int) -> None:
    if got != declared:
        raise ExportError(
            f"model {model.name!r}: the exported graph has {got} {kind}(s) but the spec declares {declared}; "
            f"declare one {kind} per tensor of the module's forward() {'arguments' if kind == 'input' else 'results'}, in order"
        )


def _rename(graph: ir.Graph, values: list[ir.Value], names: list[str]) -> None:
    """Give graph inputs/outputs the spec's names, first moving any internal value that already
    holds one of those names out of the way (the exporter names values after ops, so an output
    called 'embedding' would otherwise collide with the value of the embedding op)."""
    wanted = set(names)
    targets = {id(v) for v in values}
    taken = {v.name for v in _all_values(graph)}
    for value in _all_values(graph):
        if value.name in wanted and id(value) not in targets:
            suffix = 1
            while f"{value.name}__{suffix}" in taken:
                suffix += 1
            value.name = f"{value.name}__{suffix}"
            taken.add(value.name)
    for value, name in zip(values, names, strict=True):
        value.name = name


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    values: list[ir.Value] = [*graph.inputs, *graph.initializers.values()]
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(node.outputs)
    return values


@contextlib.contextmanager
def _quiet(log: io.StringIO) -> Iterator[None]:
    """The exporter prints progress and warns about optional packages; keep the build output clean."""
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    torch_onnx_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_logger.setLevel(level)


def _summary(message: str, limit: int = 12) -> list[str]:
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    return lines[:limit] + ([f"... ({len(lines) - limit} more lines)"] if len(lines) > limit else [])

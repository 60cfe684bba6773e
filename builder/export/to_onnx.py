"""Export step: PyTorch module -> ONNX file with the spec's tensor names and dynamic axes."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim

from builder.errors import ExportError
from builder.export.samples import export_case, make_inputs
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
        path.parent.mkdir(parents=True, exist_ok=True)
        torch_log = path.parent / "export.log"
        torch_log.write_text(_plain(f"{log.getvalue()}\n{''.join(traceback.format_exception(exc))}"))
        raise _export_error(model, exc, case.describe(), torch_log) from exc
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
    """The exporter prints progress, logs through torch's loggers and warns about optional
    packages: all of it goes to `log` (written next to the artifact when the export fails), none
    to the build's output."""
    # torch gives many of its loggers a handler of their own, bound to the real stderr.
    streams = [
        (handler, handler.setStream(log))
        for name, logger in list(logging.root.manager.loggerDict.items())
        if name == "torch" or name.startswith("torch.")
        if isinstance(logger, logging.Logger)
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__)
    ]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(True)
            yield
    finally:
        logging.captureWarnings(False)
        for handler, stream in streams:
            handler.setStream(stream)


def _export_error(model: OnnxModelSpec, exc: BaseException, traced: str, torch_log: Path) -> ExportError:
    """The failure in plain words: the user's source line first, then the root cause's own
    message, without torch's boilerplate (which stays in `torch_log`)."""
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    problems = []
    frame = _user_frame(exc)
    if frame is not None:
        problems.append(f"at {frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}")
    message = _plain(str(root)).strip().splitlines()
    problems.append(f"{type(root).__name__}: {message[0] if message else '(no message)'}")
    if "DataDependent" in type(root).__name__:
        problems.append(
            "forward() branches on the values of a tensor, which an exported graph cannot do: compute both "
            "branches and pick with torch.where, use torch.cond, or move the decision out of the model"
        )
    problems.append(f"traced with inputs of shape {traced}; torch's whole output: {torch_log}")
    return ExportError(f"model {model.name!r}: torch.onnx.export could not export forward()", problems=problems)


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the failure that is the user's code: not torch's or another
    installed package's, not the kit's, not generated."""
    ours = Path(__file__).resolve().parent
    library = Path(sysconfig.get_paths()["stdlib"]).resolve()
    found = None
    seen: BaseException | None = exc
    while seen is not None:
        for frame in traceback.extract_tb(seen.__traceback__):
            where = Path(frame.filename)
            generated = frame.filename.startswith("<")
            installed = any(part in ("site-packages", "dist-packages") for part in where.parts)
            outside = ours not in where.resolve().parents and library not in where.resolve().parents
            if not generated and not installed and outside:
                found = frame
        seen = seen.__cause__ or seen.__context__
    return found


def _plain(text: str) -> str:
    """Without the terminal colour codes torch puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)

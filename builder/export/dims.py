"""Which output dims of an exported graph really vary: judged from what ONNX Runtime returns at
the verification cases, not from the exporter's annotations alone.

torch.export traces at one shape. Where an op's shape rule is not symbolic (a GRU's output, for
one), the exporter annotates a graph output with the traced size although the graph computes any
size. Left so, Triton's metadata, the kit's backend and the repository check would all say the
model returns one size only. So for every output dim the spec declares variable (-1) but the
graph fixes, the model is run at the verification cases: a size that changes with the inputs
frees the annotation (a symbolic dim, named after the input dim it follows where there is one);
a size that stays put is left for verification to report, with the declaration that is right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from builder.export.samples import cases, make_inputs
from builder.spec import OnnxModelSpec

__all__ = ["free_pinned_outputs"]

Run = tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]


def free_pinned_outputs(path: Path, model: OnnxModelSpec) -> list[str]:
    """Make symbolic, in the file at `path`, each declared-variable output dim the exporter pinned
    but ONNX Runtime shows varying; return one note per dim freed (none when nothing changed)."""
    proto = onnx.load(str(path), load_external_data=False)
    offset = 1 if model.max_batch_size > 0 else 0
    graph_outputs = {value.name: value for value in proto.graph.output}
    pinned = [
        (spec.name, axis)
        for spec in model.outputs
        if spec.name in graph_outputs
        for axis, declared in enumerate(spec.dims)
        if declared == -1 and _fixed_size(graph_outputs[spec.name], axis + offset) is not None
    ]
    if not pinned:
        return []
    runs = _run_cases(path, model)
    if runs is None:
        return []  # verification runs the same cases and reports the failure with its case
    notes = []
    for name, axis in pinned:
        sizes = [outputs[name].shape[axis + offset] for _, outputs in runs if outputs[name].ndim > axis + offset]
        if len(sizes) < len(runs) or len(set(sizes)) == 1:
            continue  # fixed indeed, or of another rank: verification says which declaration fits
        dim = graph_outputs[name].type.tensor_type.shape.dim[axis + offset]
        annotated = dim.dim_value
        dim.Clear()
        dim.dim_param = _followed_input_dim(proto, runs, name, axis + offset) or f"{name}_dim{axis}"
        notes.append(
            f"output {name!r} dims[{axis}]: the exporter annotated it {annotated}, ONNX Runtime returned "
            f"{min(sizes)}..{max(sizes)} across the verification cases; made variable ({dim.dim_param})"
        )
    if notes:
        # The exporter's annotations of intermediate values carry the traced size too, and ONNX
        # Runtime merges them into the output's shape when it loads the graph (as Triton's
        # onnxruntime backend reads it): dropped, they are inferred again from the inputs.
        del proto.graph.value_info[:]
        onnx.save(proto, str(path))
    return notes


def _fixed_size(value: onnx.ValueInfoProto, axis: int) -> int | None:
    dims = value.type.tensor_type.shape.dim
    if axis >= len(dims) or not dims[axis].HasField("dim_value"):
        return None
    return int(dims[axis].dim_value)


def _run_cases(path: Path, model: OnnxModelSpec) -> list[Run] | None:
    # ORT warns through its process-wide logger, on every run, that an output's shape differs
    # from its annotation: the very thing measured here, and noise in the build's output.
    ort.set_default_logger_severity(3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(model.seed)
    names = [t.name for t in model.outputs]
    runs: list[Run] = []
    for case in cases(model):
        feed = make_inputs(model, case, rng)
        try:
            results = session.run(names, feed)
        except Exception:
            return None
        runs.append((feed, {name: np.asarray(result) for name, result in zip(names, results, strict=True)}))
    return runs


def _followed_input_dim(proto: onnx.ModelProto, runs: list[Run], output: str, axis: int) -> str | None:
    """The symbol of the input dim whose size the output's dim equals in every run, if any."""
    for value in proto.graph.input:
        for input_axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_param or any(value.name not in feed for feed, _ in runs):
                continue
            if all(
                feed[value.name].ndim > input_axis and feed[value.name].shape[input_axis] == outputs[output].shape[axis]
                for feed, outputs in runs
            ):
                return str(dim.dim_param)
    return None

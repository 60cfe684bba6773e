"""Graphs that run every batch at max_batch_size: the batch is padded with zero rows inside the
ONNX graph and the outputs are sliced back to the rows that came in.

Why: ONNX Runtime's CUDA convolutions (cuDNN's frontend API) keep the plan of the last input shape
only and plan again whenever it changes, and a dynamic batcher changes it from one batch to the
next. Measured on the H200 through Triton's onnxruntime backend, image_classifier executions took
55-406 ms while batch sizes changed, against ~1.5 ms padded to 16 (`bench/gpu.py`). With the
padding in the model file, the convolutions meet one shape, in the embedded server and in NGC's
container alike: no server parameter is involved. It costs the compute of a full batch, which is
why only the gpu target pads, and only graphs with convolutions by default (`gpu.pad_batch`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = ["PADDED_KEY", "has_convolutions", "pad_batch", "padded_to"]

PADDED_KEY = "triton_kit.padded_batch"
"""metadata_props key of a padded graph: the batch size every execution runs at."""


def has_convolutions(path: Path) -> bool:
    """Whether the graph at `path` has a Conv-family node (Conv, ConvTranspose, QLinearConv, ...)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any("Conv" in node.op_type for node in graph.node)


def padded_to(path: Path) -> int | None:
    """The batch size a padded graph runs at, or None for a graph that is not padded."""
    model = onnx.load(str(path), load_external_data=False)
    value = next((p.value for p in model.metadata_props if p.key == PADDED_KEY), None)
    return None if value is None else int(value)


def pad_batch(path: Path, size: int) -> None:
    """Rewrite the model at `path` so each of its inputs is padded along axis 0 to `size` rows of
    zeros before anything runs, and each output keeps the rows of the request: the graph's inputs,
    outputs and answers stay as they were."""
    model = onnx.load(str(path))
    graph = model.graph
    # Older exporters list initializers among the inputs too: those are weights, not requests.
    weights = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    first = inputs[0].name
    nodes = [
        helper.make_node("Shape", [first], ["pad__rows"], start=0, end=1),
        helper.make_node("Constant", [], ["pad__size"], value=helper.make_tensor("", TensorProto.INT64, [1], [size])),
        helper.make_node("Sub", ["pad__size", "pad__rows"], ["pad__missing"]),
        helper.make_node("Constant", [], ["pad__zero"], value=helper.make_tensor("", TensorProto.INT64, [1], [0])),
    ]
    renamed = {}
    for value in inputs:
        rank = len(value.type.tensor_type.shape.dim)
        padded = f"pad__{value.name}"
        zeros = helper.make_tensor("", TensorProto.INT64, [rank - 1], [0] * (rank - 1)) if rank > 1 else None
        tail = [f"pad__{value.name}_tail"] if zeros is not None else []
        if zeros is not None:
            nodes.append(helper.make_node("Constant", [], tail, value=zeros))
        # Pad's pads: every axis's begin, then every axis's end; only axis 0 grows, at its end.
        begins = helper.make_tensor("", TensorProto.INT64, [rank], [0] * rank)
        nodes.append(helper.make_node("Constant", [], [f"pad__{value.name}_begins"], value=begins))
        nodes.append(
            helper.make_node(
                "Concat", [f"pad__{value.name}_begins", "pad__missing", *tail], [f"pad__{value.name}_pads"], axis=0
            )
        )
        nodes.append(helper.make_node("Pad", [value.name, f"pad__{value.name}_pads"], [padded], mode="constant"))
        renamed[value.name] = padded
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    tails = []
    for value in graph.output:
        full = f"pad__{value.name}_full"
        for node in graph.node:
            node.output[:] = [full if name == value.name else name for name in node.output]
            node.input[:] = [full if name == value.name else name for name in node.input]
        tails.append(helper.make_node("Slice", [full, "pad__zero", "pad__rows", "pad__zero"], [value.name]))
    body = [*nodes, *graph.node, *tails]
    del graph.node[:]
    graph.node.extend(body)
    # Intermediate annotations tie the batch axis to the request's; past the padding it is `size`.
    del graph.value_info[:]
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, PADDED_KEY: str(size)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))

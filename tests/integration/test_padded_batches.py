"""`gpu.pad_batch`: on the gpu target the exported graph runs every batch at max_batch_size (the
remedy for ONNX Runtime's CUDA convolutions planning again at each new input shape), and each
request still gets exactly its own rows back. The padding is in the model file and device-free,
so it is proven here on the CPU, served by Triton's onnxruntime backend."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builder.export.padding import pad_batch, padded_to
from builder.variants.onnx_int8_fp16 import run_onnx
from clients import TritonClient
from tests.conftest import linear_model
from tests.integration.conftest import build_entries, make_server

pytestmark = [pytest.mark.server]


def conv_entry(name: str, **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name,
        "source": "tests.tiny_models:conv_pool",
        "max_batch_size": 4,
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [1, 8, 8]}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [2]}],
    }
    return {**entry, **overrides}


def test_gpu_builds_pad_convolutional_graphs_unless_the_spec_says_otherwise(tmp_path: Path) -> None:
    entries = [
        conv_entry("conv_auto"),
        conv_entry("conv_off", gpu={"pad_batch": False}),
        linear_model("linear_auto"),
        linear_model("linear_on", gpu={"pad_batch": True}),
    ]
    (tmp_path / "gpu").mkdir()
    gpu = build_entries(tmp_path / "gpu", *entries, target="gpu")
    assert {e["name"]: padded_to(gpu / e["name"] / "1" / "model.onnx") for e in entries} == {
        "conv_auto": 4,
        "conv_off": None,
        "linear_auto": None,
        "linear_on": 8,
    }
    record = json.loads((gpu / "conv_auto" / "1" / "build.json").read_text())
    assert "every batch runs at 4 inside the graph (gpu.pad_batch)" in record["verification"]["notes"]
    (tmp_path / "cpu").mkdir()
    cpu = build_entries(tmp_path / "cpu", conv_entry("conv_auto"))
    assert padded_to(cpu / "conv_auto" / "1" / "model.onnx") is None


def test_a_padded_graph_answers_each_request_with_its_own_rows(tmp_path: Path) -> None:
    """Requests of 1-3 rows sent together: the batcher concatenates them, the graph pads the batch
    to 8 and slices it back, and each request gets its own rows."""
    repo = build_entries(tmp_path, linear_model(dynamic_batching={"max_queue_delay_microseconds": 50000}))
    original = tmp_path / "unpadded.onnx"
    original.write_bytes((repo / "linear" / "1" / "model.onnx").read_bytes())
    pad_batch(repo / "linear" / "1" / "model.onnx", 8)
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(size, 4)).astype(np.float32) for size in (1, 3, 2, 1, 1)]
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:

        def call(x: np.ndarray) -> np.ndarray:
            with TritonClient(server.grpc_url) as client:
                return client.infer("linear", {"x": x})["y"]

        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            answers = list(pool.map(call, batches))
        with TritonClient(server.grpc_url) as client:
            stats = client.statistics("linear")["model_stats"][0]
    finally:
        server.stop()
    assert int(stats["execution_count"]) < len(batches)  # batches formed of several requests
    for x, answer in zip(batches, answers, strict=True):
        (local,) = run_onnx(original, [{"x": x}])
        assert answer.shape == (len(x), 3)
        np.testing.assert_allclose(answer, local["y"], atol=1e-6)


def test_weights_listed_among_the_inputs_are_not_padded(tmp_path: Path) -> None:
    """Older exporters list initializers as graph inputs too: only the request's inputs grow."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    pad_batch(path, 8)
    x = np.ones((3, 4), dtype=np.float32)
    (y,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert padded_to(path) == 8
    np.testing.assert_allclose(y, x @ weight)

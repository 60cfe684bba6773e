"""The kit backend's `pad_to_max_batch_size`: every batch runs at the maximum size (the GPU
remedy for the CUDA provider's cost of a new input shape), and each request still gets exactly
its own rows back. The padding itself is device-independent, so it is proven here on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builder.quantize import run_onnx
from clients import TritonClient
from tests.conftest import linear_model
from tests.integration.conftest import build_entries, make_server

pytestmark = [pytest.mark.server]


def test_padded_batches_answer_each_request_with_its_own_rows(tmp_path: Path) -> None:
    repo = build_entries(tmp_path, linear_model(parameters={"pad_to_max_batch_size": "true"}))
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:
        rng = np.random.default_rng(3)
        batches = [rng.normal(size=(size, 4)).astype(np.float32) for size in (1, 3, 8)]
        with TritonClient(server.grpc_url) as client:
            answers = [client.infer("linear", {"x": x})["y"] for x in batches]
        log = (tmp_path / "triton.log").read_text()
    finally:
        server.stop()
    assert "model 'linear' instance linear_0_0: every batch runs at 8" in log
    for x, answer in zip(batches, answers, strict=True):
        (local,) = run_onnx(repo / "linear" / "1" / "model.onnx", [{"x": x}])
        assert answer.shape == (len(x), 3)
        np.testing.assert_allclose(answer, local["y"], atol=1e-6)


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
    repo = build_entries(
        tmp_path,
        conv_entry("conv_auto"),
        conv_entry("conv_off", gpu={"pad_batch": False}),
        linear_model("linear_auto"),
        linear_model("linear_on", gpu={"pad_batch": True}),
        target="gpu",
    )

    def padded(name: str) -> bool:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
        return config.parameters["pad_to_max_batch_size"].string_value == "true"

    assert {name: padded(name) for name in ("conv_auto", "conv_off", "linear_auto", "linear_on")} == {
        "conv_auto": True,
        "conv_off": False,
        "linear_auto": False,
        "linear_on": True,
    }
    (tmp_path / "cpu").mkdir()
    cpu_repo = build_entries(tmp_path / "cpu", conv_entry("conv_auto"))
    assert "pad_to_max_batch_size" not in (cpu_repo / "conv_auto" / "config.pbtxt").read_text()

"""The kit backend's `pad_to_max_batch_size`: every batch runs at the maximum size (the GPU
remedy for the CUDA provider's cost of a new input shape), and each request still gets exactly
its own rows back. The padding itself is device-independent, so it is proven here on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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

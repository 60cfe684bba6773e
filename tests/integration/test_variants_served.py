"""FP16 and INT8 ONNX variants, built from one spec, load and answer in the real server as
their files do in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builder.quantize import run_onnx
from clients import TritonClient
from tests.conftest import linear_model
from tests.integration.conftest import build_entries, make_server

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_fp16_and_int8_variants_are_served(tmp_path: Path) -> None:
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    entry = linear_model(
        calibration={"data": "calibration.npy", "samples": 16, "holdout": 24},
        variants=[{"name": "linear_fp16", "precision": "fp16"}, {"name": "linear_int8", "precision": "int8"}],
    )
    repo = build_entries(tmp_path, entry)
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:
        x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
        with TritonClient(server.grpc_url) as client:
            answers = {name: client.infer(name, {"x": x})["y"] for name in ("linear", "linear_fp16", "linear_int8")}
    finally:
        server.stop()
    for name, answer in answers.items():
        (local,) = run_onnx(repo / name / "1" / "model.onnx", [{"x": x}])
        np.testing.assert_allclose(answer, local["y"], atol=1e-6)
    assert not np.array_equal(answers["linear_int8"], answers["linear"])
    np.testing.assert_allclose(answers["linear_fp16"], answers["linear"], atol=1e-2)

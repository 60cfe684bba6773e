"""FP16 and INT8 ONNX variants, built from one spec, load and answer in the real server as
their files do in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from builder.variants.onnx_int8_fp16 import run_onnx
from clients import TritonClient
from tests.conftest import ensemble_model, linear_model
from tests.integration.conftest import build_entries, input_bytes, make_server

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_fp16_and_int8_variants_are_served(tmp_path: Path) -> None:
    """...and an ensemble variant runs the INT8 one in its step, while one for the gpu target
    only, or running a model this build skipped, is left out."""
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    entry = linear_model(
        calibration={"data": "calibration.npy", "samples": 16, "holdout": 24},
        variants=[
            {"name": "linear_fp16", "precision": "fp16"},
            {"name": "linear_int8", "precision": "int8"},
            {"name": "linear_fp16_gpu", "precision": "fp16", "targets": ["gpu"]},
        ],
    )
    pipeline = ensemble_model("pipeline", [("linear", {"x": "x"}, {"y": "y"})], entry["inputs"], entry["outputs"])
    pipeline["variants"] = [
        {"name": "pipeline_int8", "models": {"linear": "linear_int8"}},
        {"name": "pipeline_on_gpus", "models": {"linear": "linear_fp16"}, "targets": ["gpu"]},
        {"name": "pipeline_fp16_gpu", "models": {"linear": "linear_fp16_gpu"}},
    ]
    repo = build_entries(tmp_path, entry, pipeline)
    assert not (repo / "pipeline_on_gpus").exists() and not (repo / "pipeline_fp16_gpu").exists()
    served = ("linear", "linear_fp16", "linear_int8", "pipeline", "pipeline_int8")
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:
        x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
        with TritonClient(server.grpc_url) as client:
            answers = {name: client.infer(name, {"x": x})["y"] for name in served}
    finally:
        server.stop()
    for name in served[:3]:
        (local,) = run_onnx(repo / name / "1" / "model.onnx", [{"x": x}])
        np.testing.assert_allclose(answers[name], local["y"], atol=1e-6)
    assert not np.array_equal(answers["linear_int8"], answers["linear"])
    np.testing.assert_allclose(answers["linear_fp16"], answers["linear"], atol=1e-2)
    np.testing.assert_array_equal(answers["pipeline"], answers["linear"])
    np.testing.assert_array_equal(answers["pipeline_int8"], answers["linear_int8"])


def test_compiled_variants_are_served_in_both_artifacts(tmp_path: Path) -> None:
    """An AOTInductor package, and the exported program warm-started from Inductor's cache
    artifacts (what a torch that cannot load packages gets), each served as PyTorch computes."""
    from tests.tiny_models import linear

    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    entry = linear_model(
        calibration={"data": "calibration.npy", "samples": 16, "holdout": 24},
        variants=[
            {"name": "linear_aoti", "format": "torch_compiled", "precision": "fp32"},
            {
                "name": "linear_cached",
                "format": "torch_compiled",
                "precision": "fp32",
                "compile": {"artifact": "inductor_cache"},
            },
        ],
    )
    repo = build_entries(tmp_path, entry)
    server = make_server(repo, tmp_path)
    server.start(timeout_s=300)
    try:
        x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
        with TritonClient(server.grpc_url) as client:
            answers = {name: client.infer(name, {"x": x})["y"] for name in ("linear_aoti", "linear_cached")}
            client.infer("linear_aoti", {"x": x[:2]})
        log = (tmp_path / "triton.log").read_text()
        arrived = input_bytes(server)
    finally:
        server.stop()
    with torch.inference_mode():
        expected = linear()(torch.from_numpy(x)).numpy()
    for answer in answers.values():
        np.testing.assert_allclose(answer, expected, atol=1e-6)
    # Where the inputs arrived, in bytes: here on the host (5 and 2 rows of 4 FP32 values).
    assert arrived == {
        ("linear_aoti", "cpu"): 7 * 4 * 4,
        ("linear_aoti", "gpu"): 0,
        ("linear_cached", "cpu"): 5 * 4 * 4,
        ("linear_cached", "gpu"): 0,
    }
    assert "instance linear_aoti_0_0: AOTInductor package on cpu" in log
    assert "instance linear_cached_0_0: compiled from Inductor's cache artifacts on cpu" in log

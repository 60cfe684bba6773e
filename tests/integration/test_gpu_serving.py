"""On a GPU host: the example repository built for the gpu target serves its ONNX models on the
GPU through Triton's C++ onnxruntime backend (CUDA build), and answers as PyTorch does within the spec's
tolerances (FP32), or as the variant's own file does on the GPU (FP16).

Skipped, with the reason, where ONNX Runtime has no CUDA provider or nvidia-smi lists no GPU.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from builder.export.source import instantiate
from builder.export.verify import run_torch
from builder.pipeline import build_repository
from builder.spec import OnnxModelSpec, load_spec
from builder.targets import detect_target
from builder.variants.onnx_int8_fp16 import run_onnx
from clients import TritonClient
from server import EmbeddedTriton
from tests.conftest import ROOT
from tests.integration.conftest import make_server

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers() and detect_target()[0] == "gpu"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU and onnxruntime-gpu (make venv on a GPU host)"),
]


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples built for the gpu target; KIT_GPU_REPOSITORY names one `make build-repo` built
    already (the compiled variants take minutes to build)."""
    given = os.environ.get("KIT_GPU_REPOSITORY")
    if given:
        assert "KIND_GPU" in (Path(given) / "image_classifier" / "config.pbtxt").read_text(), given
        return Path(given)
    repo = tmp_path_factory.mktemp("gpu") / "model_repository"
    build_repository(ROOT / "models.yaml", repo, target="gpu", log=print)
    return repo


@pytest.fixture(scope="module")
def gpu_server(gpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    server = make_server(gpu_repository, tmp_path_factory.mktemp("gpu-triton"))
    server.log_verbose = 1  # the backend names its execution provider at verbose level
    server.start(timeout_s=600)
    try:
        yield server
    finally:
        server.stop()


def inputs_for(model: OnnxModelSpec, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    if model.name == "image_classifier":
        return {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    return {
        "input_ids": rng.integers(0, 8192, (batch, 32), dtype=np.int64),
        "attention_mask": np.ones((batch, 32), dtype=np.int64),
    }


@pytest.mark.parametrize("name", ["image_classifier", "text_encoder"])
def test_gpu_instances_run_on_the_cuda_provider(gpu_server: EmbeddedTriton, name: str) -> None:
    log = gpu_server.log_tail(lines=1_000_000)
    assert re.search(r"\| onnxruntime \| \S+/onnxruntime/libtriton_onnxruntime\.so \|", log), log[-3000:]
    assert re.search(rf"TRITONBACKEND_ModelInstanceInitialize: {name}_\d+_\d+ \(GPU device 0\)", log)
    assert f"CUDA Execution Accelerator is set for '{name}' on device 0" in log


@pytest.mark.parametrize("name", ["image_classifier", "text_encoder"])
def test_served_on_the_gpu_matches_pytorch_within_the_spec_tolerances(gpu_server: EmbeddedTriton, name: str) -> None:
    model = load_spec(ROOT / "models.yaml").model(name)
    assert isinstance(model, OnnxModelSpec)
    feed = inputs_for(model, 8)
    with TritonClient(gpu_server.grpc_url) as client:
        served = client.infer(name, feed)
    (expected,) = run_torch(instantiate(model, model.versions[0]), model, [feed])
    for output in model.outputs:
        np.testing.assert_allclose(served[output.name], expected[output.name], atol=output.atol, rtol=output.rtol)


@pytest.mark.parametrize("name", ["image_classifier_fp16", "text_encoder_fp16"])
def test_fp16_variants_serve_on_the_gpu_as_their_file_runs_there(
    gpu_server: EmbeddedTriton, gpu_repository: Path, name: str
) -> None:
    base = load_spec(ROOT / "models.yaml").model(name.removesuffix("_fp16"))
    assert isinstance(base, OnnxModelSpec)
    feed = inputs_for(base, 4)
    with TritonClient(gpu_server.grpc_url) as client:
        served = client.infer(name, feed)
    (local,) = run_onnx(gpu_repository / name / "1" / "model.onnx", [feed], device="cuda")
    for output in base.outputs:
        np.testing.assert_allclose(served[output.name], local[output.name], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["image_classifier_compiled_fp16", "text_encoder_compiled_fp16"])
def test_compiled_variants_serve_on_the_gpu_within_their_gate(
    gpu_server: EmbeddedTriton, gpu_repository: Path, name: str
) -> None:
    if not (gpu_repository / name).is_dir():
        pytest.skip(f"{name} was not built here (optional; the build's summary says why)")
    base = load_spec(ROOT / "models.yaml").model(name.removesuffix("_compiled_fp16"))
    assert isinstance(base, OnnxModelSpec)
    feed = inputs_for(base, 8)
    with TritonClient(gpu_server.grpc_url) as client:
        served = client.infer(name, feed)
    (expected,) = run_torch(instantiate(base, base.versions[0]), base, [feed])
    for output in base.outputs:
        a, b = served[output.name].ravel(), expected[output.name].ravel()
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99
    record = json.loads((gpu_repository / name / "1" / "build.json").read_text())
    assert record["compiled"]["device"] == "cuda" and record["accuracy"]["device"] == "cuda"
    # The classifier's dims are all fixed: one padded shape, replayed as a CUDA graph. The encoder's
    # sequence length varies, so it runs without graphs.
    graphs = not any(t.dynamic_axes for t in base.inputs)
    assert record["compiled"]["pad_batch"] == (base.max_batch_size if graphs else None)
    assert record["compiled"]["mode"] == ("reduce-overhead" if graphs else None)
    form = "AOTInductor package" if record["compiled"]["artifact"] == "aoti" else "compiled from Inductor's cache"
    assert re.search(rf"model '{name}' instance \S+: {form}[^\n]* on cuda:0", gpu_server.log_tail(lines=100_000))

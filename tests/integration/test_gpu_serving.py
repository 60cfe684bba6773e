"""On a GPU host: the example repository built for the gpu target serves its ONNX models on the
GPU through Triton's C++ onnxruntime backend (CUDA build), and answers as PyTorch does within the spec's
tolerances (FP32), or as the variant's own file does on the GPU (FP16); its image pipeline decodes
(nvJPEG) and preprocesses on the GPU and ranks as the CPU pipeline does.

Skipped, with the reason, where ONNX Runtime has no CUDA provider or nvidia-smi lists no GPU.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from clients import InvalidInput, TritonClient
from models.calibration import jpeg, scene
from models.image_pipeline import STD, GpuImagePreprocess, ImagePreprocess
from server import EmbeddedTriton
from server.installation import find_installation
from tests.conftest import ROOT
from tests.integration.conftest import input_bytes, make_server

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


# --- the image pipeline on the GPU (image_preprocess's `gpu` class) --------------------------------


def photos(count: int, seed: int) -> list[bytes]:
    """500x375 photo-like JPEGs, as bench/pipeline.py sends."""
    rng = np.random.default_rng(seed)
    return [jpeg(rng, 500, 375) for _ in range(count)]


def cpu_pipeline_top1(repo: Path, images: list[bytes]) -> list[str]:
    """The first label of each image through the cpu target's preprocessing and the served model's
    file on the CUDA provider, so only the preprocessing differs from the served pipeline."""
    pixels = ImagePreprocess()({"image_bytes": np.array(images, dtype=object).reshape(-1, 1)})["image"]
    batches = [{"image": pixels[i : i + 16]} for i in range(0, len(pixels), 16)]  # the graph's padded batch
    outputs = run_onnx(repo / "image_classifier" / "1" / "model.onnx", batches, device="cuda")
    names = (repo / "image_postprocess" / "1" / "files" / "labels.txt").read_text().splitlines()
    return [names[i] for output in outputs for i in output["logits"].argmax(1)]


def test_nvjpeg_and_the_gpu_resize_match_the_cpu_path_within_a_level() -> None:
    images = photos(64, seed=3)
    encoded = {"image_bytes": np.array(images, dtype=object).reshape(-1, 1)}
    on_gpu = GpuImagePreprocess(device="cuda:0")(encoded)["image"]
    assert on_gpu.is_cuda
    levels = np.abs(on_gpu.cpu().numpy() - ImagePreprocess()(encoded)["image"]) * (STD * 255).reshape(3, 1, 1)
    share = {n: float((levels > n + 0.01).mean()) for n in (1, 4, 16)}
    print(
        f"nvJPEG + GPU resize vs Pillow, 64 500x375 JPEGs: mean {levels.mean():.3f} levels, max {levels.max():.1f}, share over 1/4/16 levels {share}"
    )
    # The decoders upsample chroma differently: a few values on sharp colour edges move further.
    assert levels.mean() < 0.5 and share[4] < 0.01


def test_the_gpu_pipeline_ranks_as_the_cpu_pipeline(gpu_server: EmbeddedTriton, gpu_repository: Path) -> None:
    assert "KIND_GPU" in (gpu_repository / "image_preprocess" / "config.pbtxt").read_text()
    images = photos(64, seed=4)
    with TritonClient(gpu_server.grpc_url) as client:
        served = [
            client.infer("image_classification", {"image_bytes": np.array([[image]], dtype=object)}) for image in images
        ]
    answered = [result["labels"][0, 0].decode() for result in served]
    expected = cpu_pipeline_top1(gpu_repository, images)
    agreement = sum(a == b for a, b in zip(answered, expected, strict=True)) / len(images)
    print(f"served GPU pipeline vs CPU preprocessing, top-1 agreement on 64 JPEGs: {agreement:.3f}")
    assert agreement >= 63 / 64


def test_a_bad_file_in_a_gpu_batch_fails_alone_with_the_cpu_paths_error(gpu_server: EmbeddedTriton) -> None:
    good = photos(3, seed=5)
    png, cmyk = io.BytesIO(), io.BytesIO()
    scene(np.random.default_rng(6), 320, 240).save(png, "PNG")
    scene(np.random.default_rng(7), 320, 240).convert("CMYK").save(cmyk, "JPEG")  # nvJPEG's fallback: Pillow
    truncated = good[0][: len(good[0]) // 2]
    items = [*good, png.getvalue(), cmyk.getvalue(), truncated]
    with pytest.raises(ValueError) as expected_error:
        ImagePreprocess().decode(truncated)

    def call(image: bytes) -> object:
        with TritonClient(gpu_server.grpc_url) as client:
            try:
                return client.infer("image_classification", {"image_bytes": np.array([[image]], dtype=object)})
            except InvalidInput as error:
                return error

    with ThreadPoolExecutor(max_workers=len(items)) as pool:  # together, so the batcher forms one batch
        results = list(pool.map(call, items))
    assert isinstance(results[-1], InvalidInput) and str(expected_error.value) in str(results[-1])
    with TritonClient(gpu_server.grpc_url) as client:
        alone = [
            client.infer("image_classification", {"image_bytes": np.array([[i]], dtype=object)}) for i in items[:-1]
        ]
    for together, by_itself in zip(results[:-1], alone, strict=True):
        assert isinstance(together, dict)
        assert together["labels"][0, 0] == by_itself["labels"][0, 0]


# --- whole pipelines through each classifier build, hundreds of requests in flight ----------------

PIPELINES = ("image_classification", "image_classification_fp16", "image_classification_compiled_fp16")


@pytest.mark.parametrize("name", PIPELINES)
def test_each_pipeline_ranks_as_the_cpu_pipeline_with_hundreds_of_images_in_flight(
    gpu_server: EmbeddedTriton, gpu_repository: Path, name: str
) -> None:
    """256 concurrent requests keep ~154 MB of preprocessed images between the steps, past
    Triton's default CUDA pool (64 MB): without the kit's larger pool, GPU outputs would fall back
    to pinned host memory, which the Python backend of Triton 2.51 fills wrongly (cuda_pool_flags)."""
    if not (gpu_repository / name).is_dir():
        pytest.skip(f"{name} was not built here (it runs an optional variant; the build's summary says why)")
    assert any(flag.startswith("--cuda-memory-pool-byte-size=0:") for flag in gpu_server.command(find_installation()))
    images = photos(256, seed=8)

    def top1(image: bytes) -> str:
        with TritonClient(gpu_server.grpc_url) as client:
            result = client.infer(name, {"image_bytes": np.array([[image]], dtype=object)})
        return str(result["labels"][0, 0].decode())

    before = input_bytes(gpu_server)
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answered = list(pool.map(top1, images))
    after = input_bytes(gpu_server)
    expected = cpu_pipeline_top1(gpu_repository, images)
    agreement = sum(a == b for a, b in zip(answered, expected, strict=True)) / len(images)
    print(f"{name}, 256 in flight: top-1 agreement with the CPU pipeline {agreement:.3f}")
    assert agreement >= 0.98  # FP16's own gate is 0.99 against FP32, and the decoders differ slightly
    log = gpu_server.log_tail(lines=100_000)
    assert "failed to copy data" not in log and "falling back to pinned system memory" not in log
    # No copy to the host between the steps: the classifier's logits reached the postprocess in
    # GPU memory, and a compiled classifier got the preprocess's images there.
    arrived = {key: after[key] - before.get(key, 0.0) for key in after}
    receivers = {"image_postprocess": 1000 * 4}
    if "compiled" in name:
        receivers[name.replace("image_classification", "image_classifier")] = 3 * 224 * 224 * 4
    for model, per_image in receivers.items():
        print(f"{model} input bytes: gpu {arrived[(model, 'gpu')]:.0f}, cpu {arrived[(model, 'cpu')]:.0f}")
        assert (arrived[(model, "gpu")], arrived[(model, "cpu")]) == (len(images) * per_image, 0)

"""The example repository served by a real Triton server answers as PyTorch does, and batches."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.export.verify import run_torch
from builder.spec import OnnxModelSpec, load_spec
from builder.variants.accuracy import compare, gate_failures
from builder.variants.batches import batched
from builder.variants.calibration import load_calibration
from builder.variants.onnx_int8_fp16 import run_onnx
from clients import InferenceFailed, InvalidInput, ModelNotReady, ServerUnavailable, TritonClient
from models import image_classifier, text_encoder
from server import EmbeddedTriton
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

SPEC = load_spec(ROOT / "models.yaml")


def client_for(triton: EmbeddedTriton, protocol: str) -> TritonClient:
    return TritonClient(triton.grpc_url if protocol == "grpc" else triton.http_url, protocol=protocol)  # type: ignore[arg-type]


def assert_close(model: str, output: str, actual: np.ndarray, expected: np.ndarray) -> None:
    spec = next(o for o in SPEC.model(model).outputs if o.name == output)
    np.testing.assert_allclose(actual, expected, atol=spec.atol, rtol=spec.rtol)


def token_batch(rng: np.random.Generator, lengths: list[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, text_encoder.VOCAB_SIZE, size=(len(lengths), width), dtype=np.int64)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask


# The ONNX model over both protocols, and its AOTInductor-compiled variant (served by the
# runtime copied into its version directory) over gRPC.
SERVED = [("onnx", "grpc"), ("onnx", "http"), ("compiled", "grpc")]


@pytest.mark.parametrize(("served", "protocol"), SERVED)
def test_image_classifier_equals_pytorch(triton: EmbeddedTriton, served: str, protocol: str) -> None:
    model = "image_classifier" + ("_compiled" if served == "compiled" else "")
    images = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with client_for(triton, protocol) as client:
        logits = client.infer(model, {"image": images})["logits"]
    with torch.inference_mode():
        expected = image_classifier.build()(torch.from_numpy(images)).numpy()
    assert logits.shape == (3, 1000)
    assert_close("image_classifier", "logits", logits, expected)


@pytest.mark.parametrize(("served", "protocol"), SERVED)
def test_text_encoder_equals_pytorch(triton: EmbeddedTriton, served: str, protocol: str) -> None:
    model = "text_encoder" + ("_compiled" if served == "compiled" else "")
    ids, mask = token_batch(np.random.default_rng(2), [3, 17, 40], width=40)
    with client_for(triton, protocol) as client:
        embedding = client.infer(model, {"input_ids": ids, "attention_mask": mask})["embedding"]
    with torch.inference_mode():
        expected = text_encoder.build()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert embedding.shape == (3, text_encoder.EMBEDDING_SIZE)
    assert_close("text_encoder", "embedding", embedding, expected)


def test_int8_classifier_is_served_and_passes_its_gate(triton: EmbeddedTriton, example_repository: Path) -> None:
    model = SPEC.model("image_classifier")
    assert isinstance(model, OnnxModelSpec)
    holdout = [{"image": batch["image"]} for batch in batched(load_calibration(SPEC, model).holdout, 16)]
    with client_for(triton, "grpc") as client:
        served = [client.infer("image_classifier_int8", feed) for feed in holdout]
        fp32 = client.infer("image_classifier", holdout[0])["logits"]
    in_process = run_onnx(example_repository / "image_classifier_int8" / "1" / "model.onnx", holdout)
    for answer, local in zip(served, in_process, strict=True):
        np.testing.assert_allclose(answer["logits"], local["logits"], atol=1e-5)  # the server runs the INT8 file
    assert np.abs(served[0]["logits"] - fp32).max() > 1e-4  # and it is not the FP32 model
    reference = run_torch(image_classifier.build(), model, holdout)
    figures = compare(model, reference, served)
    assert gate_failures(model.variant("image_classifier_int8").gate, figures) == []
    recorded = json.loads((example_repository / "image_classifier_int8" / "1" / "build.json").read_text())
    assert figures["logits"].top1_agreement == recorded["accuracy"]["outputs"]["logits"]["top1_agreement"]


def test_concurrent_requests_are_batched(triton: EmbeddedTriton, record_property: pytest.RecordProperty) -> None:
    requests = 96
    rng = np.random.default_rng(3)
    inputs = [token_batch(rng, [16], width=16) for _ in range(requests)]
    encoder = text_encoder.build()

    def call(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        with TritonClient(triton.grpc_url) as client:
            return client.infer("text_encoder", {"input_ids": pair[0], "attention_mask": pair[1]})["embedding"]

    with TritonClient(triton.grpc_url) as client:
        before = client.statistics("text_encoder")["model_stats"][0]
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(call, inputs))
        # The server counts a request after sending its response: wait for the count, not a fixed time.
        deadline = time.monotonic() + 30
        while True:
            after = client.statistics("text_encoder")["model_stats"][0]
            counted = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
            if counted >= requests or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    record_property("inference_count", inferences)
    record_property("execution_count", executions)
    print(f"\ndynamic batching: {inferences} inferences in {executions} executions")
    assert inferences == requests
    assert executions < inferences  # several requests ran as one batch
    with torch.inference_mode():
        for (ids, mask), result in zip(inputs, results, strict=True):
            assert_close(
                "text_encoder", "embedding", result, encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            )


def test_requests_of_different_lengths_sent_together_each_get_their_own_answer(triton: EmbeddedTriton) -> None:
    rng = np.random.default_rng(4)
    inputs = [token_batch(rng, [n], width=n) for n in (5, 9, 17, 33, 5, 9, 17, 33)]

    def call(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        with TritonClient(triton.grpc_url) as client:
            return client.infer("text_encoder", {"input_ids": pair[0], "attention_mask": pair[1]})["embedding"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, inputs))
    encoder = text_encoder.build()
    with torch.inference_mode():
        for (ids, mask), result in zip(inputs, results, strict=True):
            assert_close(
                "text_encoder", "embedding", result, encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_wrong_shape_is_rejected_by_the_server_as_invalid_input(triton: EmbeddedTriton, protocol: str) -> None:
    with client_for(triton, protocol) as client, pytest.raises(InvalidInput, match="image_classifier"):
        client.infer("image_classifier", {"image": np.zeros((1, 3, 224, 225), dtype=np.float32)})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_unknown_model_is_not_ready(triton: EmbeddedTriton, protocol: str) -> None:
    with client_for(triton, protocol) as client:
        assert client.is_ready() and client.is_ready("text_encoder") and not client.is_ready("nope")
        with pytest.raises(ModelNotReady, match="'nope'"):
            client.infer("nope", {"x": np.zeros((1, 4), dtype=np.float32)})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_nothing_listening_is_unavailable_not_a_timeout(protocol: str) -> None:
    with TritonClient(f"127.0.0.1:{free_port()}", protocol=protocol, timeout_s=5) as client:  # type: ignore[arg-type]
        with pytest.raises(ServerUnavailable):
            client.infer("image_classifier", {"image": np.zeros((1, 3, 224, 224), dtype=np.float32)})
        with pytest.raises(ServerUnavailable, match="was not ready within 1s"):
            client.wait_until_ready(timeout_s=1)


def test_the_classifier_labels_file_serves_the_classification_extension(triton: EmbeddedTriton) -> None:
    # Triton reads logits' label_filename and answers class_count requests with "score:index:label".
    import tritonclient.grpc as grpcclient

    image = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    tensor = grpcclient.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        result = client.infer(
            "image_classifier", [tensor], outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)]
        )
    finally:
        client.close()
    top = [entry.decode().split(":") for entry in result.as_numpy("logits")[0]]
    with torch.inference_mode():
        logits = image_classifier.build()(torch.from_numpy(image)).numpy()[0]
    assert [int(index) for _, index, _ in top] == list(np.argsort(-logits)[:3])
    assert [label for _, _, label in top] == [f"class_{i:04d}" for i in np.argsort(-logits)[:3]]


def test_the_dashboard_and_autoscaler_metrics_are_exported(triton: EmbeddedTriton) -> None:
    # The Grafana dashboard and the HPA's adapter rule query these; a renamed metric would leave
    # them silently empty. GPU metrics need a GPU, so they are left out here.
    import json
    import re
    import urllib.request

    import yaml

    from tests.conftest import ROOT

    with TritonClient(triton.grpc_url) as client:
        client.infer(
            "text_encoder", {"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((1, 4), np.int64)}
        )
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        exported = set(re.findall(r"^((?:nv|kit)_[a-z_]+)", response.read().decode(), flags=re.MULTILINE))
    dashboard = json.loads((ROOT / "deploy/monitoring/grafana/dashboards/triton.json").read_text())
    rules = (ROOT / "deploy/kubernetes/prometheus-adapter-rules.yaml").read_text()
    queried = set(
        re.findall(
            r"(?:nv|kit)_[a-z_]+", " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"]) + rules
        )
    )
    assert yaml.safe_load(rules)["rules"]["custom"] and len(queried) >= 8
    assert {m for m in queried if not m.startswith("nv_gpu")} <= exported


def test_onnx_models_are_served_by_tritons_own_onnxruntime_backend(triton: EmbeddedTriton) -> None:
    log = triton.log_tail(lines=1_000_000)
    assert re.search(r"\| onnxruntime \| \S+/onnxruntime/libtriton_onnxruntime\.so \|", log), log[-3000:]
    for model in ("image_classifier", "text_encoder", "text_encoder_int8"):
        assert f"TRITONBACKEND_ModelInitialize: {model} (version 1)" in log
    assert not list((triton.backend_dir / "onnxruntime").glob("*.py")), "no Python imitation beside it"


def test_what_only_onnx_runtime_finds_fails_that_request_and_the_model_serves_on(triton: EmbeddedTriton) -> None:
    """As in the NGC container: past the spec's shape_range, or ids and mask of different lengths,
    Triton's core sees nothing wrong (the dims are -1), and ONNX Runtime's error is the answer."""
    rng = np.random.default_rng(5)
    too_long = token_batch(rng, [200], width=200)
    ids, mask = token_batch(rng, [12], width=12)
    with TritonClient(triton.grpc_url, retries=0) as client:
        with pytest.raises(InferenceFailed) as long_error:
            client.infer("text_encoder", {"input_ids": too_long[0], "attention_mask": too_long[1]})
        with pytest.raises(InferenceFailed) as mismatch_error:
            client.infer("text_encoder", {"input_ids": ids, "attention_mask": np.ones((1, 14), np.int64)})
        good = client.infer("text_encoder", {"input_ids": ids, "attention_mask": mask})["embedding"]
    assert "onnx runtime error" in str(long_error.value) and "128 by 200" in str(long_error.value)
    assert "onnx runtime error" in str(mismatch_error.value) and "12 by 14" in str(mismatch_error.value)
    with torch.inference_mode():
        expected = text_encoder.build()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert_close("text_encoder", "embedding", good, expected)


def test_requests_past_the_shape_range_never_share_a_batch_with_good_ones(triton: EmbeddedTriton) -> None:
    """Triton batches only requests of equal shapes, so an over-long sequence (or ids and mask of
    different lengths) fails alone however many good requests arrive with it."""
    rng = np.random.default_rng(6)
    good = [token_batch(rng, [16], width=16) for _ in range(64)]
    bad = [token_batch(rng, [200], width=200) for _ in range(16)] + [
        (ids, np.ones((1, 17), np.int64)) for ids, _ in good[:16]
    ]
    work = [("good", pair) for pair in good] + [("bad", pair) for pair in bad]
    order = np.random.default_rng(7).permutation(len(work))

    def call(item: tuple[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray | Exception:
        with TritonClient(triton.grpc_url, retries=0) as client:
            try:
                return client.infer("text_encoder", {"input_ids": item[1][0], "attention_mask": item[1][1]})[
                    "embedding"
                ]
            except InferenceFailed as exc:
                return exc

    with TritonClient(triton.grpc_url) as client:
        before = client.statistics("text_encoder")["model_stats"][0]
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = dict(zip(order, pool.map(call, [work[i] for i in order]), strict=True))
        after = client.statistics("text_encoder")["model_stats"][0]
    failed_good = [i for i, (kind, _) in enumerate(work) if kind == "good" and isinstance(results[i], Exception)]
    assert failed_good == [], [results[i] for i in failed_good[:3]]
    assert all(isinstance(results[i], InferenceFailed) for i, (kind, _) in enumerate(work) if kind == "bad")
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert executions < len(work), "requests were batched, good ones together"
    encoder = text_encoder.build()
    with torch.inference_mode():
        for i, (ids, mask) in enumerate(good):
            expected = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            assert_close("text_encoder", "embedding", results[i], expected)


def test_a_client_given_the_input_limits_keeps_what_would_fail_a_batch_from_the_server(
    triton: EmbeddedTriton, example_repository: Path
) -> None:
    """A token id beyond the vocabulary has the shape of good requests and would fail the whole
    batch it joins; a client reading the repository's input_limits.json never sends it."""
    rng = np.random.default_rng(8)
    ids, mask = token_batch(rng, [16], width=16)
    poisoned = ids.copy()
    poisoned[0, 3] = 10**9
    with TritonClient(triton.grpc_url, retries=0, limits=example_repository) as client:
        before = client.statistics("text_encoder")["model_stats"][0]["inference_stats"]["fail"]
        with pytest.raises(
            InvalidInput, match=r"'input_ids' holds 1000000000, outside the model's value_range \[0, 8192\)"
        ):
            client.infer("text_encoder", {"input_ids": poisoned, "attention_mask": mask})
        with pytest.raises(InvalidInput, match=r"'input_ids' dims \[200\] .* allowed 1\.\.128"):
            client.infer("text_encoder_int8", {"input_ids": np.zeros((1, 200), np.int64), "attention_mask": mask})
        good = client.infer("text_encoder", {"input_ids": ids, "attention_mask": mask})["embedding"]
        after = client.statistics("text_encoder")["model_stats"][0]["inference_stats"]["fail"]
    assert after == before, "nothing refused by the client reached the server"
    with TritonClient(triton.grpc_url, retries=0) as client, pytest.raises(InferenceFailed, match="onnx runtime error"):
        client.infer("text_encoder", {"input_ids": poisoned, "attention_mask": mask})  # what it would have got
    with torch.inference_mode():
        expected = text_encoder.build()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert_close("text_encoder", "embedding", good, expected)


def test_a_compiled_variant_refuses_token_ids_it_would_index_out_of_bounds_with_and_serves_on(
    triton: EmbeddedTriton,
) -> None:
    """A compiled kernel indexing past its embedding aborts the stub process. The runtime checks
    the spec's value_range first: the bad request alone gets INVALID_ARGUMENT, every time, and the
    good requests batched with it their answers."""
    rng = np.random.default_rng(9)
    good = [token_batch(rng, [16], width=16) for _ in range(24)]
    bad = []
    for value in (10**9, -5, 8192):
        ids = good[0][0].copy()
        ids[0, 5] = value
        bad.append((ids, good[0][1]))

    def call(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray | Exception:
        with TritonClient(triton.grpc_url, retries=0) as client:
            try:
                inputs = {"input_ids": pair[0], "attention_mask": pair[1]}
                return client.infer("text_encoder_compiled", inputs, validate=False)["embedding"]
            except (InvalidInput, InferenceFailed, ServerUnavailable) as exc:
                return exc

    for _ in range(2):  # a crash would show on the second round at the latest: its instance is gone
        work = good + bad
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(call, work))
        for value, result in zip((10**9, -5, 8192), results[len(good) :], strict=True):
            assert isinstance(result, InvalidInput), result
            assert f"input 'input_ids' holds {value}, outside the model's value_range [0, 8192)" in str(result)
        failed = [r for r in results[: len(good)] if isinstance(r, Exception)]
        assert failed == []
    encoder = text_encoder.build()
    with torch.inference_mode():
        for (ids, mask), result in zip(good, results[: len(good)], strict=True):
            expected = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            assert_close("text_encoder", "embedding", result, expected)

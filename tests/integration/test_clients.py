"""The clients against a real server: validation before sending, deadlines, retries, shared memory,
the asyncio client, the command line and the example service."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from clients import (
    AsyncTritonClient,
    GrpcChannelOptions,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    RetryPolicy,
    ServerUnavailable,
    TritonClient,
)
from clients.examples import service
from clients.shm import REGION_PREFIX
from server import EmbeddedTriton
from tests.conftest import ROOT, free_port
from tests.integration.conftest import make_server

pytestmark = [pytest.mark.server, pytest.mark.slow]  # the session server exports the example models

PROTOCOLS = ["grpc", "http"]
IMAGES = np.random.default_rng(7).standard_normal((4, 3, 224, 224)).astype(np.float32)


def url_of(server: EmbeddedTriton, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def client_for(server: EmbeddedTriton, protocol: str, **options: Any) -> TritonClient:
    return TritonClient(url_of(server, protocol), protocol=protocol, **options)  # type: ignore[arg-type]


def inference_count(client: TritonClient, model: str) -> int:
    return int(client.statistics(model)["model_stats"][0].get("inference_count", 0))


def server_regions(server: EmbeddedTriton) -> list[str]:
    """The kit's shared memory regions the server has registered (asked without the kit's client)."""
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        status = raw.get_system_shared_memory_status(as_json=True)
    finally:
        raw.close()
    return [name for name in status.get("regions", {}) if name.startswith(REGION_PREFIX)]


def local_regions() -> set[str]:
    return {path.name for path in Path("/dev/shm").iterdir() if path.name.startswith(REGION_PREFIX)}


@pytest.fixture(scope="module")
def tiny_triton(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    server = make_server(tiny_repository, tmp_path_factory.mktemp("tiny_triton"))
    server.start(timeout_s=120)
    try:
        yield server
    finally:
        server.stop()


BAD_INPUTS = [
    ("image_classifier", {"image": np.zeros((1, 3, 224, 225), np.float32)}, None,
     "model 'image_classifier' input 'image': expected shape [-1, 3, 224, 224] (FP32), got [1, 3, 224, 225]"),
    ("image_classifier", {"image": np.zeros((3, 224, 224), np.float32)}, None,
     "model 'image_classifier' input 'image': expected shape [-1, 3, 224, 224] (FP32), got [3, 224, 224]"),
    ("image_classifier", {"image": np.zeros((1, 3, 224, 224))}, None,
     "model 'image_classifier' input 'image': expected dtype FP32, got FP64 (numpy float64)"),
    ("image_classifier", {"img": IMAGES}, None, "model 'image_classifier' has no input 'img'; its inputs are: image"),
    ("image_classifier", {"image": np.zeros((17, 3, 224, 224), np.float32)}, None,
     "model 'image_classifier' input 'image': batch of 17 exceeds max_batch_size 16"),
    ("image_classifier", {"image": IMAGES}, ["probabilities"],
     "model 'image_classifier' has no output 'probabilities'; its outputs are: logits"),
    ("text_encoder", {"input_ids": np.ones((1, 5), np.int64)}, None,
     "model 'text_encoder' input 'attention_mask' is required but missing"),
    ("text_encoder", {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((1, 5), np.int64)}, None,
     "model 'text_encoder': inputs disagree on the batch size"),
    ("text_embedding", {"text": np.ones((1, 1), np.float32)}, None,
     "model 'text_embedding' input 'text': expected dtype BYTES, got FP32"),
]  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_that_do_not_fit_the_model_are_rejected_before_sending(triton: EmbeddedTriton, protocol: str) -> None:
    with client_for(triton, protocol) as client:
        before = {model: inference_count(client, model) for model in ("image_classifier", "text_encoder")}
        for model, inputs, outputs, message in BAD_INPUTS:
            with pytest.raises(InvalidInput) as caught:
                client.infer(model, inputs, outputs)
            assert str(caught.value).startswith(message)
        assert {model: inference_count(client, model) for model in before} == before
        # Unvalidated, the same request does reach the server, which words its refusal differently.
        with pytest.raises(InvalidInput, match="unexpected shape for input 'image'"):
            client.infer("image_classifier", {"image": np.zeros((1, 3, 224, 225), np.float32)}, validate=False)
        # The metadata behind the checks is fetched once per model and kept.
        assert client.signature("image_classifier") is client.signature("image_classifier")
        assert (
            client.signature("image_classifier").max_batch_size == client.config("image_classifier")["max_batch_size"]
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_and_admin_calls_answer_plain_dicts(triton: EmbeddedTriton, protocol: str) -> None:
    with client_for(triton, protocol) as client:
        assert client.is_live() and client.is_ready() and client.is_ready("image_classifier")
        assert not client.is_ready("nope")
        index = {entry["name"]: entry for entry in client.models()}
        assert index["image_classification"]["state"] == "READY" and index["text_encoder"]["version"] == "1"
        metadata = client.metadata("text_encoder")
        assert [i["name"] for i in metadata["inputs"]] == ["input_ids", "attention_mask"]
        assert client.config("image_classification")["max_batch_size"] == 16  # unwrapped for both protocols
        assert client.statistics("text_encoder")["model_stats"][0]["name"] == "text_encoder"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_deadline_too_short_is_an_inference_timeout_and_the_client_recovers(
    triton: EmbeddedTriton, protocol: str
) -> None:
    batch = np.zeros((16, 3, 224, 224), np.float32)
    with client_for(triton, protocol) as client:
        with pytest.raises(InferenceTimeout, match=r"model 'image_classifier': no answer within 1e-06s") as caught:
            client.infer("image_classifier", {"image": batch}, timeout_s=0.000001)
        assert "attempts" not in str(caught.value)  # a timeout is never retried
        # The interrupted connection is not reused for the next request's answer.
        assert client.infer("image_classifier", {"image": IMAGES}, timeout_s=30)["logits"].shape == (4, 1000)


def test_a_stopped_server_is_unavailable_after_the_retries_not_a_timeout(tiny_repository: Path, tmp_path: Path) -> None:
    server = make_server(tiny_repository, tmp_path)
    server.start(timeout_s=120)
    policy = RetryPolicy(retries=3, backoff_s=0.2)
    options: dict[str, Any] = {"timeout_s": 10, "retries": policy.retries, "backoff_s": policy.backoff_s}
    x = np.ones((2, 4), np.float32)
    clients = {"grpc": client_for(server, "grpc", **options)}
    try:
        assert clients["grpc"].infer("linear", {"x": x})["y"].shape == (2, 3)
    finally:
        server.stop()
    # Made after the stop: an open HTTP keep-alive connection holds Triton's shutdown for its exit timeout.
    clients["http"] = client_for(server, "http", **options)
    try:
        for client in clients.values():
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match=r"\(gave up after 4 attempts\)$") as caught:
                client.infer("linear", {"x": x})
            elapsed = time.monotonic() - started
            assert type(caught.value) is ServerUnavailable
            assert policy.min_total_delay() <= elapsed < 10  # it backed off, and did not wait out the deadline
            assert not client.is_live() and not client.is_ready()
        # With the model's signature cached, a bad input is refused without the server.
        with pytest.raises(InvalidInput, match="expected shape"):
            clients["grpc"].infer("linear", {"x": np.ones((2, 5), np.float32)})
    finally:
        for client in clients.values():
            client.close()


# Serial: the server lets go of a request's region a moment after it answers (the client then
# unregisters it at its next call); beside a second worker's load that moment outlasts the check.
@pytest.mark.serial
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_answers_as_the_plain_path_and_leaves_nothing_behind(
    triton: EmbeddedTriton, protocol: str
) -> None:
    texts = {"text": np.array([["Triton serves models."], ["héllo wörld"]], dtype=object)}
    local_before = local_regions()
    with client_for(triton, protocol) as client:
        plain = client.infer("image_classifier", {"image": IMAGES})["logits"]
        shared = client.infer("image_classifier", {"image": IMAGES}, shared_memory=True)["logits"]
        np.testing.assert_allclose(shared, plain, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            client.infer("text_embedding", texts, shared_memory=True)["embedding"],
            client.infer("text_embedding", texts)["embedding"],
            rtol=1e-6,
            atol=1e-6,
        )
        # A request the server refuses still unregisters and destroys its regions.
        with pytest.raises(InvalidInput, match="unexpected shape"):
            bad = {"image": np.zeros((1, 3, 224, 225), np.float32)}
            client.infer("image_classifier", bad, validate=False, shared_memory=True)
        assert server_regions(triton) == []
        assert local_regions() - local_before == set()
        # A timed-out request still reads its region on the server; close() waits to unregister it.
        with pytest.raises(InferenceTimeout):
            client.infer("image_classifier", {"image": np.zeros((16, 3, 224, 224), np.float32)}, timeout_s=1e-6,
                         shared_memory=True)  # fmt: skip
    assert server_regions(triton) == []
    assert local_regions() - local_before == set()


def test_grpc_channel_options_reach_the_channel(triton: EmbeddedTriton) -> None:
    small = GrpcChannelOptions(max_receive_message_bytes=1000)
    with (
        TritonClient(triton.grpc_url, channel_options=small) as client,
        pytest.raises(InferenceFailed, match="Received message larger than max"),
    ):
        client.infer("image_classifier", {"image": IMAGES[:1]})  # 4000 bytes of logits
    # (No example model answers more than gRPC's default 4 MiB; the unit tests check the limits are kept.)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_async_client_answers_as_the_sync_one(triton: EmbeddedTriton, protocol: str) -> None:
    texts = [np.array([[f"text number {i}".encode()]], dtype=object) for i in range(6)]
    with client_for(triton, protocol) as client:
        expected_logits = client.infer("image_classifier", {"image": IMAGES})["logits"]
        expected_texts = [client.infer("text_embedding", {"text": t})["embedding"] for t in texts]

    async def run() -> None:
        async with AsyncTritonClient(url_of(triton, protocol), protocol=protocol) as client:  # type: ignore[arg-type]
            await client.wait_until_ready(model="image_classifier", timeout_s=10)
            assert await client.is_live() and not await client.is_ready("nope")
            logits = (await client.infer("image_classifier", {"image": IMAGES}, shared_memory=True))["logits"]
            np.testing.assert_allclose(logits, expected_logits, rtol=1e-6, atol=1e-6)
            results = await asyncio.gather(*(client.infer("text_embedding", {"text": t}) for t in texts))
            for result, expected in zip(results, expected_texts, strict=True):
                np.testing.assert_allclose(result["embedding"], expected, rtol=1e-5, atol=1e-6)
            with pytest.raises(
                InvalidInput, match=r"expected shape \[-1, 3, 224, 224\] \(FP32\), got \[1, 3, 224, 225\]"
            ):
                await client.infer("image_classifier", {"image": np.zeros((1, 3, 224, 225), np.float32)})
            with pytest.raises(InferenceTimeout, match="no answer within 1e-06s"):
                await client.infer("image_classifier", {"image": IMAGES}, timeout_s=1e-6)
            assert (await client.config("text_encoder"))["max_batch_size"] == 32
            assert (await client.statistics("text_encoder"))["model_stats"][0]["name"] == "text_encoder"
            assert "image_classifier" in {entry["name"] for entry in await client.models()}
        async with AsyncTritonClient(f"127.0.0.1:{free_port()}", protocol=protocol, backoff_s=0.01) as nowhere:  # type: ignore[arg-type]
            with pytest.raises(ServerUnavailable, match="gave up after 3 attempts"):
                await nowhere.infer("linear", {"x": np.ones((1, 4), np.float32)}, validate=False)

    asyncio.run(run())
    assert server_regions(triton) == []


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clients", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_health_and_models(triton: EmbeddedTriton) -> None:
    # The server from the environment, as `make serve` reads it.
    host, port = triton.grpc_url.rsplit(":", 1)
    healthy = cli("health", env={"TRITON_HOST": host, "TRITON_GRPC_PORT": port})
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout) | {"url": ""} == {
        "url": "", "protocol": "grpc", "live": True, "ready": True, "model": None
    }  # fmt: skip
    unknown = cli("--protocol", "http", "--url", triton.http_url, "health", "--model", "nope")
    assert unknown.returncode == 1 and "error: model 'nope'" in unknown.stderr
    nowhere = cli("health", "--url", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert nowhere.returncode == 1 and json.loads(nowhere.stdout)["live"] is False
    bad_port = cli("health", env={"TRITON_GRPC_PORT": "80o1"})
    assert bad_port.returncode == 1 and "TRITON_GRPC_PORT='80o1' is not a port" in bad_port.stderr
    models = cli("models", "--url", triton.http_url, "--protocol", "http")
    assert models.returncode == 0, models.stderr
    states = {entry["name"]: entry["state"] for entry in json.loads(models.stdout)}
    assert states["image_classification"] == "READY" and states["text_embedding"] == "READY"


def test_cli_infers_an_image_file_as_the_client_does(triton: EmbeddedTriton, tmp_path: Path) -> None:
    pixels = np.random.default_rng(8).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    (tmp_path / "photo.png").write_bytes(buffer.getvalue())
    done = cli("infer", "image_classification", "--image", str(tmp_path / "photo.png"), "--url", triton.grpc_url)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    with TritonClient(triton.grpc_url) as client:
        expected = client.infer("image_classification", {"image_bytes": np.array([[buffer.getvalue()]], dtype=object)})
    assert outputs["labels"]["data"] == [[label.decode() for label in expected["labels"][0]]]
    assert outputs["labels"]["shape"] == [1, 5] and outputs["labels"]["datatype"] == "BYTES"
    np.testing.assert_allclose(outputs["scores"]["data"], expected["scores"], rtol=1e-6)


def test_cli_infers_npy_inputs_and_reports_bad_ones_without_a_traceback(
    tiny_triton: EmbeddedTriton, tmp_path: Path
) -> None:
    x = np.random.default_rng(9).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = cli(
        "infer", "linear", "--input", f"x={tmp_path / 'x.npy'}", "--url", tiny_triton.http_url, "--protocol", "http"
    )
    assert done.returncode == 0, done.stderr
    with TritonClient(tiny_triton.grpc_url) as client:
        expected = client.infer("linear", {"x": x})["y"]
    y = json.loads(done.stdout)["outputs"]["y"]
    assert y["shape"] == [3, 3]
    np.testing.assert_allclose(y["data"], expected, rtol=1e-6)

    np.save(tmp_path / "wide.npy", np.ones((3, 5), np.float32))
    bad = cli("infer", "linear", "--input", f"x={tmp_path / 'wide.npy'}", "--url", tiny_triton.grpc_url)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "error: model 'linear' input 'x': expected shape [-1, 4] (FP32), got [3, 5]\n"
    (tmp_path / "x.json").write_text(json.dumps({"x": [[1, 2, 3, 4]]}))
    from_json = cli("infer", "linear", "--json", str(tmp_path / "x.json"), "--url", tiny_triton.grpc_url)
    assert from_json.returncode == 0, from_json.stderr  # the JSON's ints became the model's FP32
    no_bytes = cli("infer", "linear", "--text", "hello", "--url", tiny_triton.grpc_url)
    assert no_bytes.returncode == 1 and no_bytes.stderr.startswith("error: --image and --text need")
    assert "Traceback" not in bad.stderr + no_bytes.stderr


def test_the_example_service_shares_one_client_across_concurrent_requests(triton: EmbeddedTriton) -> None:
    results = asyncio.run(service.main(triton.grpc_url))
    assert [r.shape for r in results] == [(1, 256), (2, 256), (3, 256)]
    with TritonClient(triton.grpc_url) as client:
        alone = client.infer("text_embedding", {"text": np.array([[b"hello world"]], dtype=object)})["embedding"]
    np.testing.assert_allclose(results[0], alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(results), axis=1), 1.0, rtol=1e-5)

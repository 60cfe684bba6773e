"""The example pipelines (ensembles with Python pre/post-processing) answer real JPEG, PNG and text
as the same pipeline run in-process with PyTorch does; bad items fail alone."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

from builder.checker.config import parse_config
from clients import InvalidInput, TritonClient
from models import image_classifier, text_encoder
from models.image_pipeline import ClassifierPostprocess, ImagePreprocess
from models.text_pipeline import EmbeddingNormalize, Tokenizer
from server import EmbeddedTriton
from tests.conftest import ROOT
from tests.integration.conftest import input_bytes, make_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

TEXTS = ["Triton serves models.", "A second, longer sentence with more words in it!", "héllo wörld"]


def encoded(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    """A photo-like test image: smooth gradients plus noise, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def reference_classification(images: list[bytes]) -> dict[str, Any]:
    """The image_classification pipeline run in-process, with the classifier in PyTorch."""
    batch = ImagePreprocess(size=224)({"image_bytes": np.array([[i] for i in images], dtype=object)})["image"]
    with torch.inference_mode():
        logits = image_classifier.build()(torch.from_numpy(batch)).numpy()
    return ClassifierPostprocess(labels=str(ROOT / "models" / "labels.txt"), top_k=5)({"logits": logits})


def reference_embedding(texts: list[str]) -> np.ndarray:
    """The text_embedding pipeline run in-process, with the encoder in PyTorch."""
    tokens = Tokenizer()({"text": np.array([[t.encode()] for t in texts], dtype=object)})
    with torch.inference_mode():
        raw = text_encoder.build()(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    return EmbeddingNormalize()({"embedding": raw.numpy()})["normalized"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_jpeg_and_png_are_classified_as_in_pytorch(triton: EmbeddedTriton, protocol: str) -> None:
    images = [encoded("JPEG", (240, 320), 1), encoded("PNG", (300, 200), 2), encoded("JPEG", (224, 224), 3)]
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    with TritonClient(url, protocol=protocol) as client:  # type: ignore[arg-type]
        result = client.infer("image_classification", {"image_bytes": np.array([[i] for i in images], dtype=object)})
    expected = reference_classification(images)
    assert result["labels"].shape == (3, 5)
    assert result["labels"].tolist() == expected["labels"].tolist()
    np.testing.assert_allclose(result["scores"], expected["scores"], rtol=1e-4, atol=1e-6)
    assert all(label.startswith(b"class_") for label in result["labels"].ravel())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_text_is_embedded_as_in_pytorch(triton: EmbeddedTriton, protocol: str) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    with TritonClient(url, protocol=protocol) as client:  # type: ignore[arg-type]
        result = client.infer("text_embedding", {"text": np.array([[t.encode()] for t in TEXTS], dtype=object)})
    embedding = result["embedding"]
    assert embedding.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embedding, reference_embedding(TEXTS), atol=1e-4, rtol=1e-3)


def test_texts_sent_one_by_one_embed_like_texts_sent_together(triton: EmbeddedTriton) -> None:
    # Padding differs (each text alone vs the batch's longest); the embedding must not.
    with TritonClient(triton.grpc_url) as client:
        alone = [
            client.infer("text_embedding", {"text": np.array([[t.encode()]], dtype=object)})["embedding"][0]
            for t in TEXTS
        ]
    np.testing.assert_allclose(np.stack(alone), reference_embedding(TEXTS), atol=1e-4, rtol=1e-3)


def test_each_python_step_counts_where_its_inputs_arrived(triton: EmbeddedTriton) -> None:
    """kit_input_bytes: on a CPU host every numeric input a step receives is in host memory (the
    GPU tests assert the same counters show the gpu target's steps fed from device memory)."""
    before = input_bytes(triton)
    images = [encoded("JPEG", (240, 320), 6), encoded("PNG", (64, 80), 7)]
    with TritonClient(triton.grpc_url) as client:
        client.infer("image_classification", {"image_bytes": np.array([[i] for i in images], dtype=object)})
        client.infer("text_embedding", {"text": np.array([[t.encode()] for t in TEXTS], dtype=object)})
    after = input_bytes(triton)
    arrived = {key: after[key] - before.get(key, 0.0) for key in after}
    assert arrived[("image_postprocess", "cpu")] == len(images) * 1000 * 4  # FP32 logits
    assert arrived[("embedding_normalize", "cpu")] == len(TEXTS) * 256 * 4  # FP32 embeddings
    # Their first steps take BYTES only (not counted), and nothing arrived on a GPU.
    assert arrived[("image_preprocess", "cpu")] == arrived[("tokenizer", "cpu")] == 0
    steps = ("image_preprocess", "image_postprocess", "tokenizer", "embedding_normalize")
    assert [arrived[(step, "gpu")] for step in steps] == [0, 0, 0, 0]


PIPELINES = ("image_classification", "image_preprocess", "image_classifier", "image_postprocess",
             "text_embedding", "tokenizer", "text_encoder", "embedding_normalize")  # fmt: skip


@pytest.fixture(scope="module")
def patient_triton(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """The example pipelines with the preprocessors told to wait for 4 requests (or 2 s), so
    requests sent together are sure to be executed as one batch."""
    root = tmp_path_factory.mktemp("patient")
    for name in PIPELINES:
        shutil.copytree(example_repository / name, root / "repo" / name)
    for name in ("image_preprocess", "tokenizer"):
        path = root / "repo" / name / "config.pbtxt"
        config = parse_config(path.read_text(), str(path))
        config.dynamic_batching.max_queue_delay_microseconds = 2_000_000
        config.dynamic_batching.preferred_batch_size[:] = [4]
        path.write_text(text_format.MessageToString(config))
    server = make_server(root / "repo", root)
    server.start(timeout_s=240)
    try:
        yield server
    finally:
        server.stop()


def send_together(server: EmbeddedTriton, model: str, name: str, items: list[bytes]) -> list[Any]:
    def call(item: bytes) -> Any:
        with TritonClient(server.grpc_url) as client:
            try:
                return client.infer(model, {name: np.array([[item]], dtype=object)})
            except InvalidInput as error:
                return error

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(call, items))


def executions(server: EmbeddedTriton, model: str, since: int | None = None) -> int:
    """The model's execution count; with `since`, once it has moved past that (Triton counts an
    execution a moment after its responses are sent), or after 10 s."""
    deadline = time.monotonic() + 10
    with TritonClient(server.grpc_url) as client:
        while True:
            count = int(client.statistics(model)["model_stats"][0].get("execution_count", 0))
            if since is None or count > since or time.monotonic() > deadline:
                return count
            time.sleep(0.05)


def test_a_corrupt_image_fails_alone_while_its_batch_succeeds(patient_triton: EmbeddedTriton) -> None:
    good = encoded("PNG", (100, 120), 4)
    truncated = encoded("JPEG", (100, 120), 5)[:300]
    before = executions(patient_triton, "image_preprocess")
    results = send_together(
        patient_triton, "image_classification", "image_bytes", [good, b"not an image", good, truncated]
    )
    # One execution: the four arrived as one batch, and isolating the bad ones happened inside it.
    assert executions(patient_triton, "image_preprocess", since=before) - before == 1
    assert isinstance(results[1], InvalidInput) and "12 bytes that are not a JPEG or PNG image" in str(results[1])
    assert isinstance(results[3], InvalidInput) and "damaged image" in str(results[3])
    expected = reference_classification([good])
    for result in (results[0], results[2]):
        assert result["labels"].tolist() == expected["labels"].tolist()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # the first rows only: enough to open
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_a_decompression_bomb_fails_alone_while_its_batch_succeeds(patient_triton: EmbeddedTriton) -> None:
    good = encoded("PNG", (100, 120), 4)
    bomb = png_declaring(20_000, 20_000)  # over Pillow's own ceiling too
    large = png_declaring(8_000, 8_000)  # under Pillow's, over the model's
    assert len(bomb) < 64_000
    results = send_together(patient_triton, "image_classification", "image_bytes", [good, bomb, good, large])
    for refused, detail in ((results[1], "Image size (400000000 pixels) exceeds limit"), (results[3], "8000x8000")):
        assert isinstance(refused, InvalidInput)
        assert "an image over 40,000,000 pixels, this model's limit (option max_pixels)" in str(refused)
        assert detail in str(refused)
    expected = reference_classification([good])
    for result in (results[0], results[2]):
        assert result["labels"].tolist() == expected["labels"].tolist()


def test_non_utf8_text_fails_alone_while_its_batch_succeeds(patient_triton: EmbeddedTriton) -> None:
    before = executions(patient_triton, "tokenizer")
    results = send_together(
        patient_triton,
        "text_embedding",
        "text",
        [TEXTS[0].encode(), b"\xff\xfe broken", TEXTS[1].encode(), TEXTS[2].encode()],
    )
    assert executions(patient_triton, "tokenizer", since=before) - before == 1
    assert isinstance(results[1], InvalidInput) and "text is not valid UTF-8" in str(results[1])
    good = [results[0], results[2], results[3]]
    np.testing.assert_allclose(
        np.concatenate([r["embedding"] for r in good]), reference_embedding(TEXTS), atol=1e-4, rtol=1e-3
    )

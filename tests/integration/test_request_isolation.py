"""One request that makes a model raise costs no other request of its batch, whatever it raises."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients import InferenceFailed, TritonClient
from tests.integration.conftest import build_entries, make_server

pytestmark = [pytest.mark.server]


@pytest.mark.parametrize("returns", ["numpy", "torch"])
def test_an_unexpected_error_fails_only_the_request_that_caused_it(tmp_path: Path, returns: str) -> None:
    """Also with a model that answers with torch tensors: the batch's result is split per request
    and handed to Triton by DLPack, as the gpu target's preprocessing does with GPU tensors."""
    entry = {
        "name": "fragile",
        "kind": "python",
        "source": "tests.tiny_processors:Fragile",
        "options": {"returns": returns},
        "max_batch_size": 8,
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [2]}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [2]}],
        # Requests wait for 4 of them (or 2 s), so the 4 sent together run as one batch.
        "dynamic_batching": {"max_queue_delay_microseconds": 2_000_000, "preferred_batch_size": [4]},
    }
    repo = build_entries(tmp_path, entry)
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    feeds = [np.array([[1.0, 2.0]], np.float32) * (i + 1) for i in range(4)]
    feeds[2] = np.array([[500.0, 1.0]], np.float32)

    def call(x: np.ndarray) -> Any:
        with TritonClient(server.grpc_url) as client:
            try:
                return client.infer("fragile", {"x": x})["y"]
            except InferenceFailed as error:
                return error

    try:
        with TritonClient(server.grpc_url) as client:

            def executed() -> int:
                return int(client.statistics("fragile")["model_stats"][0].get("execution_count", 0))

            before = executed()
            with ThreadPoolExecutor(max_workers=4) as pool:
                results = list(pool.map(call, feeds))
            # Triton counts a Python model's execution a moment after its responses are sent.
            deadline = time.monotonic() + 10
            while (executions := executed() - before) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.stop()
    assert executions == 1  # one batch, isolated inside it
    assert isinstance(results[2], InferenceFailed) and "RuntimeError: x over 100 overflows a table" in str(results[2])
    for index in (0, 1, 3):
        np.testing.assert_array_equal(results[index], feeds[index] * 2)

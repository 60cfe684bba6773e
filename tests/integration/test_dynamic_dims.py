"""A model no one here wrote the dims of: a GRU tagger [N, T, 16] -> [N, T, 5], whose exported
graph the exporter annotates with the traced length. Built as declared (`dims: [-1, 5]`), it is
served at every length of its range with the shapes and values PyTorch gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from builder.checker import check_repository
from clients import TritonClient
from tests.integration.conftest import build_entries, make_server
from tests.tiny_models import gru_tagger

pytestmark = [pytest.mark.server]

TAGGER = {
    "name": "tagger",
    "source": "tests.tiny_models:gru_tagger",
    "max_batch_size": 8,
    "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [-1, 16], "shape_range": {"min": [1, 16], "max": [64, 16]}}],
    "outputs": [{"name": "tags", "dtype": "TYPE_FP32", "dims": [-1, 5], "atol": 1e-4}],
}


def test_a_gru_tagger_serves_every_length_of_its_range(tmp_path: Path) -> None:
    repo = build_entries(tmp_path, TAGGER)
    assert check_repository(repo) == []
    module = gru_tagger()
    rng = np.random.default_rng(0)
    with make_server(repo, tmp_path) as server, TritonClient(server.grpc_url) as client:
        (output,) = client.metadata("tagger")["outputs"]
        assert [int(d) for d in output["shape"]] == [-1, -1, 5]
        for steps in range(1, 65):
            x = rng.normal(size=(2, steps, 16)).astype(np.float32)
            tags = client.infer("tagger", {"x": x})["tags"]
            with torch.inference_mode():
                expected = module(torch.from_numpy(x)).numpy()
            assert tags.shape == (2, steps, 5)
            np.testing.assert_allclose(tags, expected, atol=1e-4)

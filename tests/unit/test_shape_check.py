"""The request shape check of the kit's onnxruntime backend: the spec's ranges and the graph's
shared dims, from a config and ONNX Runtime's input shapes, as the backend builds it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.runtime.triton_kit_shapes import SHAPE_RANGES_PARAMETER, ShapeCheck

RANGES = {"input_ids": {"min": [1], "max": [128]}, "attention_mask": {"min": [1], "max": [128]}}
CONFIG = {"max_batch_size": 32, "parameters": {SHAPE_RANGES_PARAMETER: {"string_value": json.dumps(RANGES)}}}
GRAPH = {"input_ids": ["s0", "s1"], "attention_mask": ["s0", "s1"]}  # as session.get_inputs() shows them


def request(ids: int, mask: int, batch: int = 2) -> dict[str, np.ndarray]:
    return {"input_ids": np.zeros((batch, ids), np.int64), "attention_mask": np.ones((batch, mask), np.int64)}


@pytest.mark.parametrize("length", [1, 32, 128])
def test_lengths_in_range_that_agree_pass(length: int) -> None:
    ShapeCheck.from_config(CONFIG, GRAPH)(request(length, length))


@pytest.mark.parametrize("length", [0, 129, 4096])
def test_a_length_outside_the_spec_range_is_refused_naming_it(length: int) -> None:
    with pytest.raises(
        ValueError, match=rf"input 'input_ids' has {length} on axis 1, outside the model's range \[1, 128\]"
    ):
        ShapeCheck.from_config(CONFIG, GRAPH)(request(length, length))


def test_inputs_sharing_a_dim_of_the_graph_must_agree() -> None:
    check = ShapeCheck.from_config(CONFIG, GRAPH)
    with pytest.raises(
        ValueError, match=r"must agree on the model's dim 's1': got 'input_ids' 12 \(axis 1\), 'attention_mask' 14"
    ):
        check(request(12, 14))


def test_without_ranges_or_shared_dims_nothing_is_refused() -> None:
    check = ShapeCheck.from_config({"max_batch_size": 8}, {"image": ["batch", 3, 224, 224]})
    check({"image": np.zeros((2, 3, 224, 224), np.float32)})

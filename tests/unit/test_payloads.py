"""Load-test payloads drawn as the spec declares a model's inputs, and written for perf_analyzer."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from loadtest.payloads import perf_analyzer_data, spec_payload
from tests.conftest import ROOT

SPEC = ROOT / "models.yaml"


@pytest.mark.parametrize("model", ["text_encoder", "text_encoder_int8"])
def test_a_spec_payload_keeps_values_in_range_and_agreeing_shapes(model: str) -> None:
    payload = spec_payload(SPEC, model, batch=3)
    assert payload is not None
    ids, mask = payload["input_ids"], payload["attention_mask"]
    # shape_range.opt for the variable axis, the same for both: the tensors must agree.
    assert ids.shape == mask.shape == (3, 32) and ids.dtype == mask.dtype == np.int64
    assert set(np.unique(mask)) <= {0, 1} and len(np.unique(mask)) == 2  # value_range [0, 2)
    assert ids.min() >= 0 and ids.max() < 8192 and ids.max() >= 16  # not the metadata's [0, 16)


def test_a_model_the_spec_does_not_declare_gets_no_spec_payload() -> None:
    assert spec_payload(SPEC, "image_classification", batch=1) is None  # an ensemble: BYTES in
    assert spec_payload(SPEC, "not_in_the_spec", batch=1) is None


def test_perf_analyzer_data_drops_the_batch_axis_and_encodes_bytes() -> None:
    payload = {
        "input_ids": np.arange(8, dtype=np.int64).reshape(2, 4),
        "image": np.array([[b"\x89PNG\x00\xff"]], dtype=object),
        "text": np.array([b"hello", b"world"], dtype=object),
    }
    data = perf_analyzer_data({"input_ids": payload["input_ids"], "image": payload["image"]}, batching=True)
    (entry,) = data["data"]
    assert entry["input_ids"] == {"content": [0, 1, 2, 3], "shape": [4]}
    assert entry["image"] == {"b64": base64.b64encode(b"\x89PNG\x00\xff").decode(), "shape": [1]}
    unbatched = perf_analyzer_data({"text": payload["text"]}, batching=False)
    assert unbatched["data"][0]["text"] == {"content": ["hello", "world"], "shape": [2]}
    with pytest.raises(ValueError, match="input 'blob': 2 binary BYTES items per request"):
        perf_analyzer_data({"blob": np.array([b"\xff\xfe", b"\x00\xff"], dtype=object)}, batching=False)

"""Spec loading: valid files load, and every problem of an invalid one is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import SpecError
from builder.spec import OnnxModelSpec, load_spec
from tests.conftest import ROOT, linear_model


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.problems


def test_the_kits_spec_declares_both_example_models() -> None:
    spec = load_spec(ROOT / "models.yaml")
    assert [m.name for m in spec.of_kind(OnnxModelSpec)] == ["image_classifier", "text_encoder"]
    encoder = spec.model("text_encoder")
    assert isinstance(encoder, OnnxModelSpec)
    assert encoder.inputs[0].dims == (-1,)
    assert encoder.inputs[0].dynamic_axes == (0,)
    assert encoder.inputs[0].shape_range is not None and encoder.inputs[0].shape_range.max == (128,)


def test_defaults_are_filled_in(write_spec) -> None:
    model = load_spec(write_spec(linear_model())).models[0]
    assert model.formats == ("onnx",)
    assert [v.version for v in model.versions] == [1]
    assert model.dynamic_batching is not None and model.dynamic_batching.max_queue_delay_microseconds == 0
    assert model.instance_group[0].kind is None  # the build target decides
    assert model.outputs[0].atol == 1e-4


def test_versions_may_be_plain_numbers_or_carry_their_own_weights(write_spec, tmp_path) -> None:
    (tmp_path / "v2.pt").write_bytes(b"")
    model = load_spec(write_spec(linear_model(versions=[1, {"version": 2, "weights": "v2.pt"}]))).models[0]
    assert [v.version for v in model.versions] == [1, 2]
    assert model.weights_for(model.versions[0]) is None
    assert model.weights_for(model.versions[1]) == (tmp_path / "v2.pt").resolve()


def test_unknown_key_names_the_model_the_key_and_the_allowed_keys(write_spec) -> None:
    (problem,) = problems_of(write_spec(linear_model(max_batch=4)))
    assert "model 'linear'" in problem
    assert "unknown key 'max_batch'" in problem
    assert "max_batch_size" in problem  # among the allowed keys


def test_unknown_nested_key_lists_the_nested_allowed_keys(write_spec) -> None:
    entry = linear_model()
    entry["inputs"][0]["shape"] = [4]
    (problem,) = problems_of(write_spec(entry))
    assert "unknown key 'inputs[0].shape'" in problem
    assert "dims" in problem and "value_range" in problem


def test_wrong_dtype_names_the_value_and_what_is_allowed(write_spec) -> None:
    entry = linear_model()
    entry["inputs"][0]["dtype"] = "TYPE_FLOAT"
    (problem,) = problems_of(write_spec(entry))
    assert "inputs[0].dtype = 'TYPE_FLOAT'" in problem
    assert "TYPE_FP32" in problem and "TYPE_INT64" in problem


def test_every_problem_of_every_model_is_reported_at_once(write_spec) -> None:
    bad_dims = linear_model("a")
    bad_dims["inputs"][0]["dims"] = [0]
    bad_batch = linear_model("b", max_batch_size=2, dynamic_batching={"preferred_batch_size": [4]})
    bad_source = linear_model("c", source="tests/tiny_models.py")
    unsized = linear_model("d")
    unsized["inputs"][0]["dims"] = [-1]
    problems = problems_of(write_spec(bad_dims, bad_batch, bad_source, unsized, linear_model("a")))
    text = "\n".join(problems)
    assert "model 'a' (models[0]): inputs[0].dims[0] = 0" in text
    assert "preferred_batch_size: 4 exceeds max_batch_size 2" in text
    assert "source = 'tests/tiny_models.py'" in text and "package.module:callable" in text
    assert "model 'd' (models[3]): inputs[0].shape_range is missing" in text
    assert "model name 'a' is declared 2 times" in text
    assert len(problems) == 5


def test_batching_rules(write_spec) -> None:
    explicit = linear_model(
        max_batch_size=0,
        dynamic_batching={"max_queue_delay_microseconds": 100},
        instance_group=[{"kind": "KIND_CPU", "gpus": [0]}],
    )
    problems = problems_of(write_spec(explicit))
    assert any("dynamic_batching is set but max_batch_size is 0" in p for p in problems)
    assert any("a KIND_CPU group cannot name GPUs" in p for p in problems)


def test_the_default_batcher_is_off_where_it_cannot_apply(write_spec) -> None:
    unbatched = linear_model("unbatched", max_batch_size=0)
    stateful = linear_model("stateful", sequence_batching={"start": "START"})
    spec = load_spec(write_spec(unbatched, stateful, linear_model()))
    assert [m.batcher is None for m in spec.models] == [True, True, False]


def test_shape_range_must_fit_the_dims(write_spec) -> None:
    entry = linear_model()
    entry["inputs"][0].update(dims=[-1, 4], shape_range={"min": [1, 4], "max": [8, 5]})
    entry2 = linear_model("other")
    entry2["inputs"][0].update(dims=[-1], shape_range={"min": [9], "max": [8]})
    problems = problems_of(write_spec(entry, entry2))
    assert any("shape_range.max[1] = 5 but dims[1] is fixed at 4" in p for p in problems)
    assert any("need min <= opt <= max" in p for p in problems)


def test_missing_weights_file_is_reported_with_its_path(write_spec, tmp_path) -> None:
    (problem,) = problems_of(write_spec(linear_model(weights="missing.pt")))
    assert str((tmp_path / "missing.pt").resolve()) in problem
    assert "file not found" in problem


def test_duplicate_tensor_names(write_spec) -> None:
    entry = linear_model()
    entry["outputs"][0]["name"] = "x"
    (problem,) = problems_of(write_spec(entry))
    assert "tensor name 'x' is used more than once" in problem


def test_not_yaml_and_missing_file(tmp_path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(broken)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_top_level_must_hold_models(write_spec) -> None:
    problems = problems_of(write_spec(raw={"model": []}))
    assert any("unknown key(s) 'model'" in p for p in problems)
    assert any("'models' must be a non-empty list" in p for p in problems)

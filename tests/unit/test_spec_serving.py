"""Serving options, Python models and ensembles in the spec: what loads, and what each rule reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import SpecError
from builder.spec import EnsembleSpec, PythonModelSpec, load_spec
from tests.conftest import ROOT, ensemble_model, linear_model


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.problems


def python_model(name: str = "pre", **overrides):
    entry = {
        "name": name,
        "kind": "python",
        "source": "models.text_pipeline:EmbeddingNormalize",
        "max_batch_size": 8,
        "inputs": [{"name": "embedding", "dtype": "TYPE_FP32", "dims": [4]}],
        "outputs": [{"name": "normalized", "dtype": "TYPE_FP32", "dims": [4]}],
    }
    entry.update(overrides)
    return entry


def ensemble(name: str = "pipe", **overrides):
    steps = [
        ("linear", {"x": "features"}, {"y": "scores"}),
        ("widen", {"embedding": "scores"}, {"normalized": "result"}),
    ]
    entry = ensemble_model(
        name,
        steps,
        inputs=[{"name": "features", "dtype": "TYPE_FP32", "dims": [4]}],
        outputs=[{"name": "result", "dtype": "TYPE_FP32", "dims": [4]}],
    )
    entry.update(overrides)
    return entry


# The linear model maps [4] -> [3]; `widen` takes [3] so the pipeline above is well-typed.
WIDEN = python_model(
    "widen",
    inputs=[{"name": "embedding", "dtype": "TYPE_FP32", "dims": [3]}],
    outputs=[{"name": "normalized", "dtype": "TYPE_FP32", "dims": [4]}],
)


def test_the_kits_spec_declares_the_pipelines() -> None:
    spec = load_spec(ROOT / "models.yaml")
    assert [m.name for m in spec.of_kind(EnsembleSpec)] == ["image_classification", "text_embedding"]
    assert {m.name for m in spec.of_kind(PythonModelSpec)} == {
        "image_preprocess",
        "image_postprocess",
        "tokenizer",
        "embedding_normalize",
    }


def test_a_well_wired_ensemble_loads(write_spec) -> None:
    spec = load_spec(write_spec(linear_model(), WIDEN, ensemble()))
    assert [s.model for s in spec.model("pipe").steps] == ["linear", "widen"]


def test_an_unknown_kind_lists_the_kinds(write_spec) -> None:
    (problem,) = problems_of(write_spec(linear_model(kind="tensorflow")))
    assert "kind = 'tensorflow': allowed: 'onnx', 'python', 'ensemble'" in problem


def test_scheduling_settings_an_ensemble_cannot_have_say_where_they_belong(write_spec) -> None:
    problems = problems_of(write_spec(linear_model(), WIDEN, ensemble(instance_group=[{"count": 2}])))
    assert problems == [
        "model 'pipe' (models[2]): instance_group is not allowed for an ensemble: each step's model has its own; set it on that model"
    ]


def test_ensemble_wiring_errors_name_the_ensemble_step_and_tensor(write_spec) -> None:
    broken = ensemble(
        max_batch_size=16,
        outputs=[
            {"name": "result", "dtype": "TYPE_FP32", "dims": [4]},
            {"name": "extra", "dtype": "TYPE_FP32", "dims": [4]},
        ],
        steps=[
            {"model": "linear", "inputs": {"z": "features"}, "outputs": {"y": "scores"}},
            {"model": "widen", "inputs": {"embedding": "scores"}, "outputs": {"normalized": "result"}},
            {"model": "nowhere", "inputs": {}, "outputs": {}},
        ],
    )
    text = "\n".join(problems_of(write_spec(linear_model(), WIDEN, broken)))
    assert "ensemble 'pipe' step 0 ('linear'): input_map key 'z' is not an input of 'linear'" in text
    assert "ensemble 'pipe' step 0 ('linear'): input 'x' of 'linear' is not mapped to any ensemble tensor" in text
    assert "ensemble 'pipe' step 0 ('linear'): the ensemble's max_batch_size 16 exceeds 'linear''s 8" in text
    assert "ensemble 'pipe' step 2 ('nowhere'): no model 'nowhere' in the repository" in text
    assert "ensemble 'pipe' output 'extra': ensemble tensor 'extra' is not written by any step" in text
    assert "ensemble tensor 'features' (ensemble input 'features') is not used" in text


def test_ensemble_edges_must_agree_in_dtype_and_shape(write_spec) -> None:
    narrow = python_model(
        "widen",
        inputs=[{"name": "embedding", "dtype": "TYPE_FP16", "dims": [5]}],
        outputs=[{"name": "normalized", "dtype": "TYPE_FP32", "dims": [4]}],
    )
    text = "\n".join(problems_of(write_spec(linear_model(), narrow, ensemble())))
    assert (
        "step 1 ('widen') input 'embedding': ensemble tensor 'scores' is TYPE_FP32 from 'linear' output 'y' but TYPE_FP16 here"
        in text
    )
    assert "ensemble tensor 'scores' has shape [-1, 3] from 'linear' output 'y' but [-1, 5] here" in text


def test_a_cycle_of_steps_is_reported(write_spec) -> None:
    loop = python_model(
        "loop",
        inputs=[{"name": "embedding", "dtype": "TYPE_FP32", "dims": [4]}],
        outputs=[{"name": "normalized", "dtype": "TYPE_FP32", "dims": [4]}],
    )
    cyclic = ensemble(
        steps=[
            {"model": "loop", "inputs": {"embedding": "b"}, "outputs": {"normalized": "a"}},
            {"model": "loop", "inputs": {"embedding": "a"}, "outputs": {"normalized": "b"}},
            {"model": "loop", "inputs": {"embedding": "features"}, "outputs": {"normalized": "result"}},
        ],
    )
    text = "\n".join(problems_of(write_spec(loop, cyclic)))
    assert "its steps form a cycle" in text


def test_an_ensemble_calling_itself_is_circular(write_spec) -> None:
    selfish = ensemble(steps=[{"model": "pipe", "inputs": {"features": "features"}, "outputs": {"result": "result"}}])
    assert any("circular dependency between ensembles" in p for p in problems_of(write_spec(selfish)))


def test_queue_and_priority_rules(write_spec) -> None:
    entry = linear_model(
        dynamic_batching={
            "preserve_ordering": True,
            "priority_levels": 2,
            "default_priority_level": 3,
            "priority_queue_policy": {4: {"max_queue_size": 2}},
        }
    )
    text = "\n".join(problems_of(write_spec(entry)))
    assert "default_priority_level = 3: must be in [1, 2]" in text
    assert "priority_queue_policy: level 4 is outside [1, 2]" in text
    assert "only one priority level with preserve_ordering" in text


def test_response_cache_cannot_serve_sequence_or_decoupled_models(write_spec) -> None:
    stateful = linear_model(sequence_batching={"start": "START"}, response_cache=True)
    streaming = python_model(decoupled=True, response_cache=True)
    problems = problems_of(write_spec(stateful, streaming))
    assert len([p for p in problems if "cannot cache responses" in p]) == 2


def test_both_schedulers_at_once_are_refused(write_spec) -> None:
    entry = linear_model(dynamic_batching={}, sequence_batching={"start": "START"})
    assert any("one scheduler per model" in p for p in problems_of(write_spec(entry)))


def test_onnx_models_cannot_declare_strings_and_python_files_must_exist(write_spec) -> None:
    entry = linear_model()
    entry["inputs"][0]["dtype"] = "TYPE_STRING"
    problems = problems_of(write_spec(entry, python_model(files={"labels": "missing.txt"})))
    assert any("an exported ONNX model cannot take strings" in p for p in problems)
    assert any("files.labels" in p and "file not found" in p for p in problems)


def test_version_policy_must_choose_one_and_name_built_versions(write_spec) -> None:
    problems = problems_of(write_spec(linear_model(versions=[1, 2], version_policy={"latest": 1, "specific": [3]})))
    assert any("give exactly one of latest" in p for p in problems)
    assert any("version 3 is not built" in p for p in problems)

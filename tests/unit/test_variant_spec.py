"""Variant and calibration fields of the spec: every wrong combination is refused before
anything is built, with the field, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.errors import SpecError
from builder.spec import EnsembleSpec, load_spec
from tests.conftest import ensemble_model, linear_model


def spec_problems(write_spec: Callable[..., Path], *models: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as failure:
        load_spec(write_spec(*models))
    return str(failure.value)


def with_variants(*variants: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return linear_model(
        calibration={"data": "tests.tiny_models:calibration_batches"}, variants=list(variants), **overrides
    )


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (
            {"name": "v", "precision": "fp32"},
            "an fp32 ONNX variant is the model itself; allowed for format onnx: fp16, int8",
        ),
        ({"name": "v", "precision": "bf16"}, "ONNX Runtime has no bf16 kernels"),
        ({"name": "linear", "precision": "int8"}, "is the model's own name"),
        (
            {"name": "v", "precision": "int4"},
            "variants[0].precision = 'int4': allowed: 'fp32', 'fp16', 'bf16' or 'int8'",
        ),
        ({"name": "v", "precision": "int8", "gate": {"top1_agreement": 1.5}}, "gate.top1_agreement = 1.5"),
    ],
)
def test_bad_variants_are_refused(write_spec: Callable[..., Path], variant: dict[str, Any], message: str) -> None:
    assert message in spec_problems(write_spec, with_variants(variant))


def test_variants_need_calibration_data_that_exists(write_spec: Callable[..., Path]) -> None:
    problems = spec_problems(write_spec, linear_model(variants=[{"name": "v", "precision": "int8"}]))
    assert "variants need calibration data: add calibration: {data: ...}" in problems
    missing = linear_model(calibration={"data": "nowhere/images"}, variants=[{"name": "v", "precision": "int8"}])
    assert "calibration.data = " in spec_problems(
        write_spec, missing
    ) and "nowhere/images': not found" in spec_problems(write_spec, missing)


def test_histogram_calibration_is_refused_for_variable_dims(write_spec: Callable[..., Path]) -> None:
    sequence = {
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [-1, 4], "shape_range": {"min": [1, 4], "max": [9, 4]}}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
        "source": "tests.tiny_models:sequence_mean",
    }
    variant = {"name": "v", "precision": "int8", "quantization": {"method": "entropy"}}
    problems = spec_problems(write_spec, with_variants(variant, **sequence))
    assert "quantization.method = 'entropy' collects histograms" in problems and "use method: minmax" in problems


def test_variant_names_are_model_names(write_spec: Callable[..., Path]) -> None:
    clash = with_variants({"name": "other", "precision": "int8"})
    problems = spec_problems(write_spec, clash, linear_model("other"))
    assert "model name 'other' is declared 2 times" in problems


def test_an_ensemble_can_call_a_variant(write_spec: Callable[..., Path]) -> None:
    linear = linear_model()
    steps = [("linear_int8", {"x": "x"}, {"y": "y"})]
    ensemble = ensemble_model("pipeline", steps, inputs=linear["inputs"], outputs=linear["outputs"])
    spec = load_spec(write_spec(with_variants({"name": "linear_int8", "precision": "int8"}), ensemble))
    assert spec.served_names() == {"linear", "linear_int8", "pipeline"}


def pipeline_with(*variants: dict[str, Any]) -> dict[str, Any]:
    linear = linear_model()
    entry = ensemble_model("pipeline", [("linear", {"x": "x"}, {"y": "y"})], linear["inputs"], linear["outputs"])
    return {**entry, "variants": list(variants)}


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (
            {"name": "pipeline_int8", "models": {"tokenizer": "linear_int8"}},
            "variants[0].models: 'tokenizer' is not a step of this ensemble; its steps run ['linear']",
        ),
        (
            {"name": "pipeline_int8", "models": {"linear": "linear_int4"}},
            "variants[0].models.linear = 'linear_int4': not a model or variant of this spec; allowed: ['linear', 'linear_int8', 'wide']",
        ),
        ({"name": "pipeline", "models": {"linear": "linear_int8"}}, "is the ensemble's own name"),
        ({"name": "pipeline_int8", "models": {}}, "variants[0].models is empty"),
        ({"name": "pipeline_int8", "models": {"linear": "linear"}}, "replaces the model by itself"),
        # The replacement's tensors are checked as the ensemble's own steps are: `wide` outputs 5, not 3.
        (
            {"name": "pipeline_wide", "models": {"linear": "wide"}},
            "variants[0] ('pipeline_wide'): ensemble 'pipeline_wide' output 'y': ensemble tensor 'y' has shape [-1, 5] from 'wide'",
        ),
        ({"name": "pipeline_int8", "models": {"linear": "linear_int8"}, "targets": []}, "variants[0].targets"),
    ],
)
def test_bad_ensemble_variants_are_refused(
    write_spec: Callable[..., Path], variant: dict[str, Any], message: str
) -> None:
    wide = linear_model("wide", outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [5]}])
    base = with_variants({"name": "linear_int8", "precision": "int8"})
    assert message in spec_problems(write_spec, base, wide, pipeline_with(variant))


def test_an_ensemble_variant_runs_another_model_in_a_step(write_spec: Callable[..., Path]) -> None:
    base = with_variants({"name": "linear_int8", "precision": "int8"})
    spec = load_spec(write_spec(base, pipeline_with({"name": "pipeline_int8", "models": {"linear": "linear_int8"}})))
    assert spec.served_names() == {"linear", "linear_int8", "pipeline", "pipeline_int8"}
    ensemble = spec.model("pipeline")
    assert isinstance(ensemble, EnsembleSpec)
    served = ensemble.served_variant(ensemble.variant("pipeline_int8"))
    assert (served.name, [s.model for s in served.steps], served.variants) == ("pipeline_int8", ["linear_int8"], ())
    assert [s.model for s in ensemble.steps] == ["linear"]  # the ensemble itself is unchanged

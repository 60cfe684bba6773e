"""Calibration data, batching, TensorRT profiles and caches, and accuracy figures: everything
around the reduced-precision builds that needs neither TensorRT nor a GPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builder.checker.profiles import ShapeProfile, profile_problems
from builder.errors import CalibrationError
from builder.spec import Gate, load_spec
from builder.variants.accuracy import compare, gate_failures
from builder.variants.batches import batched, take
from builder.variants.calibration import load_calibration
from builder.variants.tensorrt_profiles import CalibrationCache, calibration_batches, optimization_profile
from tests.conftest import ROOT, linear_model

SEQUENCE = {
    "name": "seq",
    "source": "tests.tiny_models:sequence_mean",
    "max_batch_size": 8,
    "inputs": [
        {
            "name": "x",
            "dtype": "TYPE_FP32",
            "dims": [-1, 4],
            "shape_range": {"min": [1, 4], "opt": [6, 4], "max": [10, 4]},
        }
    ],
    "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
    "dynamic_batching": {"preferred_batch_size": [4]},
}


def _calibrated(data: str, **calibration: object) -> dict[str, object]:
    return linear_model(calibration={"data": data, "samples": 6, "holdout": 4, "batch_size": 4, **calibration})


def test_npy_data_is_split_into_disjoint_calibration_and_holdout_batches(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    samples = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    np.save(tmp_path / "data.npy", samples)
    spec = load_spec(write_spec(_calibrated("data.npy")))
    data = load_calibration(spec, spec.models[0])  # type: ignore[arg-type]
    assert [b["x"].shape[0] for b in data.calibration] == [4, 2]
    assert [b["x"].shape[0] for b in data.holdout] == [2, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.calibration]), samples[:6])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in data.holdout]), samples[6:10])
    assert data.record()["samples"] == 6 and data.record()["holdout"] == 4


def test_the_data_hash_follows_the_data(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    path = write_spec(_calibrated("data.npy"))
    np.save(tmp_path / "data.npy", np.zeros((10, 4), np.float32))
    first = load_calibration(spec := load_spec(path), spec.models[0])  # type: ignore[arg-type]
    np.save(tmp_path / "data.npy", np.ones((10, 4), np.float32))
    second = load_calibration(spec, spec.models[0])  # type: ignore[arg-type]
    assert first.feeds_sha256 != second.feeds_sha256 and first.source_sha256 != second.source_sha256


def test_too_little_data_names_the_counts_and_the_fix(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    np.save(tmp_path / "data.npy", np.zeros((7, 4), np.float32))
    spec = load_spec(write_spec(_calibrated("data.npy")))
    with pytest.raises(CalibrationError, match=r"holds 7 samples; samples \(6\) \+ holdout \(4\) need 10"):
        load_calibration(spec, spec.models[0])  # type: ignore[arg-type]


def test_data_of_the_wrong_shape_names_the_input_and_its_dims(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    np.save(tmp_path / "data.npy", np.zeros((10, 5), np.float32))
    spec = load_spec(write_spec(_calibrated("data.npy")))
    with pytest.raises(CalibrationError, match=r"input 'x' has item shape \[5\]; the model's dims are \[4\]"):
        load_calibration(spec, spec.models[0])  # type: ignore[arg-type]


def test_images_without_a_preprocessing_model_are_refused_with_the_fix(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    spec = load_spec(write_spec(_calibrated("images")))
    with pytest.raises(CalibrationError, match=r"set calibration\.through"):
        load_calibration(spec, spec.models[0])  # type: ignore[arg-type]


def test_through_must_name_a_python_model_that_outputs_the_inputs(write_spec: Callable[..., Path]) -> None:
    from builder.errors import SpecError

    with pytest.raises(SpecError, match=r"calibration.through = 'nope': not a python model of this spec"):
        load_spec(write_spec(_calibrated("x:y", through="nope")))


def test_example_images_go_through_the_served_preprocessing() -> None:
    from models.image_pipeline import ImagePreprocess

    spec = load_spec(ROOT / "models.yaml")
    model = spec.model("image_classifier")
    data = load_calibration(spec, model)  # type: ignore[arg-type]
    first_file = sorted((ROOT / "models/calibration/images").iterdir())[0]
    expected = ImagePreprocess(size=224)({"image_bytes": np.array([first_file.read_bytes()], dtype=object)})["image"]
    np.testing.assert_array_equal(data.calibration[0]["image"][0], expected[0])
    assert data.record()["samples"] == 64 and data.record()["holdout"] == 128
    assert data.description == "models/calibration/images through image_preprocess"


def test_a_callable_source_gives_batches(write_spec: Callable[..., Path]) -> None:
    spec = load_spec(write_spec(_calibrated("tests.tiny_models:calibration_batches")))
    data = load_calibration(spec, spec.models[0])  # type: ignore[arg-type]
    assert sum(b["x"].shape[0] for b in data.calibration) == 6


def test_batched_never_mixes_shapes_and_take_keeps_boundaries() -> None:
    feeds = [{"x": np.zeros((3, 2))}, {"x": np.zeros((3, 5))}]
    assert [b["x"].shape for b in batched(feeds, 2)] == [(2, 2), (1, 2), (2, 5), (1, 5)]
    assert [b["x"].shape[0] for b in take(feeds, 2, 3)] == [1, 2]


def test_profile_spans_batch_one_to_max_and_the_declared_shape_range(write_spec: Callable[..., Path]) -> None:
    spec = load_spec(write_spec(SEQUENCE))
    (profile,) = optimization_profile(spec.models[0])  # type: ignore[arg-type]
    assert profile == ShapeProfile("x", (1, 1, 4), (4, 6, 4), (8, 10, 4))


def test_profile_without_a_batch_dimension(write_spec: Callable[..., Path]) -> None:
    spec = load_spec(
        write_spec(
            linear_model(
                max_batch_size=0, dynamic_batching=None, inputs=[{"name": "x", "dtype": "TYPE_FP32", "dims": [2, 4]}]
            )
        )
    )
    assert optimization_profile(spec.models[0]) == (ShapeProfile("x", (2, 4), (2, 4), (2, 4)),)  # type: ignore[arg-type]


def test_config_beyond_the_profile_is_flagged() -> None:
    profile = [ShapeProfile("x", (1, 1, 4), (4, 6, 4), (8, 10, 4))]
    assert list(profile_problems(8, {"x": [-1, 4]}, profile)) == []
    problems = list(profile_problems(16, {"x": [-1, 5]}, profile))
    assert any("max_batch_size 16 exceeds the plan's largest batch 8" in p for p in problems)
    assert any("dims[1] = 5 is outside the plan's profile [4, 4]" in p for p in problems)
    assert list(profile_problems(8, {"y": [4]}, profile)) == [
        "input 'y' has no optimization profile; the plan's inputs are ['x']",
        "the plan's input 'x' is not in the config; add it with dims [10, 4]",
    ]


def test_calibration_batches_have_exactly_the_calibration_shape() -> None:
    profile = [ShapeProfile("x", (1, 1, 4), (4, 6, 4), (8, 10, 4))]
    feeds = [{"x": np.ones((3, 9, 4), np.float32)}, {"x": np.ones((3, 2, 4), np.float32)}]
    (batch,) = calibration_batches(feeds, profile, 4)  # the 2 items left over are dropped
    assert batch["x"].shape == (4, 6, 4)
    assert batch["x"][0].sum() == 6 * 4  # 9 steps cut to the opt length 6
    assert batch["x"][3, :2].sum() == 2 * 4 and batch["x"][3, 2:].sum() == 0  # 2 steps padded with zeros


def test_calibration_cache_is_keyed_by_everything_it_depends_on(tmp_path: Path) -> None:
    def cache(**change: str) -> CalibrationCache:
        key = {"onnx_sha256": "a", "feeds_sha256": "b", "tensorrt": "10.5.0", "shapes": "s", **change}
        return CalibrationCache(tmp_path, **key)

    assert cache().read() is None
    cache().write(b"table")
    assert cache().read() == b"table"
    for field in ("onnx_sha256", "feeds_sha256", "tensorrt", "shapes"):
        assert cache(**{field: "other"}).read() is None


def test_accuracy_figures_and_gate() -> None:
    spec_entry = linear_model(
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [3], "labels": str(ROOT / "models/labels.txt")}]
    )
    from builder.spec import OnnxModelSpec

    model = OnnxModelSpec.model_validate(spec_entry)
    reference = [{"y": np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])}]
    candidate = [{"y": np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.5, 1.0], [1.0, 0.0, 0.0]])}]
    (figures,) = compare(model, reference, candidate).values()
    assert figures.top1_agreement == 0.75 and figures.top1_classes == 3
    assert figures.max_abs_error == 1.5 and figures.mean_abs_error == pytest.approx(1.5 / 12)
    assert figures.cosine_min == pytest.approx(1 / np.sqrt(1 + 1.5**2))
    assert gate_failures(Gate(), {"y": figures}) == ["output 'y': top-1 agreement 75.00% < gate.top1_agreement 99.00%"]
    assert gate_failures(Gate(top1_agreement=0.75), {"y": figures}) == []
    assert gate_failures(Gate(top1_agreement=0.5, max_abs_error=1.0), {"y": figures}) == [
        "output 'y': max abs error 1.5 > gate.max_abs_error 1"
    ]

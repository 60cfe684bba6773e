"""Reduced-precision variants through the whole build: converted, gated against FP32 PyTorch,
recorded, reused only while nothing they depend on changed, and refused where TensorRT or a
GPU is missing (or skipped, when optional)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from builder.checker import PlanTarget, check_repository
from builder.errors import BuildError, ConversionError
from builder.pipeline import build_repository
from builder.spec import QuantizationOptions
from builder.variants.onnx_int8_fp16 import quantize_int8
from tests.conftest import linear_model, snapshot

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def quantized(variants: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    calibration = {"data": "calibration.npy", "samples": 16, "holdout": 24, "batch_size": 8}
    return linear_model(calibration=calibration, variants=variants, **overrides)


@pytest.fixture
def data(tmp_path: Path) -> Callable[[int], None]:
    def write(seed: int = 0) -> None:
        np.save(tmp_path / "calibration.npy", np.random.default_rng(seed).normal(size=(40, 4)).astype(np.float32))

    write()
    return write


def record(repo: Path, model: str) -> dict[str, Any]:
    return json.loads((repo / model / "1" / "build.json").read_text())  # type: ignore[no-any-return]


def test_int8_variant_is_quantized_gated_and_recorded(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    repo = tmp_path / "repo"
    build_repository(
        write_spec(quantized([{"name": "linear_int8", "precision": "int8"}])), repo, target="cpu", log=print
    )
    graph = onnx.load(str(repo / "linear_int8" / "1" / "model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert 'name: "linear_int8"' in (repo / "linear_int8" / "config.pbtxt").read_text()
    built = record(repo, "linear_int8")
    assert built["precision"] == "int8" and built["accuracy"]["passed"] is True
    assert built["accuracy"]["outputs"]["y"]["cosine_mean"] > 0.99
    assert built["accuracy"]["outputs"]["y"]["samples"] == 24
    assert built["calibration"]["samples"] == 16 and built["calibration"]["holdout"] == 24
    assert built["base"]["fingerprint"] == record(repo, "linear")["fingerprint"]
    assert set(built["built_from"]["tools"]) >= {"torch", "onnx", "onnxruntime", "tensorrt"}
    assert check_repository(repo, "cpu") == []


def test_fp16_variant_keeps_fp32_inputs_and_outputs(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    repo = tmp_path / "repo"
    build_repository(
        write_spec(quantized([{"name": "linear_fp16", "precision": "fp16"}])), repo, target="cpu", log=print
    )
    proto = onnx.load(str(repo / "linear_fp16" / "1" / "model.onnx"))
    assert {init.data_type for init in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert record(repo, "linear_fp16")["accuracy"]["outputs"]["y"]["cosine_mean"] > 0.999


def test_an_impossible_gate_fails_the_build_with_the_figures(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    repo = tmp_path / "repo"
    build_repository(
        write_spec(quantized([{"name": "linear_int8", "precision": "int8"}])), repo, target="cpu", log=print
    )
    before = snapshot(repo)
    strict = [{"name": "linear_int8", "precision": "int8", "gate": {"cosine": 1.0, "max_abs_error": 1e-9}}]
    with pytest.raises(BuildError) as failure:
        build_repository(write_spec(quantized(strict)), repo, target="cpu", log=print)
    message = str(failure.value)
    assert "linear_int8 v1 (onnx int8) is outside its accuracy gate" in message
    assert "> gate.max_abs_error 1e-09" in message
    assert "mean cosine similarity 0.9" in message and "< gate.cosine 1.0" in message
    assert "over 24 held-out samples" in message  # the figures, not only the verdict
    assert snapshot(repo) == before
    kept = json.loads((tmp_path / ".repo.build" / "work" / "linear_int8" / "1" / "build.json").read_text())
    assert kept["accuracy"]["passed"] is False


def test_provenance_follows_the_calibration_data_and_the_weights(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    repo = tmp_path / "repo"
    variants = [{"name": "linear_int8", "precision": "int8"}]
    spec = write_spec(quantized(variants))
    build_repository(spec, repo, target="cpu", log=print)
    first_base, first = record(repo, "linear"), record(repo, "linear_int8")

    summary = build_repository(spec, repo, target="cpu", log=print)
    assert {r.model: r.status for r in summary.results} == {"linear": "cached", "linear_int8": "cached"}

    data(1)
    summary = build_repository(spec, repo, target="cpu", log=print)
    assert {r.model: r.status for r in summary.results} == {"linear": "cached", "linear_int8": "built"}
    second = record(repo, "linear_int8")
    assert second["calibration"]["feeds_sha256"] != first["calibration"]["feeds_sha256"]
    assert second["fingerprint"] != first["fingerprint"]

    weights = tmp_path / "weights.pt"
    state = {k: torch.ones_like(v) for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    torch.save(state, weights)
    build_repository(write_spec(quantized(variants, weights="weights.pt")), repo, target="cpu", log=print)
    third_base, third = record(repo, "linear"), record(repo, "linear_int8")
    assert third_base["built_from"]["weights"]["sha256"] != (first_base["built_from"]["weights"] or {}).get("sha256")
    assert third["base"]["fingerprint"] == third_base["fingerprint"] != first_base["fingerprint"]


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message for machines without TensorRT")
def test_a_plan_without_tensorrt_says_what_to_do(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    spec = write_spec(quantized([{"name": "linear_plan", "format": "tensorrt", "precision": "fp16"}]))
    with pytest.raises(BuildError) as failure:
        build_repository(spec, tmp_path / "repo", target="gpu", log=print)
    message = str(failure.value)
    assert "variant 'linear_plan': a TensorRT plan needs the tensorrt Python package, which is not installed" in message
    assert "pip install tensorrt-cu12" in message and "optional: true" in message
    assert not (tmp_path / "repo").exists()

    with pytest.raises(BuildError, match="a TensorRT plan runs only on GPUs, and this build is for the cpu target"):
        build_repository(spec, tmp_path / "repo", target="cpu", log=print)


def test_an_optional_plan_is_skipped_with_a_warning(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    lines: list[str] = []
    spec = write_spec(quantized([{"name": "linear_plan", "format": "tensorrt", "precision": "int8", "optional": True}]))
    summary = build_repository(spec, tmp_path / "repo", target="cpu", log=lines.append)
    (skipped,) = [r for r in summary.results if r.model == "linear_plan"]
    assert skipped.status == "skipped" and "runs only on GPUs" in skipped.detail
    assert any(line.startswith("warning: linear_plan v1 skipped") for line in lines)
    assert not (tmp_path / "repo" / "linear_plan").exists()
    assert check_repository(tmp_path / "repo", "cpu") == []


def test_a_failed_conversion_names_an_artifact_that_exists(tmp_path: Path) -> None:
    # The base version lives in staging, which the failed build removes: the error must point
    # at a copy in the work directory that the build keeps.
    staged = tmp_path / "staging" / "linear" / "1" / "model.onnx"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"not an ONNX file")
    work = tmp_path / "work" / "linear_int8" / "1"
    with pytest.raises(ConversionError) as caught:
        quantize_int8(staged, work / "model.onnx", [], QuantizationOptions())
    shutil.rmtree(tmp_path / "staging")
    assert caught.value.artifact is not None and caught.value.artifact.is_file()
    assert caught.value.artifact.read_bytes() == b"not an ONNX file"
    assert str(caught.value).startswith("INT8 quantization of linear v1 failed: ")


def test_a_variant_is_built_only_for_its_targets(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    lines: list[str] = []
    spec = write_spec(quantized([{"name": "linear_fp16", "precision": "fp16", "targets": ["gpu"]}]))
    summary = build_repository(spec, tmp_path / "cpu", target="cpu", log=lines.append)
    (skipped,) = [r for r in summary.results if r.model == "linear_fp16"]
    assert (skipped.status, skipped.detail) == ("skipped", "for the gpu target only")
    assert "linear_fp16: not built for the cpu target (its targets: gpu)" in lines
    assert not (tmp_path / "cpu" / "linear_fp16").exists()
    # The gpu target builds and gates it (on the GPU where ONNX Runtime has one, else on the CPU).
    build_repository(spec, tmp_path / "gpu", target="gpu", log=lines.append)
    built = record(tmp_path / "gpu", "linear_fp16")
    assert built["accuracy"]["passed"] is True and built["accuracy"]["device"] in ("cpu", "cuda")
    assert "KIND_GPU" in (tmp_path / "gpu" / "linear_fp16" / "config.pbtxt").read_text()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT or not torch.cuda.is_available(), reason="needs TensorRT and a CUDA GPU")
def test_int8_plan_is_built_gated_and_reused(
    tmp_path: Path, write_spec: Callable[..., Path], data: Callable[[int], None]
) -> None:
    repo = tmp_path / "repo"
    spec = write_spec(quantized([{"name": "linear_plan", "format": "tensorrt", "precision": "int8"}]))
    build_repository(spec, repo, target="gpu", log=print)
    built = record(repo, "linear_plan")
    assert built["tensorrt"]["compute_capability"] and built["accuracy"]["passed"] is True
    assert 'platform: "tensorrt_plan"' in (repo / "linear_plan" / "config.pbtxt").read_text()
    assert list((tmp_path / ".repo.build" / "cache" / "linear_plan").glob("calibration-*.cache"))
    summary = build_repository(spec, repo, target="gpu", log=print)
    assert {r.model: r.status for r in summary.results}["linear_plan"] == "cached"


def plan_repository(root: Path, engine: dict[str, Any] | None, max_batch_size: int = 8) -> Path:
    """A repository whose plan model has a config and a build record. The checker reads only
    the record; the model.plan file is a placeholder that no server is given."""
    model = root / "linear_plan"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        "# Generated by the kit's builder from models.yaml for the gpu target\n"
        f'name: "linear_plan"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch_size}\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 3 ] }\n'
        "instance_group { kind: KIND_GPU }\n"
    )
    (model / "1" / "model.plan").write_bytes(b"placeholder for the checker's test")
    if engine is not None:
        (model / "1" / "build.json").write_text(json.dumps({"tensorrt": engine}))
    return root


ENGINE = {
    "version": "10.5.0.18",
    "gpu": "NVIDIA H200",
    "compute_capability": "9.0",
    "profiles": [{"name": "x", "min": [1, 4], "opt": [8, 4], "max": [8, 4]}],
}


def test_check_reports_plans_built_for_another_tensorrt_or_gpu(tmp_path: Path) -> None:
    repo = plan_repository(tmp_path / "repo", ENGINE)
    assert check_repository(repo, "gpu", PlanTarget("10.5", "9.0")) == []
    problems = [str(p) for p in check_repository(repo, "gpu", PlanTarget("10.3", "8.0"))]
    assert len(problems) == 2
    assert (
        "tensorrt.version = 10.5.0.18: the plan was built with TensorRT 10.5.0.18; the serving host has 10.3"
        in problems[0]
    )
    assert "tensorrt.compute_capability = 9.0" in problems[1] and "the serving GPU has 8.0" in problems[1]


def test_check_reports_plans_without_a_record_or_beyond_their_profile(tmp_path: Path) -> None:
    unrecorded = plan_repository(tmp_path / "a", None)
    (problem,) = check_repository(unrecorded, "gpu")
    assert "a plan without a build record cannot be matched" in str(problem)
    too_large = plan_repository(tmp_path / "b", ENGINE, max_batch_size=16)
    (problem,) = check_repository(too_large, "gpu")
    assert "max_batch_size 16 exceeds the plan's largest batch 8" in str(problem)


def test_each_calibration_method_sets_its_own_ranges(tiny_repository: Path, tmp_path: Path) -> None:
    from onnx import numpy_helper

    from builder.spec import QuantizationOptions
    from builder.variants.onnx_int8_fp16 import quantize_int8

    # Heavy tails: minmax covers the outliers, entropy and percentile clip them.
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.standard_t(2, size=(64, 4)) * 3).astype(np.float32)} for _ in range(4)]
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        out = tmp_path / f"{method}.onnx"
        quantize_int8(tiny_repository / "linear" / "1" / "model.onnx", out, feeds, QuantizationOptions(method=method))  # type: ignore[arg-type]
        graph = onnx.load(str(out)).graph
        scales[method] = {
            init.name: float(numpy_helper.to_array(init))
            for init in graph.initializer
            if init.name.endswith("_scale") and numpy_helper.to_array(init).size == 1
        }
    assert scales["minmax"].keys() == scales["entropy"].keys() == scales["percentile"].keys()
    for activation in scales["minmax"]:
        assert scales["entropy"][activation] < scales["minmax"][activation]
        assert scales["percentile"][activation] < scales["minmax"][activation]

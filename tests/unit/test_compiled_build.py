"""`torch_compiled` variants through the whole build: captured, compiled by AOTInductor, run in a
fresh process as served, gated against FP32 PyTorch, recorded, reused while unchanged, and
refused with the reason where they cannot be built or served."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from builder.checker import PlanTarget, check_repository
from builder.errors import BuildError, ConversionError, SpecError
from builder.pipeline import build_repository
from server.python_models.triton_kit_compiled import CompiledPackage
from tests.conftest import linear_model, snapshot

pytestmark = [pytest.mark.slow]


def compiled(**variant: Any) -> dict[str, Any]:
    calibration = {"data": "calibration.npy", "samples": 8, "holdout": 16, "batch_size": 8}
    spec = {"name": "linear_compiled", "format": "torch_compiled", "precision": "fp32", **variant}
    return linear_model(calibration=calibration, variants=[spec])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One compiled variant of the linear model, built for the cpu target, and the build's log."""
    import yaml

    root = tmp_path_factory.mktemp("compiled")
    np.save(root / "calibration.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    (root / "models.yaml").write_text(yaml.safe_dump({"models": [compiled()]}))
    lines: list[str] = []
    build_repository(root / "models.yaml", root / "repo", target="cpu", log=lines.append)
    return root, lines


def record(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "linear_compiled" / "1" / "build.json").read_text())  # type: ignore[no-any-return]


def test_the_package_is_compiled_gated_and_recorded(built: tuple[Path, list[str]]) -> None:
    root, lines = built
    repo = root / "repo"
    version = repo / "linear_compiled" / "1"
    assert {p.name for p in version.iterdir()} >= {
        "model.pt2",
        "model.py",
        "triton_kit_batching.py",
        "triton_kit_limits.py",
        "build.json",
    }
    config = (repo / "linear_compiled" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "kind: KIND_CPU" in config
    built_record = record(repo)
    assert built_record["format"] == "torch_compiled" and built_record["accuracy"]["passed"] is True
    assert built_record["accuracy"]["device"] == "cpu"
    assert built_record["accuracy"]["outputs"]["y"]["cosine_mean"] > 0.9999
    assert built_record["compiled"]["torch"] == torch.__version__ and built_record["compiled"]["device"] == "cpu"
    assert built_record["compiled"]["seconds"]["compile"] > 0
    assert any("compiling with AOTInductor for cpu" in line for line in lines)
    assert check_repository(repo, "cpu") == []


def test_the_served_runtime_answers_as_pytorch_at_every_batch_size(built: tuple[Path, list[str]]) -> None:
    from tests.tiny_models import linear

    package = CompiledPackage(str(built[0] / "repo" / "linear_compiled" / "1"), "cpu")
    for batch in (1, 3, 8):
        x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
        with torch.inference_mode():
            expected = linear()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(package({"x": x})["y"], expected, atol=1e-6)


def test_an_unchanged_rebuild_reuses_the_package_with_the_current_runtime(built: tuple[Path, list[str]]) -> None:
    from server.embedded import COMPILED_RUNTIME

    root, _ = built
    served = root / "repo" / "linear_compiled" / "1" / "model.py"
    served.write_text("# the runtime of an older kit\n")
    lines: list[str] = []
    build_repository(root / "models.yaml", root / "repo", target="cpu", log=lines.append)
    assert "linear_compiled v1: unchanged, reused" in lines
    assert served.read_text() == COMPILED_RUNTIME.read_text()


def test_a_package_from_another_torch_is_reported_and_refused(built: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(built[0] / "repo", repo)
    path = repo / "linear_compiled" / "1" / "build.json"
    altered = json.loads(path.read_text())
    altered["compiled"]["torch"] = "2.11.0+cu130"
    path.write_text(json.dumps(altered))
    problems = [str(p) for p in check_repository(repo, "cpu")]
    assert len(problems) == 1 and "compiled.torch = 2.11.0+cu130" in problems[0] and torch.__version__ in problems[0]
    assert check_repository(built[0] / "repo", "cpu", PlanTarget(torch_version="2.12.0")) != []
    with pytest.raises(RuntimeError, match=r"compiled by torch 2\.11\.0\+cu130 .* rebuild it"):
        CompiledPackage(str(path.parent), "cpu")


def test_a_model_torch_export_cannot_capture_is_refused_naming_it(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    from builder.spec import OnnxModelSpec, load_spec
    from builder.variants.torch_compiled import build_compiled

    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    entry = compiled()
    entry["source"] = "tests.tiny_models:data_dependent"
    model = load_spec(write_spec(entry)).models[0]
    assert isinstance(model, OnnxModelSpec)
    with pytest.raises(ConversionError) as caught:
        build_compiled(
            model, model.versions[0], model.variants[0], "cpu", tmp_path / "out", tmp_path / "cache", [], lambda _: None
        )
    message = str(caught.value)
    assert "linear_compiled v1: torch.export cannot capture model 'linear'" in message
    assert "torch.cond" in message
    assert not (tmp_path / "out").exists()


def test_a_failed_compiled_build_leaves_the_repository_as_it_was(
    built: tuple[Path, list[str]], tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(built[0] / "repo", repo)
    before = snapshot(repo)
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    with pytest.raises(BuildError, match="outside its accuracy gate"):
        build_repository(write_spec(compiled(precision="bf16", gate={"cosine": 1.0})), repo, target="cpu", log=print)
    assert snapshot(repo) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host where PyTorch sees no GPU")
def test_a_cuda_package_without_a_gpu_stops_or_is_skipped_when_optional(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    with pytest.raises(
        BuildError, match=r"'linear_compiled': the gpu target compiles for CUDA, and torch .* sees no CUDA GPU"
    ):
        build_repository(write_spec(compiled()), tmp_path / "repo", target="gpu", log=lambda _: None)
    summary = build_repository(write_spec(compiled(optional=True)), tmp_path / "repo", target="gpu", log=lambda _: None)
    (skipped,) = [r for r in summary.results if r.model == "linear_compiled"]
    assert skipped.status == "skipped" and "sees no CUDA GPU" in skipped.detail


def test_int8_is_not_a_compiled_precision(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    from builder.spec import load_spec

    with pytest.raises(SpecError, match=r"precision = 'int8': AOTInductor compiles floating-point models"):
        load_spec(write_spec(compiled(precision="int8")))


def test_the_cache_artifact_keeps_the_program_and_warm_starts_from_inductors_cache(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """What a torch that cannot load AOTInductor packages is given (`artifact: auto` falls back to it)."""
    from tests.tiny_models import linear

    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))
    repo = tmp_path / "repo"
    build_repository(write_spec(compiled(compile={"artifact": "inductor_cache"})), repo, target="cpu", log=print)
    version = repo / "linear_compiled" / "1"
    assert {"program.pt2", "inductor_cache.bin", "model.py"} <= {p.name for p in version.iterdir()}
    assert not (version / "model.pt2").exists()
    built_record = record(repo)
    assert built_record["compiled"]["artifact"] == "inductor_cache" and built_record["accuracy"]["passed"] is True
    assert [s[0]["shape"] for s in built_record["compiled"]["warm_shapes"]] == [[1, 4], [4, 4], [8, 4]]
    assert built_record["compiled"]["seconds"]["compile"] > 0 and built_record["compiled"]["seconds"]["load"] > 0
    assert check_repository(repo, "cpu") == []
    package = CompiledPackage(str(version), "cpu")
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    with torch.inference_mode():
        np.testing.assert_allclose(package({"x": x})["y"], linear()(torch.from_numpy(x)).numpy(), atol=1e-6)
    lines: list[str] = []
    build_repository(write_spec(compiled(compile={"artifact": "inductor_cache"})), repo, target="cpu", log=lines.append)
    assert "linear_compiled v1: unchanged, reused" in lines

    # As a CUDA-graph build records it (gpu target): compiled at max_batch_size only, smaller
    # batches padded to it and each caller given its own rows back.
    padded = tmp_path / "padded"
    shutil.copytree(version, padded)
    graph_record = json.loads((padded / "build.json").read_text())
    graph_record["compiled"].update(
        pad_batch=8, warm_shapes=[s for s in graph_record["compiled"]["warm_shapes"] if s[0]["shape"][0] == 8]
    )
    (padded / "build.json").write_text(json.dumps(graph_record))
    package = CompiledPackage(str(padded), "cpu")
    for rows in (1, 6, 8):
        with torch.inference_mode():
            expected = linear()(torch.from_numpy(x[:rows])).numpy()
        np.testing.assert_allclose(package({"x": x[:rows]})["y"], expected, atol=1e-6)


def test_cuda_graphs_are_used_where_one_padded_shape_serves_every_batch(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    np.save(tmp_path / "calibration.npy", np.zeros((24, 4), np.float32))
    from builder.spec import OnnxModelSpec, load_spec
    from builder.variants.torch_compiled import uses_cuda_graphs

    def decide(device: str, inputs: list[dict[str, Any]] | None = None, **options: Any) -> bool:
        entry = compiled(compile=options)
        if inputs is not None:
            entry["inputs"] = inputs
        (model,) = load_spec(write_spec(entry)).models
        assert isinstance(model, OnnxModelSpec)
        return uses_cuda_graphs(model, model.variants[0], device)

    variable = [{"name": "x", "dtype": "TYPE_FP32", "dims": [-1], "shape_range": {"min": [1], "max": [4]}}]
    assert decide("cuda") is True
    assert decide("cpu") is False
    assert decide("cuda", cuda_graphs=False) is False
    assert decide("cuda", artifact="aoti") is False  # a package has no graphs
    assert decide("cuda", inputs=variable) is False  # a variable dim: no single shape


def test_cuda_graphs_asked_for_where_they_cannot_serve_are_refused(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    np.save(tmp_path / "calibration.npy", np.zeros((24, 4), np.float32))
    from builder.spec import load_spec

    variable = [{"name": "x", "dtype": "TYPE_FP32", "dims": [-1], "shape_range": {"min": [1], "max": [4]}}]
    with pytest.raises(SpecError, match=r"cuda_graphs = true: a CUDA graph replays one shape, and inputs \['x'\]"):
        load_spec(write_spec({**compiled(compile={"cuda_graphs": True}), "inputs": variable}))
    with pytest.raises(SpecError, match=r"cuda_graphs = true with artifact 'aoti'"):
        load_spec(write_spec(compiled(compile={"cuda_graphs": True, "artifact": "aoti"})))

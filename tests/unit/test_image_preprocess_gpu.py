"""The gpu target's image preprocessing (GpuImagePreprocess) against the cpu target's, on the CPU:
the same pixels within one 8-bit level (the resize's rounding), the same top-1 of the example
classifier, the same errors for the same bad files; and its postprocessing (GpuClassifierPostprocess)
ranks and scores as the cpu target's. The nvJPEG decode itself runs on GPU hosts only
(tests/integration/test_gpu_serving.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builder.errors import SpecError
from builder.render import render_config, render_python_model
from builder.spec import PythonModelSpec, load_spec
from models.calibration import jpeg, scene
from models.image_classifier import build
from models.image_pipeline import (
    STD,
    ClassifierPostprocess,
    GpuClassifierPostprocess,
    GpuImagePreprocess,
    ImagePreprocess,
)
from tests.conftest import ROOT


def levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of normalized [..., 3, h, w] images in 8-bit levels of the pixels they came from."""
    return np.abs(a - b) * (STD * 255).reshape(3, 1, 1)


def jpegs(count: int, width: int, height: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [jpeg(rng, width, height) for _ in range(count)]


def batch(items: list[bytes]) -> dict[str, np.ndarray]:
    return {"image_bytes": np.array(items, dtype=object).reshape(-1, 1)}


@pytest.mark.parametrize(("width", "height"), [(500, 375), (96, 96), (180, 260)], ids=["down", "up", "mixed"])
def test_pixels_match_the_cpu_path_within_one_level(width: int, height: int) -> None:
    items = jpegs(8, width, height, seed=width)
    on_cpu = ImagePreprocess()(batch(items))["image"]
    on_device = GpuImagePreprocess(device="cpu")(batch(items))["image"]
    assert isinstance(on_device, torch.Tensor) and on_device.dtype == torch.float32
    difference = levels(on_device.numpy(), on_cpu)
    assert difference.max() <= 1.001, difference.max()
    assert difference.mean() < 0.25  # most values equal: only the resize's rounding differs


def test_a_batch_of_mixed_sizes_and_formats_keeps_its_order() -> None:
    png = io.BytesIO()
    scene(np.random.default_rng(3), 300, 200).save(png, "PNG")
    items = [*jpegs(2, 500, 375, seed=1), png.getvalue(), *jpegs(2, 64, 48, seed=2)]
    on_cpu = ImagePreprocess()(batch(items))["image"]
    on_device = GpuImagePreprocess(device="cpu")(batch(items))["image"].numpy()
    for index in range(len(items)):
        assert levels(on_device[index], on_cpu[index]).max() <= 1.001, index


def test_the_example_classifier_ranks_the_same_first_class() -> None:
    items = jpegs(48, 500, 375, seed=11)
    items += [path.read_bytes() for path in sorted((ROOT / "models/calibration/images").glob("*.jpg"))[:48]]
    classifier = build().eval()
    with torch.no_grad():
        on_cpu = classifier(torch.from_numpy(ImagePreprocess()(batch(items))["image"])).argmax(1)
        on_device = classifier(GpuImagePreprocess(device="cpu")(batch(items))["image"]).argmax(1)
    assert (on_cpu == on_device).float().mean().item() >= 0.995


def _bad_files() -> dict[str, bytes]:
    good = jpegs(1, 120, 90, seed=5)[0]
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    bomb = io.BytesIO()
    Image.new("L", (8000, 6000)).save(bomb, "PNG")
    return {
        "truncated": good[: len(good) // 2],
        "gif": gif.getvalue(),
        "noise": b"\x00\x01 not an image",
        "bomb": bomb.getvalue(),
    }


@pytest.mark.parametrize("kind", ["truncated", "gif", "noise", "bomb"])
def test_a_bad_file_gets_the_cpu_paths_error(kind: str) -> None:
    data = _bad_files()[kind]
    with pytest.raises(ValueError) as on_cpu:
        ImagePreprocess(max_pixels=40_000_000).decode(data)
    with pytest.raises(ValueError) as on_device:
        GpuImagePreprocess(max_pixels=40_000_000, device="cpu")(batch([data]))
    assert str(on_device.value) == str(on_cpu.value)


def test_the_gpu_target_serves_the_gpu_class_on_gpu_instances() -> None:
    spec = load_spec(ROOT / "models.yaml")
    model = next(m for m in spec.models if m.name == "image_preprocess")
    assert isinstance(model, PythonModelSpec) and model.gpu is not None
    on_gpu = render_python_model(model, "models.yaml", {}, "gpu")
    on_cpu = render_python_model(model, "models.yaml", {}, "cpu")
    assert "import GpuImagePreprocess as _Processor" in on_gpu
    assert 'device="cuda:" + args["model_instance_device_id"]' in on_gpu
    assert "import ImagePreprocess as _Processor" in on_cpu and "device=" not in on_cpu
    # Inputs by DLPack where Triton delivers them, which it then may do on the GPU.
    assert "dlpack=True" in on_gpu and "dlpack" not in on_cpu
    on_gpu_config, on_cpu_config = (render_config(model, "models.yaml", target) for target in ("gpu", "cpu"))
    assert "kind: KIND_GPU" in on_gpu_config and "kind: KIND_CPU" in on_cpu_config
    assert 'key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" }' in on_gpu_config
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in on_cpu_config


@pytest.mark.parametrize("arrives_as", ["torch", "numpy"])
def test_the_gpu_postprocess_ranks_and_scores_as_the_cpu_one(arrives_as: str) -> None:
    labels = str(ROOT / "models" / "labels.txt")
    logits = np.random.default_rng(9).normal(size=(16, 1000)).astype(np.float32)
    logits[3, 10:20] = 6.0  # ties: the stable ranking keeps the lower class first, as on the CPU
    logits[7] = 0.0
    expected = ClassifierPostprocess(labels, top_k=5)({"logits": logits})
    given = torch.from_numpy(logits) if arrives_as == "torch" else logits
    on_device = GpuClassifierPostprocess(labels, top_k=5, device="cpu")({"logits": given})
    assert on_device["labels"].tolist() == expected["labels"].tolist()
    assert on_device["labels"][3].tolist() == [f"class_{i:04d}".encode() for i in range(10, 15)]
    np.testing.assert_allclose(on_device["scores"], expected["scores"], rtol=1e-6)
    assert on_device["scores"].dtype == np.float32 and on_device["labels"].shape == (16, 5)


def test_the_build_checks_the_gpu_class_with_its_options(tmp_path: Path) -> None:
    from builder.errors import SourceError
    from builder.python_model import assemble_python_model

    spec = load_spec(ROOT / "models.yaml")
    model = next(m for m in spec.models if m.name == "image_preprocess")
    assert isinstance(model, PythonModelSpec) and model.gpu is not None
    broken = model.model_copy(update={"gpu": model.gpu.model_copy(update={"options": {"sizes": 3}})})
    with pytest.raises(SourceError, match=r"GpuImagePreprocess.*sizes"):
        assemble_python_model(broken, "models.yaml", tmp_path / "1", "gpu")
    assert not (tmp_path / "1").exists()


def test_a_gpu_class_on_instances_pinned_to_the_cpu_is_a_spec_error(write_spec) -> None:
    entry = {
        "name": "preprocess",
        "kind": "python",
        "source": "models.image_pipeline:ImagePreprocess",
        "gpu": {"source": "models.image_pipeline:GpuImagePreprocess"},
        "instance_group": [{"kind": "KIND_GPU"}, {"kind": "KIND_CPU", "count": 2}],
        "max_batch_size": 4,
        "inputs": [{"name": "image_bytes", "dtype": "TYPE_STRING", "dims": [1]}],
        "outputs": [{"name": "image", "dtype": "TYPE_FP32", "dims": [3, 224, 224]}],
    }
    with pytest.raises(SpecError) as caught:
        load_spec(write_spec(entry))
    (problem,) = caught.value.problems
    assert "model 'preprocess'" in problem and "instance_group[1].kind = 'KIND_CPU'" in problem
    assert "leave kind out" in problem

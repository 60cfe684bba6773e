"""Convert step for TensorRT variants: a plan from the verified ONNX file, through the real
`tensorrt` Python API. Kept thin: shapes, calibration batches and caches are prepared by
builder.variants.tensorrt_profiles, which is tested without TensorRT; this module only talks to TensorRT.

Where TensorRT or a CUDA GPU is missing, `require_tensorrt` says so, with what to do.
Device buffers are PyTorch CUDA tensors, so nothing beyond torch and tensorrt is needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from builder.checker.profiles import ShapeProfile
from builder.errors import ConversionError
from builder.spec import Precision, TensorRTOptions
from builder.variants.batches import Feed
from builder.variants.tensorrt_profiles import CalibrationCache, calibration_batches

__all__ = ["Gpu", "build_plan", "installed_tensorrt", "require_tensorrt", "run_plan"]

INSTALL_HINT = (
    "install TensorRT for your CUDA version (pip install tensorrt-cu12, from NVIDIA's index "
    "https://pypi.nvidia.com) or build inside NVIDIA's TensorRT/PyTorch container "
    "(nvcr.io/nvidia/pytorch:24.10-py3 matches the Triton 24.10 image); or mark the variant "
    "optional: true to skip it on machines without TensorRT"
)


@dataclass(frozen=True)
class Gpu:
    """The GPU a plan is built for: plans only run on GPUs of the same compute capability."""

    name: str
    compute_capability: str


def installed_tensorrt() -> str | None:
    """The version of the tensorrt package, or None when it is not installed."""
    for distribution in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


def require_tensorrt(variant: str) -> tuple[Any, Gpu]:
    """The tensorrt module and the GPU to build on.

    Raises:
        ConversionError: TensorRT cannot be imported, or PyTorch sees no CUDA GPU; the message
            says what to install or how to skip the variant.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise ConversionError(
            f"variant {variant!r}: a TensorRT plan needs the tensorrt Python package, which is not installed ({exc})",
            problems=[INSTALL_HINT],
        ) from None
    if not torch.cuda.is_available():
        raise ConversionError(
            f"variant {variant!r}: a TensorRT plan is built on the GPU it will run on, and PyTorch sees no CUDA GPU "
            f"here (torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'})",
            problems=["build on a GPU host with a CUDA build of PyTorch, or mark the variant optional: true"],
        )
    major, minor = torch.cuda.get_device_capability(0)
    return trt, Gpu(torch.cuda.get_device_name(0), f"{major}.{minor}")


def build_plan(
    trt: Any,
    onnx_path: Path,
    plan_path: Path,
    *,
    profiles: Sequence[ShapeProfile],
    precision: Precision,
    options: TensorRTOptions,
    calibration: Sequence[Feed],
    calibration_batch: int,
    calibration_cache: CalibrationCache | None,
    timing_cache: Path | None,
) -> dict[str, Any]:
    """Build and write a plan; return the engine's facts for the build record.

    Raises:
        ConversionError: with every ONNX parser error, or TensorRT's reason for not building.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ConversionError(
            f"TensorRT's ONNX parser refused {onnx_path}:",
            problems=[str(parser.get_error(i)) for i in range(parser.num_errors)],
            artifact=onnx_path,
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.optimization_level
    config.add_optimization_profile(_profile(builder, profiles))
    flags = {"fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"]}.get(precision, [])
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    calibrator = None
    if precision == "int8":
        batches = list(calibration_batches(calibration, profiles, calibration_batch))
        if not batches:
            raise ConversionError(
                f"INT8 calibration of {onnx_path}: fewer calibration samples than one batch of {calibration_batch}"
            )
        shapes = [ShapeProfile(p.name, *(batches[0][p.name].shape,) * 3) for p in profiles]
        calibrator = _entropy_calibrator(trt, batches, calibration_cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(_profile(builder, shapes))
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(
            f"TensorRT could not build a {precision} plan from {onnx_path}; its log above says why",
            problems=["a larger tensorrt.workspace_bytes or a lower tensorrt.optimization_level can help"],
            artifact=onnx_path,
        )
    plan_path.write_bytes(bytes(serialized))
    if cache is not None and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "precision": precision,
        "flags": flags,
        "profiles": [p.record() for p in profiles],
        "workspace_bytes": options.workspace_bytes,
        "optimization_level": options.optimization_level,
        "calibration_cache": None if calibration_cache is None else calibration_cache.path.name,
    }


def run_plan(trt: Any, plan_path: Path, feeds: Sequence[Feed]) -> list[dict[str, NDArray[Any]]]:
    """Run a plan over `feeds` (one execution per batch), for the accuracy gate."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    stream = torch.cuda.current_stream()
    results = []
    for feed in feeds:
        keep = {name: torch.from_numpy(np.ascontiguousarray(array)).cuda() for name, array in feed.items()}
        for name, tensor in keep.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name in outputs:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            keep[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, keep[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ConversionError(f"running the plan {plan_path} failed; TensorRT's log above says why")
        stream.synchronize()
        results.append({name: keep[name].cpu().numpy() for name in outputs})
    return results


def _profile(builder: Any, profiles: Sequence[ShapeProfile]) -> Any:
    profile = builder.create_optimization_profile()
    for shape in profiles:
        profile.set_shape(shape.name, shape.min, shape.opt, shape.max)
    return profile


def _entropy_calibrator(trt: Any, batches: list[Feed], cache: CalibrationCache | None) -> Any:
    """TensorRT's entropy calibrator over prepared batches, with a reused calibration table."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.pending = iter(batches)
            self.device: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None
            self.device = [torch.from_numpy(batch[name]).cuda() for name in names]
            return [int(t.data_ptr()) for t in self.device]

        def read_calibration_cache(self) -> bytes | None:
            return None if cache is None else cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                cache.write(bytes(data))

    return EntropyCalibrator()

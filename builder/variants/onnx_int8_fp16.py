"""Convert step for ONNX variants: static INT8 quantization (QDQ) and FP16 conversion, both with
ONNX Runtime's own tools, so the result runs wherever ONNX Runtime does."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from builder.errors import ConversionError
from builder.spec import QuantizationOptions
from builder.variants.batches import Feed

__all__ = ["convert_fp16", "onnx_device", "quantize_int8", "run_onnx"]


def quantize_int8(
    source: Path, destination: Path, calibration: Sequence[Feed], options: QuantizationOptions
) -> dict[str, Any]:
    """Quantize `source` to a QDQ INT8 model calibrated on `calibration`; return what was done.

    Raises:
        ConversionError: quantization failed; the message names the model file and the cause.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds: Iterator[Feed] = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self.feeds, None)

    prepared = destination.with_name("prepared.onnx")
    ranges = destination.with_name("ranges.json")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[options.method]
    try:
        with _quiet():
            shape_inference = _prepare(quant_pre_process, source, prepared)
            graph = onnx.load(str(prepared), load_external_data=False).graph
            excluded = [n.name for n in graph.node if n.name in options.exclude or n.op_type in options.exclude]
            cache = None
            if options.method == "entropy":
                # quantize_static's entropy calibrator histograms into as many bins as it
                # quantizes to, which leaves no threshold to search: its ranges equal minmax's.
                # TensorRT's entropy calibration uses 2048 bins for 128 quantized ones.
                calibrator = create_calibrator(
                    prepared,
                    augmented_model_path=str(destination.with_name("augmented.onnx")),
                    calibrate_method=method,
                    extra_options={"num_bins": 2048, "num_quantized_bins": 128},
                )
                calibrator.collect_data(Reader())
                save_tensors_data(calibrator.compute_data(), ranges)
                cache = ranges
            quantize_static(
                str(prepared),
                str(destination),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=excluded,
                calibration_cache_path=cache,
            )
    except Exception as exc:
        raise ConversionError(
            f"INT8 quantization of {source.parent.parent.name} v{source.parent.name} failed: {_describe(exc)}",
            problems=["try quantization.method: minmax, or keep the failing nodes in float with quantization.exclude"],
            artifact=_keep_input(source, destination),
        ) from exc
    finally:
        for scratch in (prepared, ranges, destination.with_name("augmented.onnx")):
            scratch.unlink(missing_ok=True)
    return {
        **options.model_dump(mode="json"),
        "format": "QDQ",
        "excluded_nodes": excluded,
        "shape_inference": shape_inference,
    }


def _prepare(quant_pre_process: Callable[..., None], source: Path, prepared: Path) -> str:
    """Shape inference and graph fusion (batch norm into convolutions) first, as ONNX Runtime
    recommends: fewer, fused tensors quantize with less error. Returns how shapes were inferred.

    ONNX Runtime's symbolic shape inference lags the ONNX opsets of its own minor release: 1.30
    ignores `Shape`'s start/end (opset 15) and fails an assertion on torch.export graphs with
    variable dims. ONNX's own shape inference still types every tensor there, which is all the
    quantizer needs; the accuracy gate judges the result either way.
    """
    try:
        quant_pre_process(str(source), str(prepared))
        return "symbolic"
    except Exception as exc:
        reason = _describe(exc)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        return f"onnx (onnxruntime {ort.__version__}'s symbolic shape inference failed: {reason})"


def convert_fp16(source: Path, destination: Path) -> dict[str, Any]:
    """Convert weights and compute of `source` to float16, keeping FP32 inputs and outputs so
    the config and clients stay unchanged.

    Raises:
        ConversionError: the conversion failed.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        with _quiet():
            converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(converted, str(destination))
    except Exception as exc:
        raise ConversionError(
            f"FP16 conversion of {source.parent.parent.name} v{source.parent.name} failed: {_describe(exc)}",
            artifact=_keep_input(source, destination),
        ) from exc
    return {"keep_io_types": True}


def run_onnx(path: Path, feeds: Sequence[Feed], device: str = "cpu") -> list[dict[str, NDArray[Any]]]:
    """Run an ONNX file over `feeds`, one call per batch, on the CPU or (`device="cuda"`) on the
    first GPU with ONNX Runtime's CUDA provider."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise ConversionError(
            f"ONNX Runtime could not start its CUDA provider to run {path} "
            f"(onnxruntime {ort.__version__} offers {', '.join(ort.get_available_providers())})",
            problems=[
                "install onnxruntime-gpu with its CUDA libraries (`make venv` on a GPU host), or build with TARGET=cpu"
            ],
        )
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, (np.asarray(v) for v in session.run(names, feed)), strict=True)) for feed in feeds]


def onnx_device(target: str) -> str:
    """Where ONNX variants are judged: on the GPU for the gpu target, as they will be served,
    where this onnxruntime has the CUDA provider; on the CPU otherwise."""
    return "cuda" if target == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def _describe(exc: BaseException) -> str:
    """The exception and, for a bare assertion inside a tool, where it failed."""
    if str(exc):
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {frames[-1].name} ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{where}"


def _keep_input(source: Path, destination: Path) -> Path:
    """Copy the conversion's input next to its output, in the work directory a failed build
    keeps: the base version itself lives in staging, which the failed build removes."""
    kept = destination.with_name(f"input-{source.name}")
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, kept)
    return kept


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer prints progress and logs advice on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)

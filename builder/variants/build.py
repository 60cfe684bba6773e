"""Variant step: reduced-precision builds of a verified ONNX version, each judged by its
accuracy gate against the FP32 PyTorch model and recorded with what it was built from.

A variant version is rebuilt whenever anything it depends on changed: the base model's
fingerprint, the variant's options, the calibration data, the tool versions and, for plans,
the TensorRT version and the GPU's compute capability, so a plan is never reused on a machine
it was not built for.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from builder.checker.config import FORMATS
from builder.checker.records import BUILD_RECORD, read_record
from builder.errors import AccuracyError, ConversionError
from builder.export.fingerprint import Fingerprint, sha256_file, tool_versions
from builder.export.source import instantiate
from builder.export.verify import run_torch
from builder.repository import Workspace, link_tree
from builder.spec import OnnxModelSpec, VariantSpec, VersionSpec
from builder.targets import Target
from builder.variants.accuracy import OutputAccuracy, compare, gate_failures
from builder.variants.batches import Feed, batched
from builder.variants.calibration import CalibrationSet
from builder.variants.onnx_int8_fp16 import convert_fp16, onnx_device, quantize_int8, run_onnx
from builder.variants.tensorrt_plan import Gpu, build_plan, installed_tensorrt, require_tensorrt, run_plan
from builder.variants.tensorrt_profiles import CalibrationCache, optimization_profile
from builder.variants.torch_compiled import (
    PACKAGE,
    PROGRAM,
    LoadCrashed,
    build_compiled,
    compile_device,
    compile_identity,
    compiled_limits,
    install_runtime,
)

__all__ = ["BaseVersion", "Skipped", "build_variant"]


class Skipped(Exception):
    """An optional variant this machine cannot build; the message says why."""


@dataclass
class BaseVersion:
    """One built version of the base model, and what all its variants share."""

    model: OnnxModelSpec
    version: VersionSpec
    directory: Path
    data: CalibrationSet

    @cached_property
    def reference(self) -> list[dict[str, Any]]:
        """The FP32 PyTorch outputs on the held-out data, computed once for all variants."""
        return run_torch(instantiate(self.model, self.version), self.model, self.holdout)

    @cached_property
    def fingerprint(self) -> str | None:
        """The base version's fingerprint, from its build record."""
        fingerprint = read_record(self.directory).get("fingerprint")
        return fingerprint if isinstance(fingerprint, str) else None

    @cached_property
    def holdout(self) -> list[Feed]:
        """The held-out batches, none larger than the model's max_batch_size."""
        calibration = self.model.calibration
        assert calibration is not None  # load_spec requires it for variants
        return list(batched(self.data.holdout, min(calibration.batch_size, self.model.max_batch_size)))


def build_variant(
    base: BaseVersion,
    variant: VariantSpec,
    workspace: Workspace,
    *,
    force: bool,
    target: Target,
    log: Callable[[str], None],
) -> tuple[Literal["built", "cached"], str]:
    """Build, gate and record one version of a variant into the staging repository.

    Returns ("built" | "cached", detail for the summary).

    Raises:
        Skipped: an optional TensorRT variant on a machine without TensorRT or a GPU.
        ConversionError: the conversion failed, or TensorRT/a GPU is missing for a required plan.
        AccuracyError: the variant is outside its gate; the message carries the figures.
    """
    number = base.version.version
    label = f"{variant.name} v{number}"
    trt, gpu = _tensorrt_for(variant, target)
    compiled_on = _compile_device_for(variant, target)
    current = _fingerprint(base, variant, gpu, compiled_on)
    filename = FORMATS[variant.format].filename
    previous = workspace.repository / variant.name / str(number)
    staged = workspace.staging / variant.name / str(number)
    recorded = read_record(previous)
    if not force and recorded.get("fingerprint") == current.digest and _artifact(previous, filename).is_file():
        link_tree(previous, staged)
        if compiled_on is not None:
            install_runtime(staged)
        log(f"{label}: unchanged, reused")
        return "cached", _summary(variant, recorded.get("accuracy", {}).get("outputs", {}))
    if variant.format == "tensorrt" and recorded.get("tensorrt"):
        log(f"{label}: rebuilding the plan ({_plan_change(recorded['tensorrt'], current.inputs['tensorrt'])})")
    if variant.format == "torch_compiled" and recorded.get("compiled"):
        log(
            f"{label}: recompiling ({_plan_change(recorded['compiled'], current.inputs['compiled'], ('torch', 'device', 'compute_capability'))})"
        )
    log(f"{label}: converting to {variant.format} {variant.precision}")
    work = workspace.work_dir(variant.name, number)
    artifact = work / filename
    started = time.perf_counter()
    candidate: Sequence[dict[str, Any]] = ()
    if compiled_on is not None:
        try:
            conversion, candidate = build_compiled(
                base.model, base.version, variant, compiled_on, work, workspace.cache / "inductor", base.holdout, log
            )
        except LoadCrashed as exc:
            if variant.optional:
                raise Skipped(str(exc).splitlines()[0]) from exc
            raise
    else:
        conversion = _convert(base, variant, artifact, workspace, trt, number)
    converted = time.perf_counter()
    if variant.format == "tensorrt":
        device = "cuda"
        candidate = run_plan(trt, artifact, base.holdout)
    elif compiled_on is not None:
        device = compiled_on
        artifact = _artifact(work, filename)
    else:
        device = onnx_device(target)
        candidate = run_onnx(artifact, base.holdout, device)
    accuracy = compare(base.model, base.reference, candidate)
    failures = gate_failures(variant.gate, accuracy)
    gated = time.perf_counter()
    record = {
        "model": variant.name,
        "version": number,
        "format": variant.format,
        "precision": variant.precision,
        "artifact_sha256": sha256_file(artifact),
        "base": {
            "model": base.model.name,
            "version": number,
            "fingerprint": base.fingerprint,
        },
        "fingerprint": current.digest,
        "built_from": current.inputs,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {"convert": round(converted - started, 3), "gate": round(gated - converted, 3)},
        "conversion": None if compiled_on is not None else conversion,
        "calibration": base.data.record(),
        "tensorrt": current.inputs["tensorrt"],
        "compiled": conversion if compiled_on is not None else None,  # what the served runtime reads
        "accuracy": {
            "gate": variant.gate.model_dump(mode="json"),
            "device": device,
            "passed": not failures,
            "outputs": {name: figures.record() for name, figures in accuracy.items()},
        },
    }
    (work / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if failures:
        raise AccuracyError(
            f"variant {label} ({variant.format} {variant.precision}) is outside its accuracy gate against FP32 PyTorch:",
            problems=[*failures, *(f"output {name!r}: {figures.figures()}" for name, figures in accuracy.items())],
            artifact=work,
        )
    staged.parent.mkdir(parents=True, exist_ok=True)
    work.rename(staged)
    detail = _summary(variant, record["accuracy"]["outputs"])
    log(f"{label}: built ({detail})")
    return "built", detail


def _tensorrt_for(variant: VariantSpec, target: Target) -> tuple[Any, Gpu | None]:
    if variant.format != "tensorrt":
        return None, None
    try:
        if target != "gpu":
            raise ConversionError(
                f"variant {variant.name!r}: a TensorRT plan runs only on GPUs, and this build is for the cpu target",
                problems=["build with TARGET=gpu on a GPU host, or mark the variant optional: true"],
            )
        return require_tensorrt(variant.name)
    except ConversionError as exc:
        if variant.optional:
            raise Skipped(str(exc).splitlines()[0]) from exc
        raise


def _artifact(directory: Path, filename: str) -> Path:
    """The version's main file: a compiled variant keeps its exported program where no package loads."""
    if filename == PACKAGE and not (directory / PACKAGE).exists():
        return directory / PROGRAM
    return directory / filename


def _compile_device_for(variant: VariantSpec, target: Target) -> str | None:
    if variant.format != "torch_compiled":
        return None
    try:
        return compile_device(variant, target)
    except ConversionError as exc:
        if variant.optional:
            raise Skipped(str(exc).splitlines()[0]) from exc
        raise


def _fingerprint(base: BaseVersion, variant: VariantSpec, gpu: Gpu | None, compiled_on: str | None) -> Fingerprint:
    calibration = base.model.calibration
    assert calibration is not None  # load_spec requires it for variants
    tensorrt = None
    if variant.format == "tensorrt" and gpu is not None:
        tensorrt = {
            "version": installed_tensorrt(),
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "profiles": [p.record() for p in optimization_profile(base.model)],
        }
    inputs = {
        "base_fingerprint": base.fingerprint,
        "variant": variant.model_dump(mode="json", exclude={"optional", *_unused_options(variant)}),
        "calibration": {
            **calibration.model_dump(mode="json", exclude={"data"}),
            "source_sha256": base.data.source_sha256,
            "feeds_sha256": base.data.feeds_sha256,
        },
        "tools": {**tool_versions(), "tensorrt": installed_tensorrt()},
        "tensorrt": tensorrt,
        "compiled": None
        if compiled_on is None
        else {**compile_identity(compiled_on), "limits": compiled_limits(base.model)},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return Fingerprint(digest=digest, inputs=inputs)


def _convert(
    base: BaseVersion, variant: VariantSpec, artifact: Path, workspace: Workspace, trt: Any, number: int
) -> dict[str, Any]:
    source = base.directory / FORMATS["onnx"].filename
    if variant.format == "onnx":
        if variant.precision == "int8":
            return quantize_int8(source, artifact, base.data.calibration, variant.quantization)
        return convert_fp16(source, artifact)
    profiles = optimization_profile(base.model)
    calibration = base.model.calibration
    assert calibration is not None
    batch = min(calibration.batch_size, base.model.max_batch_size or 1)
    version = installed_tensorrt() or "unknown"
    cache = CalibrationCache(
        workspace.cache / variant.name,
        onnx_sha256=sha256_file(source),
        feeds_sha256=base.data.feeds_sha256,
        tensorrt=version,
        shapes=json.dumps([p.record() for p in profiles]) + f"/{batch}",
    )
    timing = workspace.cache / f"timing-tensorrt-{version}.cache" if variant.tensorrt.timing_cache else None
    return build_plan(
        trt,
        source,
        artifact,
        profiles=profiles,
        precision=variant.precision,
        options=variant.tensorrt,
        calibration=base.data.calibration,
        calibration_batch=batch,
        calibration_cache=cache if variant.precision == "int8" else None,
        timing_cache=timing,
    )


def _unused_options(variant: VariantSpec) -> set[str]:
    """The option blocks of the other formats: changing them must not rebuild this variant."""
    used = {"onnx": "quantization", "tensorrt": "tensorrt", "torch_compiled": "compile"}[variant.format]
    return {"quantization", "tensorrt", "compile"} - {used}


def _plan_change(
    recorded: dict[str, Any],
    current: dict[str, Any] | None,
    keys: tuple[str, ...] = ("version", "compute_capability"),
) -> str:
    if current is None:
        return "no GPU to check it against"
    changes = [
        f"{key} {recorded.get(key)} -> {current.get(key)}" for key in keys if recorded.get(key) != current.get(key)
    ]
    return "built with " + "; ".join(changes) if changes else "its inputs changed"


def _summary(variant: VariantSpec, outputs: dict[str, Any]) -> str:
    parts = []
    for name, figures in outputs.items():
        accuracy = OutputAccuracy(**figures)
        if accuracy.judged_by == "top1_agreement" and accuracy.top1_agreement is not None:
            parts.append(
                f"{name} top-1 {accuracy.top1_agreement:.2%} ({accuracy.top1_classes} classes), cosine {accuracy.cosine_mean:.5f}"
            )
        else:
            parts.append(f"{name} cosine {accuracy.cosine_mean:.5f}")
    return f"{variant.format} {variant.precision}, gate passed: " + ", ".join(parts)

"""Verify step: the exported ONNX model is valid, matches the spec, and computes what PyTorch does.

Checks, in order, each collecting every problem before raising once:
1. `onnx.checker` (full check) and strict shape inference;
2. the graph's input/output names, dtypes, ranks and dims equal the spec (so the rendered
   config matches the model Triton loads), after an output dim the exporter pinned but ONNX
   Runtime shows varying is made variable (builder/export/dims.py);
3. PyTorch and ONNX Runtime agree on seeded inputs at batch 1, a middle size and
   max_batch_size, at the smallest and largest declared variable dims, within each output's
   atol/rtol, and every output's shape fits its declared dims at each of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from builder.checker.signature import check_signature
from builder.errors import VerificationError
from builder.export.dims import free_pinned_outputs
from builder.export.samples import cases, make_inputs
from builder.spec import InputSpec, OnnxModelSpec, OutputSpec

__all__ = ["OutputAgreement", "VerificationReport", "run_torch", "verify_onnx"]


@dataclass
class OutputAgreement:
    """Worst difference between PyTorch and ONNX Runtime seen for one output over all cases."""

    max_abs_error: float = 0.0
    max_rel_error: float = 0.0


@dataclass
class VerificationReport:
    """What verification ran and the worst errors it measured, for the build record."""

    cases: list[str] = field(default_factory=list)
    outputs: dict[str, OutputAgreement] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What verification corrected in the file (an output dim the exporter pinned, made variable)."""


def verify_onnx(module: nn.Module, model: OnnxModelSpec, path: Path) -> VerificationReport:
    """Run all checks on the ONNX file at `path` exported from `module`.

    Raises:
        VerificationError: listing every failed check; `artifact` points at the ONNX file.
    """
    problems = list(_checker_problems(path))
    notes = [] if problems else free_pinned_outputs(path, model)
    if not problems:
        problems = check_signature(
            onnx.load(str(path), load_external_data=False), model.max_batch_size, model.inputs, model.outputs
        )
    if problems:
        raise VerificationError(
            f"model {model.name!r}: the exported ONNX model does not match the spec", problems=problems, artifact=path
        )
    report = _compare_outputs(module, model, path)
    report.notes = notes
    return report


def run_torch(
    module: nn.Module, model: OnnxModelSpec, feeds: Sequence[dict[str, NDArray[Any]]]
) -> list[dict[str, NDArray[Any]]]:
    """The PyTorch module's outputs, by output name, for each batch of `feeds`."""
    names = [t.name for t in model.outputs]
    results = []
    with torch.inference_mode():
        for feed in feeds:
            leaves = _leaves(module(*(torch.from_numpy(feed[t.name]) for t in model.inputs)))
            results.append(dict(zip(names, leaves, strict=True)))
    return results


def _checker_problems(path: Path) -> Iterator[str]:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        yield f"onnx.checker: {exc}"
        return
    # Written next to the model (not over it) so the artifact stays byte-for-byte what was exported.
    inferred = path.with_name(f"{path.stem}.inferred{path.suffix}")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        yield f"onnx shape inference: {exc}"
    finally:
        inferred.unlink(missing_ok=True)


def _compare_outputs(module: nn.Module, model: OnnxModelSpec, path: Path) -> VerificationReport:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(model.seed)
    report = VerificationReport(outputs={t.name: OutputAgreement() for t in model.outputs})
    problems: list[str] = []
    output_names = [t.name for t in model.outputs]
    shapes: dict[str, list[tuple[str, tuple[int, ...]]]] = {name: [] for name in output_names}
    for case in cases(model):
        inputs = make_inputs(model, case, rng)
        report.cases.append(case.describe())
        try:
            with torch.inference_mode():
                expected = _leaves(module(*(torch.from_numpy(inputs[t.name]) for t in model.inputs)))
        except Exception as exc:  # the spec's ranges asked for inputs the model cannot take
            raise VerificationError(
                f"model {model.name!r}: PyTorch's forward() raised {type(exc).__name__} at {case.describe()}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else '(no message)'}",
                problems=[
                    *(_declared_range(t) for t in model.inputs),
                    "verification feeds inputs across these ranges: narrow them to what the model accepts "
                    "(ids below its vocabulary size, lengths within its position table)",
                ],
            ) from exc
        try:
            actual = session.run(output_names, inputs)
        except Exception as exc:
            problems.append(f"at {case.describe()}: ONNX Runtime failed: {str(exc).strip().splitlines()[0]}")
            continue
        for spec, ref, got in zip(model.outputs, expected, map(np.asarray, actual), strict=True):
            problems.extend(_compare(spec, ref, got, case.describe(), report.outputs[spec.name]))
            shapes[spec.name].append((case.describe(), got.shape))
    for spec in model.outputs:
        problems.extend(_declared_dims_problems(spec, model.max_batch_size > 0, shapes[spec.name]))
    if problems:
        raise VerificationError(
            f"model {model.name!r}: ONNX Runtime's outputs differ from PyTorch's", problems=problems, artifact=path
        )
    return report


def _declared_dims_problems(
    spec: OutputSpec, batched: bool, seen: Sequence[tuple[str, tuple[int, ...]]]
) -> Iterator[str]:
    """Where the shapes the model returned contradict the output's declared dims: what Triton's
    metadata would promise is what the model must return, at every verified size."""
    offset = 1 if batched else 0
    declared = list(spec.dims)
    for where, shape in seen:
        if len(shape) != len(declared) + offset:
            batch = " plus the batch dimension" if batched else ""
            yield (
                f"output {spec.name!r} at {where}: the model returned shape {list(shape)}, of rank {len(shape)}; "
                f"dims {declared}{batch} make rank {len(declared) + offset}"
            )
            return
    for axis, want in enumerate(declared):
        if want == -1:
            continue
        sizes = sorted({shape[axis + offset] for _, shape in seen})
        if sizes == [want]:
            continue
        where = next(w for w, shape in seen if shape[axis + offset] != want)
        advice = f"declare {sizes[0]}" if len(sizes) == 1 else "declare -1 (it follows the inputs)"
        yield (
            f"output {spec.name!r}: dims[{axis}] is declared {want}, but the model returned "
            f"{', '.join(map(str, sizes))} on that axis across the verification cases (first at {where}); {advice}"
        )


def _declared_range(tensor: InputSpec) -> str:
    shapes = (
        "" if tensor.shape_range is None else f", shape_range min {tensor.shape_range.min} max {tensor.shape_range.max}"
    )
    values = "" if tensor.value_range is None else f", value_range {list(tensor.value_range)}"
    return f"input {tensor.name!r}: dims {list(tensor.dims)}{shapes}{values}"


def _compare(
    spec: OutputSpec, ref: NDArray[Any], got: NDArray[Any], where: str, worst: OutputAgreement
) -> Iterator[str]:
    if ref.shape != got.shape:
        yield f"output {spec.name!r} at {where}: shape {list(got.shape)} from ONNX Runtime, {list(ref.shape)} from PyTorch"
        return
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        mismatched = int(np.count_nonzero(ref != got))
        if mismatched:
            yield f"output {spec.name!r} at {where}: {mismatched} of {ref.size} values differ (exact match required for {ref.dtype})"
        return
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref64 - got64)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(ref64), 1e-12))) if diff.size else 0.0
    worst.max_abs_error = max(worst.max_abs_error, max_abs)
    worst.max_rel_error = max(worst.max_rel_error, max_rel)
    nan_mismatch = np.isnan(ref64) != np.isnan(got64)
    outside = (diff > spec.atol + spec.rtol * np.abs(ref64)) | nan_mismatch
    if np.any(outside):
        yield (
            f"output {spec.name!r} at {where}: {int(np.count_nonzero(outside))} of {ref.size} values outside "
            f"atol={spec.atol} rtol={spec.rtol}; max abs error {max_abs:.3g}, max rel error {max_rel:.3g}"
        )


def _leaves(result: Any) -> list[NDArray[Any]]:
    """Flatten forward()'s result (tensor, tuple/list, dict) in the order the exporter uses."""
    if isinstance(result, torch.Tensor):
        return [result.detach().cpu().numpy()]
    if isinstance(result, dict):
        return [leaf for value in result.values() for leaf in _leaves(value)]
    if isinstance(result, (list, tuple)):
        return [leaf for value in result for leaf in _leaves(value)]
    raise VerificationError(
        f"forward() returned a {type(result).__name__}; return a tensor, a tuple/list or a dict of tensors"
    )

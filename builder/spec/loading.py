"""Reading the spec file: every model entry is validated on its own, so one bad entry does not
hide the problems of the others, and one `SpecError` lists every problem with the model, the
field, the bad value and what is allowed."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from builder.checker.ensemble import Ensemble, Member, Step, TensorType, ensemble_problems
from builder.errors import SpecError
from builder.spec._base import is_source
from builder.spec.models import (
    MODEL_NAME_PATTERN,
    SOURCE_PATTERN,
    AnyModelSpec,
    EnsembleSpec,
    OnnxModelSpec,
    PythonModelSpec,
)
from builder.spec.rules import model_problems
from builder.spec.tensors import InputSpec, OutputSpec

__all__ = ["KINDS", "Spec", "as_ensemble", "as_member", "load_spec"]

KINDS: dict[str, type[OnnxModelSpec] | type[PythonModelSpec] | type[EnsembleSpec]] = {
    "onnx": OnnxModelSpec,
    "python": PythonModelSpec,
    "ensemble": EnsembleSpec,
}
_TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_NOT_FOR_ENSEMBLES = {
    "dynamic_batching",
    "sequence_batching",
    "instance_group",
    "warmup",
    "response_cache",
    "parameters",
}


@dataclass(frozen=True)
class Spec:
    """The whole spec file: its models in declaration order and where it was read from."""

    models: tuple[AnyModelSpec, ...]
    path: Path

    def model(self, name: str) -> AnyModelSpec:
        """Return the model called `name`."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def served_names(self) -> set[str]:
        """Every model directory the repository gets: the models and their variants."""
        names = {m.name for m in self.models}
        names.update(v.name for m in self.models if isinstance(m, OnnxModelSpec | EnsembleSpec) for v in m.variants)
        return names

    def of_kind(self, kind: type[AnyModelSpec]) -> list[AnyModelSpec]:
        """The models of one kind, in declaration order."""
        return [m for m in self.models if isinstance(m, kind)]


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file.

    Raises:
        SpecError: listing every problem found, each with model, field, bad value and what is allowed.
    """
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    models: list[AnyModelSpec] = []
    entries = raw.get("models")
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        problems.append(f"top level: unknown key(s) {', '.join(map(repr, unknown))}; allowed: 'models'")
    if not isinstance(entries, list) or not entries:
        problems.append("top level: 'models' must be a non-empty list of model entries")
        entries = []
    labels: dict[str, str] = {}
    for index, entry in enumerate(entries):
        label = _label(index, entry)
        if not isinstance(entry, dict):
            problems.append(f"{label}: must be a mapping of fields, got {entry!r}")
            continue
        kind = entry.get("kind", "onnx")
        cls = KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            problems.append(f"{label}: kind = {kind!r}: allowed: {', '.join(map(repr, KINDS))} (default 'onnx')")
            continue
        try:
            model = cls.model_validate(_resolve_paths(entry, path.parent))
        except ValidationError as exc:
            problems.extend(f"{label}: {line}" for line in _describe(exc, cls))
            continue
        problems.extend(f"{label}: {line}" for line in model_problems(model))
        models.append(model)
        labels[model.name] = label
    problems.extend(_duplicate_names(entries))
    members = {m.name: as_member(m) for m in models}
    for model in models:
        if isinstance(model, OnnxModelSpec):
            members.update((v.name, as_member(model.served_variant(v))) for v in model.variants)
            problems.extend(f"{labels[model.name]}: {line}" for line in _through_problems(model, models))
    ensembles = [m for m in models if isinstance(m, EnsembleSpec)]
    members.update((v.name, as_member(m.served_variant(v))) for m in ensembles for v in m.variants)
    invalid = {e.get("name") for e in entries if isinstance(e, dict)} - set(members)
    for model in ensembles:
        if not {s.model for s in model.steps} & invalid:
            problems.extend(f"{labels[model.name]}: {line}" for line in ensemble_problems(as_ensemble(model), members))
            problems.extend(f"{labels[model.name]}: {line}" for line in _variant_pipeline_problems(model, members))
    if problems:
        raise SpecError(
            f"{path}: {len(problems)} problem(s) in the spec; fix them and run the build again:", problems=problems
        )
    return Spec(models=tuple(models), path=path.resolve())


def as_member(model: AnyModelSpec) -> Member:
    """The model as an ensemble step sees it."""
    return Member(
        name=model.name,
        max_batch_size=model.max_batch_size,
        inputs=_tensor_types(model.inputs),
        outputs=_tensor_types(model.outputs),
        optional_inputs=frozenset(t.name for t in model.inputs if t.optional),
        uses=tuple(s.model for s in model.steps) if isinstance(model, EnsembleSpec) else (),
    )


def as_ensemble(model: EnsembleSpec) -> Ensemble:
    """The ensemble as the graph checker sees it."""
    return Ensemble(
        name=model.name,
        max_batch_size=model.max_batch_size,
        inputs=_tensor_types(model.inputs),
        outputs=_tensor_types(model.outputs),
        steps=[Step(s.model, s.inputs, s.outputs) for s in model.steps],
    )


def _variant_pipeline_problems(model: EnsembleSpec, members: dict[str, Member]) -> Iterator[str]:
    """Each variant runs models the spec declares, as a graph as valid as the ensemble's own."""
    for i, variant in enumerate(model.variants):
        unknown = [(step, name) for step, name in variant.models.items() if name not in members]
        for step, name in unknown:
            yield (
                f"variants[{i}].models.{step} = {name!r}: not a model or variant of this spec; "
                f"allowed: {sorted(n for n in members if n not in (model.name, variant.name))}"
            )
        if not unknown:
            graph = as_ensemble(model.served_variant(variant))
            yield from (f"variants[{i}] ({variant.name!r}): {line}" for line in ensemble_problems(graph, members))


def _through_problems(model: OnnxModelSpec, models: list[AnyModelSpec]) -> Iterator[str]:
    """`calibration.through` names a python model whose outputs are this model's inputs."""
    through = None if model.calibration is None else model.calibration.through
    if through is None:
        return
    found = next((m for m in models if m.name == through), None)
    if not isinstance(found, PythonModelSpec):
        python = [m.name for m in models if isinstance(m, PythonModelSpec)]
        yield f"calibration.through = {through!r}: not a python model of this spec; allowed: {python or 'none declared'}"
        return
    produced = {t.name: (t.dtype, t.dims) for t in found.outputs}
    for tensor in model.inputs:
        if tensor.name not in produced:
            yield f"calibration.through = {through!r} does not output input {tensor.name!r}; its outputs are {sorted(produced)}"
        elif produced[tensor.name][0] != tensor.dtype:
            yield (
                f"calibration.through = {through!r} outputs {tensor.name!r} as {produced[tensor.name][0]}, "
                f"but the input is {tensor.dtype}"
            )


def _tensor_types(tensors: tuple[InputSpec, ...] | tuple[OutputSpec, ...]) -> dict[str, TensorType]:
    return {t.name: TensorType(t.dtype, t.dims) for t in tensors}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(
            f"spec file {path} does not exist; pass an existing file with --spec (the kit's is models.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping with a 'models' list, got {type(raw).__name__}")
    return raw


def _label(index: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"model {name!r} (models[{index}])" if isinstance(name, str) else f"models[{index}]"


def _resolve_paths(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make file paths relative to the spec file, so the build works from any directory."""

    def resolve(value: Any) -> Any:
        return str((base / value).resolve()) if isinstance(value, str) else value

    entry = dict(entry)
    if "weights" in entry:
        entry["weights"] = resolve(entry["weights"])
    calibration = entry.get("calibration")
    if isinstance(calibration, dict) and isinstance(calibration.get("data"), str):
        data = calibration["data"]
        entry["calibration"] = {**calibration, "data": data if is_source(data) else resolve(data)}
    if isinstance(entry.get("files"), dict):
        entry["files"] = {k: resolve(v) for k, v in entry["files"].items()}
    versions = entry.get("versions")
    if isinstance(versions, list):
        entry["versions"] = [
            {**v, "weights": resolve(v["weights"])} if isinstance(v, dict) and "weights" in v else v for v in versions
        ]
    if isinstance(entry.get("outputs"), list):
        entry["outputs"] = [
            {**o, "labels": resolve(o["labels"])} if isinstance(o, dict) and "labels" in o else o
            for o in entry["outputs"]
        ]
    return entry


def _duplicate_names(entries: list[Any]) -> Iterator[str]:
    names: list[str] = [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    for entry in entries:  # a variant is a model of its own in the repository
        variants = entry.get("variants") if isinstance(entry, dict) else None
        if isinstance(variants, list):
            names += [v["name"] for v in variants if isinstance(v, dict) and isinstance(v.get("name"), str)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"model name {name!r} is declared {names.count(name)} times; model names must be unique"


def _describe(exc: ValidationError, cls: type[BaseModel]) -> Iterator[str]:
    """Turn pydantic's errors into 'field = value: what is allowed' lines."""
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = _field_path(loc)
        if error["type"] == "extra_forbidden":
            if cls is EnsembleSpec and len(loc) == 1 and loc[0] in _NOT_FOR_ENSEMBLES:
                yield f"{field} is not allowed for an ensemble: each step's model has its own; set it on that model"
                continue
            allowed = ", ".join(_allowed_keys(cls, loc[:-1]))
            yield f"unknown key {field!r}; allowed here: {allowed}"
        elif error["type"] == "missing":
            yield f"{field} is required"
        else:
            yield f"{field} = {error['input']!r}: {_allowed(error)}"


def _allowed(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        hint = {
            SOURCE_PATTERN: "a 'package.module:callable' reference, e.g. 'models.image_classifier:build'",
            MODEL_NAME_PATTERN: "letters, digits, '_' and '-' (a Triton model directory name)",
            _TENSOR_NAME_PATTERN: "a letter or '_' then letters, digits, '_', '.' or '-'",
        }.get(pattern, f"text matching {pattern}")
        return f"allowed: {hint}"
    return re.sub(r"^Input should be", "allowed:", message)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"tagged-union", "function-after", "function-before"}:
            continue
        else:
            path += f".{part}" if path else part
    return path


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, to say which keys an unknown one could have been."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(part, str) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional, tuple[...], dict[...] and Annotated down to the model class they hold."""
    while True:
        origin = get_origin(annotation)
        if origin is None:
            return annotation
        args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
        if origin in (Annotated, tuple, Union, types.UnionType):
            annotation = args[0]
        elif origin is dict:
            annotation = args[-1]
        else:
            return annotation

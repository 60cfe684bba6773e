"""The spec file: every model of the repository declared once, as validated data.

`load_spec` reads the YAML file, validates every model entry on its own so that one bad entry
does not hide the problems of the others, and raises a single `SpecError` listing each problem
with the model, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from builder.dtypes import TritonDType
from builder.errors import SpecError

__all__ = [
    "DEFAULT_OPSET",
    "DynamicBatching",
    "InputSpec",
    "InstanceGroup",
    "ModelSpec",
    "OutputSpec",
    "ShapeRange",
    "Spec",
    "VersionSpec",
    "load_spec",
]

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 17, 23

_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$"
_TENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_SOURCE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def _dim(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("a dimension is a size >= 1, or -1 for a variable size")
    return value


Dim = Annotated[int, AfterValidator(_dim)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapeRange(_Strict):
    """Smallest, typical and largest shape (batch dimension excluded) an input is sent with.

    Verification runs at `min` and `max`; TensorRT optimization profiles use all three.
    """

    min: tuple[Annotated[int, Field(ge=1)], ...]
    opt: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    max: tuple[Annotated[int, Field(ge=1)], ...]

    @property
    def typical(self) -> tuple[int, ...]:
        """`opt` when declared, else the midpoint of each dimension."""
        if self.opt is not None:
            return self.opt
        return tuple((lo + hi) // 2 for lo, hi in zip(self.min, self.max, strict=True))


class InputSpec(_Strict):
    """One model input, in Triton's terms: `dims` excludes the batch dimension, -1 is variable."""

    name: Annotated[str, Field(pattern=_TENSOR_NAME)]
    dtype: TritonDType
    dims: tuple[Dim, ...]
    shape_range: ShapeRange | None = None
    value_range: tuple[float, float] | None = None

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Positions in `dims` declared variable (-1)."""
        return tuple(i for i, d in enumerate(self.dims) if d == -1)


class OutputSpec(_Strict):
    """One model output; `atol`/`rtol` bound its difference from PyTorch during verification."""

    name: Annotated[str, Field(pattern=_TENSOR_NAME)]
    dtype: TritonDType
    dims: tuple[Dim, ...]
    atol: Annotated[float, Field(ge=0)] = 1e-4
    rtol: Annotated[float, Field(ge=0)] = 1e-3


class DynamicBatching(_Strict):
    """Triton's dynamic batcher: requests are queued up to the delay and executed together."""

    max_queue_delay_microseconds: Annotated[int, Field(ge=0)] = 0
    preferred_batch_size: tuple[Annotated[int, Field(ge=1)], ...] = ()
    preserve_ordering: bool = False


class InstanceGroup(_Strict):
    """How many copies of the model run, and where."""

    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: Annotated[int, Field(ge=1)] = 1
    gpus: tuple[Annotated[int, Field(ge=0)], ...] = ()


class VersionSpec(_Strict):
    """One version directory of a model; `weights` overrides the model's weights for it."""

    version: Annotated[int, Field(ge=1)]
    weights: Path | None = None


class ModelSpec(_Strict):
    """One model of the repository, from PyTorch source to serving options."""

    name: Annotated[str, Field(pattern=_NAME)]
    source: Annotated[str, Field(pattern=_SOURCE)]
    weights: Path | None = None
    max_batch_size: Annotated[int, Field(ge=0)]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    formats: tuple[Literal["onnx"], ...] = ("onnx",)
    versions: tuple[VersionSpec, ...] = (VersionSpec(version=1),)
    opset: Annotated[int, Field(ge=MIN_OPSET, le=MAX_OPSET)] = DEFAULT_OPSET
    seed: int = 0
    dynamic_batching: DynamicBatching | None = DynamicBatching()
    instance_group: tuple[InstanceGroup, ...] = (InstanceGroup(),)

    @field_validator("versions", mode="before")
    @classmethod
    def _plain_version_numbers(cls, value: Any) -> Any:
        # `versions: [1, 2]` is the common case; objects are only needed for per-version weights.
        if isinstance(value, list):
            return [{"version": v} if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    def weights_for(self, version: VersionSpec) -> Path | None:
        """The state_dict file a version is built from, if any."""
        return version.weights or self.weights


class Spec(_Strict):
    """The whole spec file."""

    models: tuple[ModelSpec, ...]
    path: Path

    def model(self, name: str) -> ModelSpec:
        """Return the model called `name`."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file.

    Raises:
        SpecError: listing every problem found, each with model, field, bad value and what is allowed.
    """
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    models: list[ModelSpec] = []
    entries = raw.get("models")
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        problems.append(f"top level: unknown key(s) {', '.join(map(repr, unknown))}; allowed: 'models'")
    if not isinstance(entries, list) or not entries:
        problems.append("top level: 'models' must be a non-empty list of model entries")
        entries = []
    for index, entry in enumerate(entries):
        label = _label(index, entry)
        if not isinstance(entry, dict):
            problems.append(f"{label}: must be a mapping of fields, got {entry!r}")
            continue
        try:
            model = ModelSpec.model_validate(_resolve_paths(entry, path.parent))
        except ValidationError as exc:
            problems.extend(f"{label}: {line}" for line in _describe(exc))
            continue
        problems.extend(f"{label}: {line}" for line in _consistency_problems(model))
        models.append(model)
    problems.extend(_duplicate_names(entries))
    if problems:
        raise SpecError(
            f"{path}: {len(problems)} problem(s) in the spec; fix them and run the build again:", problems=problems
        )
    return Spec(models=tuple(models), path=path.resolve())


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
    """Make weights paths relative to the spec file, so the build works from any directory."""

    def resolve(value: Any) -> Any:
        return str((base / value).resolve()) if isinstance(value, str) else value

    entry = dict(entry)
    if "weights" in entry:
        entry["weights"] = resolve(entry["weights"])
    versions = entry.get("versions")
    if isinstance(versions, list):
        entry["versions"] = [
            {**v, "weights": resolve(v["weights"])} if isinstance(v, dict) and "weights" in v else v for v in versions
        ]
    return entry


def _consistency_problems(model: ModelSpec) -> Iterator[str]:
    """Rules that relate fields to each other; each yields one problem line."""
    # Emptiness is checked here rather than by pydantic's min_length, which also reports an
    # empty list whenever one item of it is invalid.
    for field in ("inputs", "outputs", "formats", "versions", "instance_group"):
        if not getattr(model, field):
            yield f"{field} is empty; declare at least one"
    for i, output in enumerate(model.outputs):
        if not output.dims:
            yield f"outputs[{i}].dims is empty; a tensor has at least one dimension (use [1] for a scalar per item)"
    names = [t.name for t in model.inputs] + [t.name for t in model.outputs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"tensor name {name!r} is used more than once; input and output names must all differ"
    for i, tensor in enumerate(model.inputs):
        yield from _input_problems(f"inputs[{i}]", tensor)
    if model.max_batch_size == 0 and model.dynamic_batching is not None:
        yield (
            "dynamic_batching is set but max_batch_size is 0; a model that cannot batch cannot be "
            "dynamically batched: set max_batch_size >= 1 or dynamic_batching: null"
        )
    if model.dynamic_batching is not None:
        for size in model.dynamic_batching.preferred_batch_size:
            if size > model.max_batch_size:
                yield (
                    f"dynamic_batching.preferred_batch_size: {size} exceeds max_batch_size "
                    f"{model.max_batch_size}; allowed: 1..{model.max_batch_size}"
                )
    for i, group in enumerate(model.instance_group):
        if group.kind == "KIND_CPU" and group.gpus:
            yield f"instance_group[{i}].gpus = {list(group.gpus)}: a KIND_CPU group cannot name GPUs; remove gpus or use KIND_GPU"
    numbers = [v.version for v in model.versions]
    for number in sorted({n for n in numbers if numbers.count(n) > 1}):
        yield f"versions: version {number} is declared more than once"
    for label, weights in [
        ("weights", model.weights),
        *((f"versions[{v.version}].weights", v.weights) for v in model.versions),
    ]:
        if weights is not None and not weights.is_file():
            yield f"{label} = {str(weights)!r}: file not found; give a state_dict saved with torch.save(model.state_dict(), path)"


def _input_problems(field: str, tensor: InputSpec) -> Iterator[str]:
    rank = len(tensor.dims)
    if not rank:
        yield f"{field}.dims is empty; a tensor has at least one dimension (use [1] for a scalar per item)"
        return
    shape_range = tensor.shape_range
    if shape_range is None:
        if tensor.dynamic_axes:
            yield (
                f"{field}.shape_range is missing: dims {list(tensor.dims)} have variable (-1) dimensions; "
                f"declare shape_range: {{min: [...], max: [...]}} with {rank} values each"
            )
    else:
        bounds = {"min": shape_range.min, "max": shape_range.max}
        if shape_range.opt is not None:
            bounds["opt"] = shape_range.opt
        for key, shape in bounds.items():
            if len(shape) != rank:
                yield f"{field}.shape_range.{key} = {list(shape)} has {len(shape)} values; dims {list(tensor.dims)} need {rank}"
                return
            for axis, (dim, value) in enumerate(zip(tensor.dims, shape, strict=True)):
                if dim != -1 and value != dim:
                    yield f"{field}.shape_range.{key}[{axis}] = {value} but dims[{axis}] is fixed at {dim}; use {dim}"
        lo, hi, opt = shape_range.min, shape_range.max, shape_range.opt or shape_range.min
        if any(a > b for a, b in zip(lo, hi, strict=True)) or any(
            not a <= o <= b for a, o, b in zip(lo, opt, hi, strict=True)
        ):
            yield f"{field}.shape_range: need min <= opt <= max in every dimension, got min={list(lo)} opt={list(opt)} max={list(hi)}"
    if tensor.value_range is not None and not tensor.value_range[0] < tensor.value_range[1]:
        yield f"{field}.value_range = {list(tensor.value_range)}: need [low, high) with low < high"


def _duplicate_names(entries: list[Any]) -> Iterator[str]:
    names: list[str] = [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"model name {name!r} is declared {names.count(name)} times; model names must be unique"


def _describe(exc: ValidationError) -> Iterator[str]:
    """Turn pydantic's errors into 'field = value: what is allowed' lines."""
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = _field_path(loc)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(ModelSpec, loc[:-1]))
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
            _SOURCE: "a 'package.module:callable' reference, e.g. 'models.image_classifier:build'",
            _NAME: "letters, digits, '_' and '-' (a Triton model directory name)",
            _TENSOR_NAME: "a letter or '_' then letters, digits, '_', '.' or '-'",
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
    """Strip Optional, tuple[...] and Annotated down to the model class they hold."""
    while True:
        origin = get_origin(annotation)
        if origin is None:
            return annotation
        args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
        if origin in (Annotated, tuple, Union, types.UnionType):
            annotation = args[0]
        else:
            return annotation

"""The three kinds of model a spec declares: ONNX (from PyTorch), Python, and ensembles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from builder.spec._base import MODEL_NAME_PATTERN, SOURCE_PATTERN, ModelName, Source, Strict
from builder.spec.serving import (
    CpuOptions,
    DynamicBatching,
    GpuOptions,
    InstanceGroup,
    SequenceBatching,
    VersionPolicy,
    Warmup,
)
from builder.spec.tensors import InputSpec, OutputSpec
from builder.spec.variants import CalibrationSpec, VariantSpec

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "MODEL_NAME_PATTERN",
    "SOURCE_PATTERN",
    "AnyModelSpec",
    "EnsembleSpec",
    "OnnxModelSpec",
    "PythonModelSpec",
    "StepSpec",
    "VersionSpec",
]

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 17, 23


class VersionSpec(Strict):
    """One version directory of a model; `weights` overrides the model's weights for it."""

    version: Annotated[int, Field(ge=1)]
    weights: Path | None = None


class _Served(Strict):
    """What every model has: a name, its tensors, and which versions Triton serves."""

    name: ModelName
    max_batch_size: Annotated[int, Field(ge=0)]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    version_policy: VersionPolicy | None = None


class _Scheduled(_Served):
    """What models that run themselves (not ensembles) add: scheduling, placement and options."""

    dynamic_batching: DynamicBatching | None = DynamicBatching()
    sequence_batching: SequenceBatching | None = None
    instance_group: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    response_cache: bool = False
    decoupled: bool = False
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    warmup: Warmup = Warmup()

    @property
    def batcher(self) -> DynamicBatching | None:
        """The dynamic batcher in effect: the default one only where the model can batch and
        no sequence batcher was asked for (Triton allows one scheduler per model)."""
        explicit = "dynamic_batching" in self.model_fields_set
        if not explicit and (self.max_batch_size == 0 or self.sequence_batching is not None):
            return None
        return self.dynamic_batching


class OnnxModelSpec(_Scheduled):
    """A PyTorch model exported to ONNX and served by the onnxruntime backend."""

    kind: Literal["onnx"] = "onnx"
    source: Source
    weights: Path | None = None
    formats: tuple[Literal["onnx"], ...] = ("onnx",)
    versions: tuple[VersionSpec, ...] = (VersionSpec(version=1),)
    opset: Annotated[int, Field(ge=MIN_OPSET, le=MAX_OPSET)] = DEFAULT_OPSET
    seed: int = 0
    gpu: GpuOptions = GpuOptions()
    cpu: CpuOptions = CpuOptions()
    calibration: CalibrationSpec | None = None
    variants: tuple[VariantSpec, ...] = ()

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

    def served_variant(self, variant: VariantSpec) -> OnnxModelSpec:
        """The model a variant serves: this one's tensors, versions and serving options under
        the variant's name."""
        return self.model_copy(update={"name": variant.name, "variants": ()})

    def variant(self, name: str) -> VariantSpec:
        """The variant called `name`."""
        return next(v for v in self.variants if v.name == name)


class PythonModelSpec(_Scheduled):
    """A pre/post-processing model: a user's class served by Triton's Python backend.

    `source` names a class; the generated model.py builds it once per instance as
    `Class(**options, **{name: absolute path of file})` and calls it with a whole batch:
    `instance({input name: array}) -> {output name: array}`. A ValueError marks bad input: the
    batch is then run request by request so only the requests that raise fail.
    """

    kind: Literal["python"]
    source: Source
    # Generated warmup data (zeros, empty strings) is rarely a valid image or text for a
    # preprocessor, and a failed warmup fails the load: off unless asked for.
    warmup: Warmup = Warmup(when="never")
    options: dict[str, Any] = Field(default_factory=dict)
    files: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Path] = Field(default_factory=dict)
    version: Annotated[int, Field(ge=1)] = 1


class StepSpec(Strict):
    """One step of an ensemble: `inputs`/`outputs` map the model's tensor names (keys) to the
    ensemble's tensor names (values), as Triton's input_map/output_map do."""

    model: ModelName
    version: Annotated[int, Field(ge=-1)] = -1
    inputs: dict[str, str]
    outputs: dict[str, str]


class EnsembleSpec(_Served):
    """A pipeline of models run by Triton's ensemble scheduler, checked as a graph at load."""

    kind: Literal["ensemble"]
    steps: tuple[StepSpec, ...]
    version: Annotated[int, Field(ge=1)] = 1


AnyModelSpec = OnnxModelSpec | PythonModelSpec | EnsembleSpec

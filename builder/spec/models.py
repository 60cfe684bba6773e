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
    "EnsembleVariant",
    "OnnxModelSpec",
    "PythonModelSpec",
    "PythonOnGpu",
    "StepSpec",
    "VersionSpec",
]

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 17, 23


class VersionSpec(Strict):
    """One version directory of a model; `weights` overrides the model's weights for it."""

    version: Annotated[int, Field(ge=1)]
    """The version directory's number."""
    weights: Path | None = None
    """A state_dict for this version only; default: the model's `weights`."""


class _Served(Strict):
    """What every model has: a name, its tensors, and which versions Triton serves."""

    name: ModelName
    """The Triton model name and the model's directory in the repository."""
    max_batch_size: Annotated[int, Field(ge=0)]
    """The largest batch Triton forms; 0: the model takes no batch dimension."""
    inputs: tuple[InputSpec, ...]
    """The model's inputs, in the order `forward()` (or the class) takes them."""
    outputs: tuple[OutputSpec, ...]
    """The model's outputs, in the order `forward()` returns them."""
    version_policy: VersionPolicy | None = None
    """Which versions Triton serves; default: all of several versions, else Triton's (the latest one)."""


class _Scheduled(_Served):
    """What models that run themselves (not ensembles) add: scheduling, placement and options."""

    dynamic_batching: DynamicBatching | None = DynamicBatching()
    """Triton's dynamic batcher; `null` turns it off. Default: on, with no delay, where the model batches and has no sequence batcher."""
    sequence_batching: SequenceBatching | None = None
    """The sequence batcher, for stateful models; default: none."""
    instance_group: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    """How many instances run, and where; default: one, its kind from the build target."""
    response_cache: bool = False
    """Triton's response cache; not with sequence batching or decoupled models."""
    decoupled: bool = False
    """Triton's decoupled transaction policy: any number of responses per request."""
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Backend parameters, rendered as the config's `parameters`."""
    warmup: Warmup = Warmup()
    """`model_warmup` generated from the inputs."""

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
    """The kind of model: a PyTorch module exported to ONNX."""
    source: Source
    """`package.module:callable` returning the `torch.nn.Module`, importable from the spec's directory."""
    weights: Path | None = None
    """A state_dict file (`torch.save(model.state_dict(), path)`), loaded strictly; relative to the spec file."""
    formats: tuple[Literal["onnx"], ...] = ("onnx",)
    """The formats exported."""
    versions: tuple[VersionSpec, ...] = (VersionSpec(version=1),)
    """The version directories built: numbers, or `{version, weights}` for per-version weights."""
    opset: Annotated[int, Field(ge=MIN_OPSET, le=MAX_OPSET)] = DEFAULT_OPSET
    """The ONNX opset of the export."""
    seed: int = 0
    """Seed of the generated verification inputs."""
    gpu: GpuOptions = GpuOptions()
    """ONNX Runtime accelerators, rendered for the `gpu` target only."""
    cpu: CpuOptions = CpuOptions()
    """ONNX Runtime thread counts, rendered on both targets."""
    calibration: CalibrationSpec | None = None
    """Representative inputs of the reduced-precision variants."""
    variants: tuple[VariantSpec, ...] = ()
    """Reduced-precision or compiled builds of this model, each served under its own name."""

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


class PythonOnGpu(Strict):
    """How a Python model serves on the `gpu` target instead: another class (`source`), built
    with `options` over the model's own and with `device="cuda:<id>"`, the GPU of its instance
    (KIND_GPU). It gets its numeric inputs as torch tensors where Triton delivers them (on the GPU
    where the previous step left them there; BYTES as numpy object arrays), and may return GPU
    tensors (torch's, or any DLPack array): Triton hands them to the next step of an ensemble on
    the device. The build checks the class by building it with `device="cpu"`."""

    source: Source
    """`package.module:Class` of the class served on the GPU."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of that class, over the model's `options`."""


class PythonModelSpec(_Scheduled):
    """A pre/post-processing model: a user's class served by Triton's Python backend.

    `source` names a class; the generated model.py builds it once per instance as
    `Class(**options, **{name: absolute path of file})` and calls it with a whole batch:
    `instance({input name: array}) -> {output name: array}`. A ValueError marks bad input: the
    batch is then run request by request so only the requests that raise fail. `gpu` names the
    class the `gpu` target serves instead (on the CPU by default on both targets).
    """

    kind: Literal["python"]
    """The kind of model: a pre/post-processing class on Triton's Python backend."""
    source: Source
    """`package.module:Class` of the class the generated `model.py` builds."""
    # Generated warmup data (zeros, empty strings) is rarely a valid image or text for a
    # preprocessor, and a failed warmup fails the load: off unless asked for.
    warmup: Warmup = Warmup(when="never")
    """Off by default: generated warmup data is rarely a valid image or text."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the class (JSON values)."""
    files: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Path] = Field(default_factory=dict)
    """`{name: path}`: copied into the model's version directory and passed to the class as absolute paths."""
    version: Annotated[int, Field(ge=1)] = 1
    """The version directory's number."""
    gpu: PythonOnGpu | None = None
    """The class the `gpu` target serves instead, on GPU instances; without it, the model runs on the CPU there too."""

    def on_gpu(self, target: str) -> bool:
        """Whether `target` serves this model's `gpu` class on GPU instances."""
        return target == "gpu" and self.gpu is not None

    def served_on(self, target: str) -> tuple[str, dict[str, Any]]:
        """The class `target` serves and the options it is built with (`device` aside)."""
        if self.gpu is not None and self.on_gpu(target):
            return self.gpu.source, {**self.options, **self.gpu.options}
        return self.source, self.options


class StepSpec(Strict):
    """One step of an ensemble: `inputs`/`outputs` map the model's tensor names (keys) to the
    ensemble's tensor names (values), as Triton's input_map/output_map do."""

    model: ModelName
    """The model the step runs."""
    version: Annotated[int, Field(ge=-1)] = -1
    """The model's version; -1: the latest."""
    inputs: dict[str, str]
    """The step model's input names (keys) mapped to ensemble tensor names (values)."""
    outputs: dict[str, str]
    """The step model's output names (keys) mapped to ensemble tensor names (values)."""


class EnsembleVariant(Strict):
    """The same pipeline served under another name, with some of its steps running another model,
    typically a variant of the step's model (`{image_classifier: image_classifier_fp16}`), so
    clients (and benchmarks) compare whole pipelines side by side. It is built only where every
    model it runs is: on its `targets`, and skipped, saying why, where one of them is not built
    (an optional variant that was skipped, or one for another target)."""

    name: ModelName
    """The model name the pipeline is served under."""
    models: dict[ModelName, ModelName]
    """`{step model: the model run instead}`; the replacement takes and gives the same tensors."""
    targets: Annotated[tuple[Literal["cpu", "gpu"], ...], Field(min_length=1)] = ("cpu", "gpu")
    """The build targets it is built for."""


class EnsembleSpec(_Served):
    """A pipeline of models run by Triton's ensemble scheduler, checked as a graph at load."""

    kind: Literal["ensemble"]
    """The kind of model: a pipeline run by Triton's ensemble scheduler."""
    steps: tuple[StepSpec, ...]
    """The pipeline's steps; each step model's own options schedule it."""
    version: Annotated[int, Field(ge=1)] = 1
    """The version directory's number."""
    variants: tuple[EnsembleVariant, ...] = ()
    """The same pipeline through other models, each served under its own name."""

    def served_variant(self, variant: EnsembleVariant) -> EnsembleSpec:
        """The ensemble a variant serves: these tensors and steps, under the variant's name, with
        the step models it replaces swapped."""
        steps = tuple(
            step.model_copy(update={"model": variant.models.get(step.model, step.model)}) for step in self.steps
        )
        return self.model_copy(update={"name": variant.name, "steps": steps, "variants": ()})

    def variant(self, name: str) -> EnsembleVariant:
        """The variant called `name`."""
        return next(v for v in self.variants if v.name == name)


AnyModelSpec = OnnxModelSpec | PythonModelSpec | EnsembleSpec

"""Reduced-precision variants of an ONNX model, and the calibration data they are built and
judged with.

Each variant is a model of its own in the repository (its own name, the base model's versions,
tensors and serving options); it is built from the base model's verified FP32 ONNX file and must
pass its accuracy gate against the FP32 PyTorch model on held-out data.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from builder.spec._base import ModelName, Strict, is_source

__all__ = [
    "CalibrationSpec",
    "CompileOptions",
    "Gate",
    "Precision",
    "QuantizationOptions",
    "TensorRTOptions",
    "VariantSpec",
]

Precision = Literal["fp32", "fp16", "bf16", "int8"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class CalibrationSpec(Strict):
    """Where representative inputs come from: the first `samples` calibrate, the next `holdout`
    only judge the accuracy gates, so a variant is never judged on the data it was tuned on.

    `data` is a directory of images, a text file (one sample per line), a .npy file (one input:
    [N, ...dims]) or .npz file (an array per input name), or a `module:callable` returning an
    iterable of batches ({input name: array}). Images and text lines are raw bytes: `through`
    names the spec's python model that turns them into this model's inputs, so calibration sees
    exactly what the served pipeline feeds the model.
    """

    data: str
    """Images (a directory), text (a .txt file, one sample per line), arrays (.npy or .npz), or a `module:callable` returning batches."""
    through: ModelName | None = None
    """The spec's Python model that turns raw images or text into this model's inputs."""
    samples: Annotated[int, Field(ge=1)] = 64
    """How many samples calibrate."""
    holdout: Annotated[int, Field(ge=1)] = 64
    """How many further samples only judge the accuracy gates."""
    batch_size: Annotated[int, Field(ge=1)] = 8
    """The batch size calibration runs at."""

    @property
    def from_callable(self) -> bool:
        """Whether `data` names a 'module:callable' rather than a path."""
        return is_source(self.data)


class Gate(Strict):
    """The accuracy budget of a variant, measured against the FP32 PyTorch model on held-out data.

    `top1_agreement` applies to classifier outputs (those with `labels`), `cosine` (the mean
    over samples) to the others; the absolute-error budgets, when set, to every output.
    """

    top1_agreement: Fraction = 0.99
    """The least share of held-out samples on which a classifier output keeps FP32's top-1 class."""
    cosine: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.99
    """The least mean cosine similarity to FP32 of an output without labels."""
    max_abs_error: PositiveFloat | None = None
    """An optional budget of the largest absolute error, for every output."""
    mean_abs_error: PositiveFloat | None = None
    """An optional budget of the mean absolute error, for every output."""


class QuantizationOptions(Strict):
    """Static INT8 quantization of an ONNX variant with onnxruntime.quantization (QDQ format).

    `reduce_range` (7-bit weights) avoids the u8s8 overflow of x86 CPUs without VNNI, where
    ONNX Runtime's integer kernels can saturate; turn it off for VNNI/AMX CPUs and GPUs.
    `exclude` keeps nodes (by node name or op type) in floating point. The histogram methods
    (entropy, percentile) need every calibration batch in one shape, so not variable dims.
    """

    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    """The calibration method; the histogram ones (entropy, percentile) need inputs of one shape."""
    per_channel: bool = True
    """Quantize weights per output channel."""
    reduce_range: bool = True
    """7-bit weights, for x86 CPUs without VNNI."""
    activations: Literal["uint8", "int8"] = "uint8"
    """The activations' integer type."""
    exclude: tuple[str, ...] = ()
    """Node names or op types kept in floating point."""


class TensorRTOptions(Strict):
    """Engine build options of a TensorRT variant."""

    workspace_bytes: Annotated[int, Field(ge=1 << 20)] = 1 << 30
    """The builder's workspace memory."""
    optimization_level: Annotated[int, Field(ge=0, le=5)] = 3
    """TensorRT's builder optimization level."""
    timing_cache: bool = True
    """Reuse a timing cache per TensorRT version across builds."""


class CompileOptions(Strict):
    """Inductor options of a `torch_compiled` variant. `max_autotune` benchmarks candidate
    kernels for each operation at build time (slower build, faster engine); `inductor` passes
    any other of torch._inductor.config's options, e.g. {"freezing": true}. `artifact`: `aoti`
    an AOTInductor package, loaded as it is; `inductor_cache` the exported program with
    Inductor's cache artifacts, compiled from them when a server loads it (a warm start);
    `auto` the package, or the cache where this torch cannot load the package (recorded).
    `cuda_graphs` (gpu target): record each batch's kernels once and replay them in one launch,
    since a small model's GPU otherwise idles between kernel launches. A graph has one shape, so
    batches are padded to max_batch_size, and every other dim must be fixed; the variant keeps
    the cache form (an AOTInductor package has no graphs). `auto` uses them where that holds."""

    artifact: Literal["auto", "aoti", "inductor_cache"] = "auto"
    """What is served: an AOTInductor package (`aoti`), Inductor's cache (`inductor_cache`), or the package where this torch loads it (`auto`)."""
    max_autotune: bool = False
    """Benchmark candidate kernels at build time: a slower build, a faster engine."""
    cuda_graphs: bool | Literal["auto"] = "auto"
    """(`gpu` target) replay each execution as one CUDA graph; `auto` where every dim but the batch is fixed."""
    inductor: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Any other option of `torch._inductor.config`, e.g. `{freezing: true}`."""


class VariantSpec(Strict):
    """One reduced-precision build of the model, served under its own name.

    `format: onnx` gives a file ONNX Runtime runs anywhere (int8: static QDQ quantization,
    fp16: float16 weights and compute, meant for GPU targets); `format: tensorrt` a TensorRT
    plan, which needs TensorRT and a CUDA GPU on the build machine: where they are missing
    the build stops, unless `optional: true` lets it skip the variant with a warning;
    `format: torch_compiled` the PyTorch model itself, captured with torch.export and compiled
    ahead of time by AOTInductor for the target's device (cpu, or cuda on the gpu target) in
    fp32, fp16 or bf16, served by Triton's Python backend with no compile at load.
    `targets` limits the build targets it is built for (an FP16 variant is meant for GPUs).
    """

    name: ModelName
    """The model name the variant is served under."""
    format: Literal["onnx", "tensorrt", "torch_compiled"] = "onnx"
    """An ONNX file, a TensorRT plan, or the PyTorch model compiled by AOTInductor."""
    precision: Precision
    """`fp16`/`int8` for `onnx`; `fp32`/`fp16`/`bf16`/`int8` for `tensorrt`; `fp32`/`fp16`/`bf16` for `torch_compiled`."""
    quantization: QuantizationOptions = QuantizationOptions()
    """Static INT8 quantization options (`onnx`, `int8`)."""
    tensorrt: TensorRTOptions = TensorRTOptions()
    """Engine build options (`tensorrt`)."""
    compile: CompileOptions = CompileOptions()
    """Compile options (`torch_compiled`)."""
    gate: Gate = Gate()
    """The accuracy budget against FP32 PyTorch on the held-out samples."""
    optional: bool = False
    """Skip the variant, with a warning, where its tools or GPU are missing."""
    targets: Annotated[tuple[Literal["cpu", "gpu"], ...], Field(min_length=1)] = ("cpu", "gpu")
    """The build targets the variant is built for."""

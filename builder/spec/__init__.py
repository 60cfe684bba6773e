"""The spec file: every model of the repository declared once, as validated data.

Three kinds of model, chosen by `kind:` (default `onnx`):

- `onnx`: a PyTorch module exported to ONNX (`OnnxModelSpec`);
- `python`: a pre/post-processing class served by the Python backend (`PythonModelSpec`);
- `ensemble`: a pipeline of the others run by Triton's ensemble scheduler (`EnsembleSpec`).

Imports: pydantic, yaml, the shared basics (builder.dtypes, builder.errors) and the checker's
ensemble graph rules (builder.checker.ensemble), which the spec applies before anything is built;
never the build's steps (the import-linter contract in pyproject.toml).
"""

from builder.spec.loading import KINDS, Spec, as_ensemble, as_member, load_spec
from builder.spec.models import (
    DEFAULT_OPSET,
    AnyModelSpec,
    EnsembleSpec,
    EnsembleVariant,
    OnnxModelSpec,
    PythonModelSpec,
    PythonOnGpu,
    StepSpec,
    VersionSpec,
)
from builder.spec.rules import versions_of
from builder.spec.serving import (
    CpuOptions,
    DynamicBatching,
    GpuOptions,
    InstanceGroup,
    QueuePolicy,
    RateLimiter,
    RateLimiterResource,
    SequenceBatching,
    VersionPolicy,
    Warmup,
)
from builder.spec.tensors import InputSpec, OutputSpec, ShapeRange
from builder.spec.variants import (
    CalibrationSpec,
    CompileOptions,
    Gate,
    Precision,
    QuantizationOptions,
    TensorRTOptions,
    VariantSpec,
)

__all__ = [
    "DEFAULT_OPSET",
    "KINDS",
    "AnyModelSpec",
    "CalibrationSpec",
    "CompileOptions",
    "CpuOptions",
    "DynamicBatching",
    "EnsembleSpec",
    "EnsembleVariant",
    "Gate",
    "GpuOptions",
    "InputSpec",
    "InstanceGroup",
    "OnnxModelSpec",
    "OutputSpec",
    "Precision",
    "PythonModelSpec",
    "PythonOnGpu",
    "QuantizationOptions",
    "QueuePolicy",
    "RateLimiter",
    "RateLimiterResource",
    "SequenceBatching",
    "ShapeRange",
    "Spec",
    "StepSpec",
    "TensorRTOptions",
    "VariantSpec",
    "VersionPolicy",
    "VersionSpec",
    "Warmup",
    "as_ensemble",
    "as_member",
    "load_spec",
    "versions_of",
]

"""Errors raised while building a model repository.

Every failure a user can cause or fix is a `BuildError`; anything else is a bug in the kit.

    BuildError                 root: the build stopped; the existing repository is untouched
    ├── SpecError              the spec file is missing, unparsable or invalid (lists every problem)
    ├── SourceError            a model's `module:callable` or weights could not be loaded
    ├── ExportError            torch.onnx.export failed for a model
    ├── VerificationError      the exported model disagrees with the spec or with PyTorch
    ├── RenderError            a config.pbtxt template failed to render or to parse back
    └── RepositoryError        the repository could not be staged, checked or swapped into place
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AccuracyError",
    "BuildError",
    "CalibrationError",
    "ConversionError",
    "ExportError",
    "RenderError",
    "RepositoryError",
    "SourceError",
    "SpecError",
    "VerificationError",
]


class BuildError(Exception):
    """Base of every error a user can act on; the message says what to do."""

    def __init__(self, message: str, *, problems: Sequence[str] = (), artifact: Path | None = None) -> None:
        self.problems = list(problems)
        self.artifact = artifact
        lines = [message, *("  - " + p.replace("\n", "\n    ") for p in self.problems)]
        if artifact is not None:
            lines.append(f"  The artifact was left for inspection at: {artifact}")
        super().__init__("\n".join(lines))


class SpecError(BuildError):
    """Raised when the spec file is missing, is not valid YAML, or declares something invalid."""


class SourceError(BuildError):
    """Raised when a model's `module:callable` does not import, raises, returns no `nn.Module`,
    or its weights file is missing or does not fit the module."""


class ExportError(BuildError):
    """Raised when `torch.onnx.export` cannot export a model with the declared inputs."""


class VerificationError(BuildError):
    """Raised when an exported ONNX model fails the checker, disagrees with the spec's signature,
    or its outputs differ from PyTorch's beyond the declared tolerance."""


class RenderError(BuildError):
    """Raised when a `config.pbtxt` template does not render or does not parse as a Triton ModelConfig."""


class RepositoryError(BuildError):
    """Raised when the staged repository fails its checks or cannot be swapped into place."""


class CalibrationError(BuildError):
    """Raised when calibration data is missing, too small, or does not fit the model's inputs."""


class ConversionError(BuildError):
    """Raised when a reduced-precision variant cannot be made: quantization, FP16 conversion, or a
    TensorRT engine build failed, or TensorRT or a CUDA GPU is missing."""


class AccuracyError(BuildError):
    """Raised when a variant is outside its accuracy gate; the message carries the figures."""

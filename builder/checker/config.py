"""A model directory as Triton reads it: config.pbtxt parsed with Triton's own protobuf schema,
and the file each model format loads from a version directory."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.errors import RenderError
from server.python_models.triton_kit_compiled import PACKAGE  # the runtime loads what the builder writes

__all__ = ["FORMATS", "FormatInfo", "parse_config"]


@dataclass(frozen=True)
class FormatInfo:
    """How one build format appears in the repository."""

    platform: str
    filename: str
    backend: str = ""  # where no platform names the backend


FORMATS = {
    "onnx": FormatInfo(platform="onnxruntime_onnx", filename="model.onnx"),
    "tensorrt": FormatInfo(platform="tensorrt_plan", filename="model.plan"),
    # An AOTInductor package, served by the runtime the builder copies beside it as model.py.
    "torch_compiled": FormatInfo(platform="", filename=PACKAGE, backend="python"),
}


def parse_config(text: str, origin: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's schema.

    Raises:
        RenderError: naming `origin` and the parser's line:column message.
    """
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RenderError(
            f"{origin}: not a valid Triton model config: {exc}",
            problems=[f"{number:3d} | {line}" for number, line in enumerate(text.splitlines(), start=1)],
        ) from exc

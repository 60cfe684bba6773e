"""Render step: a model's config.pbtxt from the Jinja templates in `templates/`.

Python decides every value (the view below); the template only lays them out. The rendered text
is parsed back through Triton's own protobuf schema before anyone writes it to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder.errors import RenderError
from builder.spec import InputSpec, ModelSpec, OutputSpec

__all__ = ["FORMATS", "TEMPLATES_DIR", "FormatInfo", "config_view", "parse_config", "render_config"]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class FormatInfo:
    """How one build format appears in the repository."""

    platform: str
    filename: str
    template: str


FORMATS = {"onnx": FormatInfo(platform="onnxruntime_onnx", filename="model.onnx", template="model_config.pbtxt.j2")}

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def config_view(model: ModelSpec, spec_file: str, fmt: str = "onnx") -> dict[str, Any]:
    """Every value the template prints, already in Triton's spelling."""
    batching = model.dynamic_batching
    return {
        "spec_file": spec_file,
        "name": model.name,
        "platform": FORMATS[fmt].platform,
        "max_batch_size": model.max_batch_size,
        "versions": _join(v.version for v in model.versions) if len(model.versions) > 1 else "",
        "inputs": [_tensor(t) for t in model.inputs],
        "outputs": [_tensor(t) for t in model.outputs],
        "dynamic_batching": None
        if batching is None
        else {
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
            "preferred_batch_size": _join(batching.preferred_batch_size),
            "preserve_ordering": batching.preserve_ordering,
        },
        "instance_groups": [{"kind": g.kind, "count": g.count, "gpus": _join(g.gpus)} for g in model.instance_group],
    }


def render_config(model: ModelSpec, spec_file: str, fmt: str = "onnx") -> str:
    """Render and parse back the config of `model`; return the text to write.

    Raises:
        RenderError: the template failed, or its output is not a valid Triton ModelConfig.
    """
    template_name = FORMATS[fmt].template
    try:
        text = _ENVIRONMENT.get_template(template_name).render(config_view(model, spec_file, fmt))
    except jinja2.TemplateError as exc:
        raise RenderError(
            f"model {model.name!r}: template {TEMPLATES_DIR / template_name} failed to render: {exc}"
        ) from exc
    parse_config(text, f"model {model.name!r} rendered from template {TEMPLATES_DIR / template_name}")
    return text


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


def _tensor(tensor: InputSpec | OutputSpec) -> dict[str, str]:
    return {"name": tensor.name, "data_type": tensor.dtype, "dims": _join(tensor.dims)}


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values)

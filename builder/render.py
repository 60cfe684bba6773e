"""Render step: a model's config.pbtxt (and a Python model's model.py) from the Jinja templates in
`templates/`.

Python decides every value (the views below, already in Triton's spelling); the templates only
lay them out. Every rendered config is parsed back through Triton's own protobuf schema before
anyone writes it to disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2
from google.protobuf import text_encoding

from builder.checker.config import FORMATS, parse_config
from builder.dtypes import by_triton
from builder.errors import RenderError
from builder.spec import (
    AnyModelSpec,
    DynamicBatching,
    EnsembleSpec,
    InputSpec,
    InstanceGroup,
    OnnxModelSpec,
    OutputSpec,
    PythonModelSpec,
    QueuePolicy,
    SequenceBatching,
    VariantSpec,
    versions_of,
)
from builder.spec.models import _Scheduled
from builder.targets import Target

__all__ = [
    "CONFIG_TEMPLATE",
    "PYTHON_MODEL_TEMPLATE",
    "TEMPLATES_DIR",
    "config_view",
    "label_filename",
    "render_config",
    "render_python_model",
]

# builder/templates links to the top-level templates/, so that a wheel carries them inside the package.
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CONFIG_TEMPLATE = "model_config.pbtxt.j2"
PYTHON_MODEL_TEMPLATE = "python_model.py.j2"


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render_config(
    model: AnyModelSpec,
    spec_file: str,
    target: Target = "cpu",
    variant: VariantSpec | None = None,
) -> str:
    """Render and parse back the config of `model` (served as `variant`, if given) for
    `target`; return the text to write.

    Raises:
        RenderError: the template failed, or its output is not a valid Triton ModelConfig.
    """
    view = config_view(model, spec_file, target, variant)
    text = _render(CONFIG_TEMPLATE, view, model.name)
    parse_config(text, f"model {model.name!r} rendered from template {TEMPLATES_DIR / CONFIG_TEMPLATE}")
    return text


def render_python_model(model: PythonModelSpec, spec_file: str, files: dict[str, str], target: Target = "cpu") -> str:
    """The generated model.py of a Python model: it imports the user's class (the one `target`
    serves) and serves it.

    `files` maps each of the model's files to its name inside the version directory.
    """
    source, options = model.served_on(target)
    module, _, attribute = source.partition(":")
    view = {
        "spec_file": spec_file,
        "name": model.name,
        "source": source,
        "module": module,
        "attribute": attribute,
        "on_gpu": model.on_gpu(target),
        # Two JSON encodings: the inner one is the data, the outer one makes it a Python string literal.
        "options_json": json.dumps(json.dumps(options, sort_keys=True)),
        "files_json": json.dumps(json.dumps(files, sort_keys=True)),
    }
    text = _render(PYTHON_MODEL_TEMPLATE, view, model.name)
    try:
        compile(text, f"{model.name}/model.py", "exec")
    except SyntaxError as exc:
        raise RenderError(f"model {model.name!r}: the generated model.py is not valid Python: {exc}") from exc
    return text


def label_filename(output: OutputSpec) -> str | None:
    """Where an output's labels file goes in the model directory (Triton reads it from there)."""
    return None if output.labels is None else f"{output.name}_labels.txt"


def config_view(
    model: AnyModelSpec,
    spec_file: str,
    target: Target,
    variant: VariantSpec | None = None,
) -> dict[str, Any]:
    """Every value the template prints, already in Triton's spelling."""
    view: dict[str, Any] = {
        "spec_file": spec_file,
        "target": target,
        "name": model.name,
        "platform": "",
        "backend": "",
        "max_batch_size": model.max_batch_size,
        "version_policy": _version_policy(model),
        "inputs": [_input(t) for t in model.inputs],
        "outputs": [_output(t) for t in model.outputs],
        "dynamic_batching": None,
        "sequence_batching": None,
        "instance_groups": [],
        "accelerators": [],
        "parameters": [],
        "response_cache": False,
        "decoupled": False,
        "warmups": [],
        "steps": [],
    }
    if isinstance(model, EnsembleSpec):
        view["platform"] = "ensemble"
        view["steps"] = [
            {
                "model_name": step.model,
                "model_version": step.version,
                "input_map": sorted(step.inputs.items()),
                "output_map": sorted(step.outputs.items()),
            }
            for step in model.steps
        ]
        return view
    if isinstance(model, OnnxModelSpec):
        served_as = FORMATS["onnx" if variant is None else variant.format]
        view["platform"], view["backend"] = served_as.platform, served_as.backend
    else:
        view["backend"] = "python"
    view.update(_scheduling(model, target, variant))
    return view


def _scheduling(model: _Scheduled, target: Target, variant: VariantSpec | None) -> dict[str, Any]:
    parameters = dict(model.parameters)
    accelerators: list[dict[str, Any]] = []
    # ONNX Runtime's options (threads also bound a compiled model's); a TensorRT plan was tuned when built.
    served_format = None if variant is None else variant.format
    if isinstance(model, OnnxModelSpec) and served_format == "torch_compiled":
        parameters = {**model.cpu.model_dump(exclude_none=True, include={"intra_op_thread_count"}), **parameters}
    reads_by_dlpack = served_format == "torch_compiled" or (isinstance(model, PythonModelSpec) and model.on_gpu(target))
    if target == "gpu" and reads_by_dlpack:
        # The Python backend copies every input to the host unless told not to; the compiled
        # runtime and a `gpu` class read theirs by DLPack, so an earlier step's GPU output stays there.
        parameters = {"FORCE_CPU_ONLY_INPUT_TENSORS": "no", **parameters}
    if isinstance(model, OnnxModelSpec) and served_format in (None, "onnx"):
        parameters = {**model.cpu.model_dump(exclude_none=True), **parameters}
        if target == "gpu":
            accelerators.extend(_accelerators(model, variant))
    warm = model.warmup.when == "always" or (model.warmup.when == "gpu" and target == "gpu")
    return {
        "dynamic_batching": None if model.batcher is None else _dynamic_batching(model.batcher),
        "sequence_batching": None if model.sequence_batching is None else _sequence_batching(model.sequence_batching),
        "instance_groups": [_instance_group(g, model, target) for g in model.instance_group],
        "accelerators": accelerators,
        # Escaped for the text format: a value may hold quotes.
        "parameters": [
            (key, text_encoding.CEscape(_string(value), as_utf8=True)) for key, value in sorted(parameters.items())
        ],
        "response_cache": model.response_cache,
        "decoupled": model.decoupled,
        "warmups": _warmups(model) if warm else [],
    }


def _version_policy(model: AnyModelSpec) -> dict[str, Any] | None:
    policy = model.version_policy
    if policy is None:
        built = versions_of(model)
        # Several versions are built to be served side by side; Triton's default serves one.
        return {"latest": 0, "all": False, "specific": _join(built)} if len(built) > 1 else None
    return {"latest": policy.latest or 0, "all": policy.all, "specific": _join(policy.specific)}


def _input(tensor: InputSpec) -> dict[str, Any]:
    return {"name": tensor.name, "data_type": tensor.dtype, "dims": _join(tensor.dims), "optional": tensor.optional}


def _output(tensor: OutputSpec) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "data_type": tensor.dtype,
        "dims": _join(tensor.dims),
        "label_filename": label_filename(tensor) or "",
    }


def _dynamic_batching(batcher: DynamicBatching) -> dict[str, Any]:
    return {
        "max_queue_delay_microseconds": batcher.max_queue_delay_microseconds,
        "preferred_batch_size": _join(batcher.preferred_batch_size),
        "preserve_ordering": batcher.preserve_ordering,
        "priority_levels": batcher.priority_levels,
        "default_priority_level": batcher.default_priority_level,
        "default_queue_policy": None
        if batcher.default_queue_policy is None
        else _queue_policy(batcher.default_queue_policy),
        "priority_queue_policy": [
            (level, _queue_policy(policy)) for level, policy in sorted(batcher.priority_queue_policy.items())
        ],
    }


def _queue_policy(policy: QueuePolicy) -> dict[str, Any]:
    return {
        "timeout_action": policy.timeout_action,
        "default_timeout_microseconds": policy.default_timeout_microseconds,
        "allow_timeout_override": _string(policy.allow_timeout_override),
        "max_queue_size": policy.max_queue_size,
    }


def _sequence_batching(sequence: SequenceBatching) -> dict[str, Any]:
    kinds = {
        "start": "CONTROL_SEQUENCE_START",
        "end": "CONTROL_SEQUENCE_END",
        "ready": "CONTROL_SEQUENCE_READY",
        "correlation_id": "CONTROL_SEQUENCE_CORRID",
    }
    controls = [
        {"name": getattr(sequence, field), "kind": kind, "flags": field != "correlation_id"}
        for field, kind in kinds.items()
        if getattr(sequence, field) is not None
    ]
    oldest = None
    if sequence.strategy == "oldest":
        oldest = {
            "max_candidate_sequences": sequence.max_candidate_sequences,
            "preferred_batch_size": _join(sequence.preferred_batch_size),
            "max_queue_delay_microseconds": sequence.max_queue_delay_microseconds,
        }
    return {
        "max_sequence_idle_microseconds": sequence.max_sequence_idle_microseconds,
        "controls": controls,
        "oldest": oldest,
        "max_queue_delay_microseconds": sequence.max_queue_delay_microseconds,
    }


def _instance_group(group: InstanceGroup, model: _Scheduled, target: Target) -> dict[str, Any]:
    if group.kind is not None:
        kind = group.kind
    elif isinstance(model, PythonModelSpec):
        kind = "KIND_GPU" if model.on_gpu(target) else "KIND_CPU"  # on the CPU unless its `gpu` class serves
    elif target == "cpu":
        kind = "KIND_CPU"
    else:
        kind = "KIND_GPU"
    limiter = group.rate_limiter
    return {
        "kind": kind,
        "count": group.gpu_count if target == "gpu" and group.gpu_count is not None else group.count,
        "gpus": _join(group.gpus) if kind != "KIND_CPU" else "",
        "rate_limiter": None
        if limiter is None
        else {
            "priority": limiter.priority,
            "resources": [{"name": r.name, "count": r.count, "shared": _string(r.shared)} for r in limiter.resources],
        },
    }


def _accelerators(model: OnnxModelSpec, variant: VariantSpec | None) -> list[dict[str, Any]]:
    gpu = model.gpu
    accelerators = []
    if gpu.accelerator == "tensorrt":
        # ONNX Runtime's TensorRT provider runs a QDQ model in INT8 only with INT8 enabled.
        precision = {"int8": "INT8", "fp16": "FP16"}.get(variant.precision if variant else "", gpu.precision_mode)
        parameters = [
            ("precision_mode", precision),
            ("max_workspace_size_bytes", str(gpu.max_workspace_size_bytes)),
        ]
        if gpu.engine_cache_path:
            parameters += [("trt_engine_cache_enable", "1"), ("trt_engine_cache_path", gpu.engine_cache_path)]
        accelerators.append({"name": "tensorrt", "parameters": parameters})
    # FP32 stays FP32 unless the spec opts in: ONNX Runtime's CUDA provider otherwise rounds
    # convolutions and matmuls to TF32 (seen: 1.6e-4 off PyTorch, past the example's 1e-4).
    cuda = {"use_tf32": 0, **gpu.cuda}
    accelerators.append({"name": "cuda", "parameters": [(k, _string(v)) for k, v in sorted(cuda.items())]})
    return accelerators


def _warmups(model: _Scheduled) -> list[dict[str, Any]]:
    mbs = model.max_batch_size
    sizes = model.warmup.batch_sizes or tuple(range(1, max(mbs, 1) + 1))
    inputs = [
        {
            "name": t.name,
            "data_type": t.dtype,
            "dims": _join(t.typical_dims),
            # Random integers could be out of range for an embedding; zeros are always valid ids.
            "data": "random_data" if t.dtype != "TYPE_STRING" and by_triton(t.dtype).is_floating else "zero_data",
        }
        for t in model.inputs
        if not t.optional
    ]
    return [
        {"name": f"batch_{size}", "batch_size": size if mbs else 1, "count": model.warmup.count, "inputs": inputs}
        for size in sizes
    ]


def _render(template_name: str, view: dict[str, Any], model_name: str) -> str:
    try:
        return _ENVIRONMENT.get_template(template_name).render(view)
    except jinja2.TemplateError as exc:
        raise RenderError(
            f"model {model_name!r}: template {TEMPLATES_DIR / template_name} failed to render: {exc}"
        ) from exc


def _string(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _join(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)

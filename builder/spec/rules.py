"""Rules relating a model's fields to each other, checked once each field is valid on its own.

Each rule yields one line naming the field, the value, the rule and the fix; the server
enforces most of them at load time too (see builder.checker for the repository side).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from builder.spec.models import AnyModelSpec, EnsembleSpec, OnnxModelSpec, PythonModelSpec, _Scheduled, _Served
from builder.spec.serving import DynamicBatching
from builder.spec.tensors import InputSpec, OutputSpec

__all__ = ["model_problems", "versions_of"]


def versions_of(model: AnyModelSpec) -> list[int]:
    """The version directories the build writes for a model."""
    if isinstance(model, OnnxModelSpec):
        return [v.version for v in model.versions]
    return [model.version]


def model_problems(model: AnyModelSpec) -> Iterator[str]:
    """Every cross-field rule the model breaks."""
    yield from _served_problems(model)
    if isinstance(model, _Scheduled):
        yield from _scheduling_problems(model)
    if isinstance(model, OnnxModelSpec):
        yield from _onnx_problems(model)
    if isinstance(model, PythonModelSpec):
        yield from _python_problems(model)
    if isinstance(model, EnsembleSpec):
        yield from _ensemble_problems(model)


def _served_problems(model: _Served) -> Iterator[str]:
    # Emptiness is checked here rather than by pydantic's min_length, which also reports an
    # empty list whenever one item of it is invalid.
    for field in ("inputs", "outputs"):
        if not getattr(model, field):
            yield f"{field} is empty; declare at least one"
    names = [t.name for t in model.inputs] + [t.name for t in model.outputs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"tensor name {name!r} is used more than once; input and output names must all differ"
    tensors: tuple[tuple[str, tuple[InputSpec | OutputSpec, ...]], ...] = (
        ("inputs", model.inputs),
        ("outputs", model.outputs),
    )
    for kind, declared in tensors:
        for i, tensor in enumerate(declared):
            if not tensor.dims:
                yield f"{kind}[{i}].dims is empty; a tensor has at least one dimension (use [1] for one value per item)"
    for i, tensor in enumerate(model.inputs):
        yield from _input_problems(f"inputs[{i}]", tensor)
    for i, output in enumerate(model.outputs):
        if output.labels is not None and not output.labels.is_file():
            yield f"outputs[{i}].labels = {str(output.labels)!r}: file not found; give a text file with one label per line"
    policy = model.version_policy
    if policy is not None:
        chosen = [bool(policy.latest), policy.all, bool(policy.specific)]
        if sum(chosen) != 1:
            yield "version_policy: give exactly one of latest: N, all: true or specific: [versions]"
        built = versions_of(model)  # type: ignore[arg-type]
        for version in policy.specific:
            if version not in built:
                yield f"version_policy.specific: version {version} is not built; the model's versions are {built}"


def _scheduling_problems(model: _Scheduled) -> Iterator[str]:
    mbs = model.max_batch_size
    explicit = "dynamic_batching" in model.model_fields_set and model.dynamic_batching is not None
    if explicit and mbs == 0:
        yield (
            "dynamic_batching is set but max_batch_size is 0; a model that cannot batch cannot be "
            "dynamically batched: set max_batch_size >= 1 or dynamic_batching: null"
        )
    if explicit and model.sequence_batching is not None:
        yield "dynamic_batching and sequence_batching are both set; Triton runs one scheduler per model: keep one"
    if model.batcher is not None:
        yield from _batcher_problems(model.batcher, mbs)
    sequence = model.sequence_batching
    if sequence is not None:
        for size in sequence.preferred_batch_size:
            if size > mbs:
                yield f"sequence_batching.preferred_batch_size: {size} exceeds max_batch_size {mbs}"
        inputs = {t.name for t in model.inputs}
        for control in ("start", "end", "ready", "correlation_id"):
            name = getattr(sequence, control)
            if name in inputs:
                yield f"sequence_batching.{control} = {name!r} is also declared as an input; control tensors are not inputs: remove it from inputs"
    if model.response_cache and (model.decoupled or sequence is not None):
        yield "response_cache: Triton cannot cache responses of decoupled or sequence-batched models; set response_cache: false"
    for i, group in enumerate(model.instance_group):
        if group.kind == "KIND_CPU" and group.gpus:
            yield f"instance_group[{i}].gpus = {list(group.gpus)}: a KIND_CPU group cannot name GPUs; remove gpus or use KIND_GPU"
    if not model.instance_group:
        yield "instance_group is empty; declare at least one group (or leave it out for one instance)"
    for size in model.warmup.batch_sizes:
        if size > max(mbs, 1):
            yield f"warmup.batch_sizes: {size} exceeds max_batch_size {mbs}; allowed: 1..{max(mbs, 1)}"


def _batcher_problems(batcher: DynamicBatching, mbs: int) -> Iterator[str]:
    for size in batcher.preferred_batch_size:
        if size > mbs:
            yield f"dynamic_batching.preferred_batch_size: {size} exceeds max_batch_size {mbs}; allowed: 1..{mbs}"
    levels = batcher.priority_levels
    if levels:
        if not 1 <= batcher.default_priority_level <= levels:
            yield f"dynamic_batching.default_priority_level = {batcher.default_priority_level}: must be in [1, {levels}] (priority_levels)"
        for level in batcher.priority_queue_policy:
            if level > levels:
                yield f"dynamic_batching.priority_queue_policy: level {level} is outside [1, {levels}] (priority_levels)"
    elif batcher.default_priority_level or batcher.priority_queue_policy:
        yield "dynamic_batching: default_priority_level / priority_queue_policy need priority_levels >= 1"
    if batcher.preserve_ordering:
        if levels > 1:
            yield "dynamic_batching.preserve_ordering: Triton allows only one priority level with preserve_ordering; set priority_levels <= 1"
        policies = [batcher.default_queue_policy, *batcher.priority_queue_policy.values()]
        if any(p is not None and p.timeout_action == "DELAY" for p in policies):
            yield "dynamic_batching.preserve_ordering: a queue policy cannot DELAY timed-out requests with preserve_ordering; use REJECT"


def _input_problems(field: str, tensor: InputSpec) -> Iterator[str]:
    rank = len(tensor.dims)
    shape_range = tensor.shape_range
    if shape_range is None:
        return
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


def _onnx_problems(model: OnnxModelSpec) -> Iterator[str]:
    if not model.versions:
        yield "versions is empty; declare at least one"
    numbers = [v.version for v in model.versions]
    for number in sorted({n for n in numbers if numbers.count(n) > 1}):
        yield f"versions: version {number} is declared more than once"
    tensors: tuple[tuple[str, tuple[InputSpec | OutputSpec, ...]], ...] = (
        ("inputs", model.inputs),
        ("outputs", model.outputs),
    )
    for kind, declared in tensors:
        for i, tensor in enumerate(declared):
            if tensor.dtype == "TYPE_STRING":
                yield f"{kind}[{i}].dtype = 'TYPE_STRING': an exported ONNX model cannot take strings; decode them in a python model"
    for i, tensor in enumerate(model.inputs):
        if tensor.dynamic_axes and tensor.shape_range is None:
            yield (
                f"inputs[{i}].shape_range is missing: dims {list(tensor.dims)} have variable (-1) dimensions; "
                f"declare shape_range: {{min: [...], max: [...]}} with {len(tensor.dims)} values each"
            )
        if tensor.value_range is not None and not tensor.value_range[0] < tensor.value_range[1]:
            yield f"inputs[{i}].value_range = {list(tensor.value_range)}: need [low, high) with low < high"
    yield from _variant_problems(model)
    weights = [("weights", model.weights), *((f"versions[{v.version}].weights", v.weights) for v in model.versions)]
    for label, path in weights:
        if path is not None and not path.is_file():
            yield f"{label} = {str(path)!r}: file not found; give a state_dict saved with torch.save(model.state_dict(), path)"


def _variant_problems(model: OnnxModelSpec) -> Iterator[str]:
    calibration = model.calibration
    if model.variants and calibration is None:
        yield (
            "variants need calibration data: add calibration: {data: ...} (a directory of images, a text "
            "file, a .npy/.npz file or a module:callable) to calibrate them and judge them on held-out samples"
        )
    if calibration is not None and not calibration.from_callable and not Path(calibration.data).exists():
        yield f"calibration.data = {calibration.data!r}: not found; give an existing path (relative to the spec file) or a 'module:callable'"
    if model.variants and model.max_batch_size == 0:
        yield "variants need max_batch_size >= 1: calibration and accuracy gates feed batches of samples"
    for i, variant in enumerate(model.variants):
        field = f"variants[{i}]"
        if variant.name == model.name:
            yield f"{field}.name = {variant.name!r} is the model's own name; a variant is served under a name of its own"
        if variant.format == "onnx" and variant.precision == "fp32":
            yield f"{field}.precision = 'fp32': an fp32 ONNX variant is the model itself; allowed for format onnx: fp16, int8"
        variable = [t.name for t in model.inputs if t.dynamic_axes]
        if variant.precision == "int8" and variant.quantization.method != "minmax" and variable:
            yield (
                f"{field}.quantization.method = {variant.quantization.method!r} collects histograms, which need "
                f"calibration batches of one shape, but inputs {variable} have variable dims; use method: minmax"
            )
        if variant.format == "torch_compiled" and variant.precision == "int8":
            yield (
                f"{field}.precision = 'int8': AOTInductor compiles floating-point models; allowed for format "
                "torch_compiled: fp32, fp16, bf16 (int8 needs format: onnx or tensorrt)"
            )
        if variant.format == "torch_compiled" and variant.compile.cuda_graphs is True:
            if variable:
                yield (
                    f"{field}.compile.cuda_graphs = true: a CUDA graph replays one shape, and inputs {variable} have "
                    "variable dims; use cuda_graphs: auto (no graphs for this model) or declare those dims fixed"
                )
            if variant.compile.artifact == "aoti":
                yield (
                    f"{field}.compile.cuda_graphs = true with artifact 'aoti': an AOTInductor package has no CUDA "
                    "graphs; use artifact: auto or inductor_cache"
                )
        if variant.format == "onnx" and variant.precision == "bf16":
            yield f"{field}.precision = 'bf16': ONNX Runtime has no bf16 kernels; allowed for format onnx: fp16, int8 (bf16 needs format: tensorrt)"


def _ensemble_problems(model: EnsembleSpec) -> Iterator[str]:
    if model.version_policy is not None:
        yield "version_policy: an ensemble serves its single version; remove version_policy"
    steps = [step.model for step in model.steps]
    for i, variant in enumerate(model.variants):
        field = f"variants[{i}]"
        if variant.name == model.name:
            yield f"{field}.name = {variant.name!r} is the ensemble's own name; a variant is served under a name of its own"
        if not variant.models:
            yield f"{field}.models is empty; map at least one step model to the model run instead, e.g. {{{steps[0] if steps else 'model'}: other}}"
        for replaced, replacement in variant.models.items():
            if replaced not in steps:
                yield f"{field}.models: {replaced!r} is not a step of this ensemble; its steps run {steps}"
            if replacement == replaced:
                yield f"{field}.models.{replaced} = {replacement!r} replaces the model by itself; name another model"


def _python_problems(model: PythonModelSpec) -> Iterator[str]:
    try:
        json.dumps(model.options)
    except (TypeError, ValueError) as exc:
        yield f"options: not representable as JSON ({exc}); use strings, numbers, booleans, lists and mappings"
    for name, path in model.files.items():
        if not path.is_file():
            yield f"files.{name} = {str(path)!r}: file not found"
    if model.gpu is not None:
        try:
            json.dumps(model.gpu.options)
        except (TypeError, ValueError) as exc:
            yield f"gpu.options: not representable as JSON ({exc}); use strings, numbers, booleans, lists and mappings"
        for i, group in enumerate(model.instance_group):
            if group.kind not in (None, "KIND_GPU"):
                yield (
                    f"instance_group[{i}].kind = {group.kind!r}: the `gpu` class runs on KIND_GPU instances on the gpu "
                    "target; leave kind out (each target decides) or remove `gpu:`"
                )

"""The rules Triton applies to one config.pbtxt when it loads the model, and a few the kit adds.

Each rule yields `(field, value, rule, fix)`. The server's own wording is kept in the rule text
where it has one (core `model_config_utils.cc`), so a checker line and the server's load error
read alike; `tests/integration/test_checker_agrees_with_server.py` proves they agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from builder.targets import Target

__all__ = ["Finding", "config_findings", "target_findings"]

Finding = tuple[str, str, str, str]
"""(field, value, rule, fix)"""

_KNOWN_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}
_PLATFORMS = {*_KNOWN_BACKENDS, "ensemble", "tensorflow_graphdef", "tensorflow_savedmodel"}
"""The platform names Triton 2.51 knows; any other backend is named by `backend`."""


def config_findings(
    config: pb.ModelConfig, directory_name: str, *, completed_by_server: bool = False
) -> Iterator[Finding]:
    """Every rule of the server's that `config` breaks. `completed_by_server`: the server fills in
    tensors' dtypes and dims from a model file the check cannot read (a TensorRT plan, a
    TensorFlow model), so none is required here."""
    model = config.name or directory_name
    if config.name and config.name != directory_name:
        yield (
            "name",
            repr(config.name),
            f"must equal the model's directory name {directory_name!r}",
            f'set name: "{directory_name}"',
        )
    yield from _platform(config, model)
    if config.max_batch_size < 0:
        yield (
            "max_batch_size",
            str(config.max_batch_size),
            "'max_batch_size' must be non-negative value",
            "set 0 (no batching) or more",
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            yield from _tensor(kind, tensor, config.max_batch_size, completed_by_server)
    yield from _batch_io(config)
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "dynamic_batching":
        yield from _dynamic_batching(config.dynamic_batching, config.max_batch_size, model)
    elif scheduling == "sequence_batching":
        yield from _sequence_batching(config.sequence_batching, config.max_batch_size, model)
    elif scheduling == "ensemble_scheduling" and config.platform != "ensemble":
        yield (
            "ensemble_scheduling",
            "set",
            f"ensemble scheduling cannot be set for model '{model}' whose platform is not ensemble",
            'remove ensemble_scheduling, or set platform: "ensemble"',
        )
    cached = config.HasField("response_cache") and config.response_cache.enable
    if cached and (scheduling == "sequence_batching" or config.model_transaction_policy.decoupled):
        yield (
            "response_cache",
            "enable: true",
            "Triton cannot cache responses of sequence-batched or decoupled models",
            "remove response_cache",
        )
    for index, group in enumerate(config.instance_group):
        yield from _instance_group(index, group, model)
    if config.platform == "ensemble":
        yield from _ensemble(config, model)
    else:
        yield from _warmup(config)


def target_findings(config: pb.ModelConfig, target: Target | None) -> Iterator[Finding]:
    """The kit's rules of deploying `config` to a `target` host (none without a target)."""
    if target != "cpu":
        return
    for index, group in enumerate(config.instance_group):
        if group.kind == pb.ModelInstanceGroup.KIND_GPU:
            yield (
                f"instance_group[{index}].kind",
                "KIND_GPU",
                "instance group has kind KIND_GPU but a cpu target has no GPUs",
                "build with --target cpu (KIND_CPU), or use KIND_AUTO",
            )
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        yield (
            "optimization.execution_accelerators",
            repr(accelerator.name),
            "a GPU execution accelerator on a cpu target",
            "build with --target gpu for GPU hosts, or drop the accelerator",
        )


def _platform(config: pb.ModelConfig, model: str) -> Iterator[Finding]:
    if config.platform and config.platform not in _PLATFORMS:
        yield (
            "platform",
            repr(config.platform),
            f"unexpected platform type '{config.platform}' for {model}",
            f"use one of {', '.join(sorted(_PLATFORMS))}, or name a backend with backend: instead",
        )
    if config.platform == "ensemble" and config.backend:
        yield (
            "backend",
            repr(config.backend),
            f"Ensemble model '{model}' must have platform type 'ensemble' and empty backend type",
            "remove backend",
        )
    if (config.platform == "pytorch_libtorch" or config.backend == "pytorch") and not config.output:
        # The PyTorch backend's words (Triton's qa/L0_model_config fixtures); the embedded server has no such backend.
        yield (
            "output",
            "(none)",
            "model configuration must contain at least one output, none were specified",
            "declare the outputs of the TorchScript model's forward()",
        )
    expected = _KNOWN_BACKENDS.get(config.platform)
    if expected and config.backend and config.backend != expected:
        yield (
            "backend",
            repr(config.backend),
            f"unexpected 'platform' and 'backend' pair: platform {config.platform!r} runs on backend {expected!r}",
            f'set backend: "{expected}" or remove it',
        )


def _tensor(kind: str, tensor: Any, max_batch_size: int, completed_by_server: bool = False) -> Iterator[Finding]:
    field = f"{kind} {tensor.name!r}"
    subject = f"model {kind} '{tensor.name}'"
    if tensor.data_type == pb.TYPE_INVALID and not completed_by_server:
        yield f"{field}.data_type", "(none)", f"{subject} must specify 'data_type'", "set data_type, e.g. TYPE_FP32"
    dims = list(tensor.dims)
    if not dims and not tensor.HasField("reshape") and not completed_by_server:
        yield (
            f"{field}.dims",
            "[]",
            f"{subject} must specify 'dims'",
            "list the dims without the batch dimension ([1] for one value)",
        )
    if _invalid_dims(dims):
        yield (
            f"{field}.dims",
            str(dims),
            f"{subject} dimension must be integer >= 1, or -1 to indicate a variable-size dimension",
            "use sizes >= 1, or -1 for a variable size",
        )
    if tensor.HasField("reshape"):
        shape = list(tensor.reshape.shape)
        if not shape and max_batch_size == 0:
            yield (
                f"{field}.reshape",
                "[]",
                f"{subject} cannot have empty reshape for non-batching model as scalar tensors are not supported",
                "reshape to [1]",
            )
        elif _invalid_dims(shape):
            yield (
                f"{field}.reshape",
                str(shape),
                f"{subject} reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension",
                "use sizes >= 1, or -1 for a variable size",
            )
        elif -1 in shape and dims.count(-1) != shape.count(-1):
            yield (
                f"{field}.reshape",
                str(shape),
                f"{subject} has different number of variable-size dimensions for dims and reshape",
                f"keep as many -1 as dims {dims}",
            )
        elif shape and _element_counts(dims) != _element_counts(shape):
            # Triton compares the element counts between variable dims, group by group.
            yield (
                f"{field}.reshape",
                str(shape),
                f"{subject} has different size for dims and reshape",
                f"keep the element count of dims {dims} between each pair of -1 dims",
            )


def _invalid_dims(dims: list[int]) -> bool:
    """Whether a dim is neither a size (>= 1) nor variable (-1)."""
    return any(dim == 0 or dim < -1 for dim in dims)


def _element_counts(dims: list[int]) -> list[int]:
    counts, current = [], 1
    for dim in dims:
        if dim == -1:
            counts.append(current)
            current = 1
        else:
            current *= dim
    return [*counts, current]


def _batch_io(config: pb.ModelConfig) -> Iterator[Finding]:
    inputs = {t.name for t in config.input}
    outputs = {t.name for t in config.output}
    for kind, items in (("input", config.batch_input), ("output", config.batch_output)):
        for item in items:
            kind_name = (pb.BatchInput if kind == "input" else pb.BatchOutput).Kind.Name(item.kind)
            if len(item.source_input) != 1:
                yield (
                    f"batch_{kind}",
                    kind_name,
                    f"batch {kind} kind '{kind_name}' expects 1 source input, got {len(item.source_input)}",
                    "give exactly one source_input",
                )
            for source in item.source_input:
                if source not in inputs:
                    yield (
                        f"batch_{kind}.source_input",
                        repr(source),
                        f"unknown source input name '{source}'",
                        f"use one of the model's inputs: {', '.join(sorted(inputs))}",
                    )
    targets = [name for item in config.batch_output for name in item.target_name]
    for name in dict.fromkeys(targets):
        if name not in outputs:
            yield (
                "batch_output.target_name",
                repr(name),
                f"unknown target output name '{name}'",
                f"use one of the model's outputs: {', '.join(sorted(outputs))}",
            )
        elif targets.count(name) > 1:
            yield (
                "batch_output.target_name",
                repr(name),
                f"target output name '{name}' can only be specified once",
                "name each target in one batch_output",
            )


def _dynamic_batching(batching: pb.ModelDynamicBatching, max_batch_size: int, model: str) -> Iterator[Finding]:
    if max_batch_size == 0:
        yield (
            "dynamic_batching",
            "set",
            "a model with max_batch_size 0 is never batched",
            "remove dynamic_batching or raise max_batch_size",
        )
    for size in batching.preferred_batch_size:
        if size <= 0:
            yield (
                "dynamic_batching.preferred_batch_size",
                str(size),
                "dynamic batching preferred size must be positive",
                "use sizes >= 1",
            )
        elif max_batch_size and size > max_batch_size:
            yield (
                "dynamic_batching.preferred_batch_size",
                str(size),
                f"dynamic batching preferred size must be <= max batch size ({max_batch_size})",
                f"use sizes up to {max_batch_size}, or none at all",
            )
    levels = batching.priority_levels
    if levels and not 1 <= batching.default_priority_level <= levels:
        yield (
            "dynamic_batching.default_priority_level",
            str(batching.default_priority_level),
            f"default priority level must be in range [1, {levels}]",
            f"set it between 1 and priority_levels ({levels})",
        )
    for level in batching.priority_queue_policy:
        if not 1 <= level <= max(levels, 0):
            yield (
                "dynamic_batching.priority_queue_policy",
                str(level),
                f"priority queue policy must have priority level in range [1, {levels}] for {model}",
                "use levels within priority_levels",
            )
    policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
    if batching.preserve_ordering and any(p.timeout_action == pb.ModelQueuePolicy.DELAY for p in policies):
        yield (
            "dynamic_batching.default_queue_policy.timeout_action",
            "DELAY",
            f"Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for {model}",
            "use REJECT, or drop preserve_ordering",
        )
    if batching.preserve_ordering and levels > 1:
        yield (
            "dynamic_batching.priority_levels",
            str(levels),
            "Only one priority level is allowed when 'preserve_ordering' is true",
            "set priority_levels to 0 or 1, or drop preserve_ordering",
        )


def _sequence_batching(sequence: pb.ModelSequenceBatching, max_batch_size: int, model: str) -> Iterator[Finding]:
    Control = pb.ModelSequenceBatching.Control
    kinds_of: dict[str, set[str]] = {}
    tensors_of: dict[str, list[str]] = {}
    for control_input in sequence.control_input:
        for control in control_input.control:
            kind = Control.Kind.Name(control.kind)
            kinds_of.setdefault(control_input.name, set()).add(kind)
            tensors_of.setdefault(kind, []).append(control_input.name)
            if control.kind == Control.CONTROL_SEQUENCE_CORRID:
                continue
            given = [f for f in ("int32_false_true", "fp32_false_true", "bool_false_true") if len(getattr(control, f))]
            if len(given) != 1 or len(getattr(control, given[0])) != 2:
                yield (
                    f"sequence_batching.control_input {control_input.name!r}",
                    str(given),
                    "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true' for {kind} for {model}",
                    "give exactly one of them, with 2 entries, e.g. int32_false_true: [ 0, 1 ]",
                )
    for kind, names in tensors_of.items():
        if len(names) > 1:
            yield (
                "sequence_batching.control_input",
                ", ".join(names),
                f"sequence batching specifies multiple {kind} tensors for {model}",
                f"keep one control input of kind {kind}",
            )
    for name, kinds in kinds_of.items():
        if len(kinds) > 1:
            yield (
                "sequence_batching.control_input",
                repr(name),
                f"sequence batching control tensor '{name}' is specified for multiple control kinds for {model}",
                "give each control kind a tensor of its own",
            )
    if sequence.HasField("oldest"):
        for size in sequence.oldest.preferred_batch_size:
            if size > max_batch_size:
                yield (
                    "sequence_batching.oldest.preferred_batch_size",
                    str(size),
                    f"must be <= max batch size ({max_batch_size})",
                    f"use sizes up to {max_batch_size}",
                )


def _instance_group(index: int, group: pb.ModelInstanceGroup, model: str) -> Iterator[Finding]:
    field = f"instance_group[{index}]"
    for gpu in group.gpus:
        if gpu < 0:
            yield (
                f"{field}.gpus",
                str(list(group.gpus)),
                f"instance group {group.name or f'{model}_{index}'} of model {model} specifies invalid or "
                f"unsupported gpu id {gpu}",
                "use GPU ids from 0 up, as nvidia-smi lists them",
            )
    if group.kind == pb.ModelInstanceGroup.KIND_CPU and group.gpus:
        yield (
            f"{field}.gpus",
            str(list(group.gpus)),
            "instance group has kind KIND_CPU but specifies one or more GPUs",
            "remove gpus, or use KIND_GPU",
        )
    if group.kind == pb.ModelInstanceGroup.KIND_MODEL and group.gpus:
        yield (
            f"{field}.gpus",
            str(list(group.gpus)),
            "instance group has kind KIND_MODEL but specifies one or more GPUs",
            "remove gpus",
        )


def _ensemble(config: pb.ModelConfig, model: str) -> Iterator[Finding]:
    forbidden = {
        "instance_group": "instance group should not be specified for ensemble",
        "optimization": "optimization should not be specified for ensemble",
        "model_warmup": "model_warmup can not be specified for ensemble",
    }
    for field, rule in forbidden.items():
        present = len(getattr(config, field)) if field != "optimization" else config.HasField(field)
        if present:
            yield field, "set", rule, "remove it: each step's model has its own"
    if config.WhichOneof("scheduling_choice") != "ensemble_scheduling":
        yield (
            "ensemble_scheduling",
            "(none)",
            f"ensemble scheduling must be set for ensemble {model} whose platform is ensemble",
            "declare ensemble_scheduling with its steps",
        )
        return
    if not config.ensemble_scheduling.step:
        yield "ensemble_scheduling.step", "(none)", f"must specify 'step' for ensemble '{model}'", "declare the steps"
    for index, step in enumerate(config.ensemble_scheduling.step):
        for field, present in (
            ("model_name", step.model_name),
            ("input_map", step.input_map),
            ("output_map", step.output_map),
        ):
            if not present:
                yield (
                    f"ensemble_scheduling.step[{index}].{field}",
                    "(none)",
                    f"must specify '{field}' in step {index} of ensemble '{model}'",
                    f"give step {index} its {field}",
                )


def _warmup(config: pb.ModelConfig) -> Iterator[Finding]:
    inputs = {t.name: t for t in config.input}
    for warmup in config.model_warmup:
        field = f"model_warmup {warmup.name!r}"
        limit = max(config.max_batch_size, 1)
        if not 1 <= warmup.batch_size <= limit:
            yield (
                f"{field}.batch_size",
                str(warmup.batch_size),
                f"must be in [1, {limit}]",
                f"use a batch size up to {limit}",
            )
        for name, tensor in warmup.inputs.items():
            if name not in inputs:
                yield f"{field}.inputs", repr(name), "is not an input of the model", f"use one of {sorted(inputs)}"
                continue
            if -1 in tensor.dims:
                yield (
                    f"{field}.inputs {name!r}.dims",
                    str(list(tensor.dims)),
                    "warmup setting expects all variable-size dimensions are specified",
                    "give a concrete size for every -1",
                )

"""The rules Triton applies to one config.pbtxt when it loads the model, and a few the kit adds.

Each rule yields `(field, value, rule, fix)`. The server's own wording is kept in the rule text
where it has one (core `model_config_utils.cc`), so a checker line and the server's load error
read alike; `tests/integration/test_checker_agrees_with_server.py` proves they agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from tritonclient.grpc import model_config_pb2 as pb

from builder.targets import Target

__all__ = ["Finding", "config_findings"]

Finding = tuple[str, str, str, str]
"""(field, value, rule, fix)"""

_KNOWN_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}


def config_findings(config: pb.ModelConfig, directory_name: str, target: Target | None = None) -> Iterator[Finding]:
    """Every rule `config` breaks; `target` adds the rules of deploying to that kind of host."""
    if config.name and config.name != directory_name:
        yield (
            "name",
            repr(config.name),
            f"must equal the model's directory name {directory_name!r}",
            f'set name: "{directory_name}"',
        )
    yield from _platform(config)
    if config.max_batch_size < 0:
        yield (
            "max_batch_size",
            str(config.max_batch_size),
            "'max_batch_size' must be non-negative value",
            "set 0 (no batching) or more",
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            yield from _tensor(kind, tensor, config.max_batch_size)
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "dynamic_batching":
        yield from _dynamic_batching(config.dynamic_batching, config.max_batch_size)
    elif scheduling == "sequence_batching":
        yield from _sequence_batching(config.sequence_batching, config.max_batch_size)
    cached = config.HasField("response_cache") and config.response_cache.enable
    if cached and (scheduling == "sequence_batching" or config.model_transaction_policy.decoupled):
        yield (
            "response_cache",
            "enable: true",
            "Triton cannot cache responses of sequence-batched or decoupled models",
            "remove response_cache",
        )
    for index, group in enumerate(config.instance_group):
        yield from _instance_group(index, group, target)
    if config.platform == "ensemble":
        yield from _ensemble(config)
    else:
        yield from _warmup(config)
    if target == "cpu":
        for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
            yield (
                "optimization.execution_accelerators",
                repr(accelerator.name),
                "a GPU execution accelerator on a cpu target",
                "build with --target gpu for GPU hosts, or drop the accelerator",
            )


def _platform(config: pb.ModelConfig) -> Iterator[Finding]:
    if config.platform == "ensemble" and config.backend:
        yield (
            "backend",
            repr(config.backend),
            "an ensemble must have platform 'ensemble' and an empty backend",
            "remove backend",
        )
    expected = _KNOWN_BACKENDS.get(config.platform)
    if expected and config.backend and config.backend != expected:
        yield (
            "backend",
            repr(config.backend),
            f"unexpected 'platform' and 'backend' pair: platform {config.platform!r} runs on backend {expected!r}",
            f'set backend: "{expected}" or remove it',
        )


def _tensor(kind: str, tensor: Any, max_batch_size: int) -> Iterator[Finding]:
    field = f"{kind} {tensor.name!r}"
    if tensor.data_type == pb.TYPE_INVALID:
        yield f"{field}.data_type", "(none)", "must specify 'data_type'", "set data_type, e.g. TYPE_FP32"
    dims = list(tensor.dims)
    if not dims and not tensor.HasField("reshape"):
        yield (
            f"{field}.dims",
            "[]",
            "must specify 'dims'",
            "list the dims without the batch dimension ([1] for one value)",
        )
    for dim in dims:
        if dim == 0 or dim < -1:
            yield (
                f"{field}.dims",
                str(dims),
                "dimension must be integer >= 1, or -1 to indicate a variable-size dimension",
                "use sizes >= 1, or -1 for a variable size",
            )
            break
    if tensor.HasField("reshape"):
        shape = list(tensor.reshape.shape)
        if not shape and max_batch_size == 0:
            yield (
                f"{field}.reshape",
                "[]",
                "cannot have empty reshape for non-batching model as scalar tensors are not supported",
                "reshape to [1]",
            )
        elif dims.count(-1) != shape.count(-1):
            yield (
                f"{field}.reshape",
                str(shape),
                "has different number of variable-size dimensions for dims and reshape",
                f"keep as many -1 as dims {dims}",
            )
        elif -1 not in dims and math.prod(dims) != math.prod(shape):
            yield (
                f"{field}.reshape",
                str(shape),
                f"has different size for dims and reshape ({math.prod(dims)} vs {math.prod(shape)} elements)",
                "keep the element count",
            )


def _dynamic_batching(batching: pb.ModelDynamicBatching, max_batch_size: int) -> Iterator[Finding]:
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
                f"priority queue policy levels must be in range [1, {levels}]",
                "use levels within priority_levels",
            )
    if batching.preserve_ordering and levels > 1:
        yield (
            "dynamic_batching.priority_levels",
            str(levels),
            "Only one priority level is allowed when 'preserve_ordering' is true",
            "set priority_levels to 0 or 1, or drop preserve_ordering",
        )


def _sequence_batching(sequence: pb.ModelSequenceBatching, max_batch_size: int) -> Iterator[Finding]:
    for control_input in sequence.control_input:
        for control in control_input.control:
            if control.kind == pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID:
                continue
            given = [f for f in ("int32_false_true", "fp32_false_true", "bool_false_true") if len(getattr(control, f))]
            if len(given) != 1 or len(getattr(control, given[0])) != 2:
                yield (
                    f"sequence_batching.control_input {control_input.name!r}",
                    str(given),
                    "a control must give exactly one of int32/fp32/bool_false_true, with 2 entries",
                    "e.g. int32_false_true: [ 0, 1 ]",
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


def _instance_group(index: int, group: pb.ModelInstanceGroup, target: Target | None) -> Iterator[Finding]:
    field = f"instance_group[{index}]"
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
    if target == "cpu" and group.kind == pb.ModelInstanceGroup.KIND_GPU:
        yield (
            f"{field}.kind",
            "KIND_GPU",
            "instance group has kind KIND_GPU but a cpu target has no GPUs",
            "build with --target cpu (KIND_CPU), or use KIND_AUTO",
        )


def _ensemble(config: pb.ModelConfig) -> Iterator[Finding]:
    forbidden = {
        "instance_group": "instance group should not be specified for ensemble",
        "optimization": "optimization should not be specified for ensemble",
        "model_warmup": "model_warmup can not be specified for ensemble",
    }
    for field, rule in forbidden.items():
        present = len(getattr(config, field)) if field != "optimization" else config.HasField(field)
        if present:
            yield field, "set", rule, "remove it: each step's model has its own"
    if config.WhichOneof("scheduling_choice") != "ensemble_scheduling" or not config.ensemble_scheduling.step:
        yield "ensemble_scheduling.step", "(none)", "must specify 'step'", "declare the steps of the ensemble"


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

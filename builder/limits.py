"""Input limits step: what the spec declares beyond Triton's config, written for the clients.

A config's `-1` says a dim varies, not how far; nothing in it says which integer values a model
can index with. Requests beyond those bounds reach ONNX Runtime and fail their whole dynamic batch
(clients.limits says why), so the build writes the spec's `shape_range` and the `value_range` of
integer inputs to the repository's ``input_limits.json`` for the kit's clients to refuse them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from builder.dtypes import by_triton
from builder.spec import AnyModelSpec, OnnxModelSpec
from builder.spec.tensors import InputSpec
from clients.limits import InputLimit, InputLimits

__all__ = ["input_limit", "input_limits"]


def input_limits(models: Iterable[AnyModelSpec], served: Iterable[str]) -> InputLimits:
    """The limits of every model among `served` (the model directories built) that declares any."""
    built = set(served)
    declared: dict[str, dict[str, InputLimit]] = {}
    for model in models:
        names = [model.name]
        if isinstance(model, OnnxModelSpec):
            names += [variant.name for variant in model.variants]  # variants serve the same inputs
        limits = {tensor.name: limit for tensor in model.inputs if (limit := input_limit(tensor)) is not None}
        for name in names:
            if limits and name in built:
                declared[name] = limits
    return InputLimits(declared)


def input_limit(tensor: InputSpec) -> InputLimit | None:
    """What `tensor` declares beyond its dims (`shape_range`, an integer input's `value_range`); None if nothing."""
    shapes = tensor.shape_range
    values = None
    if tensor.value_range is not None and tensor.dtype != "TYPE_STRING" and by_triton(tensor.dtype).is_integer:
        # Integers x with low <= x < high, for a range the spec may write as floats.
        values = (math.ceil(tensor.value_range[0]), math.ceil(tensor.value_range[1]))
    if shapes is None and values is None:
        return None
    return InputLimit(
        min_dims=None if shapes is None else shapes.min,
        max_dims=None if shapes is None else shapes.max,
        values=values,
    )

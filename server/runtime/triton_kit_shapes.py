"""Which request shapes a model takes, checked before a request joins a batch: a request outside
them gets INVALID_ARGUMENT naming the input, the axis, the size and what is allowed, rather than
an error from deep inside ONNX Runtime (and never costs the other requests of its batch).

Two sources: the spec's `shape_range` of each variable dim, which the builder renders as the
config parameter `input_shape_ranges`; and the model's own graph, where inputs whose axes carry
the same symbolic dim (the ids and the mask of one sequence) must agree. Shared by the kit's
`onnxruntime` backend; it imports only numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SHAPE_RANGES_PARAMETER", "ShapeCheck"]

SHAPE_RANGES_PARAMETER = "input_shape_ranges"


class ShapeCheck:
    """Call with one request's {input name: array}; raises ValueError saying what is wrong."""

    def __init__(
        self,
        ranges: Mapping[str, tuple[Sequence[int], Sequence[int]]],
        symbols: Mapping[str, Sequence[object]],
        batching: bool,
    ) -> None:
        self.offset = 1 if batching else 0
        self.ranges = dict(ranges)
        # symbol -> [(input, axis)], for the symbols that more than one axis carries
        shared: dict[str, list[tuple[str, int]]] = {}
        for name, shape in symbols.items():
            for axis, dim in enumerate(shape):
                if isinstance(dim, str) and dim:
                    shared.setdefault(dim, []).append((name, axis))
        self.agreements = {symbol: places for symbol, places in shared.items() if len(places) > 1}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], symbols: Mapping[str, Sequence[object]]) -> ShapeCheck:
        """From the model's config (its parameter, its max_batch_size) and the graph's input shapes
        (ONNX Runtime's `session.get_inputs()`: an int per fixed dim, a name per symbolic one)."""
        text = config.get("parameters", {}).get(SHAPE_RANGES_PARAMETER, {}).get("string_value", "")
        ranges = {name: (bounds["min"], bounds["max"]) for name, bounds in (json.loads(text) if text else {}).items()}
        return cls(ranges, symbols, int(config.get("max_batch_size", 0)) > 0)

    def __call__(self, feeds: Mapping[str, np.ndarray[Any, Any]]) -> None:
        for name, (low, high) in self.ranges.items():
            if name not in feeds:
                continue
            dims = feeds[name].shape[self.offset :]
            for axis, (size, least, most) in enumerate(zip(dims, low, high, strict=False)):
                if not least <= size <= most:
                    raise ValueError(
                        f"input '{name}' has {size} on axis {axis + self.offset}, outside the model's range "
                        f"[{least}, {most}] for that dim; send sizes in that range"
                    )
        for symbol, places in self.agreements.items():
            sizes = {(name, axis): feeds[name].shape[axis] for name, axis in places if name in feeds}
            if len(set(sizes.values())) > 1:
                described = ", ".join(f"'{name}' {size} (axis {axis})" for (name, axis), size in sizes.items())
                raise ValueError(f"inputs must agree on the model's dim '{symbol}': got {described}")

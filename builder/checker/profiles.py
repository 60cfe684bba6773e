"""A TensorRT plan's optimization profiles, and where a config asks for shapes they do not accept.

Triton refuses a config whose max_batch_size or dims go beyond a plan's profiles ("configuration
specified max-batch 16 but TensorRT engine only supports max-batch 1"); the builder records the
profiles it built a plan with, and the checker compares them with the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ShapeProfile", "profile_problems"]


@dataclass(frozen=True)
class ShapeProfile:
    """The shapes one input accepts, batch dimension included when the model batches."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShapeProfile:
        return cls(record["name"], tuple(record["min"]), tuple(record["opt"]), tuple(record["max"]))


def profile_problems(
    max_batch_size: int, dims: Mapping[str, Sequence[int]], profiles: Iterable[ShapeProfile]
) -> Iterator[str]:
    """Where a config (max_batch_size, dims per input) asks for shapes the profiles do not accept."""
    by_name = {p.name: p for p in profiles}
    for name in sorted(set(dims) - set(by_name)):
        yield f"input {name!r} has no optimization profile; the plan's inputs are {sorted(by_name)}"
    for name, profile in sorted(by_name.items()):
        if name not in dims:
            yield f"the plan's input {name!r} is not in the config; add it with dims {list(profile.max[1 if max_batch_size else 0 :])}"
            continue
        shape = list(dims[name])
        low, high = list(profile.min), list(profile.max)
        if max_batch_size:
            if high[0] < max_batch_size:
                yield f"input {name!r}: max_batch_size {max_batch_size} exceeds the plan's largest batch {high[0]}; set max_batch_size <= {high[0]} or rebuild the plan"
            if low[0] > 1:
                yield f"input {name!r}: the plan's smallest batch is {low[0]}; Triton sends batches from 1: rebuild with a profile from batch 1"
            low, high = low[1:], high[1:]
        if len(shape) != len(low):
            yield f"input {name!r}: dims {shape} have {len(shape)} dimensions; the plan's profile has {len(low)}"
            continue
        for axis, (dim, lo, hi) in enumerate(zip(shape, low, high, strict=True)):
            if dim != -1 and not lo <= dim <= hi:
                yield f"input {name!r}: dims[{axis}] = {dim} is outside the plan's profile [{lo}, {hi}]"
            if dim == -1 and lo == hi:
                yield f"input {name!r}: dims[{axis}] is -1 but the plan only accepts {lo}; set dims[{axis}] = {lo}"

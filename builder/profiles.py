"""TensorRT optimization profiles from the spec, and the rules that keep a plan's config within
them. Pure Python: everything here is tested without TensorRT.

A plan accepts, per input, shapes between its profile's min and max; Triton refuses a config
whose max_batch_size or dims go beyond them ("configuration specified max-batch 16 but
TensorRT engine only supports max-batch 1"), so the profile is derived from the same spec
fields the config is rendered from, and the repository check compares the two again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.batches import Feed, batched, items_in
from builder.spec import OnnxModelSpec

__all__ = ["CalibrationCache", "ShapeProfile", "calibration_batches", "optimization_profile", "profile_problems"]


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


def optimization_profile(model: OnnxModelSpec) -> tuple[ShapeProfile, ...]:
    """One profile for the whole model: batch 1..max_batch_size, tuned for the largest preferred
    batch size (or the largest batch), variable dims over their declared shape_range."""
    profiles = []
    batch: tuple[tuple[int, ...], ...] = ()
    if model.max_batch_size:
        preferred = model.batcher.preferred_batch_size if model.batcher is not None else ()
        batch = ((1,), (max(preferred, default=model.max_batch_size),), (model.max_batch_size,))
    for tensor in model.inputs:
        low, high = list(tensor.dims), list(tensor.dims)
        opt = list(tensor.dims)
        if tensor.shape_range is not None:
            low, high = list(tensor.shape_range.min), list(tensor.shape_range.max)
            opt = list(tensor.shape_range.opt or tensor.shape_range.max)
        lo, op, hi = (tuple(b) for b in batch) if batch else ((), (), ())
        profiles.append(ShapeProfile(tensor.name, lo + tuple(low), op + tuple(opt), hi + tuple(high)))
    return tuple(profiles)


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


def calibration_batches(feeds: Iterable[Feed], profiles: Sequence[ShapeProfile], batch_size: int) -> Iterator[Feed]:
    """Calibration batches in exactly the shape TensorRT calibrates with: `batch_size` items
    each (a last, smaller batch is dropped), variable dims padded with zeros or cut to the
    profile's opt shape."""
    by_name = {p.name: p for p in profiles}
    fitted = ({name: _fit(array, by_name[name].opt[1:]) for name, array in feed.items()} for feed in feeds)
    for batch in batched(fitted, batch_size):
        if items_in(batch) == batch_size:
            yield batch


def _fit(array: np.ndarray[Any, Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    cut = array[(slice(None), *(slice(0, s) for s in shape))]
    padding = [(0, 0)] + [(0, s - have) for s, have in zip(shape, cut.shape[1:], strict=True)]
    return np.ascontiguousarray(np.pad(cut, padding))


class CalibrationCache:
    """TensorRT's INT8 calibration table, kept between builds under a key of everything it
    depends on (the ONNX file, the calibration data, the TensorRT version, the batch shapes),
    so an unchanged calibration is never recomputed and a changed one never reused."""

    def __init__(self, directory: Path, *, onnx_sha256: str, feeds_sha256: str, tensorrt: str, shapes: str) -> None:
        key = hashlib.sha256("\n".join((onnx_sha256, feeds_sha256, tensorrt, shapes)).encode()).hexdigest()[:20]
        self.path = directory / f"calibration-{key}.cache"

    def read(self) -> bytes | None:
        """The cached table, or None when there is none (TensorRT then calibrates)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        return data or None

    def write(self, data: bytes) -> None:
        """Keep a table TensorRT produced; written whole or not at all."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(self.path)

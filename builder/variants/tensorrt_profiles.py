"""TensorRT optimization profiles from the spec, the calibration batches that fit them, and the
calibration cache. Pure Python: everything here is tested without TensorRT.

A plan accepts, per input, shapes between its profile's min and max, so the profile is derived
from the same spec fields the config is rendered from; the checker compares the two again
(builder.checker.profiles).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from builder.checker.profiles import ShapeProfile
from builder.spec import OnnxModelSpec
from builder.variants.batches import Feed, batched, items_in

__all__ = ["CalibrationCache", "calibration_batches", "optimization_profile"]


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

"""Calibration step: the spec's representative inputs, as batches of the model's inputs.

The first `samples` items calibrate (INT8 ranges, TensorRT's calibrator); the next `holdout`
items are kept apart for the accuracy gates. Raw images and text go through the spec's python
preprocessing model (`through`), so calibration sees what the served pipeline feeds the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder.dtypes import by_triton
from builder.errors import CalibrationError, SourceError
from builder.export.source import instantiate_processor, resolve
from builder.spec import CalibrationSpec, OnnxModelSpec, PythonModelSpec, Spec
from builder.variants.batches import Feed, batched, items_in, take

__all__ = ["IMAGE_SUFFIXES", "CalibrationSet", "load_calibration"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class CalibrationSet:
    """Batches of the model's inputs, split into calibration and held-out data, with hashes."""

    calibration: tuple[Feed, ...]
    holdout: tuple[Feed, ...]
    source_sha256: str
    feeds_sha256: str
    description: str

    def record(self) -> dict[str, Any]:
        """What the build record keeps about the data."""
        return {
            "data": self.description,
            "samples": sum(items_in(feed) for feed in self.calibration),
            "holdout": sum(items_in(feed) for feed in self.holdout),
            "source_sha256": self.source_sha256,
            "feeds_sha256": self.feeds_sha256,
        }


def load_calibration(spec: Spec, model: OnnxModelSpec) -> CalibrationSet:
    """Read, preprocess and split the calibration data the model's spec names.

    Raises:
        CalibrationError: the data cannot be read, is too small, or does not fit the inputs.
    """
    calibration = model.calibration
    if calibration is None:
        raise CalibrationError(f"model {model.name!r}: no calibration data; add calibration: {{data: ...}}")
    label = f"model {model.name!r}: calibration.data = {calibration.data!r}"
    through = None if calibration.through is None else spec.model(calibration.through)
    assert through is None or isinstance(through, PythonModelSpec)  # load_spec checked it
    raw, source_sha256 = _read(calibration, model, through, label)
    needed = calibration.samples + calibration.holdout
    available = sum(items_in(batch) for batch in raw)
    if available < needed:
        raise CalibrationError(
            f"{label} holds {available} samples; samples ({calibration.samples}) + holdout "
            f"({calibration.holdout}) need {needed}: add data, or lower calibration.samples / calibration.holdout"
        )
    raw = list(batched(take(raw, 0, needed), calibration.batch_size))
    feeds = [_fit(batch, model, label) for batch in _through(raw, through, label)]
    calibration_feeds = tuple(take(feeds, 0, calibration.samples))
    holdout = tuple(take(feeds, calibration.samples, calibration.holdout))
    via = "" if through is None else f" through {through.name}"
    return CalibrationSet(
        calibration=calibration_feeds,
        holdout=holdout,
        source_sha256=source_sha256,
        feeds_sha256=_digest(feeds),
        description=f"{_display(calibration.data, spec.path.parent)}{via}",
    )


def _read(
    calibration: CalibrationSpec, model: OnnxModelSpec, through: PythonModelSpec | None, label: str
) -> tuple[list[Feed], str]:
    if calibration.from_callable:
        return _from_callable(calibration.data, label)
    path = Path(calibration.data)
    raw_input = None if through is None else through.inputs[0].name
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CalibrationError(f"{label}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the directory")
        items = [p.read_bytes() for p in files]
        return [_bytes_feed(items, raw_input, label, "a directory of images")], _hash_bytes(items)
    if path.suffix == ".txt":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        items = [line.encode() for line in lines]
        return [_bytes_feed(items, raw_input, label, "a text file")], _hash_bytes(items)
    if path.suffix in (".npy", ".npz"):
        return _from_numpy(path, model, through, label)
    raise CalibrationError(
        f"{label}: not a kind of data the build reads; allowed: a directory of images, a .txt file "
        "(one sample per line), a .npy or .npz file, or a 'module:callable' returning batches"
    )


def _bytes_feed(items: list[bytes], raw_input: str | None, label: str, kind: str) -> Feed:
    if raw_input is None:
        raise CalibrationError(
            f"{label} is {kind}, which the model cannot take as it is; set calibration.through to "
            "the spec's python model that turns one item into the model's inputs (e.g. image_preprocess)"
        )
    return {raw_input: np.array(items, dtype=object).reshape(-1, 1)}


def _from_numpy(
    path: Path, model: OnnxModelSpec, through: PythonModelSpec | None, label: str
) -> tuple[list[Feed], str]:
    names = [t.name for t in (through or model).inputs]
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{label}: not a readable numpy file ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise CalibrationError(
                f"{label}: a .npy file holds one array, but the model has inputs {names}; use a .npz file with an array per input"
            )
        feed = {names[0]: loaded}
    else:
        with loaded:
            feed = {name: loaded[name] for name in loaded.files}
    missing = sorted(set(names) - set(feed))
    if missing:
        raise CalibrationError(f"{label}: no array for input(s) {missing}; the file has {sorted(feed)}")
    feed = {name: feed[name] for name in names}
    if len({array.shape[0] for array in feed.values()}) != 1:
        sizes = {name: array.shape[0] for name, array in feed.items()}
        raise CalibrationError(f"{label}: the arrays hold different numbers of samples {sizes}; give each the same")
    return [feed], _digest([feed])


def _from_callable(source: str, label: str) -> tuple[list[Feed], str]:
    factory = resolve(source, label)
    try:
        batches = [{name: np.asarray(value) for name, value in batch.items()} for batch in factory()]  # type: ignore[attr-defined]
    except SourceError:
        raise
    except Exception as exc:
        raise CalibrationError(
            f"{label}: calling it raised {type(exc).__name__}: {exc}; it must return an iterable of "
            "{input name: array} batches"
        ) from exc
    if not batches:
        raise CalibrationError(f"{label}: returned no batches")
    return batches, _digest(batches)


def _through(raw: list[Feed], through: PythonModelSpec | None, label: str) -> Iterator[Feed]:
    if through is None:
        yield from raw
        return
    processor = instantiate_processor(through)
    for batch in raw:
        try:
            outputs = processor(batch)  # type: ignore[operator]
        except Exception as exc:
            raise CalibrationError(
                f"{label}: preprocessing through {through.name!r} raised {type(exc).__name__}: {exc}; "
                "remove or fix the samples it cannot read"
            ) from exc
        yield {name: np.asarray(value) for name, value in outputs.items()}


def _fit(batch: Feed, model: OnnxModelSpec, label: str) -> Feed:
    """The batch's arrays for the model's inputs, in their dtypes, checked against their dims."""
    fitted = {}
    for tensor in model.inputs:
        if tensor.name not in batch:
            raise CalibrationError(f"{label}: the data has no input {tensor.name!r}; it has {sorted(batch)}")
        array = batch[tensor.name]
        dims = tuple(tensor.dims)
        shape = array.shape[1:] if model.max_batch_size else array.shape
        fits = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True))
        if not fits:
            raise CalibrationError(
                f"{label}: input {tensor.name!r} has item shape {list(shape)}; the model's dims are "
                f"{list(dims)} (-1: any size): reshape the data to match"
            )
        fitted[tensor.name] = np.ascontiguousarray(array, dtype=by_triton(tensor.dtype).numpy)
    return fitted


def _digest(feeds: Iterable[Feed]) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            if array.dtype == object:
                for item in array.reshape(-1):
                    digest.update(bytes(item) if isinstance(item, bytes) else str(item).encode())
            else:
                digest.update(array.tobytes())
    return digest.hexdigest()


def _hash_bytes(items: list[bytes]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(hashlib.sha256(item).digest())
    return digest.hexdigest()


def _display(data: str, base: Path) -> str:
    try:
        return str(Path(data).resolve().relative_to(base.resolve()))
    except ValueError:
        return data

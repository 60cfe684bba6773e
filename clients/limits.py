"""Bounds a model declares beyond what Triton's metadata can say, refused before a request is sent.

Triton's config says a dim is variable (-1), not how long it may be, and says nothing of which
integer values a model can index with. The C++ onnxruntime backend hands such a request to ONNX
Runtime, which fails it with INTERNAL, and with it every good request dynamic batching put in
the same execution (a token id beyond the vocabulary poisons the whole batch). The builder writes
what the spec declares (`shape_range`, and `value_range` of integer inputs) to
``input_limits.json`` at the repository's root; a client given that file refuses what breaks it
before the request can reach a batch. No server reads the file: it means the same next to the
embedded server and the NGC container.

The builder also copies this module beside each compiled variant's runtime (as
`triton_kit_limits`), which refuses the same requests inside the server: a compiled kernel indexing
out of bounds aborts its process. For that it imports nothing of the kit: the standard library
and numpy's typing only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

__all__ = ["FILENAME", "InputLimit", "InputLimits"]

FILENAME = "input_limits.json"
"""Where the builder writes the limits: the repository's root, which Triton never reads files of."""

_FORMAT = "triton-model-kit/input-limits/1"


@dataclass(frozen=True)
class InputLimit:
    """What one input accepts beyond its config: dims exclude the batch dimension.

    Attributes:
        min_dims: the smallest size of each dim (a fixed dim's size where fixed); None: unbounded.
        max_dims: the largest size of each dim; None: unbounded.
        values: ``[low, high)`` an integer input's values must lie in; None: any value.
    """

    min_dims: tuple[int, ...] | None = None
    max_dims: tuple[int, ...] | None = None
    values: tuple[int, int] | None = None

    def problem(self, array: NDArray[Any], batched: bool) -> str | None:
        """What about `array` breaks this limit, said for a user; None when nothing does."""
        dims = tuple(array.shape[1:] if batched else array.shape)
        low = self.min_dims if self.min_dims is not None and len(self.min_dims) == len(dims) else None
        high = self.max_dims if self.max_dims is not None and len(self.max_dims) == len(dims) else None
        for axis, size in enumerate(dims):
            if (low is not None and size < low[axis]) or (high is not None and size > high[axis]):
                return (
                    f"dims {list(dims)} (batch excluded) are outside the model's shape_range: dim {axis} is "
                    f"{size}, allowed {self._allowed(axis)}; split or truncate the input to fit"
                )
        if self.values is not None and array.size and array.dtype.kind in "iub":
            first, last = self.values
            smallest, largest = int(array.min()), int(array.max())
            if smallest < first or largest >= last:
                bad = smallest if smallest < first else largest
                return (
                    f"holds {bad}, outside the model's value_range [{first}, {last}); "
                    f"every value must satisfy {first} <= value < {last} (for token ids: the vocabulary size)"
                )
        return None

    def _allowed(self, axis: int) -> str:
        low = self.min_dims[axis] if self.min_dims is not None else 1
        high = self.max_dims[axis] if self.max_dims is not None else None
        return f"{low}..{high}" if high is not None else f">= {low}"

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> InputLimit:
        """The limit `to_json` wrote."""

        def dims(key: str) -> tuple[int, ...] | None:
            return None if key not in entry else tuple(int(d) for d in entry[key])

        values = entry.get("values")
        return cls(
            min_dims=dims("min_dims"),
            max_dims=dims("max_dims"),
            values=None if values is None else (int(values[0]), int(values[1])),
        )

    def to_json(self) -> dict[str, Any]:
        """The limit as a JSON object, its unset bounds left out."""
        entry: dict[str, Any] = {}
        if self.min_dims is not None:
            entry["min_dims"] = list(self.min_dims)
        if self.max_dims is not None:
            entry["max_dims"] = list(self.max_dims)
        if self.values is not None:
            entry["values"] = list(self.values)
        return entry


@dataclass(frozen=True)
class InputLimits:
    """The limits of every model in one repository, by model and input name."""

    models: Mapping[str, Mapping[str, InputLimit]]

    @classmethod
    def load(cls, path: str | PathLike[str]) -> InputLimits:
        """Read an ``input_limits.json`` (or a repository folder holding one).

        Raises:
            ValueError: the file is missing, not JSON, or not in the kit's format.
        """
        file = Path(path)
        if file.is_dir():
            file = file / FILENAME
        try:
            document = json.loads(file.read_text())
        except FileNotFoundError:
            raise ValueError(
                f"input limits file {file} does not exist; `make build-repo` writes it at the repository's root"
            ) from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"input limits file {file} is not JSON ({exc}); build the repository again") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError(
                f"input limits file {file} has format {document.get('format') if isinstance(document, dict) else None!r}, "
                f"expected {_FORMAT!r}; build the repository again with this kit"
            )
        try:
            return cls(
                {
                    model: {name: InputLimit.from_json(entry) for name, entry in inputs.items()}
                    for model, inputs in document["models"].items()
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"input limits file {file} is malformed ({exc!r}); build the repository again") from None

    def for_model(self, model: str) -> Mapping[str, InputLimit]:
        """The limits of `model`'s inputs; empty when it declares none."""
        return self.models.get(model, {})

    def to_json(self) -> dict[str, Any]:
        """The document `load` reads."""
        return {
            "format": _FORMAT,
            "models": {
                model: {name: limit.to_json() for name, limit in inputs.items()}
                for model, inputs in sorted(self.models.items())
            },
        }

    def write(self, path: str | PathLike[str]) -> None:
        """Write the document to `path`."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

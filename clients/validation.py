"""Check a request's inputs against the model's own metadata and config before anything is sent.

The server would reject the same mistakes, but only after the tensors crossed the network, and with
messages that do not always say which input or what was expected. `ModelSignature` is built from
one metadata and one config call (the clients cache it per model and version) and raises
InvalidInput naming the model, the input, the expected and the given value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.utils import np_to_triton_dtype

from .errors import InvalidInput
from .limits import InputLimit

__all__ = ["ModelSignature", "TensorSpec", "prepare", "triton_dtype"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the server describes it.

    Attributes:
        name: the tensor's name.
        datatype: Triton's name for its type ("FP32", "INT64", "BYTES", ...).
        shape: the full shape the server reports, batch dimension included; -1 is any size.
        optional: the model runs without this input (config ``optional: true``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelSignature:
    """What a model accepts: its inputs and outputs, and the largest batch it takes.

    Attributes:
        model: the model's name.
        inputs: the inputs by name, in the model's order.
        outputs: the outputs by name.
        max_batch_size: the config's max_batch_size; 0 when the model does not batch.
        limits: bounds the model declares beyond its config (clients.limits), by input name.
    """

    model: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    max_batch_size: int
    limits: Mapping[str, InputLimit] = field(default_factory=dict)

    @classmethod
    def from_server(
        cls,
        metadata: Mapping[str, Any],
        config: Mapping[str, Any],
        limits: Mapping[str, InputLimit] | None = None,
    ) -> ModelSignature:
        """Build from the model's metadata and (unwrapped) config, as either protocol returns them,
        and the model's input limits where the client was given them.

        gRPC's JSON spells 64-bit integers as strings, hence the int() on every dimension.
        """
        optional = {entry["name"] for entry in config.get("input", []) if entry.get("optional", False)}

        def specs(entries: Sequence[Mapping[str, Any]]) -> dict[str, TensorSpec]:
            return {
                e["name"]: TensorSpec(
                    e["name"], e["datatype"], tuple(int(d) for d in e.get("shape", [])), e["name"] in optional
                )
                for e in entries
            }

        return cls(
            model=str(metadata["name"]),
            inputs=specs(metadata.get("inputs", [])),
            outputs=specs(metadata.get("outputs", [])),
            max_batch_size=int(config.get("max_batch_size", 0)),
            limits=dict(limits or {}),
        )

    def check(self, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str] | None = None) -> None:
        """Raise InvalidInput for the first thing the server would refuse; return if none.

        Raises:
            InvalidInput: an unknown or missing input, or an input of the wrong dtype, rank, fixed
                dimension or batch size, or outside its declared limits; or an unknown requested output.
        """
        where = f"model {self.model!r}"
        for name in inputs:
            if name not in self.inputs:
                raise InvalidInput(f"{where} has no input {name!r}; its inputs are: {', '.join(self.inputs)}")
        missing = [spec.name for spec in self.inputs.values() if spec.name not in inputs and not spec.optional]
        if missing:
            raise InvalidInput(f"{where} input {missing[0]!r} is required but missing; given: {', '.join(inputs)}")
        for name in outputs or ():
            if name not in self.outputs:
                raise InvalidInput(f"{where} has no output {name!r}; its outputs are: {', '.join(self.outputs)}")
        batches = {}
        for name, array in inputs.items():
            self._check_tensor(self.inputs[name], array)
            if self.max_batch_size > 0:
                batches[name] = array.shape[0]
        if len(set(batches.values())) > 1:
            raise InvalidInput(f"{where}: inputs disagree on the batch size: {batches}")

    def _check_tensor(self, spec: TensorSpec, array: NDArray[Any]) -> None:
        where = f"model {self.model!r} input {spec.name!r}"
        self._check_form(where, spec, array)
        limit = self.limits.get(spec.name)
        problem = None if limit is None else limit.problem(array, batched=self.max_batch_size > 0)
        if problem is not None:
            raise InvalidInput(f"{where} {problem}")

    def _check_form(self, where: str, spec: TensorSpec, array: NDArray[Any]) -> None:
        given = triton_dtype(array)
        if given != spec.datatype:
            raise InvalidInput(f"{where}: expected dtype {spec.datatype}, got {given} (numpy {array.dtype})")
        expected = list(spec.shape)
        if len(array.shape) != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected, array.shape, strict=True)
        ):
            raise InvalidInput(f"{where}: expected shape {expected} ({spec.datatype}), got {list(array.shape)}")
        if self.max_batch_size > 0 and array.shape[0] > self.max_batch_size:
            raise InvalidInput(f"{where}: batch of {array.shape[0]} exceeds max_batch_size {self.max_batch_size}")


def triton_dtype(array: NDArray[Any]) -> str:
    """Triton's name for the array's dtype; object, bytes and str arrays are BYTES.

    Raises:
        InvalidInput: numpy dtypes Triton has no type for (complex, datetime, ...).
    """
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = np_to_triton_dtype(array.dtype)
    if name is None:
        raise InvalidInput(f"numpy dtype {array.dtype} has no Triton equivalent")
    return str(name)


def prepare(array: NDArray[Any]) -> NDArray[Any]:
    """The array as tritonclient can send it: C-contiguous, and str arrays as object arrays of str."""
    if array.dtype.kind == "U":
        # tritonclient serialises BYTES only from object or bytes_ arrays; its UTF-8 encoding of str is ours too.
        return array.astype(object, order="C")
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)

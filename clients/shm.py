"""System shared memory for large input tensors: the request carries region names, not bytes.

Only for a server on the same host (it maps the same /dev/shm objects). Each call gets regions of
its own, named ``triton_kit_<uuid>_<n>``, which the clients register, use and then always
unregister and destroy, whether the request succeeded or not:

    regions = InputRegions.create(inputs)      # local: create, copy the tensors in
    try:
        register each, infer with set_shared_memory(...)
    finally:
        unregister each (errors ignored), regions.destroy()
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import tritonclient.utils.shared_memory as shm
from numpy.typing import NDArray
from tritonclient.utils import serialize_byte_tensor

from .validation import triton_dtype

__all__ = ["REGION_PREFIX", "InputRegions", "Region"]

REGION_PREFIX = "triton_kit_"
"""Every region the kit creates is named (and keyed) with this prefix."""


@dataclass(frozen=True)
class Region:
    """One input tensor's region.

    Attributes:
        input: the input it holds.
        name: the name the server knows it by.
        key: the shared memory object's key (``/name``).
        byte_size: the tensor's size in bytes (serialised, for BYTES).
    """

    input: str
    name: str
    key: str
    byte_size: int
    handle: Any = field(repr=False, compare=False)


@dataclass
class InputRegions:
    """The regions of one request, one per input tensor."""

    regions: list[Region] = field(default_factory=list)

    @classmethod
    def create(cls, inputs: Mapping[str, NDArray[Any]]) -> InputRegions:
        """Create a region per input and copy the tensor into it.

        Raises:
            SharedMemoryException: a region could not be created or written; the ones made so far
                are destroyed first.
        """
        made = cls()
        call_id = uuid.uuid4().hex
        try:
            for index, (name, array) in enumerate(inputs.items()):
                data = serialize_byte_tensor(array) if triton_dtype(array) == "BYTES" else array
                byte_size = len(data.item()) if data.dtype == object and data.size else int(data.nbytes)
                region_name = f"{REGION_PREFIX}{call_id}_{index}"
                # A zero-size region cannot be mapped; an empty tensor still needs a name to point at.
                handle = shm.create_shared_memory_region(
                    region_name, f"/{region_name}", max(byte_size, 1), create_only=True
                )
                made.regions.append(Region(name, region_name, f"/{region_name}", byte_size, handle))
                if byte_size:
                    shm.set_shared_memory_region(handle, [data])
        except BaseException:
            made.destroy()
            raise
        return made

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def destroy(self) -> None:
        """Unmap and unlink every region; safe to call twice."""
        while self.regions:
            region = self.regions.pop()
            shm.destroy_shared_memory_region(region.handle)

"""Request payloads for a model: from a .npz file, or generated from the model's metadata.

Generated payloads are seeded: FP tensors standard normal, integer tensors small non-negative
values (valid token ids for most embeddings), BYTES tensors a PNG image where the input's name
says image, UTF-8 text otherwise (what the example pipelines take).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

__all__ = ["generated_payload", "load_arrays"]

# Variable dims get this size in generated payloads: long enough to exercise a sequence model.
VARIABLE_DIM = 16


def load_arrays(path: Path) -> dict[str, NDArray[Any]]:
    """Every array of a .npz file, by name (object arrays of bytes allowed)."""
    with np.load(path, allow_pickle=True) as data:
        return {name: data[name] for name in data.files}


def generated_payload(metadata: dict[str, Any], batch: int, batching: bool, seed: int = 0) -> dict[str, NDArray[Any]]:
    """One request's inputs for the model described by `metadata` (Triton's model metadata)."""
    rng = np.random.default_rng(seed)
    payload = {}
    for tensor in metadata["inputs"]:
        dims = [int(d) for d in tensor["shape"]]
        if batching:
            dims = dims[1:]
        shape = ([batch] if batching else []) + [VARIABLE_DIM if d == -1 else d for d in dims]
        payload[tensor["name"]] = _tensor(tensor["name"], tensor["datatype"], shape, rng)
    return payload


def _tensor(name: str, datatype: str, shape: list[int], rng: np.random.Generator) -> NDArray[Any]:
    if datatype == "BYTES":
        count = int(np.prod(shape))
        items = [_image(rng) if "image" in name.lower() else _text(rng) for _ in range(count)]
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 16, size=shape).astype(dtype)


def _image(rng: np.random.Generator) -> bytes:
    pixels = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _text(rng: np.random.Generator) -> bytes:
    words = ["triton", "serves", "models", "with", "dynamic", "batching", "on", "cpu", "and", "gpu"]
    return " ".join(rng.choice(words, size=12)).encode()

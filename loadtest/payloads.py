"""Request payloads for a model: from a .npz file, drawn as the spec declares the model's inputs,
or generated from the model's metadata.

From the spec (an ONNX model or one of its variants): the typical dims of each variable axis
(`shape_range.opt`, the same for every input, so tensors that must agree do), integers and floats
within `value_range`. From the metadata otherwise (pipelines, Python models, a repository built
elsewhere), seeded: FP tensors standard normal, integers in [0, 16), BYTES tensors a PNG image
where the input's name says image, UTF-8 text otherwise (what the example pipelines take).
`perf_analyzer_data` writes either as perf_analyzer's `--input-data` JSON.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

__all__ = ["generated_payload", "load_arrays", "perf_analyzer_data", "spec_payload"]

# Variable dims get this size in generated payloads: long enough to exercise a sequence model.
VARIABLE_DIM = 16


def load_arrays(path: Path) -> dict[str, NDArray[Any]]:
    """Every array of a .npz file, by name (object arrays of bytes allowed)."""
    with np.load(path, allow_pickle=True) as data:
        return {name: data[name] for name in data.files}


def spec_payload(spec_path: Path, model: str, batch: int, seed: int = 0) -> dict[str, NDArray[Any]] | None:
    """One request's inputs as the spec declares them; None when the spec does not declare the
    model's tensors (not in it, or a Python model or ensemble, whose metadata says enough).

    Raises:
        SpecError: the spec file is invalid.
    """
    from builder.export.samples import Case, make_inputs  # the builder's own draw; torch-free
    from builder.spec import OnnxModelSpec, load_spec

    for entry in load_spec(spec_path).models:
        if isinstance(entry, OnnxModelSpec) and model in {entry.name, *(v.name for v in entry.variants)}:
            case = Case(batch if entry.max_batch_size > 0 else None, {t.name: t.typical_dims for t in entry.inputs})
            return make_inputs(entry, case, np.random.default_rng(seed))
    return None


def perf_analyzer_data(payload: dict[str, NDArray[Any]], batching: bool) -> dict[str, Any]:
    """`payload` as perf_analyzer's --input-data JSON: one entry, each tensor's flat content and
    its shape without the batch axis (perf_analyzer adds it with -b); a one-item BYTES tensor as
    base64 (an image), several as UTF-8 strings.

    Raises:
        ValueError: a BYTES tensor of several items that are not text (perf_analyzer has no form for it).
    """
    entry: dict[str, Any] = {}
    for name, array in payload.items():
        items = array[0] if batching else array
        shape = list(items.shape)
        if array.dtype != object:
            entry[name] = {"content": items.ravel().tolist(), "shape": shape}
        elif items.size == 1:
            entry[name] = {"b64": base64.b64encode(bytes(items.ravel()[0])).decode(), "shape": shape}
        else:
            try:
                entry[name] = {"content": [bytes(item).decode() for item in items.ravel()], "shape": shape}
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"input {name!r}: {items.size} binary BYTES items per request; perf_analyzer's --input-data "
                    "takes binary data one item per tensor: use --batch 1"
                ) from exc
    return {"data": [entry]}


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

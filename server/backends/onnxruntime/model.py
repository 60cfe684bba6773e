"""A Python-based Triton backend named `onnxruntime`, for the embedded server.

Triton maps `platform: "onnxruntime_onnx"` to the backend `onnxruntime`; the embedded server has
no C++ ONNX Runtime backend, so this file, placed at `<backend-dir>/onnxruntime/model.py`, serves
those configs unchanged. The NGC container uses its own C++ backend for the same repository.

Each `execute` call receives every request of a dynamic batch and runs it as one ONNX Runtime
call (triton_kit_batching, copied next to this file); a request ONNX Runtime rejects as invalid
gets its own error while the others succeed. It runs inside Triton's Python stub, so it imports
nothing from the kit.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from triton_kit_batching import execute_batched

# ONNX Runtime's element types in Triton's names, to compare the model with its config.
_ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}

# ONNX Runtime session options read from the config's `parameters`, as the C++ backend does.
_THREAD_PARAMETERS = {"intra_op_thread_count": "intra_op_num_threads", "inter_op_thread_count": "inter_op_num_threads"}


class TritonPythonModel:
    """One instance of a model served from `<model_dir>/<version>/model.onnx`."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        for parameter, attribute in _THREAD_PARAMETERS.items():
            if parameter in parameters:
                setattr(options, attribute, int(parameters[parameter]))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        problems = _signature_problems(config, self.session, args["model_name"])
        if problems:
            raise pb_utils.TritonModelException("; ".join(problems))

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_batched(
            requests, self.input_names, self.output_names, self._run, batching=self.batching, invalid=(InvalidArgument,)
        )

    def finalize(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))


def _signature_problems(config: dict[str, Any], session: ort.InferenceSession, model: str) -> list[str]:
    """What the C++ onnxruntime backend refuses at load: config tensors the model lacks, or whose
    dtype, rank or fixed dims differ from the model's."""
    batch = [-1] if int(config.get("max_batch_size", 0)) > 0 else []
    problems = []
    for kind, declared, actual in (
        ("input", config["input"], session.get_inputs()),
        ("output", config["output"], session.get_outputs()),
    ):
        graph = {value.name: value for value in actual}
        for tensor in declared:
            value = graph.get(tensor["name"])
            if value is None:
                problems.append(
                    f"model '{model}': unexpected inference {kind} '{tensor['name']}', allowed {kind}s are: {', '.join(graph)}"
                )
                continue
            if _ORT_TYPES.get(value.type) != tensor["data_type"]:
                problems.append(
                    f"model '{model}', tensor '{tensor['name']}': the model expects {value.type} but the configuration specifies {tensor['data_type']}"
                )
            expected = batch + [int(d) for d in tensor["dims"]]
            shape = [d if isinstance(d, int) else -1 for d in value.shape]
            if len(shape) != len(expected) or any(
                a != b and -1 not in (a, b) for a, b in zip(shape, expected, strict=False)
            ):
                problems.append(
                    f"model '{model}', tensor '{tensor['name']}': the model expects {len(shape)} dimensions (shape {shape}) "
                    f"but the model configuration specifies {len(expected)} dimensions (shape {expected})"
                )
    return problems

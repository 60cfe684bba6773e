"""A Python-based Triton backend named `onnxruntime`, for the embedded server.

Triton maps `platform: "onnxruntime_onnx"` to the backend `onnxruntime`; the embedded server has
no C++ ONNX Runtime backend, so this file, placed at `<backend-dir>/onnxruntime/model.py`, serves
those configs unchanged. The NGC container uses its own C++ backend for the same repository.

Each `execute` call receives every request of a dynamic batch. Requests whose tensors have the
same per-item shapes are concatenated along the batch axis, run in one ONNX Runtime call, and
the result is split back per request; batching would buy nothing otherwise. A request that
cannot be run (a missing input, say) gets its own error while the others succeed.

It runs inside Triton's Python stub, so it imports nothing from the kit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

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

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except ValueError as exc:
                responses[index] = _error(str(exc), pb_utils.TritonError.INVALID_ARGUMENT)
                continue
            key = self._group_key(feeds) if self.batching else (index,)
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            self._run_group(requests, members, responses)
        return responses

    def finalize(self) -> None:
        self.session = None

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing; the model takes {self.input_names}")
            feeds[name] = tensor.as_numpy()
        return feeds

    @staticmethod
    def _group_key(feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
        # Only tensors with equal per-item shapes can be concatenated along the batch axis.
        return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(feeds.items()))

    def _run_group(
        self, requests: list[Any], members: list[tuple[int, dict[str, np.ndarray]]], responses: list[Any]
    ) -> None:
        if len(members) == 1:
            batch = members[0][1]
        else:
            batch = {name: np.concatenate([feeds[name] for _, feeds in members]) for name in self.input_names}
        try:
            results = self.session.run(self.output_names, batch)
        except Exception as exc:  # ONNX Runtime raises its own types; every one fails these requests
            for index, _ in members:
                responses[index] = _error(f"ONNX Runtime failed: {exc}", pb_utils.TritonError.INTERNAL)
            return
        offset = 0
        for index, feeds in members:
            size = len(next(iter(feeds.values()))) if self.batching else 0
            wanted = set(requests[index].requested_output_names()) or set(self.output_names)
            outputs = []
            for name, result in zip(self.output_names, results, strict=False):
                if name in wanted:
                    part = result[offset : offset + size] if self.batching and len(members) > 1 else result
                    outputs.append(pb_utils.Tensor(name, np.ascontiguousarray(part)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
            offset += size


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

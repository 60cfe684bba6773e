"""A Python-based Triton backend named `onnxruntime`, for the embedded server.

Triton maps `platform: "onnxruntime_onnx"` to the backend `onnxruntime`; the embedded server has
no C++ ONNX Runtime backend, so this file, placed at `<backend-dir>/onnxruntime/model.py`, serves
those configs unchanged. The NGC container uses its own C++ backend for the same repository.

Each `execute` call receives every request of a dynamic batch and runs it as one ONNX Runtime
call (triton_kit_batching, copied next to this file); a request ONNX Runtime rejects as invalid
gets its own error while the others succeed. Providers and session options follow the C++
backend's reading of the config (triton_kit_ort): a KIND_GPU instance runs on its own GPU with
the CUDA provider, its inputs bound once to the device and its outputs copied back once. It runs
inside Triton's Python stub, so it imports nothing from the kit.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from triton_kit_batching import execute_batched, io_names, require_numpy_1
from triton_kit_ort import CPU, CUDA, TENSORRT, ConfigError, SessionPlan, plan_session
from triton_kit_shapes import ShapeCheck

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


class TritonPythonModel:
    """One instance of a model served from `<model_dir>/<version>/model.onnx`."""

    def initialize(self, args: dict[str, str]) -> None:
        require_numpy_1()
        config = json.loads(args["model_config"])
        self.batching, self.input_names, self.output_names = io_names(config)
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        name = args["model_name"]
        try:
            plan = plan_session(
                config,
                args.get("model_instance_kind", "CPU"),
                int(args.get("model_instance_device_id", 0)),
                ort.get_available_providers(),
                _unusable_providers(),
            )
        except ConfigError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        if plan.device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, where the host has no system CUDA
        self.session = ort.InferenceSession(path, _session_options(plan), providers=plan.providers)
        self.on_gpu = _check_providers(plan, self.session.get_providers(), name, args["model_instance_name"])
        self.staging = PinnedStaging.create() if self.on_gpu else None
        self.pad_to = plan.pad_to
        if self.pad_to:
            pb_utils.Logger.log_info(
                f"model '{name}' instance {args['model_instance_name']}: every batch runs at {self.pad_to}"
            )
        problems = _signature_problems(config, self.session, name)
        if problems:
            raise pb_utils.TritonModelException("; ".join(problems))
        self.check = ShapeCheck.from_config(config, {i.name: i.shape for i in self.session.get_inputs()})

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_batched(
            requests,
            self.input_names,
            self.output_names,
            self._run,
            batching=self.batching,
            invalid=(InvalidArgument, ValueError),
            allocate=self.staging.array if self.staging is not None else None,
            check=self.check,
        )

    def finalize(self) -> None:
        self.session = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(next(iter(feeds.values()))) if feeds else 0
        if self.pad_to > size > 0:
            feeds = {name: self._padded(name, array) for name, array in feeds.items()}
            return {name: output[:size] for name, output in self._run_as_is(feeds).items()}
        return self._run_as_is(feeds)

    def _padded(self, name: str, array: np.ndarray) -> np.ndarray:
        shape = (self.pad_to, *array.shape[1:])
        padded = (
            self.staging.array(f"{name} padded", shape, array.dtype) if self.staging else np.empty(shape, array.dtype)
        )
        padded[: len(array)] = array
        padded[len(array) :] = 0
        return padded

    def _run_as_is(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.on_gpu:
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
        # Bound explicitly so each input crosses to the GPU once and each output comes back once,
        # straight into host memory, with no intermediate device-side output to copy again.
        binding = self.session.io_binding()
        for input_name, array in feeds.items():
            binding.bind_cpu_input(input_name, np.ascontiguousarray(array))  # from pinned staging, if any
        for output_name in self.output_names:
            binding.bind_output(output_name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))


class PinnedStaging:
    """Page-locked host buffers, one per input, that batches are assembled in: the GPU copies
    from them by DMA at full bus speed, where pageable memory (Triton's shared memory included)
    goes through the driver's staging copies. Reused from batch to batch (an instance executes
    one batch at a time) and grown to the largest batch seen."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.buffers: dict[str, Any] = {}

    @classmethod
    def create(cls) -> PinnedStaging | None:
        """None where PyTorch (the kit's source of pinned memory) is not installed."""
        try:
            import torch
        except ImportError:
            pb_utils.Logger.log_warn("PyTorch is not installed here: GPU inputs are copied from pageable memory")
            return None
        return cls(torch)

    def array(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, pin_memory=True)
            self.buffers[name] = buffer
        return buffer.numpy()[:nbytes].view(dtype).reshape(shape)


def _unusable_providers() -> dict[str, str]:
    """Providers onnxruntime lists that cannot run here, and why: onnxruntime-gpu lists TensorRT's
    whether or not TensorRT itself is installed (then ONNX Runtime fails the session and retries
    without it, after a long error)."""
    if TENSORRT not in ort.get_available_providers():
        return {}
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError as exc:
        return {TENSORRT: f"TensorRT 10 is not installed: {exc}"}
    return {}


def _session_options(plan: SessionPlan) -> ort.SessionOptions:
    options = ort.SessionOptions()
    for attribute, value in plan.session_options.items():
        setattr(options, attribute, getattr(ort.ExecutionMode, value) if attribute == "execution_mode" else value)
    return options


def _check_providers(plan: SessionPlan, used: list[str], model: str, instance: str) -> bool:
    """Log what runs the instance, and what it fell back from; refuse a GPU instance ONNX Runtime
    put on the CPU (the CUDA libraries did not load), which would serve at a fraction of the speed
    while every check said GPU. Returns whether the instance runs on the GPU."""
    for note in plan.notes:
        pb_utils.Logger.log_warn(note)
    fallen = [p for p in plan.provider_names if p not in used and p != CPU]
    if CUDA in fallen:
        raise pb_utils.TritonModelException(
            f"model '{model}' instance {instance}: ONNX Runtime {ort.__version__} could not start its CUDA provider "
            f"on GPU {plan.device_id} (see onnxruntime's error above: usually CUDA 13 / cuDNN 9 libraries missing; "
            "onnxruntime-gpu's nvidia-* wheels or the host's CUDA must be loadable)"
        )
    if fallen:
        pb_utils.Logger.log_warn(
            f"model '{model}' instance {instance}: {', '.join(fallen)} did not start (see onnxruntime's error above); "
            f"running on {', '.join(used)} instead"
        )
    threads = {k: v for k, v in plan.session_options.items() if k.endswith("_threads")}
    pb_utils.Logger.log_info(
        f"model '{model}' instance {instance}: ONNX Runtime {ort.__version__} with {', '.join(used)}"
        + (f" on GPU {plan.device_id}" if plan.device == "cuda" else "")
        + (f", {threads}" if threads else ", default threads")
    )
    return plan.device == "cuda"


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

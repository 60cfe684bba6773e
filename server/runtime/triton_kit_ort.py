"""How the kit's `onnxruntime` backend sets up ONNX Runtime for one model instance, read from the
same config.pbtxt Triton's C++ onnxruntime backend reads, with the same meaning:

- `parameters`: `intra_op_thread_count`, `inter_op_thread_count`, `execution_mode` (0 sequential,
  1 parallel), `enable_mem_arena`, `enable_mem_pattern`, and the CUDA keys the C++ backend still
  accepts there (`cudnn_conv_algo_search` 0/1/2, `gpu_mem_limit`, `arena_extend_strategy` 0/1,
  `do_copy_in_default_stream`);
- a `KIND_GPU` instance runs on its own device (`model_instance_device_id`) with the CUDA provider;
- `optimization.execution_accelerators.gpu_execution_accelerator`: `cuda` passes its parameters to
  the CUDA provider; `tensorrt` puts ORT's TensorRT provider first (the CUDA provider stays as the
  fallback for the nodes TensorRT does not take), its parameters in the C++ backend's spelling;
- and one key of the kit's own, which the C++ backend ignores: `pad_to_max_batch_size` runs every
  batch at `max_batch_size`, so the CUDA provider meets a single input shape.

Pure and free of Triton and ONNX Runtime imports, so the rules are unit-tested without either:
a config goes in, a `SessionPlan` comes out. Copied next to the backend's model.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CPU", "CUDA", "PAD_PARAMETER", "TENSORRT", "ConfigError", "SessionPlan", "plan_session"]

PAD_PARAMETER = "pad_to_max_batch_size"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# parameters key -> (SessionOptions attribute, how the string value converts)
_SESSION_PARAMETERS: dict[str, tuple[str, str]] = {
    "intra_op_thread_count": ("intra_op_num_threads", "int"),
    "inter_op_thread_count": ("inter_op_num_threads", "int"),
    "execution_mode": ("execution_mode", "mode"),
    "enable_mem_arena": ("enable_cpu_mem_arena", "bool"),
    "enable_mem_pattern": ("enable_mem_pattern", "bool"),
}

# The CUDA provider keys the C++ backend reads from `parameters` (deprecated there, still
# honoured): numbered choices in ONNX Runtime's names, and values passed as they are.
_CUDA_CHOICES = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
}
_CUDA_PASSED = ("gpu_mem_limit", "do_copy_in_default_stream")

# TensorRT accelerator keys in the C++ backend's spelling -> ORT TensorRT provider options.
_TENSORRT_RENAMED = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
}
_TENSORRT_PRECISION: dict[str, dict[str, str]] = {
    "FP32": {},
    "FP16": {"trt_fp16_enable": "1"},
    "BF16": {"trt_bf16_enable": "1"},
    "INT8": {"trt_int8_enable": "1"},
}


class ConfigError(ValueError):
    """The config asks for something this backend cannot do; the message says what to change."""


@dataclass(frozen=True)
class SessionPlan:
    """What one instance's ONNX Runtime session is created with."""

    providers: list[tuple[str, dict[str, str]]]
    session_options: dict[str, Any]
    device: str  # "cpu" or "cuda": where inputs are bound
    device_id: int = 0
    notes: list[str] = field(default_factory=list)  # what the server log says about the choice
    pad_to: int = 0  # every batch runs at this size (zero rows added), or 0: as formed

    @property
    def provider_names(self) -> list[str]:
        return [name for name, _ in self.providers]


def plan_session(
    config: Mapping[str, Any],
    instance_kind: str,
    device_id: int,
    available: Sequence[str],
    unusable: Mapping[str, str] | None = None,
) -> SessionPlan:
    """The providers and session options for an instance of `config` (Triton's JSON form of
    config.pbtxt), of `instance_kind` (`model_instance_kind`: CPU or GPU) on `device_id`,
    given the providers this onnxruntime offers and why any it lists cannot run here
    (`unusable`: onnxruntime-gpu lists TensorRT's provider whether TensorRT is installed or not).

    Raises:
        ConfigError: a value is not one the C++ backend accepts either, or a GPU instance meets an
            onnxruntime without the CUDA provider.
    """
    name = config.get("name", "?")
    parameters = {key: str(value.get("string_value", "")) for key, value in config.get("parameters", {}).items()}
    session_options = _session_options(name, parameters)
    pad_to = _pad_to(config, parameters)
    if instance_kind.upper() not in ("GPU", "KIND_GPU"):
        return SessionPlan(providers=[(CPU, {})], session_options=session_options, device="cpu", pad_to=pad_to)
    if CUDA not in available:
        raise ConfigError(
            f"model '{name}': a KIND_GPU instance on GPU {device_id} needs ONNX Runtime's CUDA provider, and this "
            f"onnxruntime offers only {', '.join(available) or 'none'}; install onnxruntime-gpu (`make venv` does on a "
            "host where nvidia-smi lists a GPU) or build the repository with TARGET=cpu"
        )
    cuda = {"device_id": str(device_id), **_cuda_parameters(name, parameters)}
    providers: list[tuple[str, dict[str, str]]] = []
    notes: list[str] = []
    for accelerator in _gpu_accelerators(config):
        kind = accelerator.get("name", "")
        options = {str(k): str(v) for k, v in accelerator.get("parameters", {}).items()}
        if kind == "cuda":
            cuda.update(options)
        elif kind == "tensorrt":
            tensorrt = {"device_id": str(device_id), **_tensorrt_options(name, options)}
            reason = (unusable or {}).get(TENSORRT)
            if TENSORRT in available and reason is None:
                providers.append((TENSORRT, tensorrt))
            else:
                why = reason or f"this onnxruntime offers only {', '.join(available)}"
                notes.append(
                    f"model '{name}': the tensorrt accelerator needs ONNX Runtime's TensorRT provider, which cannot run "
                    f"here ({why}); running every node on the CUDA provider instead, without TensorRT (serve in the "
                    "NGC image, or install TensorRT 10 beside onnxruntime-gpu, to use it)"
                )
        else:
            raise ConfigError(
                f"model '{name}': unknown gpu_execution_accelerator '{kind}'; the onnxruntime backend accepts "
                "'tensorrt' and 'cuda'"
            )
    providers.append((CUDA, cuda))
    providers.append((CPU, {}))
    return SessionPlan(providers, session_options, device="cuda", device_id=device_id, notes=notes, pad_to=pad_to)


def _pad_to(config: Mapping[str, Any], parameters: Mapping[str, str]) -> int:
    value = parameters.get(PAD_PARAMETER, "false").strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(
            f"model '{config.get('name', '?')}': parameter {PAD_PARAMETER} is '{value}'; it must be true or false"
        )
    return int(config.get("max_batch_size", 0)) if value == "true" else 0


def _session_options(model: str, parameters: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, (attribute, kind) in _SESSION_PARAMETERS.items():
        if key not in parameters:
            continue
        value = parameters[key].strip()
        if kind == "int" and value.lstrip("-").isdigit() and int(value) >= 0:
            options[attribute] = int(value)
        elif kind == "mode" and value in ("0", "1"):
            options[attribute] = "ORT_SEQUENTIAL" if value == "0" else "ORT_PARALLEL"
        elif kind == "bool" and value.lower() in ("0", "1", "true", "false"):
            options[attribute] = value.lower() in ("1", "true")
        else:
            allowed = {"int": "a whole number >= 0", "mode": "0 (sequential) or 1 (parallel)", "bool": "true or false"}
            raise ConfigError(
                f"model '{model}': parameter {key} is '{value}'; it must be {allowed[kind]}; fix it in the spec's "
                "parameters (or cpu options) and rebuild"
            )
    return options


def _cuda_parameters(model: str, parameters: Mapping[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, choices in _CUDA_CHOICES.items():
        if key not in parameters:
            continue
        value = parameters[key]
        if value not in choices:
            allowed = ", ".join(f"{number} ({name})" for number, name in choices.items())
            raise ConfigError(f"model '{model}': parameter {key} is '{value}'; it must be one of {allowed}")
        options[key] = choices[value]
    options.update({key: parameters[key] for key in _CUDA_PASSED if key in parameters})
    return options


def _tensorrt_options(model: str, parameters: Mapping[str, str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parameters.items():
        if key == "precision_mode":
            if value not in _TENSORRT_PRECISION:
                raise ConfigError(
                    f"model '{model}': tensorrt precision_mode is '{value}'; it must be one of "
                    f"{', '.join(_TENSORRT_PRECISION)}"
                )
            options.update(_TENSORRT_PRECISION[value])
        elif key in _TENSORRT_RENAMED:
            options[_TENSORRT_RENAMED[key]] = value
        elif key.startswith("trt_"):
            options[key] = value  # the C++ backend hands these to ORT unchanged
        else:
            raise ConfigError(
                f"model '{model}': unknown tensorrt accelerator parameter '{key}'; use precision_mode, "
                f"{', '.join(_TENSORRT_RENAMED)} or ONNX Runtime's trt_* options"
            )
    return options


def _gpu_accelerators(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    return list(accelerators.get("gpu_execution_accelerator", []))

"""The kit's onnxruntime backend reads config.pbtxt as Triton's C++ backend does: config in,
providers and session options out (server/runtime/triton_kit_ort.py, no GPU needed)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from builder.render import render_config
from builder.spec import load_spec
from server.runtime.triton_kit_ort import CPU, CUDA, TENSORRT, ConfigError, plan_session
from tests.conftest import ROOT, linear_model

GPU_ORT = [TENSORRT, CUDA, CPU]  # what onnxruntime-gpu lists, TensorRT libraries present or not
CPU_ORT = [CPU]


def as_triton_json(text: str) -> dict[str, Any]:
    """The JSON form of a config that Triton hands a Python backend's initialize()."""
    config = text_format.Parse(text, pb.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def config(**fields: Any) -> dict[str, Any]:
    return {"name": "m", **fields}


def test_a_cpu_instance_runs_on_the_cpu_provider_with_the_configured_threads() -> None:
    plan = plan_session(
        config(parameters={"intra_op_thread_count": {"string_value": "2"}, "execution_mode": {"string_value": "1"}}),
        "CPU",
        0,
        GPU_ORT,
    )
    assert plan.providers == [(CPU, {})]
    assert plan.device == "cpu"
    assert plan.session_options == {"intra_op_num_threads": 2, "execution_mode": "ORT_PARALLEL"}


def test_a_gpu_instance_runs_on_its_own_device_with_the_cuda_provider() -> None:
    plan = plan_session(config(), "GPU", 3, GPU_ORT)
    assert plan.provider_names == [CUDA, CPU]
    assert plan.providers[0][1]["device_id"] == "3"
    assert (plan.device, plan.device_id) == ("cuda", 3)


def test_the_example_gpu_config_gets_tensorrt_first_with_its_parameters() -> None:
    classifier = load_spec(ROOT / "models.yaml").model("image_classifier")
    plan = plan_session(as_triton_json(render_config(classifier, "models.yaml", "gpu")), "GPU", 0, GPU_ORT)
    assert plan.provider_names == [TENSORRT, CUDA, CPU]
    tensorrt = plan.providers[0][1]
    assert tensorrt["trt_fp16_enable"] == "1"
    assert tensorrt["trt_max_workspace_size"] == str(1 << 30)
    assert tensorrt["trt_engine_cache_enable"] == "1"
    assert tensorrt["trt_engine_cache_path"] == "/tmp/trt_engine_cache"
    # The spec's threads are rendered on the gpu target too.
    assert plan.session_options == {"intra_op_num_threads": classifier.cpu.intra_op_thread_count}
    assert classifier.cpu.intra_op_thread_count is not None
    assert plan.notes == []


def test_without_the_tensorrt_provider_the_log_says_what_runs_instead() -> None:
    classifier = load_spec(ROOT / "models.yaml").model("image_classifier")
    plan = plan_session(as_triton_json(render_config(classifier, "models.yaml", "gpu")), "GPU", 0, [CUDA, CPU])
    assert plan.provider_names == [CUDA, CPU]
    (note,) = plan.notes
    assert "tensorrt accelerator" in note and "CUDA provider instead" in note and "image_classifier" in note


def test_cuda_accelerator_options_and_the_legacy_parameters_reach_the_cuda_provider(write_spec) -> None:
    model = load_spec(
        write_spec(
            linear_model(
                "tuned",
                gpu={"accelerator": "cuda", "cuda": {"cudnn_conv_use_max_workspace": "0"}},
                parameters={"cudnn_conv_algo_search": "1", "arena_extend_strategy": "1", "gpu_mem_limit": "1000000"},
            )
        )
    ).models[0]
    plan = plan_session(as_triton_json(render_config(model, "models.yaml", "gpu")), "GPU", 1, GPU_ORT)
    assert plan.providers[0] == (
        CUDA,
        {
            "device_id": "1",
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
            "gpu_mem_limit": "1000000",
            "cudnn_conv_use_max_workspace": "0",
            "use_tf32": "0",
        },
    )


def test_int8_precision_enables_int8_in_the_tensorrt_provider() -> None:
    accelerator = {"name": "tensorrt", "parameters": {"precision_mode": "INT8", "trt_timing_cache_enable": "1"}}
    plan = plan_session(
        config(optimization={"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}),
        "GPU",
        0,
        GPU_ORT,
    )
    assert plan.providers[0] == (TENSORRT, {"device_id": "0", "trt_int8_enable": "1", "trt_timing_cache_enable": "1"})


def test_a_listed_tensorrt_provider_without_tensorrt_falls_back_saying_why() -> None:
    classifier = load_spec(ROOT / "models.yaml").model("image_classifier")
    plan = plan_session(
        as_triton_json(render_config(classifier, "models.yaml", "gpu")),
        "GPU",
        0,
        GPU_ORT,
        {TENSORRT: "TensorRT 10 is not installed: libnvinfer.so.10: cannot open shared object file"},
    )
    assert plan.provider_names == [CUDA, CPU]
    (note,) = plan.notes
    assert "cannot run here (TensorRT 10 is not installed: libnvinfer.so.10" in note


def test_a_gpu_instance_with_a_cpu_only_onnxruntime_is_refused_with_what_to_install() -> None:
    with pytest.raises(ConfigError, match="onnxruntime-gpu") as caught:
        plan_session(config(), "GPU", 0, CPU_ORT)
    assert "KIND_GPU instance on GPU 0" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"parameters": {"intra_op_thread_count": {"string_value": "two"}}}, "intra_op_thread_count is 'two'"),
        ({"parameters": {"execution_mode": {"string_value": "2"}}}, "execution_mode is .2.; it must be 0"),
        ({"parameters": {"cudnn_conv_algo_search": {"string_value": "3"}}}, "cudnn_conv_algo_search is '3'"),
        (
            {"optimization": {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "openvino"}]}}},
            "unknown gpu_execution_accelerator 'openvino'",
        ),
        (
            {
                "optimization": {
                    "execution_accelerators": {
                        "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": {"precision_mode": "FP8"}}]
                    }
                }
            },
            "precision_mode is 'FP8'",
        ),
    ],
)
def test_values_the_cpp_backend_refuses_are_refused_naming_the_key(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        plan_session(config(**fields), "GPU", 0, GPU_ORT)


def test_padding_to_the_max_batch_size_is_read_and_checked(write_spec) -> None:
    model = load_spec(write_spec(linear_model("padded", gpu={"pad_batch": True}))).models[0]
    gpu = as_triton_json(render_config(model, "models.yaml", "gpu"))
    assert gpu["parameters"]["pad_to_max_batch_size"] == {"string_value": "true"}
    assert plan_session(gpu, "GPU", 0, GPU_ORT).pad_to == 8
    assert "pad_to_max_batch_size" not in as_triton_json(render_config(model, "models.yaml", "cpu")).get(
        "parameters", {}
    )
    assert plan_session(config(max_batch_size=8), "GPU", 0, GPU_ORT).pad_to == 0
    with pytest.raises(ConfigError, match="pad_to_max_batch_size is 'yes'; it must be true or false"):
        plan_session(config(parameters={"pad_to_max_batch_size": {"string_value": "yes"}}), "CPU", 0, GPU_ORT)

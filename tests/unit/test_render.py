"""config.pbtxt rendering: golden files for both targets, the protobuf round trip, template failures."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builder import render
from builder.checker.config import parse_config
from builder.errors import RenderError
from builder.render import render_config, render_python_model
from builder.spec import EnsembleSpec, OnnxModelSpec, PythonModelSpec, load_spec
from tests.conftest import ROOT, linear_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
EXAMPLES = [m.name for m in load_spec(ROOT / "models.yaml").models]


# Specs exercising every block the template knows, each with its own golden file per target.
FEATURES = {
    "full": linear_model(
        "full",
        versions=[1, 3],
        dynamic_batching={
            "max_queue_delay_microseconds": 500,
            "preferred_batch_size": [4, 8],
            "priority_levels": 2,
            "default_priority_level": 2,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 100000,
                "allow_timeout_override": True,
                "max_queue_size": 64,
            },
            "priority_queue_policy": {1: {"max_queue_size": 8}},
        },
        instance_group=[
            {
                "count": 2,
                "gpus": [0, 1],
                "rate_limiter": {"resources": [{"name": "R1", "count": 2, "shared": True}], "priority": 1},
            },
            {"kind": "KIND_CPU", "count": 1},
        ],
        response_cache=True,
        parameters={"custom_key": "value"},
        warmup={"when": "always", "batch_sizes": [1, 8]},
        cpu={"intra_op_thread_count": 4, "inter_op_thread_count": 1},
        gpu={"accelerator": "tensorrt", "precision_mode": "FP16", "engine_cache_path": "/cache/trt"},
    ),
    "unbatched": linear_model("unbatched", max_batch_size=0, gpu={"accelerator": "cuda"}),
    "stateful": linear_model(
        "stateful",
        version_policy={"latest": 1},
        sequence_batching={
            "max_sequence_idle_microseconds": 5000000,
            "start": "START",
            "end": "END",
            "ready": "READY",
            "correlation_id": "CORRID",
            "strategy": "oldest",
            "max_candidate_sequences": 4,
            "preferred_batch_size": [2, 4],
            "max_queue_delay_microseconds": 100,
        },
    ),
    "streaming": {
        "name": "streaming",
        "kind": "python",
        "source": "models.text_pipeline:Tokenizer",
        "options": {"max_length": 64},
        "max_batch_size": 4,
        "decoupled": True,
        "inputs": [{"name": "text", "dtype": "TYPE_STRING", "dims": [1], "optional": True}],
        "outputs": [{"name": "input_ids", "dtype": "TYPE_INT64", "dims": [-1]}],
    },
}


def golden(target: str, name: str) -> str:
    return (GOLDEN / target / f"{name}.pbtxt").read_text()


@pytest.mark.parametrize("target", ["cpu", "gpu"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_configs_equal_their_golden_files(name: str, target: str) -> None:
    model = load_spec(ROOT / "models.yaml").model(name)
    rendered = render_config(model, "models.yaml", target)
    assert rendered == golden(target, name)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
@pytest.mark.parametrize("name", FEATURES)
def test_feature_configs_equal_their_golden_files(name: str, target: str, write_spec) -> None:
    model = load_spec(write_spec(FEATURES[name])).models[0]
    assert render_config(model, "models.yaml", target) == golden(target, name)


# The example variants; a TensorRT plan only renders for the gpu target.
VARIANTS = {
    "image_classifier_int8": ("cpu",),
    "image_classifier_fp16": ("gpu",),
    "image_classifier_trt_fp16": ("gpu",),
    "text_encoder_int8": ("cpu", "gpu"),
    "text_encoder_fp16": ("gpu",),
    "image_classifier_compiled": ("cpu",),
    "image_classifier_compiled_fp16": ("gpu",),
    "text_encoder_compiled": ("cpu",),
    "text_encoder_compiled_fp16": ("gpu",),
    "image_classification_int8": ("cpu",),
    "image_classification_fp16": ("gpu",),
    "image_classification_compiled_fp16": ("gpu",),
}


@pytest.mark.parametrize(("name", "target"), [(n, t) for n, targets in VARIANTS.items() for t in targets])
def test_variant_configs_equal_their_golden_files(name: str, target: str) -> None:
    spec = load_spec(ROOT / "models.yaml")
    base = next(
        m for m in spec.models if isinstance(m, OnnxModelSpec | EnsembleSpec) and name in {v.name for v in m.variants}
    )
    if isinstance(base, EnsembleSpec):
        rendered = render_config(base.served_variant(base.variant(name)), "models.yaml", target)
    else:
        variant = base.variant(name)
        rendered = render_config(base.served_variant(variant), "models.yaml", target, variant)
    assert rendered == golden(target, name)


def test_every_golden_file_is_tested() -> None:
    tested = {f"{target}/{name}.pbtxt" for target in ("cpu", "gpu") for name in [*EXAMPLES, *FEATURES]}
    tested |= {f"{target}/{name}.pbtxt" for name, targets in VARIANTS.items() for target in targets}
    assert {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.pbtxt")} == tested


def test_the_gpu_target_runs_on_gpus_with_accelerators_and_warmup(write_spec) -> None:
    model = load_spec(write_spec(FEATURES["full"])).models[0]
    gpu = text_format.Parse(render_config(model, "models.yaml", "gpu"), pb.ModelConfig())
    cpu = text_format.Parse(render_config(model, "models.yaml", "cpu"), pb.ModelConfig())
    assert [g.kind for g in gpu.instance_group] == [pb.ModelInstanceGroup.KIND_GPU, pb.ModelInstanceGroup.KIND_CPU]
    assert [g.kind for g in cpu.instance_group] == [pb.ModelInstanceGroup.KIND_CPU, pb.ModelInstanceGroup.KIND_CPU]
    assert list(gpu.instance_group[0].gpus) == [0, 1] and not cpu.instance_group[0].gpus
    accelerator, cuda = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda" and cuda.parameters["use_tf32"] == "0"
    assert accelerator.name == "tensorrt" and accelerator.parameters["trt_engine_cache_path"] == "/cache/trt"
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    # Threads bound both targets: on a GPU host ONNX Runtime would otherwise spin one per core.
    assert cpu.parameters["intra_op_thread_count"].string_value == "4"
    assert gpu.parameters["intra_op_thread_count"].string_value == "4"
    assert gpu.parameters["inter_op_thread_count"].string_value == "1"
    assert gpu.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert gpu.dynamic_batching.priority_queue_policy[1].max_queue_size == 8
    assert gpu.instance_group[0].rate_limiter.resources[0].__getattribute__("global")
    assert [w.batch_size for w in gpu.model_warmup] == [1, 8]
    assert gpu.model_warmup[0].inputs["x"].random_data and list(gpu.model_warmup[0].inputs["x"].dims) == [4]


def test_warmup_follows_the_target_by_default(write_spec) -> None:
    spec = load_spec(ROOT / "models.yaml")
    encoder = spec.model("text_encoder")
    gpu = text_format.Parse(render_config(encoder, "models.yaml", "gpu"), pb.ModelConfig())
    cpu = text_format.Parse(render_config(encoder, "models.yaml", "cpu"), pb.ModelConfig())
    assert not cpu.model_warmup
    # Every size the dynamic batcher can form: an unwarmed one would stall its first execution
    # while the CUDA provider tunes kernels for the new shape.
    assert [w.batch_size for w in gpu.model_warmup] == list(range(1, 33))
    warm = gpu.model_warmup[-1]
    assert list(warm.inputs["input_ids"].dims) == [32]  # the typical (opt) length, concrete
    assert warm.inputs["input_ids"].zero_data  # integer ids: zeros are valid, random values may not be


def test_cuda_provider_options_render_as_the_cuda_accelerator(write_spec) -> None:
    model = load_spec(
        write_spec(
            linear_model("tuned", gpu={"accelerator": "tensorrt", "cuda": {"cudnn_conv_algo_search": "HEURISTIC"}})
        )
    ).models[0]
    gpu = text_format.Parse(render_config(model, "models.yaml", "gpu"), pb.ModelConfig())
    tensorrt, cuda = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert (tensorrt.name, cuda.name) == ("tensorrt", "cuda")
    assert dict(cuda.parameters) == {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}  # FP32 stays FP32
    opted_in = load_spec(write_spec(linear_model("tf32", gpu={"cuda": {"use_tf32": 1}}))).models[0]
    (cuda,) = text_format.Parse(
        render_config(opted_in, "models.yaml", "gpu"), pb.ModelConfig()
    ).optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(cuda.parameters) == {"use_tf32": "1"}


def test_max_batch_size_zero_is_written_out(write_spec) -> None:
    # The protobuf text format drops fields at their default; Triton reads a missing
    # max_batch_size as 0 too, but the config should say it.
    text = render_config(load_spec(write_spec(FEATURES["unbatched"])).models[0], "models.yaml")
    assert "max_batch_size: 0\n" in text
    assert "dynamic_batching" not in text


def test_the_generated_python_model_imports_the_source_and_its_options(write_spec) -> None:
    model = load_spec(write_spec(FEATURES["streaming"])).models[0]
    assert isinstance(model, PythonModelSpec)
    text = render_python_model(model, "models.yaml", {"vocab": "files/vocab.txt"})
    assert "from models.text_pipeline import Tokenizer as _Processor" in text
    assert '_OPTIONS = json.loads("{\\"max_length\\": 64}")' in text
    assert '_FILES = json.loads("{\\"vocab\\": \\"files/vocab.txt\\"}")' in text


def test_unparsable_text_names_the_origin_and_the_parser_position() -> None:
    with pytest.raises(RenderError) as caught:
        parse_config('name: "m"\nmax_batch_size: eight\n', "model 'm' rendered from template t.j2")
    message = str(caught.value)
    assert "model 'm' rendered from template t.j2" in message
    assert "2:17" in message  # line:column from the protobuf parser
    assert "  2 | max_batch_size: eight" in message


def _swap_templates(monkeypatch, directory: Path) -> None:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(directory), undefined=jinja2.StrictUndefined)
    monkeypatch.setattr(render, "_ENVIRONMENT", environment)


def test_a_template_that_renders_an_invalid_config_fails_the_render(write_spec, tmp_path, monkeypatch) -> None:
    (tmp_path / "model_config.pbtxt.j2").write_text('name: "{{ name }}"\nmax_batch_sise: {{ max_batch_size }}\n')
    _swap_templates(monkeypatch, tmp_path)
    with pytest.raises(
        RenderError, match=r"model 'linear' rendered from template .*model_config.pbtxt.j2.*max_batch_sise"
    ):
        render_config(load_spec(write_spec(linear_model())).models[0], "models.yaml")


def test_a_template_using_an_undefined_value_fails_instead_of_printing_nothing(
    write_spec, tmp_path, monkeypatch
) -> None:
    (tmp_path / "model_config.pbtxt.j2").write_text('name: "{{ nmae }}"\n')
    _swap_templates(monkeypatch, tmp_path)
    with pytest.raises(RenderError, match="'nmae' is undefined"):
        render_config(load_spec(write_spec(linear_model())).models[0], "models.yaml")


def test_python_models_get_no_generated_warmup_even_on_gpu() -> None:
    # Generated warmup data (zeros, empty strings) is not an image or text a preprocessor can
    # decode, and a failed warmup fails the load (seen on a GPU host before this default).
    spec = load_spec(ROOT / "models.yaml")
    for model in spec.of_kind(PythonModelSpec):
        config = text_format.Parse(render_config(model, "models.yaml", "gpu"), pb.ModelConfig())
        assert not config.model_warmup, model.name


# The `parameters` keys Triton's C++ onnxruntime backend r24.10 reads (src/onnxruntime.cc): a config
# the kit renders for an ONNX model means the same to the embedded server and to the NGC container.
ONNXRUNTIME_BACKEND_PARAMETERS = {
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage",
    "cudnn_conv_algo_search",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
}


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_the_kit_adds_only_parameters_the_onnxruntime_backend_reads(target: str, write_spec) -> None:
    spec = load_spec(ROOT / "models.yaml")
    features = [load_spec(write_spec(entry)).models[0] for entry in FEATURES.values()]
    models = [*spec.of_kind(OnnxModelSpec), *(m for m in features if isinstance(m, OnnxModelSpec))]
    rendered = []
    for model in models:
        for variant in (None, *(v for v in model.variants if v.format == "onnx")):
            served = model if variant is None else model.served_variant(variant)
            config = text_format.Parse(render_config(served, "models.yaml", target, variant), pb.ModelConfig())
            rendered.append(config.name)
            added = set(config.parameters) - set(served.parameters)  # the spec's own pass through as written
            assert added <= ONNXRUNTIME_BACKEND_PARAMETERS, (config.name, added)
    assert {"image_classifier", "text_encoder", "text_encoder_int8"} <= set(rendered)


def test_gpu_count_sets_the_instances_on_the_gpu_target_only(write_spec) -> None:
    model = load_spec(write_spec(linear_model(instance_group=[{"count": 2, "gpu_count": 4}]))).models[0]
    gpu = text_format.Parse(render_config(model, "m.yaml", "gpu"), pb.ModelConfig())
    cpu = text_format.Parse(render_config(model, "m.yaml", "cpu"), pb.ModelConfig())
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(pb.ModelInstanceGroup.KIND_GPU, 4)]
    assert [(g.kind, g.count) for g in cpu.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, 2)]

"""The real server is the judge: for each checker rule the server also enforces, a config breaking
it is refused by the server and flagged by the checker, with the same reason.

One server in explicit model-control mode loads each broken variant of a valid model in turn.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builder.checker import check_repository
from builder.pipeline import build_repository
from clients import ModelNotReady, TritonClient
from server import EmbeddedTriton
from tests.conftest import free_port, linear_model

pytestmark = pytest.mark.server

Change = Callable[[pb.ModelConfig], None]


@dataclass(frozen=True)
class Case:
    """A broken variant: `change` applied to a copy of `base`; both judges must give `reason`
    (the server's words) and the checker also `checker` (its own line, when it words it otherwise)."""

    name: str
    change: Change
    reason: str
    checker: str = ""
    base: str = "linear"


def _ensemble(change: Change) -> Change:
    """An ensemble calling `linear`, then `change`d."""

    def build(config: pb.ModelConfig) -> None:
        config.Clear()
        config.platform = "ensemble"
        config.max_batch_size = 8
        config.input.add(name="features", data_type=pb.TYPE_FP32, dims=[4])
        config.output.add(name="scores", data_type=pb.TYPE_FP32, dims=[3])
        step = config.ensemble_scheduling.step.add(model_name="linear", model_version=-1)
        step.input_map["x"] = "features"
        step.output_map["y"] = "scores"
        change(config)

    return build


def _set(path: str, value: object) -> Change:
    def change(config: pb.ModelConfig) -> None:
        *parents, leaf = path.split(".")
        target: object = config
        for part in parents:
            target = getattr(target, part) if not part.isdigit() else target[int(part)]  # type: ignore[index]
        setattr(target, leaf, value)

    return change


def _warmup_variable(config: pb.ModelConfig) -> None:
    warmup = config.model_warmup.add(name="variable", batch_size=1)
    warmup.inputs["x"].data_type = pb.TYPE_FP32
    warmup.inputs["x"].dims.extend([-1, 4])
    warmup.inputs["x"].zero_data = True


def _cache_with_sequences(config: pb.ModelConfig) -> None:
    config.ClearField("dynamic_batching")
    config.sequence_batching.max_sequence_idle_microseconds = 1_000_000
    config.response_cache.enable = True


def _ordering_with_priorities(config: pb.ModelConfig) -> None:
    config.dynamic_batching.preserve_ordering = True
    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.default_priority_level = 1


def _priority_out_of_range(config: pb.ModelConfig) -> None:
    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.default_priority_level = 3


def _unmapped(config: pb.ModelConfig) -> None:
    step = config.ensemble_scheduling.step[0]
    del step.input_map["x"]
    step.input_map["q"] = "features"


def _batch_input_without_source(config: pb.ModelConfig) -> None:
    config.batch_input.add(kind=pb.BatchInput.BATCH_ELEMENT_COUNT, target_name=["count"], data_type=pb.TYPE_FP32)


def _batch_output_unknown_target(config: pb.ModelConfig) -> None:
    config.batch_output.add(
        target_name=["nope"], kind=pb.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE, source_input=["x"]
    )


def _sequence_controls(*controls: tuple[str, int]) -> Change:
    def change(config: pb.ModelConfig) -> None:
        config.ClearField("dynamic_batching")
        for name, kind in controls:
            control_input = config.sequence_batching.control_input.add(name=name)
            control_input.control.add(kind=kind, int32_false_true=[0, 1])

    return change


def _ordering_with_delay(config: pb.ModelConfig) -> None:
    config.dynamic_batching.preserve_ordering = True
    config.dynamic_batching.default_queue_policy.timeout_action = pb.ModelQueuePolicy.DELAY


def _ensemble_scheduling_on_a_model(config: pb.ModelConfig) -> None:
    config.ClearField("dynamic_batching")
    step = config.ensemble_scheduling.step.add(model_name="linear", model_version=-1)
    step.input_map["x"] = "x"
    step.output_map["y"] = "y"


def _negative_gpu(config: pb.ModelConfig) -> None:
    config.instance_group[0].kind = pb.ModelInstanceGroup.KIND_GPU
    config.instance_group[0].gpus.extend([-1])


def _model_metrics(config: pb.ModelConfig) -> None:
    config.model_metrics.metric_control.add().metric_identifier.family = "nv_inference_request_duration_us"


def _needs_version_2(config: pb.ModelConfig) -> None:
    config.ensemble_scheduling.step[0].model_version = 2


START = pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
READY = pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY

CASES = [
    Case(
        "preferred_too_big",
        lambda c: c.dynamic_batching.preferred_batch_size.extend([16]),
        "dynamic batching preferred size must be <= max batch size",
    ),
    Case(
        "zero_dim",
        lambda c: c.input[0].dims.__setitem__(0, 0),
        "dimension must be integer >= 1, or -1 to indicate a variable-size dimension",
    ),
    Case("reshape_size", lambda c: c.input[0].reshape.shape.extend([5]), "has different size for dims and reshape"),
    Case(
        "ordering_with_priorities",
        _ordering_with_priorities,
        "Only one priority level is allowed when 'preserve_ordering' is true",
    ),
    Case("priority_out_of_range", _priority_out_of_range, "default priority level must be in range [1, 2]"),
    Case(
        "cpu_with_gpus",
        lambda c: c.instance_group[0].gpus.extend([0]),
        "has kind KIND_CPU but specifies one or more GPUs",
    ),
    Case(
        "cache_with_sequences",
        _cache_with_sequences,
        "Response Cache does not currently support model",
        "cannot cache responses of sequence-batched",
    ),
    Case(
        "warmup_variable",
        _warmup_variable,
        "warmup setting expects all variable-size dimensions are specified",
        base="sequence",
    ),
    Case(
        "name_mismatch",
        _set("name", "other"),
        "directory name must equal model name",
        "must equal the model's directory name",
    ),
    Case(
        "output_dims",
        lambda c: c.output[0].dims.__setitem__(0, 7),
        "the model expects 2 dimensions (shape [-1,3])",
        "dims[0] is 7 as declared but 3 in the graph",
    ),
    Case(
        "ensemble_instance_group",
        _ensemble(lambda c: c.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU)),
        "instance group should not be specified for ensemble",
    ),
    Case(
        "ensemble_unmapped",
        _ensemble(_unmapped),
        "mapping to non-existing input q",
        "input_map key 'q' is not an input of 'linear'",
    ),
    Case(
        "ensemble_unwritten",
        _ensemble(lambda c: c.output.add(name="extra", data_type=pb.TYPE_FP32, dims=[3])),
        "ensemble output 'extra'",
        "ensemble tensor 'extra' is not written by any step",
    ),
    Case(
        "ensemble_unused",
        _ensemble(lambda c: c.input.add(name="spare", data_type=pb.TYPE_FP32, dims=[4])),
        "ensemble input 'spare'",
        "ensemble tensor 'spare' (ensemble input 'spare') is not used",
    ),
    Case(
        "ensemble_dtype",
        _ensemble(_set("input.0.data_type", pb.TYPE_INT32)),
        "inconsistent data type",
        "is TYPE_INT32 from ensemble input 'features' but TYPE_FP32 here",
    ),
    Case("batch_input_source", _batch_input_without_source, "expects 1 source input, got 0"),
    Case("batch_output_target", _batch_output_unknown_target, "unknown target output name 'nope'"),
    Case(
        "control_kind_twice",
        _sequence_controls(("START", START), ("BEGIN", START)),
        "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors",
    ),
    Case(
        "control_tensor_twice",
        _sequence_controls(("START", START), ("START", READY)),
        "sequence batching control tensor 'START' is specified for multiple control kinds",
    ),
    Case(
        "ordering_with_delay",
        _ordering_with_delay,
        "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true",
    ),
    Case(
        "reshape_variable",
        lambda c: c.input[0].reshape.shape.extend([2, -1]),
        "model input 'x' has different size for dims and reshape",
        base="sequence",
    ),
    Case(
        "ensemble_scheduling_on_a_model",
        _ensemble_scheduling_on_a_model,
        "ensemble scheduling cannot be set for model 'ensemble_scheduling_on_a_model' whose platform is not ensemble",
    ),
    Case("negative_gpu", _negative_gpu, "specifies invalid or unsupported gpu id -1"),
    Case(
        "ensemble_no_input_map",
        _ensemble(lambda c: c.ensemble_scheduling.step[0].ClearField("input_map")),
        "must specify 'input_map' in step 0 of ensemble 'ensemble_no_input_map'",
    ),
    Case(
        "ensemble_missing_model",
        _ensemble(_set("ensemble_scheduling.step.0.model_name", "nowhere")),
        "contains models that are not available or ambiguous: nowhere",
    ),
    Case("unknown_platform", _set("platform", "onnxruntim"), "unexpected platform type 'onnxruntim'"),
    Case(
        "ensemble_version",
        _ensemble(_needs_version_2),
        "ensemble 'ensemble_version' depends on 'linear' whose required version 2 is not loaded",
    ),
    Case(
        "newer_field",
        _model_metrics,
        "failed to read text proto",
        "model_metrics = set: not in the model config schema of Triton 2.51: that server cannot parse the config",
    ),
    Case(
        "ensemble_batch",
        _ensemble(_set("max_batch_size", 16)),
        "allows maximum batch size 16, but it contains model linear which only allows maximum batch size to be 8",
        "the ensemble's max_batch_size 16 exceeds 'linear''s 8",
    ),
]


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, EmbeddedTriton]]:
    """A repository with a valid `linear` and `sequence` model plus every broken variant, served in explicit mode."""
    root = tmp_path_factory.mktemp("judged")
    sequence = linear_model(
        "sequence",
        source="tests.tiny_models:sequence_mean",
        inputs=[{"name": "x", "dtype": "TYPE_FP32", "dims": [-1, 4], "shape_range": {"min": [1, 4], "max": [8, 4]}}],
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
    )
    (root / "models.yaml").write_text(yaml.safe_dump({"models": [linear_model(), sequence]}))
    repo = root / "repo"
    build_repository(root / "models.yaml", repo, target="cpu", log=lambda _: None)
    for case in CASES:
        shutil.copytree(repo / case.base, repo / case.name)
        config = text_format.Parse((repo / case.base / "config.pbtxt").read_text(), pb.ModelConfig())
        case.change(config)
        if case.name != "name_mismatch":
            config.name = case.name
        if config.platform == "ensemble":
            shutil.rmtree(repo / case.name / "1")
            (repo / case.name / "1").mkdir()
        (repo / case.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    server = EmbeddedTriton(
        repository=repo,
        backend_dir=root / "backends",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        model_control_mode="explicit",
        log_file=root / "triton.log",
    )
    server.start()
    try:
        yield repo, server
    finally:
        server.stop()


def test_the_valid_models_load(judged: tuple[Path, EmbeddedTriton]) -> None:
    repo, server = judged
    with TritonClient(server.grpc_url) as client:
        for name in ("linear", "sequence"):
            client.load_model(name)
            assert client.is_ready(name)
    flagged = {p.file.parent.name for p in check_repository(repo)}
    assert not flagged & {"linear", "sequence"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_server_and_checker_refuse_the_same_config(judged: tuple[Path, EmbeddedTriton], case: Case) -> None:
    repo, server = judged
    with TritonClient(server.grpc_url) as client, pytest.raises(ModelNotReady) as refused:
        client.load_model(case.name)
    # The server puts the reason either in the load error or, for configs it cannot even
    # read into its repository, only in its log.
    log = server.log_tail(lines=400)
    server_says = str(refused.value) + "\n" + "\n".join(line for line in log.splitlines() if case.name in line)
    assert case.reason in server_says, server_says
    lines = [str(p) for p in check_repository(repo) if p.file.parent.name == case.name]
    assert any((case.checker or case.reason) in line for line in lines), lines


def both_refuse(repo: Path, server: EmbeddedTriton, model: str, reason: str) -> None:
    """The server refuses to load `model` for `reason`, and the checker flags it with the same words."""
    with TritonClient(server.grpc_url) as client, pytest.raises(ModelNotReady) as refused:
        client.load_model(model)
    assert reason in str(refused.value) + server.log_tail(lines=400)
    lines = [str(p) for p in check_repository(repo) if p.file.parent.name == model]
    assert any(reason in line for line in lines), lines


AUTO_COMPLETE_MISSING_DATA_TYPE = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "x", "dims": [4]})
        return config

    def execute(self, requests):
        return []
"""


def test_a_python_models_auto_complete_config_is_run_as_the_server_runs_it(
    judged: tuple[Path, EmbeddedTriton],
) -> None:
    """With auto-complete on (the server's default), the backend runs the model's
    auto_complete_config before validating; a declaration it refuses stops the load, and the
    checker, which runs the function the same way, gives the same reason."""
    repo, server = judged
    model = repo / "auto_complete_broken"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(AUTO_COMPLETE_MISSING_DATA_TYPE)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    reason = (
        "input 'x' in auto-complete-config function for model 'auto_complete_broken' is missing 'data_type' property"
    )
    both_refuse(repo, server, "auto_complete_broken", reason)
    # With --strict-model-config the server runs no auto_complete_config, and neither does the check.
    strict = [str(p) for p in check_repository(repo, strict_model_config=True) if p.file.parent.name == model.name]
    assert not any("auto-complete-config" in line for line in strict), strict


def test_an_onnx_model_without_platform_is_checked_against_its_graph(judged: tuple[Path, EmbeddedTriton]) -> None:
    """Triton infers the platform from model.onnx; the checker does too, so a config that
    names no platform is still held to the graph."""
    repo, server = judged
    config = text_format.Parse((repo / "linear" / "config.pbtxt").read_text(), pb.ModelConfig())
    config.ClearField("platform")
    config.name = "no_platform"
    config.input[0].name = "q"
    shutil.copytree(repo / "linear", repo / "no_platform")
    (repo / "no_platform" / "config.pbtxt").write_text(text_format.MessageToString(config))
    with TritonClient(server.grpc_url) as client, pytest.raises(ModelNotReady) as refused:
        client.load_model("no_platform")
    server_says = str(refused.value)
    assert "'q'" in server_says, server_says
    lines = [str(p) for p in check_repository(repo) if p.file.parent.name == "no_platform"]
    assert any("input names differ: declared ['q'], the graph has ['x']" in line for line in lines), lines


DECOUPLED_MODEL = """
class TritonPythonModel:
    def execute(self, requests):
        return None
"""


def _python_model(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(DECOUPLED_MODEL)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{config}')


def test_an_ensemble_joining_two_decoupled_steps_is_refused_by_both(judged: tuple[Path, EmbeddedTriton]) -> None:
    repo, server = judged
    tensor = "data_type: TYPE_FP32 dims: [ 4 ]"
    _python_model(
        repo,
        "repeat",
        f'model_transaction_policy {{ decoupled: true }}\ninput {{ name: "IN" {tensor} }}\noutput {{ name: "OUT" {tensor} }}\n',
    )
    _python_model(
        repo,
        "pair",
        f'input {{ name: "A" {tensor} }}\ninput {{ name: "B" {tensor} }}\noutput {{ name: "C" {tensor} }}\n',
    )
    steps = "".join(
        f'step {{ model_name: "{model}" model_version: -1 {maps} }}\n'
        for model, maps in (
            ("repeat", 'input_map { key: "IN" value: "features" } output_map { key: "OUT" value: "a" }'),
            ("repeat", 'input_map { key: "IN" value: "features" } output_map { key: "OUT" value: "b" }'),
            (
                "pair",
                'input_map { key: "A" value: "a" } input_map { key: "B" value: "b" } output_map { key: "C" value: "c" }',
            ),
        )
    )
    (repo / "branching" / "1").mkdir(parents=True)
    (repo / "branching" / "config.pbtxt").write_text(
        f'name: "branching"\nplatform: "ensemble"\nmax_batch_size: 0\ninput {{ name: "features" {tensor} }}\n'
        f'output {{ name: "c" {tensor} }}\nensemble_scheduling {{\n{steps}}}\n'
    )
    # 'pair' joins the two decoupled streams; what reads its output (here the ensemble's own
    # output) is where Triton, and the checker, see responses that cannot be paired.
    reason = (
        "in ensemble branching, step of model 'branching' receives inputs originated from different decoupled models"
    )
    both_refuse(repo, server, "branching", reason)

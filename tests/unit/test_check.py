"""The repository checker on hand-broken repositories: one line per problem, with the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from builder.checker import check_repository


def edit(repo: Path, name: str, change) -> None:
    """Copy the linear model to `name` and apply `change` to its parsed config."""
    shutil.copytree(repo / "linear", repo / name)
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
    config.name = name
    change(config)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))


def lines_for(problems, name: str) -> list[str]:
    return [str(p) for p in problems if f"/{name}/" in str(p.file) or p.file.name == name]


def test_the_built_repository_passes(tiny_repository: Path) -> None:
    assert check_repository(tiny_repository) == []


def test_each_broken_config_gets_its_own_line(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    edit(repo, "preferred", lambda c: c.dynamic_batching.preferred_batch_size.extend([16]))
    edit(repo, "zero_dim", lambda c: c.input[0].dims.__setitem__(0, 0))
    edit(repo, "reshape", lambda c: c.input[0].reshape.shape.extend([5]))
    edit(repo, "cpu_gpus", lambda c: c.instance_group[0].gpus.extend([0]))
    edit(repo, "renamed", lambda c: setattr(c, "name", "other"))
    edit(repo, "wrong_dims", lambda c: c.output[0].dims.__setitem__(0, 7))
    problems = check_repository(repo)
    expected = {
        "preferred": "dynamic_batching.preferred_batch_size = 16: dynamic batching preferred size must be <= max batch size (8)",
        "zero_dim": "input 'x'.dims = [0]: model input 'x' dimension must be integer >= 1, or -1",
        "reshape": "input 'x'.reshape = [5]: model input 'x' has different size for dims and reshape",
        "cpu_gpus": "instance_group[0].gpus = [0]: instance group has kind KIND_CPU but specifies one or more GPUs",
        "renamed": "name = 'other': must equal the model's directory name 'renamed'",
        "wrong_dims": "output 'y': dims[0] is 7 as declared but 3 in the graph",
    }
    for name, text in expected.items():
        found = lines_for(problems, name)
        assert any(text in line for line in found), (name, found)
        assert all("; fix: " in line for line in found)
    # A zero dim also disagrees with the ONNX graph (dims[0] is 0 as declared but 4): one extra line.
    assert len(problems) == len(expected) + 1


def test_a_cpu_target_flags_gpu_settings(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)

    def gpu(config: pb.ModelConfig) -> None:
        config.instance_group[0].kind = pb.ModelInstanceGroup.KIND_GPU
        config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")

    edit(repo, "gpu", gpu)
    assert check_repository(repo) == []
    flagged = [str(p) for p in check_repository(repo, target="cpu")]
    assert len(flagged) == 2
    assert any("KIND_GPU but a cpu target has no GPUs" in line for line in flagged)
    assert any("a GPU execution accelerator on a cpu target" in line for line in flagged)


def test_ensembles_are_checked_against_the_configs_they_call(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    (repo / "pipe" / "1").mkdir(parents=True)
    config = pb.ModelConfig(name="pipe", platform="ensemble", max_batch_size=16)
    config.input.add(name="in", data_type=pb.TYPE_INT32, dims=[4])
    config.output.add(name="out", data_type=pb.TYPE_FP32, dims=[3])
    config.instance_group.add(count=1)
    step = config.ensemble_scheduling.step.add(model_name="linear", model_version=-1)
    step.input_map["x"] = "in"
    step.output_map["y"] = "out"
    (repo / "pipe" / "config.pbtxt").write_text(text_format.MessageToString(config))
    text = "\n".join(str(p) for p in check_repository(repo))
    assert "instance group should not be specified for ensemble" in text
    assert "ensemble tensor 'in' is TYPE_INT32 from ensemble input 'in' but TYPE_FP32 here" in text
    assert "the ensemble's max_batch_size 16 exceeds 'linear''s 8" in text


def test_a_model_triton_completes_needs_no_config_unless_strict(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    shutil.copytree(repo / "linear", repo / "bare")
    (repo / "bare" / "config.pbtxt").unlink()  # model.onnx alone: Triton writes the config from it
    assert lines_for(check_repository(repo), "bare") == []
    (strict,) = lines_for(check_repository(repo, strict_model_config=True), "bare")
    assert "config.pbtxt = missing: model configuration is not provided" in strict


def test_a_config_without_platform_gets_the_one_triton_infers(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    edit(repo, "inferred", lambda c: c.ClearField("platform"))
    edit(repo, "inferred_wrong", lambda c: (c.ClearField("platform"), c.output[0].dims.__setitem__(0, 7)))
    problems = check_repository(repo)
    assert lines_for(problems, "inferred") == []
    (line,) = lines_for(problems, "inferred_wrong")
    assert "dims[0] is 7 as declared but 3 in the graph" in line
    assert "[Triton: model 'inferred_wrong', tensor 'y': the model expects 2 dimensions (shape [-1,3])" in line


def test_fields_newer_than_the_serving_triton_are_reported(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    edit(repo, "metrics", lambda c: c.model_metrics.metric_control.add().metric_identifier.SetInParent())
    (line,) = lines_for(check_repository(repo), "metrics")
    assert "model_metrics = set: not in the model config schema of Triton 2.51" in line
    assert "the field arrived in Triton 2.52" in line
    assert lines_for(check_repository(repo, server_version="2.52"), "metrics") == []


def test_kit_rules_are_labelled_and_records_are_asked_only_of_plans_the_kit_built(
    tiny_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    edit(repo, "gpu", lambda c: c.instance_group[0].__setattr__("kind", pb.ModelInstanceGroup.KIND_GPU))
    (line,) = lines_for(check_repository(repo, target="cpu"), "gpu")
    assert ": [kit rule] instance group has kind KIND_GPU but a cpu target has no GPUs" in line
    # A plan with no build record: the kit's own plans must have one, anybody else's need not.
    for name, header in (("theirs", ""), ("ours", "# Generated by the kit's builder from models.yaml\n")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.plan").write_bytes(b"engine")
        (repo / name / "config.pbtxt").write_text(
            f'{header}name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: 0\n'
        )
    problems = check_repository(repo)
    assert lines_for(problems, "theirs") == []
    (ours,) = lines_for(problems, "ours")
    assert "tensorrt = missing: [kit rule] a plan without a build record" in ours


def test_a_pytorch_model_needs_an_output(tiny_repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    edit(repo, "torch", lambda c: (setattr(c, "platform", "pytorch_libtorch"), c.ClearField("output")))
    lines = lines_for(check_repository(repo), "torch")
    assert any("model configuration must contain at least one output, none were specified" in line for line in lines)


AUTO_COMPLETE = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "x", %s"dims": [4]})
        config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [4]})
        return config
"""


def test_a_python_models_auto_complete_config_completes_or_refuses_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as the backend runs it, from a repository given by a relative path (`make check-repo`)."""
    for name, dtype in (("completes", '"data_type": "TYPE_FP32", '), ("refuses", "")):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        (tmp_path / "repo" / name / "1" / "model.py").write_text(AUTO_COMPLETE % dtype)
        # Without its function the config would lack every tensor; with it, it is whole.
        # A numeric string parameter must reach the function as a string, as the server sends it.
        (tmp_path / "repo" / name / "config.pbtxt").write_text(
            'backend: "python"\nmax_batch_size: 0\nparameters { key: "threads" value: { string_value: "4" } }\n'
        )
    monkeypatch.chdir(tmp_path)
    problems = check_repository(Path("repo"))
    assert lines_for(problems, "completes") == []
    (refused,) = lines_for(problems, "refuses")
    assert "input 'x' in auto-complete-config function for model 'refuses' is missing 'data_type' property" in refused


def test_tensors_of_a_plan_are_left_to_the_server_to_complete_unless_strict(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "engine"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.plan").write_bytes(b"engine")  # read by TensorRT on the server, not here
    (model / "config.pbtxt").write_text('platform: "tensorrt_plan"\nmax_batch_size: 8\ninput { name: "x" }\n')
    assert check_repository(tmp_path / "repo") == []
    strict = [str(p) for p in check_repository(tmp_path / "repo", strict_model_config=True)]
    assert any("model input 'x' must specify 'data_type'" in line for line in strict), strict
    assert any("model input 'x' must specify 'dims'" in line for line in strict), strict


def test_an_output_dim_pinned_by_an_intermediate_annotation_is_read_as_onnx_runtime_reads_it(tmp_path: Path) -> None:
    """The graph's output leaves a dim symbolic, but an annotated intermediate value fixes it (as an
    exporter's traced size does): ONNX Runtime, and so Triton's onnxruntime backend, merges the two
    into the fixed size and refuses a config declaring it variable. The check reads it the same way."""
    import onnx
    from onnx import TensorProto, helper

    hidden = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 32])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t"])],
        value_info=[hidden],
    )
    (tmp_path / "pinned" / "1").mkdir(parents=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
        tmp_path / "pinned" / "1" / "model.onnx",
    )
    (tmp_path / "pinned" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [-1] }\noutput { name: "y" data_type: TYPE_FP32 dims: [-1] }\n'
    )
    # Triton 2.51 refuses it: "the model expects 2 dimensions (shape [-1,32]) but the model configuration
    # specifies 2 dimensions (... making complete shape [-1,-1])".
    lines = lines_for(check_repository(tmp_path), "pinned")
    assert any(
        "output 'y': dims[0] is variable (-1) as declared, but the graph fixes it at 32" in line for line in lines
    ), lines

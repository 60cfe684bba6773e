"""Export and verify on tiny models: what passes, and how each kind of disagreement is reported."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from builder.errors import ExportError, VerificationError
from builder.export.source import instantiate
from builder.export.to_onnx import export_onnx
from builder.export.verify import verify_onnx
from builder.spec import OnnxModelSpec, load_spec
from tests.conftest import linear_model


def spec_of(write_spec, **entry) -> OnnxModelSpec:
    return load_spec(write_spec(linear_model(**entry))).models[0]


def build(model: OnnxModelSpec, path: Path):
    module = instantiate(model, model.versions[0])
    export_onnx(module, model, path)
    return verify_onnx(module, model, path)


def graph_dims(path: Path, io: str = "input") -> list[list[int | str]]:
    graph = onnx.load(str(path)).graph
    values = graph.input if io == "input" else graph.output
    return [
        [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim] for v in values
    ]


def test_linear_model_verifies_at_batch_one_middle_and_max(write_spec, tmp_path) -> None:
    model = spec_of(write_spec)
    report = build(model, tmp_path / "model.onnx")
    assert report.cases == ["x=[1, 4]", "x=[4, 4]", "x=[8, 4]"]
    assert 0 < report.outputs["y"].max_abs_error < 1e-5
    (dims,) = graph_dims(tmp_path / "model.onnx")
    assert isinstance(dims[0], str) and dims[1] == 4  # symbolic batch, fixed feature dim


def test_variable_dims_are_exported_symbolic_and_verified_at_both_ends(write_spec, tmp_path) -> None:
    model = spec_of(
        write_spec,
        source="tests.tiny_models:sequence_mean",
        inputs=[{"name": "x", "dtype": "TYPE_FP32", "dims": [-1, 4], "shape_range": {"min": [1, 4], "max": [16, 4]}}],
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
    )
    report = build(model, tmp_path / "model.onnx")
    assert len(report.cases) == 6
    assert "x=[8, 16, 4]" in report.cases and "x=[1, 1, 4]" in report.cases
    (dims,) = graph_dims(tmp_path / "model.onnx")
    assert all(isinstance(d, str) for d in dims[:2])


def test_several_inputs_and_outputs_keep_the_spec_names(write_spec, tmp_path) -> None:
    model = spec_of(
        write_spec,
        source="tests.tiny_models:sum_product",
        inputs=[
            {"name": "left", "dtype": "TYPE_FP32", "dims": [3]},
            {"name": "right", "dtype": "TYPE_FP32", "dims": [3]},
        ],
        outputs=[
            {"name": "total", "dtype": "TYPE_FP32", "dims": [3]},
            {"name": "product", "dtype": "TYPE_FP32", "dims": [3]},
        ],
    )
    report = build(model, tmp_path / "model.onnx")
    assert set(report.outputs) == {"total", "product"}
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [v.name for v in graph.input] == ["left", "right"]
    assert [v.name for v in graph.output] == ["total", "product"]


def token_embedding_spec(write_spec, value_range: tuple[int, int]) -> OnnxModelSpec:
    """tests.tiny_models:token_embedding (a vocabulary of 32) with ids of 1 to 6 tokens in `value_range`."""
    ids = {"name": "ids", "dtype": "TYPE_INT64", "dims": [-1], "shape_range": {"min": [1], "max": [6]}}
    return spec_of(
        write_spec,
        source="tests.tiny_models:token_embedding",
        inputs=[{**ids, "value_range": list(value_range)}],
        outputs=[{"name": "embedding", "dtype": "TYPE_FP32", "dims": [8]}],
    )


def test_an_output_named_like_an_internal_value_does_not_collide(write_spec, tmp_path) -> None:
    # The exporter names the embedding op's value 'embedding'; naming the graph output the same
    # without moving that value aside makes an ONNX file ONNX Runtime refuses to load.
    report = build(token_embedding_spec(write_spec, (0, 32)), tmp_path / "model.onnx")
    assert report.outputs["embedding"].max_abs_error < 1e-5


def test_onnx_disagreeing_with_pytorch_lists_each_output_error_and_the_artifact(write_spec, tmp_path) -> None:
    model = spec_of(
        write_spec,
        source="tests.tiny_models:export_differs",
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4], "atol": 1e-3}],
    )
    with pytest.raises(VerificationError) as caught:
        build(model, tmp_path / "model.onnx")
    error = caught.value
    assert len(error.problems) == 3  # one line per case
    assert all("output 'y'" in p and "max abs error 0.5" in p and "atol=0.001" in p for p in error.problems)
    assert error.artifact == tmp_path / "model.onnx" and error.artifact.exists()
    assert str(tmp_path / "model.onnx") in str(error)


def test_a_model_that_pins_the_batch_size_is_rejected(write_spec, tmp_path) -> None:
    model = spec_of(
        write_spec, source="tests.tiny_models:fixed_batch", outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}]
    )
    with pytest.raises(VerificationError, match="fixes the batch dimension at 2"):
        build(model, tmp_path / "model.onnx")


def test_declared_dtype_and_dims_must_match_the_graph(write_spec, tmp_path) -> None:
    model = spec_of(write_spec, outputs=[{"name": "y", "dtype": "TYPE_FP64", "dims": [5]}])
    with pytest.raises(VerificationError) as caught:
        build(model, tmp_path / "model.onnx")
    text = "\n".join(caught.value.problems)
    assert "declared dtype TYPE_FP64 but the graph has TYPE_FP32" in text
    assert "dims[0] is 5 as declared but 3 in the graph" in text


def test_input_dims_the_model_cannot_take_fail_the_export_with_the_traced_shape(write_spec, tmp_path) -> None:
    model = spec_of(write_spec, inputs=[{"name": "x", "dtype": "TYPE_FP32", "dims": [5]}])
    with pytest.raises(ExportError) as caught:
        build(model, tmp_path / "model.onnx")
    assert "model 'linear': torch.onnx.export could not export forward()" in str(caught.value)
    assert "traced with inputs of shape x=[2, 5]" in str(caught.value)


def test_more_declared_outputs_than_the_model_returns(write_spec, tmp_path) -> None:
    model = spec_of(
        write_spec,
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [3]}, {"name": "z", "dtype": "TYPE_FP32", "dims": [3]}],
    )
    with pytest.raises(ExportError, match="the exported graph has 1 output\\(s\\) but the spec declares 2"):
        build(model, tmp_path / "model.onnx")


def test_unbatched_model_verifies_without_a_batch_dimension(write_spec, tmp_path) -> None:
    model = spec_of(write_spec, max_batch_size=0, dynamic_batching=None)
    report = build(model, tmp_path / "model.onnx")
    assert report.cases == ["x=[4]"]
    assert graph_dims(tmp_path / "model.onnx") == [[4]]


def test_tolerances_bound_the_check(write_spec, tmp_path) -> None:
    # The same export passes with a loose tolerance: the failing case above is the tolerance
    # doing its job, not verification failing on everything.
    model = spec_of(
        write_spec,
        source="tests.tiny_models:export_differs",
        outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4], "atol": 0.6}],
    )
    assert build(model, tmp_path / "model.onnx").outputs["y"].max_abs_error == pytest.approx(0.5)
    assert torch.equal(instantiate(model, model.versions[0])(torch.ones(1, 4)), torch.full((1, 4), 2.0))


def test_ranges_the_model_cannot_take_are_refused_naming_them(write_spec, tmp_path) -> None:
    model = token_embedding_spec(write_spec, (0, 1000))  # ids beyond the vocabulary of 32
    with pytest.raises(VerificationError) as caught:
        build(model, tmp_path / "model.onnx")
    message = str(caught.value)
    assert "model 'linear': PyTorch's forward() raised IndexError" in message
    assert "input 'ids': dims [-1], shape_range min (1,) max (6,), value_range [0.0, 1000.0]" in message


GRU_INPUT = {"name": "x", "dtype": "TYPE_FP32", "dims": [-1, 16], "shape_range": {"min": [1, 16], "max": [64, 16]}}


def test_an_output_dim_the_exporter_pinned_is_judged_by_what_runs(write_spec, tmp_path) -> None:
    """A GRU's output is annotated with the traced length (32) although the graph runs at any
    length: the runs show it varies, so the file gets a variable dim and the declaration stands."""
    model = spec_of(
        write_spec,
        source="tests.tiny_models:gru_tagger",
        inputs=[GRU_INPUT],
        outputs=[{"name": "tags", "dtype": "TYPE_FP32", "dims": [-1, 5]}],
    )
    report = build(model, tmp_path / "model.onnx")
    ((batch, steps, tags),) = graph_dims(tmp_path / "model.onnx", "output")
    ((_, input_steps, _),) = graph_dims(tmp_path / "model.onnx")
    assert isinstance(batch, str) and steps == input_steps and tags == 5  # follows the input's length
    assert report.notes == [
        f"output 'tags' dims[0]: the exporter annotated it 32, ONNX Runtime returned 1..64 across the "
        f"verification cases; made variable ({input_steps})"
    ]


def test_a_fixed_declaration_the_model_does_not_keep_is_refused_with_the_right_advice(write_spec, tmp_path) -> None:
    # What the old message advised ("declare 32"): the served metadata would say 32 while the
    # model returns the input's length.
    model = spec_of(
        write_spec,
        source="tests.tiny_models:gru_tagger",
        inputs=[GRU_INPUT],
        outputs=[{"name": "tags", "dtype": "TYPE_FP32", "dims": [32, 5]}],
    )
    with pytest.raises(VerificationError) as caught:
        build(model, tmp_path / "model.onnx")
    assert caught.value.problems == [
        "output 'tags': dims[0] is declared 32, but the model returned 1, 64 on that axis across the "
        "verification cases (first at x=[1, 1, 16]); declare -1 (it follows the inputs)"
    ]


def test_an_export_failure_names_the_users_line_in_plain_text(write_spec, tmp_path, capfd) -> None:
    model = spec_of(
        write_spec, source="tests.tiny_models:value_branch", outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}]
    )
    with pytest.raises(ExportError) as caught:
        build(model, tmp_path / "model.onnx")
    problems = caught.value.problems
    assert problems[0].startswith(f"at {Path(__file__).parents[1] / 'tiny_models.py'}:")
    assert problems[0].endswith("in forward: if x.sum() > 0:")
    assert "torch.where" in problems[2]
    message = str(caught.value)
    assert "\x1b" not in message and "more lines" not in message and "pytorch.org" not in message
    # torch's own output is kept beside the artifact, not printed.
    assert "GuardOnDataDependentSymNode" in (tmp_path / "export.log").read_text()
    printed = capfd.readouterr()
    assert "symbolic_shapes" not in printed.err + printed.out

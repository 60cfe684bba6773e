"""config.pbtxt rendering: golden files, the protobuf round trip, and template failures."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from builder import render
from builder.errors import RenderError
from builder.render import parse_config, render_config
from builder.spec import load_spec
from tests.conftest import ROOT, linear_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# A spec exercising every block the template knows, for its own golden file.
FULL = linear_model(
    "full",
    versions=[1, 3],
    dynamic_batching={"max_queue_delay_microseconds": 500, "preferred_batch_size": [4, 8], "preserve_ordering": True},
    instance_group=[{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}, {"kind": "KIND_CPU", "count": 1}],
)
UNBATCHED = linear_model("unbatched", max_batch_size=0, dynamic_batching=None)


@pytest.mark.parametrize("name", ["image_classifier", "text_encoder"])
def test_example_configs_equal_their_golden_files(name: str) -> None:
    model = load_spec(ROOT / "models.yaml").model(name)
    assert render_config(model, "models.yaml") == (GOLDEN / f"{name}.pbtxt").read_text()


@pytest.mark.parametrize("entry", [FULL, UNBATCHED], ids=["full", "unbatched"])
def test_feature_configs_equal_their_golden_files(entry, write_spec) -> None:
    model = load_spec(write_spec(entry)).models[0]
    assert render_config(model, "models.yaml") == (GOLDEN / f"{entry['name']}.pbtxt").read_text()


def test_rendered_config_parses_into_what_the_spec_declares(write_spec) -> None:
    model = load_spec(write_spec(FULL)).models[0]
    config = text_format.Parse(render_config(model, "models.yaml"), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", model_config_pb2.TYPE_FP32, [4])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.preserve_ordering
    assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2, [0, 1]),
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1, []),
    ]


def test_max_batch_size_zero_is_written_out(write_spec) -> None:
    # The protobuf text format drops fields at their default; Triton reads a missing
    # max_batch_size as 0 too, but the config should say it.
    text = render_config(load_spec(write_spec(UNBATCHED)).models[0], "models.yaml")
    assert "max_batch_size: 0\n" in text
    assert "dynamic_batching" not in text


def test_unparsable_text_names_the_origin_and_the_parser_position() -> None:
    with pytest.raises(RenderError) as caught:
        parse_config('name: "m"\nmax_batch_size: eight\n', "model 'm' rendered from template t.j2")
    message = str(caught.value)
    assert "model 'm' rendered from template t.j2" in message
    assert "2:17" in message  # line:column from the protobuf parser
    assert "  2 | max_batch_size: eight" in message


def test_a_template_that_renders_an_invalid_config_fails_the_render(write_spec, tmp_path, monkeypatch) -> None:
    (tmp_path / "model_config.pbtxt.j2").write_text('name: "{{ name }}"\nmax_batch_sise: {{ max_batch_size }}\n')
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path), undefined=jinja2.StrictUndefined)
    monkeypatch.setattr(render, "_ENVIRONMENT", environment)
    with pytest.raises(
        RenderError, match=r"model 'linear' rendered from template .*model_config.pbtxt.j2.*max_batch_sise"
    ):
        render_config(load_spec(write_spec(linear_model())).models[0], "models.yaml")


def test_a_template_using_an_undefined_value_fails_instead_of_printing_nothing(
    write_spec, tmp_path, monkeypatch
) -> None:
    (tmp_path / "model_config.pbtxt.j2").write_text('name: "{{ nmae }}"\n')
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(tmp_path), undefined=jinja2.StrictUndefined)
    monkeypatch.setattr(render, "_ENVIRONMENT", environment)
    with pytest.raises(RenderError, match="'nmae' is undefined"):
        render_config(load_spec(write_spec(linear_model())).models[0], "models.yaml")

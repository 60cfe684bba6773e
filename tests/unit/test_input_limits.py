"""Input limits: what the spec declares beyond Triton's config, written by the build, refused by the
clients before a request can reach (and fail) a batch, and checked against the repository's configs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from builder.checker import check_repository
from builder.limits import input_limits
from builder.spec import load_spec
from clients import InvalidInput, ModelSignature
from clients.limits import FILENAME, InputLimit, InputLimits
from clients.validation import TensorSpec
from tests.conftest import ROOT

SPEC = load_spec(ROOT / "models.yaml")


def text_signature(limits: InputLimits) -> ModelSignature:
    shape = (-1, -1)
    return ModelSignature(
        model="text_encoder",
        inputs={name: TensorSpec(name, "INT64", shape) for name in ("input_ids", "attention_mask")},
        outputs={"embedding": TensorSpec("embedding", "FP32", (-1, 256))},
        max_batch_size=32,
        limits=limits.for_model("text_encoder"),
    )


def tokens(length: int, value: int = 7, batch: int = 2) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.full((batch, length), value, np.int64),
        "attention_mask": np.ones((batch, length), np.int64),
    }


def test_the_example_spec_declares_the_text_encoders_lengths_and_vocabulary_for_it_and_its_variants() -> None:
    limits = input_limits(SPEC.models, SPEC.served_names())
    for served in ("text_encoder", "text_encoder_int8", "text_encoder_compiled"):
        ids = limits.for_model(served)["input_ids"]
        assert (ids.min_dims, ids.max_dims, ids.values) == ((1,), (128,), (0, 8192))
        assert limits.for_model(served)["attention_mask"].values == (0, 2)
    # Fixed dims and float values: Triton's config already says all there is.
    assert limits.for_model("image_classifier") == {}
    assert "text_encoder_int8" not in input_limits(SPEC.models, {"text_encoder"}).models


def test_a_client_refuses_lengths_and_token_ids_the_model_cannot_run(tmp_path: Path) -> None:
    input_limits(SPEC.models, SPEC.served_names()).write(tmp_path / FILENAME)
    signature = text_signature(InputLimits.load(tmp_path))  # the repository folder finds the file
    for fits in (tokens(1), tokens(128), tokens(32, value=0), tokens(32, value=8191)):
        signature.check(fits)
    with pytest.raises(InvalidInput) as long:
        signature.check(tokens(129))
    assert str(long.value) == (
        "model 'text_encoder' input 'input_ids' dims [129] (batch excluded) are outside the model's "
        "shape_range: dim 0 is 129, allowed 1..128; split or truncate the input to fit"
    )
    with pytest.raises(InvalidInput, match=r"'input_ids' holds 8192, outside the model's value_range \[0, 8192\)"):
        signature.check(tokens(32, value=8192))
    with pytest.raises(InvalidInput, match=r"'input_ids' holds -5, outside"):
        signature.check(tokens(32, value=-5))
    mask = tokens(32)
    mask["attention_mask"][1, 3] = 2
    with pytest.raises(InvalidInput, match=r"'attention_mask' holds 2, outside the model's value_range \[0, 2\)"):
        signature.check(mask)


def test_without_limits_the_client_checks_only_what_the_config_says() -> None:
    text_signature(InputLimits({})).check(tokens(500, value=10**9))


def test_float_inputs_are_bounded_in_shape_only() -> None:
    limit = InputLimit(min_dims=(1,), max_dims=(4,), values=(0, 1))
    assert limit.problem(np.full((2, 3), 7.5, np.float32), batched=True) is None
    assert "dim 0 is 5, allowed 1..4" in (limit.problem(np.zeros((2, 5), np.float32), batched=True) or "")
    assert limit.problem(np.zeros((3,), np.float32), batched=False) is None


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist; `make build-repo` writes it"),
        ("{not json", "is not JSON"),
        ('{"format": "other/2", "models": {}}', "has format 'other/2', expected 'triton-model-kit/input-limits/1'"),
        ('{"format": "triton-model-kit/input-limits/1", "models": {"m": {"x": {"max_dims": 3}}}}', "is malformed"),
    ],
)
def test_an_unreadable_limits_file_is_named_with_what_to_do(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / FILENAME
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="input limits file .*" + re.escape(says)):
        InputLimits.load(path)


def test_the_checker_holds_the_limits_to_the_repositorys_models_inputs_and_dims(
    tiny_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository, repo)
    assert json.loads((repo / FILENAME).read_text())["models"] == {}  # the build writes it, empty here
    InputLimits({"linear": {"x": InputLimit(min_dims=(4,), max_dims=(4,), values=(0, 3))}}).write(repo / FILENAME)
    assert check_repository(repo) == []  # bounds equal to a fixed dim agree with it
    InputLimits(
        {
            "linear": {"x": InputLimit(min_dims=(1, 1), max_dims=(5,)), "z": InputLimit(values=(0, 3))},
            "linear_gone": {"x": InputLimit(values=(0, 3))},
        }
    ).write(repo / FILENAME)
    problems = check_repository(repo)
    assert all(p.kit_only for p in problems)
    lines = sorted(str(p) for p in problems)
    assert lines == [
        f"{repo / FILENAME}: models.linear.x.max_dims = [5]: [kit rule] does not fit the config's dims [4] "
        "(a value per dim, equal to the fixed ones); fix: build the repository again (make build-repo), or delete the file",
        f"{repo / FILENAME}: models.linear.x.min_dims = [1, 1]: [kit rule] does not fit the config's dims [4] "
        "(a value per dim, equal to the fixed ones); fix: build the repository again (make build-repo), or delete the file",
        f"{repo / FILENAME}: models.linear.z = present: [kit rule] model 'linear' has no input 'z'; its inputs are ['x']; "
        "fix: build the repository again (make build-repo), or delete the file",
        f"{repo / FILENAME}: models.linear_gone = present: [kit rule] no model of the repository has this name; "
        "fix: build the repository again (make build-repo), or delete the file",
    ]

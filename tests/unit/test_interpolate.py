"""Compose's interpolation rules, as deploy/interpolate.py applies them to a compose file."""

from __future__ import annotations

import pytest

from deploy.interpolate import (
    InterpolationError,
    MissingVariableError,
    interpolate,
    interpolation_problems,
    substitute,
)

ENVIRON = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("no variables", "no variables"),
        ("$$", "$"),
        ("$${SET} $$SET", "${SET} $SET"),
        ("$SET", "value"),
        ("$SET-suffix $SET.x", "value-suffix value.x"),
        ("$UNSET", ""),
        ("${SET}", "value"),
        ("${UNSET}", ""),
        ("a${SET}b${EMPTY}c", "avaluebc"),
        ("${SET:-default}", "value"),
        ("${EMPTY:-default}", "default"),
        ("${UNSET:-default}", "default"),
        ("${UNSET:-}", ""),
        ("${SET-default}", "value"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${SET+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${SET:?error}", "value"),
        ("${SET?error}", "value"),
        ("${EMPTY?error}", ""),
        ("${UNSET:-a:-b}", "a:-b"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-x${UNSET2:-${SET}}y}-z", "xvaluey-z"),
        ("${TRITON_BIND_ADDRESS:-127.0.0.1}:${TRITON_HTTP_PORT:-8000}:8000", "127.0.0.1:8000:8000"),
    ],
)
def test_substitution_follows_composes_rules(template: str, expected: str) -> None:
    assert substitute(template, ENVIRON) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${UNSET:?set UNSET for the thing}", "required variable UNSET is unset: set UNSET for the thing"),
        ("${EMPTY:?set EMPTY}", "required variable EMPTY is empty: set EMPTY"),
        ("${UNSET?}", "required variable UNSET is unset: UNSET"),
        ("${UNSET:?needs ${SET}}", "required variable UNSET is unset: needs value"),
        ("${UNSET:-${OTHER:?inner}}", "required variable OTHER is unset: inner"),
    ],
)
def test_a_required_variable_without_its_value_is_an_error(template: str, message: str) -> None:
    with pytest.raises(MissingVariableError) as caught:
        substitute(template, ENVIRON)
    assert str(caught.value) == message


@pytest.mark.parametrize("template", ["$", "cost: 5$", "$1", "$ SET", "${}", "${SET", "${SET:x}", "${SET!}", "${1A}"])
def test_a_malformed_template_is_an_error(template: str) -> None:
    with pytest.raises(InterpolationError, match="invalid interpolation format") as caught:
        substitute(template, ENVIRON)
    assert not isinstance(caught.value, MissingVariableError)


def test_the_whole_document_is_interpolated_values_not_keys() -> None:
    document = {
        "x-shared": {"image": "img:${TAG:-1}"},
        "services": {"$KEY": {"command": ["echo", "$$HOME", "${SET}"], "replicas": 2, "init": True}},
    }
    assert interpolate(document, ENVIRON) == {
        "x-shared": {"image": "img:1"},
        "services": {"$KEY": {"command": ["echo", "$HOME", "value"], "replicas": 2, "init": True}},
    }


def test_every_problem_is_reported_with_its_path() -> None:
    document = {
        "services": {
            "a": {"profiles": ["one"], "environment": {"TOKEN": "${TOKEN:?set TOKEN}"}},
            "b": {"command": ["echo", "5$"]},
        }
    }
    problems = interpolation_problems(document)
    assert len(problems) == 2
    assert problems[0].startswith("services/a/environment/TOKEN: required variable TOKEN is unset: set TOKEN.")
    assert "before it applies profiles" in problems[0]
    assert problems[1].startswith("services/b/command/1: invalid interpolation format in '5$'")
    assert interpolation_problems(document, {"TOKEN": "t"}) == [problems[1]]

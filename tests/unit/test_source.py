"""Instantiating a spec's source: what a broken module, callable or weights file reports."""

from __future__ import annotations

import pytest
import torch

from builder.errors import SourceError
from builder.export.source import instantiate
from builder.spec import OnnxModelSpec, load_spec
from tests import tiny_models
from tests.conftest import linear_model


def spec_of(write_spec, **entry) -> OnnxModelSpec:
    return load_spec(write_spec(linear_model(**entry))).models[0]


def test_module_is_built_in_eval_mode(write_spec) -> None:
    model = spec_of(write_spec)
    module = instantiate(model, model.versions[0])
    assert isinstance(module, torch.nn.Linear) and not module.training


def test_module_that_does_not_import(write_spec) -> None:
    model = spec_of(write_spec, source="tests.no_such_module:build")
    with pytest.raises(SourceError, match=r"importing module 'tests\.no_such_module' failed with ModuleNotFoundError"):
        instantiate(model, model.versions[0])


def test_missing_callable_lists_what_the_module_has(write_spec) -> None:
    model = spec_of(write_spec, source="tests.tiny_models:linaer")
    with pytest.raises(SourceError, match=r"has no callable 'linaer'; callables there: .*linear"):
        instantiate(model, model.versions[0])


def test_callable_that_raises_names_the_error_and_where(write_spec) -> None:
    model = spec_of(write_spec, source="tests.tiny_models:raises")
    with pytest.raises(SourceError) as caught:
        instantiate(model, model.versions[0])
    assert "raised RuntimeError: checkpoint server unreachable" in str(caught.value)
    assert "tiny_models.py" in str(caught.value)


def test_callable_that_returns_no_module(write_spec) -> None:
    model = spec_of(write_spec, source="tests.tiny_models:not_a_module")
    with pytest.raises(SourceError, match=r"returned int, not a torch\.nn\.Module"):
        instantiate(model, model.versions[0])


def test_weights_that_fit_are_loaded(write_spec, tmp_path) -> None:
    trained = torch.nn.Linear(4, 3)
    torch.nn.init.constant_(trained.weight, 0.25)
    torch.save(trained.state_dict(), tmp_path / "trained.pt")
    model = spec_of(write_spec, weights="trained.pt")
    module = instantiate(model, model.versions[0])
    assert torch.equal(module.weight, trained.weight)
    assert not torch.equal(module.weight, tiny_models.linear().weight)


def test_weights_that_do_not_fit_list_the_mismatches(write_spec, tmp_path) -> None:
    torch.save(torch.nn.Linear(5, 3).state_dict(), tmp_path / "wide.pt")
    model = spec_of(write_spec, weights="wide.pt")
    with pytest.raises(SourceError) as caught:
        instantiate(model, model.versions[0])
    assert "does not fit the module" in str(caught.value)
    assert any("size mismatch for weight" in p for p in caught.value.problems)


def test_weights_file_that_is_not_a_state_dict(write_spec, tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    model = spec_of(write_spec, weights="junk.pt")
    with pytest.raises(SourceError, match="could not be read"):
        instantiate(model, model.versions[0])

"""Shared helpers: spec files for the tiny test models, free ports, repository snapshots."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.embedded import free_port as free_port  # the tests take it from here

ROOT = Path(__file__).resolve().parent.parent


def linear_model(name: str = "linear", **overrides: Any) -> dict[str, Any]:
    """A spec entry for tests.tiny_models:linear ([N, 4] -> [N, 3])."""
    entry: dict[str, Any] = {
        "name": name,
        "source": "tests.tiny_models:linear",
        "max_batch_size": 8,
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [4]}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [3]}],
    }
    entry.update(overrides)
    return entry


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec file holding the given model entries (or a raw document); return its path."""

    def write(*models: dict[str, Any], raw: Any = None, name: str = "models.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw if raw is not None else {"models": list(models)}, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small linear ONNX model and a Python model built for the cpu target: quick to build and to
    load, one model for each backend the embedded server runs."""
    from builder.pipeline import build_repository  # imports torch: only for the tests that need it

    root = tmp_path_factory.mktemp("tiny")
    (root / "models.yaml").write_text(yaml.safe_dump({"models": [linear_model(), echo_model()]}))
    build_repository(root / "models.yaml", root / "model_repository", target="cpu", log=lambda _: None)
    return root / "model_repository"


def echo_model(name: str = "echo", **overrides: Any) -> dict[str, Any]:
    """A spec entry for a Python model (y = x, [N, 4]): its instances are stub processes, unlike
    ONNX models, which run inside the server's process in Triton's onnxruntime backend."""
    entry: dict[str, Any] = {
        "name": name,
        "kind": "python",
        "source": "tests.tiny_processors:Slow",
        "options": {"seconds": 0.0},
        "max_batch_size": 8,
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [4]}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
    }
    entry.update(overrides)
    return entry


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the SHA-256 of its bytes: equal snapshots, equal trees."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }

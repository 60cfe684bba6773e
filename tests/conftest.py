"""Shared helpers: spec files for the tiny test models, free ports, repository snapshots, and the
repositories every run needs, built once and kept until the kit's sources change."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from filelock import FileLock

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


# What a built repository depends on besides its spec: a change to any of it builds anew.
KIT_SOURCES = ("builder", "clients", "models", "server", "templates", "tests/tiny_models.py",
               "tests/tiny_processors.py", "pyproject.toml", "requirements.lock")  # fmt: skip
BUILT = ROOT / ".triton" / "tests"


def built_once(name: str, spec: dict[str, Any] | Path) -> Path:
    """The repository of `spec` built for the cpu target under `.triton/tests/`, reused by every
    later run (and by every pytest-xdist worker) while the spec, the kit's sources and the tools
    are unchanged: the builder's own per-version fingerprints do not see a change to the builder
    itself. Tests read it; those that change files copy it first."""
    from builder.export.fingerprint import tool_versions  # imports onnxruntime: only for the tests that build
    from builder.pipeline import build_repository  # imports torch

    text = spec.read_text() if isinstance(spec, Path) else yaml.safe_dump(spec)
    digest = hashlib.sha256(text.encode() + json.dumps(tool_versions(), sort_keys=True).encode())
    for top in KIT_SOURCES:
        path = ROOT / top
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(ROOT)).encode() + hashlib.sha256(file.read_bytes()).digest())
    folder = BUILT / f"{name}-{digest.hexdigest()[:16]}"
    BUILT.mkdir(parents=True, exist_ok=True)
    with FileLock(BUILT / f"{name}.lock"):
        if not (folder / "built").is_file():
            # Older builds go once no run can still be serving them (a source edited mid-run
            # starts a new build beside the one a server of that run reads).
            for stale in BUILT.glob(f"{name}-*"):
                if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
                    shutil.rmtree(stale)
            folder.mkdir(exist_ok=True)
            if isinstance(spec, Path):
                spec_path = spec
            else:
                spec_path = folder / "models.yaml"
                spec_path.write_text(text)
            build_repository(spec_path, folder / "model_repository", target="cpu", log=lambda _: None)
            (folder / "built").touch()
    return folder / "model_repository"


@pytest.fixture(scope="session")
def tiny_repository() -> Path:
    """A small linear ONNX model and a Python model built for the cpu target: quick to build and to
    load, one model for each backend the embedded server runs."""
    return built_once("tiny", {"models": [linear_model(), echo_model()]})


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


def ensemble_model(
    name: str, steps: list[tuple[str, dict[str, str], dict[str, str]]], inputs: list[Any], outputs: list[Any]
) -> dict[str, Any]:
    """A spec entry for an ensemble (max_batch_size 8) of `steps`: (model, its inputs from ensemble
    tensors, its outputs to ensemble tensors)."""
    return {
        "name": name,
        "kind": "ensemble",
        "max_batch_size": 8,
        "inputs": inputs,
        "outputs": outputs,
        "steps": [{"model": model, "inputs": ins, "outputs": outs} for model, ins, outs in steps],
    }


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the SHA-256 of its bytes: equal snapshots, equal trees."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files for make test's workers (tests/run.py; each takes the next file when it is
    free): first one file that needs the example repository, so that one worker builds it while
    the other runs the slow files and those with servers of their own, which need it not; then
    the files that need it; the quick ones last, to even out the end. The order within a file
    stays."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(str(item.path), []).append(item)

    def needs_examples(file: list[pytest.Item]) -> bool:
        return any("example_repository" in getattr(item, "fixturenames", ()) for item in file)

    def marked(file: list[pytest.Item], marker: str) -> bool:
        return any(item.get_closest_marker(marker) for item in file)

    first = next((name for name, file in files.items() if needs_examples(file)), None)

    def rank(name: str) -> int:
        file = files[name]
        if name == first:
            return 0
        if needs_examples(file):
            return 3
        return 1 if marked(file, "slow") else 2 if marked(file, "server") else 4

    items[:] = [item for name in sorted(files, key=rank) for item in files[name]]  # sorted() keeps ties in order

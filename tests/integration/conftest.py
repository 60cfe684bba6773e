"""A real Triton server for the integration tests: the embedded one, on free ports, always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.pipeline import build_repository
from builder.targets import Target
from server import EmbeddedTriton
from tests.conftest import ROOT, built_once, free_port


@pytest.fixture(scope="session")
def example_repository() -> Path:
    """The kit's example models built from models.yaml (once while the kit is unchanged)."""
    return built_once("examples", ROOT / "models.yaml")


def build_entries(root: Path, *entries: dict[str, Any], target: Target = "cpu") -> Path:
    """A repository built for `target` from a spec of these model entries, under `root`."""
    (root / "models.yaml").write_text(yaml.safe_dump({"models": list(entries)}))
    build_repository(root / "models.yaml", root / "repo", target=target, log=lambda _: None)
    return root / "repo"


def make_server(repository: Path, workdir: Path) -> EmbeddedTriton:
    return EmbeddedTriton(
        repository=repository,
        backend_dir=workdir / "backends",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=workdir / "triton.log",
    )


@pytest.fixture(scope="session")
def triton(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """The embedded server serving the example repository for the whole session."""
    server = make_server(example_repository, tmp_path_factory.mktemp("triton"))
    server.start(timeout_s=240)
    try:
        yield server
    finally:
        server.stop()


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members

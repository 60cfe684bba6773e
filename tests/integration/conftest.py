"""A real Triton server for the integration tests: the embedded one, on free ports, always stopped."""

from __future__ import annotations

import re
import time
import urllib.request
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


def input_bytes(server: EmbeddedTriton, timeout_s: float = 10.0) -> dict[tuple[str, str], float]:
    """Where the kit's Python models received their numeric inputs so far, in bytes, by
    (model, memory): the `kit_input_bytes` counters on the server's metrics endpoint, once settled
    (the models hand their tallies over every 0.5 s: two reads 0.6 s apart agree)."""
    pattern = re.compile(r'^kit_input_bytes\{memory="(\w+)",model="(\w+)",version="\d+"\} (\S+)$', re.MULTILINE)

    def read() -> dict[tuple[str, str], float]:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {(model, memory): float(value) for memory, model, value in pattern.findall(text)}

    deadline = time.monotonic() + timeout_s
    previous = read()
    while True:
        time.sleep(0.6)
        current = read()
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


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

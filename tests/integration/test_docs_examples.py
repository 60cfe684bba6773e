"""Every Python and shell block of the docs' pages and the README runs as written, against the
embedded server serving the example repository, unless its fence says why it cannot run here
(`test="skip" reason="..."`, held by tests/unit/test_docs.py). Python blocks run with
pytest-examples, so a failure points at the page's line; shell blocks run in bash, the kit's
commands on PATH. Both run in a folder with the files the examples name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pytest_examples import CodeExample, EvalExample

from docs.hooks import fences
from server import EmbeddedTriton
from tests.conftest import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]

PAGES = fences.pages()
BLOCKS = [
    block
    for page in PAGES
    for block in fences.blocks(page)
    if block.runner is not None and block.attributes.get("test") != "skip"
]


@pytest.fixture
def examples_folder(triton: EmbeddedTriton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with photo.jpg and batch.npy, and the server where `make serve` would put it."""
    Image.new("RGB", (320, 240), (200, 120, 40)).save(tmp_path / "photo.jpg")
    np.save(tmp_path / "batch.npy", np.zeros((1, 3, 224, 224), np.float32))
    host, grpc_port = triton.grpc_url.rsplit(":", 1)
    monkeypatch.setenv("TRITON_HOST", host)
    monkeypatch.setenv("TRITON_GRPC_PORT", grpc_port)
    monkeypatch.setenv("TRITON_HTTP_PORT", triton.http_url.rsplit(":", 1)[1])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.path.relative_to(ROOT)}:{b.line}" for b in BLOCKS])
def test_the_example_runs_as_written(block: fences.Block, examples_folder: Path, eval_example: EvalExample) -> None:
    if block.runner == "python":
        eval_example.run(CodeExample.create(block.source, path=block.path, start_line=block.line))
        return
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.source],
        cwd=examples_folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block}:\n{result.stdout}\n{result.stderr}"

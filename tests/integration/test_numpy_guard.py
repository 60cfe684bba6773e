"""Triton 2.51's Python backend stub predates numpy 2: under it, every output tensor comes back
with its shape and no bytes. The kit's runtimes refuse to load there instead of answering empty.

`make compat` runs this in its numpy 2 environment; under numpy 1 (the lock) it is skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server import ServerError
from tests.integration.conftest import make_server

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="needs numpy 2 (`make compat` runs it)"),
]


def test_a_python_model_refuses_to_load_under_numpy_2(tiny_repository: Path, tmp_path: Path) -> None:
    server = make_server(tiny_repository, tmp_path)
    with pytest.raises(ServerError):
        server.start(timeout_s=240)
    log = (tmp_path / "triton.log").read_text()
    assert "successfully loaded 'linear'" in log  # the ONNX model runs in the C++ backend, without numpy
    assert f"numpy {np.__version__} is installed where Triton's Python backend runs this model" in log
    assert "Install numpy<2 in the serving environment" in log

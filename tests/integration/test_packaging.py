"""The kit installed as a package: its commands run from any directory, its wheel carries what the
commands need, and a service outside the repository gets the client alone with one pip command.
(The README's and the docs' examples run in tests/integration/test_docs_examples.py.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from server import EmbeddedTriton
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

BIN = Path(sys.executable).parent
COMMANDS = ["triton-kit-builder", "triton-kit-server", "triton-kit-loadtest", "triton-kit-client", "triton-kit-deploy"]


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **env}, check=False
    )


def copy_sources(destination: Path, *names: str) -> Path:
    """A copy of part of the clone, so that building it leaves nothing in the working tree."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                destination / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "rendered", "build", "*.egg-info"),
            )
        else:
            shutil.copy2(source, destination / name)
    return destination


def test_the_kit_commands_run_from_any_directory(tiny_repository: Path, tmp_path: Path) -> None:
    for command in COMMANDS:
        result = run([str(BIN / command), "--help"], cwd=tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr)
    checked = run([str(BIN / "triton-kit-builder"), "check", "--repo", str(tiny_repository)], cwd=tmp_path)
    assert checked.returncode == 0 and "0 problem(s)" in checked.stderr, checked.stdout + checked.stderr


def test_the_wheel_carries_templates_build_shims_and_commands_but_not_the_examples(tmp_path: Path) -> None:
    project = copy_sources(
        tmp_path / "kit",
        "pyproject.toml",
        "README.md",
        "templates",
        "builder",
        "clients",
        "server",
        "loadtest",
        "deploy",
    )
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(project)],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("triton_model_kit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (ROOT / "templates").iterdir()}
    assert {f"builder/templates/{name}" for name in templates} <= names
    shims = {
        f"server/onnxruntime_backend/{p.relative_to(ROOT / 'server/onnxruntime_backend')}"
        for p in (ROOT / "server/onnxruntime_backend/cmake").rglob("*.*")
    }
    assert shims and shims <= names  # what building Triton's onnxruntime backend needs besides its sources
    assert {f"server/python_models/{p.name}" for p in (ROOT / "server/python_models").glob("*.py")} <= names
    assert "server/key_from_env.cc" in names  # the admin key's preload library, compiled on first use
    assert "deploy/kubernetes/triton.yaml.j2" in names
    assert not {name for name in names if name.startswith(("models/", "tests/", "bench/"))}
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert set(re.findall(r"^(triton-kit-[a-z]+) =", scripts, re.MULTILINE)) == set(COMMANDS)


def test_a_service_installs_the_client_alone_and_calls_the_server(triton: EmbeddedTriton, tmp_path: Path) -> None:
    # A service's own environment, outside the repository: one pip command, then the import.
    service = tmp_path / "service"
    venv.create(service / ".venv", with_pip=True)
    python = str(service / ".venv" / "bin" / "python")
    source = copy_sources(tmp_path / "kit", "clients")
    installed = run([python, "-m", "pip", "install", "--quiet", str(source / "clients")], cwd=service)
    assert installed.returncode == 0, installed.stderr
    host, port = triton.grpc_url.rsplit(":", 1)
    script = (
        "import importlib.util, numpy as np\n"
        "from triton_kit_client import TritonClient, server_url\n"
        "assert importlib.util.find_spec('clients') is None  # nothing of the kit but the client\n"
        "with TritonClient(server_url()) as client:\n"
        "    embedding = client.infer('text_embedding', {'text': np.array([[b'hello']], dtype=object)})['embedding']\n"
        "print(embedding.shape)\n"
    )
    called = run([python, "-c", script], cwd=service, TRITON_HOST=host, TRITON_GRPC_PORT=port)
    assert called.returncode == 0 and called.stdout.strip() == "(1, 256)", called.stderr
    cli = run(
        [str(service / ".venv" / "bin" / "triton-kit-client"), "health"],
        cwd=service,
        TRITON_HOST=host,
        TRITON_GRPC_PORT=port,
    )
    assert cli.returncode == 0 and '"ready": true' in cli.stdout, cli.stderr


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU host: the server logs no CUDA errors to explain")
def test_the_serve_command_explains_the_cuda_errors_of_a_cpu_host(tiny_repository: Path, tmp_path: Path) -> None:
    ports = {name: str(free_port()) for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")}
    command = [str(BIN / "triton-kit-server"), "--repo", str(tiny_repository), "--backend-dir", str(tmp_path / "b")]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ports}
    )
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line)
            if line.startswith("note: "):
                break
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    log = "".join(lines)
    assert "Triton is ready" in log and f"gRPC 127.0.0.1:{ports['TRITON_GRPC_PORT']}" in log
    # The note names lines the server really printed before it.
    assert "Failed to initialize NVML" in log.split("note: ")[0]
    assert lines[-1].startswith("note: no NVIDIA GPU on this host") and "'Failed to initialize NVML'" in lines[-1]

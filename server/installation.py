"""The Triton server inside the `nvidia-pytriton` wheel: where its binary, libraries, Python
backend and stubs are, the backends folder the kit assembles beside it, and the environment it
runs in."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from server.errors import ServerError
from server.onnxruntime_backend import install_backend

__all__ = ["TritonInstallation", "cuda_library_dirs", "find_installation", "prepare_backends", "server_environment"]

_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstallation:
    """Where the wheel put the server binary, its libraries, backends and caches."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libraries(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / _PYTHON_VERSION / "triton_python_backend_stub"

    @property
    def caches(self) -> Path:
        return self.root / "caches"


def find_installation() -> TritonInstallation:
    """Locate the server inside the installed `nvidia-pytriton` wheel.

    Raises:
        ServerError: the wheel is not installed, or has no stub for this Python version.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded Triton server needs the nvidia-pytriton wheel, which is not installed in "
            f"{sys.prefix}; run `make venv` (or pip install nvidia-pytriton==0.7.0)"
        )
    installation = TritonInstallation(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")
    if not installation.binary.is_file():
        raise ServerError(f"nvidia-pytriton is installed but {installation.binary} is missing; reinstall it")
    if not installation.stub.is_file():
        available = sorted(p.name for p in installation.stub.parent.parent.iterdir())
        raise ServerError(
            f"nvidia-pytriton has no Python backend stub for Python {_PYTHON_VERSION} (it has {', '.join(available)}); "
            "create the project environment with one of those Python versions"
        )
    return installation


def prepare_backends(destination: Path, installation: TritonInstallation | None = None) -> Path:
    """Assemble the kit's backends directory at `destination` (idempotent); return it. Builds
    Triton's onnxruntime backend the first time on this machine (server.onnxruntime_backend).

    Raises:
        BackendBuildError: the onnxruntime backend could not be built (the message says why).
    """
    installation = installation or find_installation()
    python_dir = destination / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    files = [
        (installation.python_backend / "libtriton_python.so", python_dir / "libtriton_python.so"),
        (installation.python_backend / "triton_python_backend_utils.py", python_dir / "triton_python_backend_utils.py"),
        # The stub must sit next to libtriton_python.so and match the interpreter's version.
        (installation.stub, python_dir / "triton_python_backend_stub"),
    ]
    for source, target in files:
        if (
            not target.exists()
            or target.stat().st_size != source.stat().st_size
            or target.stat().st_mtime < source.stat().st_mtime
        ):
            shutil.copy2(source, target)
    install_backend(destination / "onnxruntime", installation.python_backend / "libtriton_python.so")
    return destination


def cuda_library_dirs() -> list[str]:
    """The library folders of the nvidia-* wheels on this interpreter's path (CUDA, cuBLAS, cuDNN:
    what PyTorch's CUDA build brings), where onnxruntime-gpu's CUDA provider finds them inside the
    stubs; none on a CPU host. The dynamic loader reads LD_LIBRARY_PATH only when a process starts."""
    folders: list[str] = []
    for entry in sys.path:
        root = Path(entry or ".") / "nvidia"
        if root.is_dir():
            folders.extend(str(lib) for lib in sorted(root.glob("*/lib")) if lib.is_dir() and str(lib) not in folders)
    return folders


def server_environment(installation: TritonInstallation) -> dict[str, str]:
    """This process's environment as the wheel's server needs it: its libraries (and CUDA's, where
    installed) on the loader's path, and this interpreter first on PATH."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(installation.libraries), env.get("LD_LIBRARY_PATH"), *cuda_library_dirs()])
    )
    # The stub embeds libpython and finds its packages from the first python on PATH: ours.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env

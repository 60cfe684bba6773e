"""The library that keeps the admin key off tritonserver's command line, compiled once.

Triton 2.51 reads restricted-API keys only from its flags (`--http-restricted-api`,
`--grpc-restricted-protocol`), and every local user can read a process's command line. The kit
passes a placeholder in the flags and the key in the server's environment, which only its owner
can read (server.supervisor.key_environment); this library, preloaded into the server
(`key_from_env.cc`), swaps the key in before Triton parses its flags.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from server.errors import ServerError
from server.onnxruntime_backend.build import cache_root, find_compiler
from server.supervisor import KEY_LIBRARY_SETTING

__all__ = ["LIBRARY", "key_library"]

SOURCE = Path(__file__).resolve().with_name("key_from_env.cc")
LIBRARY = "libtriton_kit_key_from_env.so"


def key_library() -> Path:
    """The preload library: the one TRITON_KIT_KEY_LIBRARY names, else compiled on first use into
    the kit's cache (keyed by its source and the compiler).

    Raises:
        ServerError: no C++ compiler, or it failed.
    """
    prebuilt = os.environ.get(KEY_LIBRARY_SETTING)
    if prebuilt:  # the kit image's, which has no compiler
        if not Path(prebuilt).is_file():
            raise ServerError(f"{KEY_LIBRARY_SETTING}={prebuilt} names no file; unset it to compile the library here")
        return Path(prebuilt)
    compiler = find_compiler(
        "the embedded server keeps its admin key off the command line with a small library compiled on first use "
        "by a C++ compiler"
    )
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    built = cache_root() / "key-from-env" / digest / LIBRARY
    if built.is_file():
        return built
    built.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=built.parent) as scratch:
        staged = Path(scratch) / LIBRARY
        # No fortified (_chk) glibc symbols: the library then loads into the NGC image's older glibc too.
        command = [
            compiler,
            "-shared",
            "-fPIC",
            "-O2",
            "-U_FORTIFY_SOURCE",
            "-Wl,--as-needed",
            "-o",
            str(staged),
            str(SOURCE),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServerError(f"could not compile {SOURCE.name} ({' '.join(command)}): {result.stderr.strip()}")
        os.replace(staged, built)  # atomic: a concurrent start sees the whole file or none
    return built

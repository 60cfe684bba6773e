"""Triton's own C++ ONNX Runtime backend for the embedded server: built from pinned sources
against the environment's ONNX Runtime (build.py, sources.py) and installed into a backends
folder, so `platform: "onnxruntime_onnx"` models run in the server's process exactly as in the NGC
container.

    python -m server.onnxruntime_backend      build it now (make build-repo does), print where
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from server.onnxruntime_backend.build import (
    BACKEND_LIBRARY,
    PREBUILT_SETTING,
    OnnxRuntimeLibrary,
    cache_root,
    ensure_backend,
)
from server.onnxruntime_backend.sources import MIRROR_SETTING

__all__ = [
    "BACKEND_LIBRARY",
    "MIRROR_SETTING",
    "PREBUILT_SETTING",
    "cache_root",
    "ensure_backend",
    "install_backend",
]


def install_backend(destination: Path, python_backend: Path, log: Callable[[str], None] | None = None) -> Path:
    """Put the backend for this environment in `destination` (a backends folder's `onnxruntime/`),
    building it first where the cache has none; returns `destination`. `python_backend` is the
    wheel's libtriton_python.so, whose server library the backend is linked to.

    ONNX Runtime's library and its providers are linked from the wheel, under the name the backend
    asks for (libonnxruntime.so.1), where the backend's RUNPATH ($ORIGIN) finds them.
    """
    built = ensure_backend(python_backend, log)
    ort = OnnxRuntimeLibrary.installed()
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "model.py").unlink(missing_ok=True)  # the Python imitation of earlier versions of the kit
    source, target = built / BACKEND_LIBRARY, destination / BACKEND_LIBRARY
    if not target.is_file() or target.read_bytes() != source.read_bytes():
        shutil.copy2(source, target)
    links = {"libonnxruntime.so.1": ort.library, **{lib.name: lib for lib in ort.companions}}
    for name, library in links.items():
        link = destination / name
        if link.is_symlink() and link.resolve() == library.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(library)
    return destination

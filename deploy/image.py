"""The kit image's build context from the host: what deploy/docker/Dockerfile copies in, built
here because the image has no compiler (Triton's onnxruntime backend, the admin-key library)."""

from __future__ import annotations

import shutil
from pathlib import Path

from server.admin_key import LIBRARY as KEY_LIBRARY
from server.admin_key import key_library
from server.installation import find_installation
from server.onnxruntime_backend import BACKEND_LIBRARY, ensure_backend

__all__ = ["stage_image_context"]


def stage_image_context(destination: Path) -> list[Path]:
    """Build (or take from the cache) what the image copies from `destination` (.triton/image for
    `make image`) and put it there, replacing what an earlier run left; return the files.

    Raises:
        ServerError: the backend or the library could not be built here (the message says why).
    """
    installation = find_installation()
    backend = ensure_backend(installation.python_backend / "libtriton_python.so")
    shutil.rmtree(destination, ignore_errors=True)
    (destination / "onnxruntime-backend").mkdir(parents=True)
    staged = [destination / "onnxruntime-backend" / BACKEND_LIBRARY, destination / KEY_LIBRARY]
    shutil.copy2(backend / BACKEND_LIBRARY, staged[0])
    shutil.copy2(key_library(), staged[1])
    return staged

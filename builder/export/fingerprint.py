"""What an exported version depends on, hashed: an unchanged fingerprint means no re-export.

Serving options (batching, instance groups) are not part of it: they only change config.pbtxt,
which every build renders again.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import onnxruntime as ort

import builder
from builder.export.source import source_files
from builder.spec import OnnxModelSpec, VersionSpec

__all__ = ["Fingerprint", "fingerprint", "sha256_file", "tool_versions"]

# What shapes the exported file; paths (labels) are left out so a clone elsewhere reuses builds.
_EXPORT_FIELDS: dict[str, Any] = {
    "source": True,
    "max_batch_size": True,
    "inputs": True,
    "outputs": {"__all__": {"name", "dtype", "dims", "atol", "rtol"}},
    "formats": True,
    "opset": True,
    "seed": True,
}


@dataclass(frozen=True)
class Fingerprint:
    """The hash and the inputs it was computed from (kept in the build record)."""

    digest: str
    inputs: dict[str, Any]


def fingerprint(model: OnnxModelSpec, version: VersionSpec, root: Path, pad_batch: bool | str = False) -> Fingerprint:
    """Hash the source files, weights, export-relevant spec fields, tool versions and whether the
    graph pads its batch (`gpu.pad_batch` on the gpu target, builder/export/padding.py)."""
    weights = model.weights_for(version)
    inputs = {
        "pad_batch": pad_batch,
        "spec": model.model_dump(mode="json", include=_EXPORT_FIELDS),
        "version": version.version,
        "source_files": {_relative(p, root): sha256_file(p) for p in source_files(model.source)},
        "weights": None if weights is None else {"path": _relative(weights, root), "sha256": sha256_file(weights)},
        "tools": tool_versions(),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return Fingerprint(digest=digest, inputs=inputs)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes an exported model."""
    versions = {name: package_version(name) for name in ("torch", "onnx", "onnxscript")}
    # The module's own: onnxruntime-gpu installs it under another distribution name.
    versions["onnxruntime"] = ort.__version__
    versions["builder"] = builder.__version__
    versions["python"] = platform.python_version()
    return versions


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())

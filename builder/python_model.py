"""Assemble a Python model's version directory: the generated model.py, the user's source
package, the model's data files and the batching runtime, self-contained so the same directory
loads in the embedded server and in the NGC container."""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.errors import SourceError
from builder.export.source import instantiate_processor, locate_source
from builder.render import render_python_model
from builder.spec import PythonModelSpec
from builder.targets import Target
from server.embedded import BATCHING_RUNTIME

__all__ = ["assemble_python_model"]


def assemble_python_model(model: PythonModelSpec, spec_file: str, version_dir: Path, target: Target) -> str:
    """Write the version directory of `model` as `target` serves it; return a one-line
    description for the summary.

    Raises:
        SourceError: the processor class does not import or cannot be built with its options.
        RenderError: the generated model.py is not valid Python.
    """
    instantiate_processor(model, target)  # fails the build here rather than at the server's load
    source, _ = model.served_on(target)
    located = locate_source(source)
    if located is None:
        raise SourceError(f"model {model.name!r}: cannot locate the files of source {source!r}")
    root, sources = located
    version_dir.mkdir(parents=True)
    for path in sources:
        copy = version_dir / path.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    files = {name: f"files/{name}{path.suffix}" for name, path in model.files.items()}
    for name, relative in files.items():
        (version_dir / relative).parent.mkdir(exist_ok=True)
        shutil.copy2(model.files[name], version_dir / relative)
    shutil.copy2(BATCHING_RUNTIME, version_dir / BATCHING_RUNTIME.name)
    (version_dir / "model.py").write_text(render_python_model(model, spec_file, files, target))
    return f"{source}: {len(sources)} source file(s), {len(files)} data file(s)"

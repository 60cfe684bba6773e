"""Instantiate a spec's PyTorch model from its `module:callable` and optional state_dict."""

from __future__ import annotations

import importlib
import importlib.util
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from builder.errors import SourceError
from builder.spec import OnnxModelSpec, PythonModelSpec, VersionSpec

__all__ = ["instantiate", "instantiate_processor", "locate_source", "resolve", "source_files"]


def instantiate(model: OnnxModelSpec, version: VersionSpec) -> nn.Module:
    """Build the `nn.Module` for one version of a model, in eval mode, with its weights loaded.

    Raises:
        SourceError: the callable does not import, raises, returns something else than an
            `nn.Module`, or the weights are unreadable or do not fit the module.
    """
    label = f"model {model.name!r} (source {model.source!r})"
    factory = resolve(model.source, label)
    try:
        module = factory()
    except Exception as exc:
        raise SourceError(
            f"{label}: calling the source raised {type(exc).__name__}: {exc}",
            problems=[_last_frame(exc)],
        ) from exc
    if not isinstance(module, nn.Module):
        raise SourceError(
            f"{label}: the source returned {type(module).__name__}, not a torch.nn.Module; "
            "point 'source' at a function or class that returns the model"
        )
    weights = model.weights_for(version)
    if weights is not None:
        _load_weights(module, weights, label)
    return module.eval()


def instantiate_processor(model: PythonModelSpec, target: str = "cpu") -> object:
    """Build a Python model's processor in-process, as its generated model.py will in Triton for
    `target`; the `gpu` class is built on the CPU (`device="cpu"`), which checks its options on
    any build machine.

    Raises:
        SourceError: the class does not import, or its constructor rejects the options or files.
    """
    source, options = model.served_on(target)
    label = f"model {model.name!r} (source {source!r})"
    factory = resolve(source, label)
    arguments = {**options, **{name: str(path) for name, path in model.files.items()}}
    if model.on_gpu(target):
        arguments["device"] = "cpu"
    try:
        return factory(**arguments)
    except Exception as exc:
        raise SourceError(
            f"{label}: building it with options {sorted(options)} and files {sorted(model.files)} raised "
            f"{type(exc).__name__}: {exc}",
            problems=[_last_frame(exc)],
        ) from exc


def source_files(source: str) -> list[Path]:
    """The Python files a `module:callable` depends on within its own package, for fingerprints."""
    located = locate_source(source)
    return [] if located is None else located[1]


def locate_source(source: str) -> tuple[Path, list[Path]] | None:
    """Where a `module:callable`'s top-level package (or module) lives, and its Python files.

    For a module inside a package, every `.py` file of the top-level package counts, since a
    change to a sibling module (a shared layer, say) changes the model too. The directory is the
    one the files are relative to when copied (the package's parent).
    """
    top = source.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    if spec.submodule_search_locations:
        return origin.parent.parent, sorted(origin.parent.rglob("*.py"))
    return origin.parent, [origin]


def resolve(source: str, label: str) -> Callable[[], object]:
    module_name, _, attribute = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise SourceError(
            f"{label}: importing module {module_name!r} failed with {type(exc).__name__}: {exc}",
            problems=[
                _last_frame(exc),
                "the module must be importable from the directory the build runs in (the repository root)",
            ],
        ) from exc
    factory: object = getattr(module, attribute, None)
    if not callable(factory):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise SourceError(
            f"{label}: module {module_name!r} has no callable {attribute!r}; callables there: {', '.join(public) or 'none'}"
        )
    return factory


def _load_weights(module: nn.Module, path: Path, label: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SourceError(
            f"{label}: weights file {path} could not be read ({type(exc).__name__}: {exc}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SourceError(f"{label}: weights file {path} holds a {type(state).__name__}, not a state_dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise SourceError(
            f"{label}: weights file {path} does not fit the module built by the source",
            problems=problems or [str(exc)],
        ) from exc


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no traceback"
    frame = frames[-1]
    return f"raised at {frame.filename}:{frame.lineno} in {frame.name}"

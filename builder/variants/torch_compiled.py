"""Compile step of a `torch_compiled` variant: the PyTorch model captured with torch.export (the
batch and every variable dim symbolic) and compiled ahead of time by AOTInductor into one `.pt2`
package for the target's device; then run in a fresh process exactly as the server runs it.

The version directory holds the package, the serving runtime as `model.py` (Triton's Python
backend loads it) and the build record the runtime reads its device and precision from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from builder.dtypes import by_triton
from builder.errors import ConversionError
from builder.export.samples import cases, export_case, make_inputs
from builder.export.source import instantiate
from builder.export.to_onnx import dynamic_axes
from builder.limits import input_limit
from builder.spec import OnnxModelSpec, VariantSpec, VersionSpec
from builder.targets import Target
from clients import limits as client_limits
from server.embedded import BATCHING_RUNTIME, COMPILED_RUNTIME
from server.python_models.triton_kit_compiled import LIMITS_RUNTIME, PACKAGE, PRECISIONS, PROGRAM

__all__ = [
    "PACKAGE",
    "PROGRAM",
    "LoadCrashed",
    "build_compiled",
    "compile_device",
    "compile_identity",
    "install_runtime",
    "run_compiled",
    "uses_cuda_graphs",
]

LIMITS_MODULE = Path(client_limits.__file__)
"""The clients' input limits, copied beside the runtime so it refuses what the clients do."""

_RUN_TIMEOUT_S = 900


class LoadCrashed(ConversionError):
    """The package killed the process that loaded it (seen: torch 2.11+cu130 segfaults loading
    any AOTInductor library), so this torch cannot serve it."""


def compile_device(variant: VariantSpec, target: Target) -> str:
    """'cpu' on the cpu target, 'cuda' on the gpu target (where PyTorch must see a GPU).

    Raises:
        ConversionError: a gpu-target build where PyTorch sees no CUDA GPU, or a cpu build with
            no C++ compiler (AOTInductor compiles C++ for the CPU).
    """
    if target == "gpu":
        if not torch.cuda.is_available():
            raise ConversionError(
                f"variant {variant.name!r}: the gpu target compiles for CUDA, and torch {torch.__version__} here "
                "sees no CUDA GPU",
                problems=["build on the GPU host that serves it, build with TARGET=cpu, or mark the variant optional"],
            )
        return "cuda"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise ConversionError(
            f"variant {variant.name!r}: AOTInductor compiles C++ for the CPU, and no C++ compiler ({compiler!r}) "
            "is on PATH",
            problems=["install one (Debian: apt-get install g++) or set CXX to its path"],
        )
    return "cpu"


def compile_identity(device: str) -> dict[str, Any]:
    """What a package is only valid for: the torch that compiled it and the device kind (with the
    GPU's name and compute capability for CUDA). A change means a rebuild."""
    identity: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        identity.update(gpu=torch.cuda.get_device_name(), compute_capability=f"{major}.{minor}")
    return identity


def build_compiled(
    base: OnnxModelSpec,
    version: VersionSpec,
    variant: VariantSpec,
    device: str,
    directory: Path,
    cache: Path,
    holdout: Sequence[dict[str, NDArray[Any]]],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, NDArray[Any]]]]:
    """Write the version directory of `variant` and run it on `holdout` in a fresh process, as
    served. Returns what the build record keeps about the compile, and the held-out outputs.

    `compile.artifact: auto` builds an AOTInductor package and, where loading it kills a fresh
    process, the exported program with Inductor's cache artifacts instead (recorded, with why).

    Raises:
        LoadCrashed: `artifact: aoti` and this torch cannot load the package.
        ConversionError: torch.export cannot capture the model or fixed a dim the spec declares
            variable, Inductor failed, or the compiled model failed to run.
    """
    label = f"{variant.name} v{version.version}"
    started = time.perf_counter()
    program = _capture(base, version, variant, device, label)
    record: dict[str, Any] = {
        **compile_identity(device),
        "inputs": [t.name for t in base.inputs],
        "outputs": [t.name for t in base.outputs],
        "limits": compiled_limits(base),
        "options": {"max_autotune": variant.compile.max_autotune, **variant.compile.inductor},
        "seconds": {"export": round(time.perf_counter() - started, 3)},
    }
    directory.mkdir(parents=True, exist_ok=True)
    install_runtime(directory)
    graphs = uses_cuda_graphs(base, variant, device)
    if variant.compile.artifact != "inductor_cache" and not graphs:
        log(f"{label}: compiling with AOTInductor for {device} ({variant.precision}); about a minute on 2 cores")
        _aoti(program, record, directory, cache, label, base.name)
        _write_record(directory, variant, record)
        try:
            outputs, record["seconds"]["load"] = run_compiled(base, directory, device, holdout, label)
            return record, outputs
        except LoadCrashed as exc:
            if variant.compile.artifact == "aoti":
                raise
            record["fallback"] = str(exc).splitlines()[0]
            log(f"{record['fallback']}; keeping the exported program and Inductor's cache artifacts instead")
            (directory / PACKAGE).unlink()
    detail = f", CUDA graphs at batch {base.max_batch_size}" if graphs else ""
    log(f"{label}: compiling with torch.compile for {device} ({variant.precision}{detail}), to keep Inductor's cache")
    _program_with_cache(base, program, record, variant, directory, device, label, graphs)
    outputs, record["seconds"]["load"] = run_compiled(base, directory, device, holdout, label)
    return record, outputs


def uses_cuda_graphs(base: OnnxModelSpec, variant: VariantSpec, device: str) -> bool:
    """Whether the variant runs as CUDA graphs: on CUDA, unless its options say no, where padding
    the batch to max_batch_size gives every execution one shape (no other dim varies)."""
    if device != "cuda" or variant.compile.cuda_graphs is False or variant.compile.artifact == "aoti":
        return False
    return base.max_batch_size > 0 and not any(t.dynamic_axes for t in base.inputs)


def install_runtime(directory: Path) -> None:
    """The serving runtime as the version's model.py (and the batching helper it imports): copied
    on every build, reused versions included, since it is serving code, not a build input."""
    runtime = (
        (COMPILED_RUNTIME, "model.py"),
        (BATCHING_RUNTIME, BATCHING_RUNTIME.name),
        (LIMITS_MODULE, LIMITS_RUNTIME),
    )
    for source, name in runtime:
        (directory / name).unlink(missing_ok=True)  # a reused version's files are links into the repository
        shutil.copy2(source, directory / name)


def compiled_limits(base: OnnxModelSpec) -> dict[str, Any]:
    """The inputs' limits, for the runtime to refuse before the compiled kernels index with them."""
    return {t.name: limit.to_json() for t in base.inputs if (limit := input_limit(t)) is not None}


def _capture(
    base: OnnxModelSpec, version: VersionSpec, variant: VariantSpec, device: str, label: str
) -> torch.export.ExportedProgram:
    dtype = getattr(torch, PRECISIONS[variant.precision])
    module = instantiate(base, version).to(device=device, dtype=dtype)
    example = make_inputs(base, export_case(base), np.random.default_rng(base.seed))
    args = tuple(_tensor(example[t.name], device, dtype) for t in base.inputs)
    shapes = tuple(dynamic_axes(base, i) for i in range(len(base.inputs)))
    try:
        program = torch.export.export(module, args, dynamic_shapes=shapes)
    except Exception as exc:
        raise ConversionError(
            f"variant {label}: torch.export cannot capture model {base.name!r} ({type(exc).__name__})",
            problems=[
                *_lines(str(exc))[:8],
                "torch.export needs one graph for every input: data-dependent control flow (an `if` on a "
                "tensor's value) must become torch.cond or go; shape-dependent code must use the declared dims",
            ],
        ) from exc
    _check_symbolic(program, base, label)
    return program


def _aoti(
    program: torch.export.ExportedProgram, record: dict[str, Any], directory: Path, cache: Path, label: str, model: str
) -> None:
    started = time.perf_counter()
    try:
        with _inductor_cache(cache), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations, nothing a user can act on
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(directory / PACKAGE), inductor_configs=dict(record["options"])
            )
    except Exception as exc:
        raise ConversionError(
            f"variant {label}: AOTInductor failed to compile model {model!r} ({type(exc).__name__})",
            problems=_lines(str(exc))[-10:],
            artifact=directory,
        ) from exc
    record["artifact"] = "aoti"
    record["seconds"]["compile"] = round(time.perf_counter() - started, 3)


def _program_with_cache(
    base: OnnxModelSpec,
    program: torch.export.ExportedProgram,
    record: dict[str, Any],
    variant: VariantSpec,
    directory: Path,
    device: str,
    label: str,
    graphs: bool,
) -> None:
    """Save the program, then compile it cold in a fresh process at every shape the batcher can
    form (with CUDA graphs, the one padded shape), which writes the cache artifacts every server
    instance starts warm from."""
    torch.export.save(program, str(directory / PROGRAM))
    # The inputs as the runtime feeds them: floating-point ones cast to the precision, others as declared.
    dtypes = {
        t.name: PRECISIONS[variant.precision] if by_triton(t.dtype).is_floating else by_triton(t.dtype).numpy.name
        for t in base.inputs
    }
    record["artifact"] = "inductor_cache"
    if graphs:
        record["mode"] = "max-autotune" if variant.compile.max_autotune else "reduce-overhead"
    else:
        record["mode"] = "max-autotune-no-cudagraphs" if variant.compile.max_autotune else None
    record["pad_batch"] = base.max_batch_size if graphs else None
    shapes = [case for case in cases(base) if not graphs or case.batch == base.max_batch_size]
    record["warm_shapes"] = [
        [{"shape": list(case.shape(t.name)), "dtype": dtypes[t.name]} for t in base.inputs] for case in shapes
    ]
    _write_record(directory, variant, record)
    done = _run_runtime(["warm", str(directory), device], label, directory)
    record["seconds"]["compile"] = _reported(done, "compile_seconds")
    _write_record(directory, variant, record)


def _write_record(directory: Path, variant: VariantSpec, record: dict[str, Any]) -> None:
    # The runtime reads the precision and the compiled block; the variant step rewrites the record whole.
    (directory / "build.json").write_text(json.dumps({"precision": variant.precision, "compiled": record}))


def run_compiled(
    base: OnnxModelSpec, directory: Path, device: str, feeds: Sequence[dict[str, NDArray[Any]]], label: str
) -> tuple[list[dict[str, NDArray[Any]]], float]:
    """Outputs of the compiled model for each batch of `feeds`, and the seconds its load took, from
    a fresh process running the serving runtime, after every shape the spec allows (batch 1, a
    middle size and max_batch_size, at the smallest and largest dims) ran there.

    Raises:
        LoadCrashed: the process died of a signal (loading a package can crash it).
        ConversionError: the runtime failed, or a shape the spec allows gave outputs of another batch.
    """
    rng = np.random.default_rng(base.seed)
    shape_feeds = [make_inputs(base, case, rng) for case in cases(base)]
    every = [*shape_feeds, *feeds]
    with tempfile.TemporaryDirectory(prefix="compiled-run-") as scratch:
        feeds_path, out_path = Path(scratch) / "feeds.npz", Path(scratch) / "out.npz"
        np.savez(feeds_path, **{f"{i}/{name}": array for i, feed in enumerate(every) for name, array in feed.items()})
        done = _run_runtime([str(directory), device, str(feeds_path), str(out_path)], label, directory)
        load_seconds = _reported(done, "load_seconds")
        with np.load(out_path) as archive:
            results: list[dict[str, NDArray[Any]]] = [{} for _ in every]
            for key in archive.files:
                index, name = key.split("/", 1)
                results[int(index)][name] = archive[key]
    for feed, result in zip(shape_feeds, results, strict=False):
        batch = len(next(iter(feed.values())))
        wrong = {name: value.shape for name, value in result.items() if base.max_batch_size and len(value) != batch}
        if wrong:
            raise ConversionError(
                f"variant {label}: a batch of {batch} gave outputs of shapes {wrong}", artifact=directory
            )
    return results[len(shape_feeds) :], load_seconds


def _run_runtime(arguments: list[str], label: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """The serving runtime in a fresh process, with an Inductor cache of its own (so a warm start
    is measured from the artifacts alone)."""
    with tempfile.TemporaryDirectory(prefix="inductor-") as inductor:
        try:
            done = subprocess.run(
                [sys.executable, str(COMPILED_RUNTIME), *arguments],
                capture_output=True,
                text=True,
                timeout=_RUN_TIMEOUT_S,
                env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor},
            )
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"variant {label}: the compiled model took over {_RUN_TIMEOUT_S} s to run") from exc
    if done.returncode < 0:
        raise LoadCrashed(
            f"variant {label}: loading the compiled model killed a fresh process (signal {-done.returncode}) "
            f"with torch {torch.__version__}: this torch cannot serve it",
            problems=[*_lines(done.stderr)[-6:], "serve it with a torch that loads it, or mark the variant optional"],
            artifact=directory,
        )
    if done.returncode != 0:
        raise ConversionError(
            f"variant {label}: the compiled model failed in a fresh process",
            problems=_lines(done.stderr)[-10:],
            artifact=directory,
        )
    return done


def _reported(done: subprocess.CompletedProcess[str], key: str) -> float:
    """A figure the runtime printed as the JSON of its last line of output."""
    return round(float(json.loads(done.stdout.strip().splitlines()[-1])[key]), 3)


def _tensor(array: NDArray[Any], device: str, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).to(device)


def _check_symbolic(program: torch.export.ExportedProgram, model: OnnxModelSpec, label: str) -> None:
    """Every dim the spec declares variable (and the batch dim) stayed symbolic in the capture."""
    placeholders = {node.name: node for node in program.graph.find_nodes(op="placeholder")}
    offset = 1 if model.max_batch_size else 0
    for tensor, name in zip(model.inputs, program.graph_signature.user_inputs, strict=True):
        shape = placeholders[name].meta["val"].shape
        axes = ([0] if offset else []) + [axis + offset for axis in tensor.dynamic_axes]
        fixed = [axis for axis in axes if isinstance(shape[axis], int)]
        if fixed:
            raise ConversionError(
                f"variant {label}: torch.export fixed input {tensor.name!r} at {[shape[a] for a in fixed]} on axes "
                f"{fixed}, which the spec declares variable; the compiled model could not take other sizes",
                problems=["make forward() work for any size on those axes, or declare them fixed"],
            )


@contextlib.contextmanager
def _inductor_cache(cache: Path) -> Iterator[None]:
    """Inductor's caches under the build's cache directory: an unchanged graph compiles from them."""
    cache.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines() if line.strip()]

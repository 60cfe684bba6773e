"""Run a `torch_compiled` variant, compiled by the kit's builder for one device and precision and
described by the build record beside it (`build.json`), in one of two forms:

- `aoti`: an AOTInductor package (`model.pt2`), loaded as it is: nothing compiles at load;
- `inductor_cache`: the exported program (`program.pt2`) and Inductor's portable cache artifacts
  (`inductor_cache.bin`), for a torch that cannot load AOTInductor packages (torch 2.11+cu130
  crashes loading any): the cache is loaded, the program compiled from it (a warm start) and run
  once at every recorded shape, so no request ever waits for a compile.

Shared by the builder (its warm-up and accuracy gate run this file in fresh processes, exactly
as served) and by the model's version directory, where the builder copies it as `model.py` for
Triton's Python backend. It imports nothing from the kit but `triton_kit_batching` and
`triton_kit_limits` (the clients' `clients/limits.py`), copied beside it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

PACKAGE = "model.pt2"
PROGRAM = "program.pt2"
CACHE = "inductor_cache.bin"
RECORD = "build.json"
LIMITS_RUNTIME = "triton_kit_limits.py"
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""A variant's precision -> the torch dtype its floating-point inputs and weights take."""


class CompiledPackage:
    """The compiled model ready on `device` ("cpu", or "cuda:<index>"); each call runs a whole
    batch, {input name: array} -> {output name: float32 array}."""

    def __init__(self, directory: str, device: str) -> None:
        import torch

        with open(os.path.join(directory, RECORD)) as handle:
            record = json.load(handle)
        compiled = record["compiled"]
        self.limits: dict[str, dict[str, Any]] = compiled.get("limits", {})
        self.torch = torch
        self.device = torch.device(device)
        if compiled["device"] != self.device.type:
            raise RuntimeError(
                f"{directory}: the package was compiled for {compiled['device']}, and this instance runs on "
                f"{self.device.type}; rebuild the variant for this target"
            )
        if compiled["torch"] != torch.__version__:
            raise RuntimeError(
                f"{directory}: the package was compiled by torch {compiled['torch']} and torch {torch.__version__} "
                "serves it; rebuild it (`make build-repo`) where it is served"
            )
        self.dtype = getattr(torch, PRECISIONS[record["precision"]])
        self.inputs: list[str] = compiled["inputs"]
        self.outputs: list[str] = compiled["outputs"]
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.pad_batch: int | None = compiled.get("pad_batch")
        started = time.perf_counter()
        self.artifact = compiled.get("artifact", "aoti")
        if self.artifact == "aoti":
            index = -1 if self.device.index is None else self.device.index
            self.runner = _load_aoti(torch, os.path.join(directory, PACKAGE), index)
        else:
            self.runner = self._compile_from_cache(directory, compiled)
        self.load_seconds = time.perf_counter() - started

    def _compile_from_cache(self, directory: str, compiled: dict[str, Any]) -> Any:
        torch = self.torch
        _utf8_locale()
        cache = os.path.join(directory, CACHE)
        if os.path.exists(cache):
            with open(cache, "rb") as handle:
                torch.compiler.load_cache_artifacts(handle.read())
        program = torch.export.load(os.path.join(directory, PROGRAM))
        module = program.module().to(self.device)  # the program was captured on the build's device index
        # The options exactly as the build compiled with, or the cache artifacts would not match.
        mode = compiled.get("mode")
        options = {**(torch._inductor.list_mode_options(mode) if mode else {}), **_inductor_options(compiled)}
        runner = torch.compile(module, dynamic=self.pad_batch is None, options=options or None)
        with torch.inference_mode():
            for shapes in compiled["warm_shapes"]:  # every shape the batcher can form compiles here, not on a request
                runner(*(torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"]), device=self.device) for s in shapes))
        return runner

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """One batch, {input name: numpy array or torch tensor on any device} -> {output name:
        torch tensor on this package's device}, floating-point outputs as float32."""
        torch = self.torch
        args = []
        rows = len(feeds[self.inputs[0]])
        for name in self.inputs:
            feed = feeds[name]
            tensor = feed if isinstance(feed, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(feed))
            # A tensor already on the device stays where it is; cast after any copy: the device
            # casts in microseconds, the host took milliseconds a batch.
            tensor = tensor.to(self.device, non_blocking=True)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            if self.pad_batch is not None and rows < self.pad_batch:  # the one shape the CUDA graph was recorded at
                tensor = torch.cat([tensor, tensor.new_zeros((self.pad_batch - rows, *tensor.shape[1:]))])
            args.append(tensor)
        with torch.inference_mode():
            if self.pad_batch is not None:
                torch.compiler.cudagraph_mark_step_begin()  # the last call's outputs were handed on below
            results = self.runner(*args)
        if isinstance(results, torch.Tensor):
            results = [results]
        outputs = {}
        for name, result in zip(self.outputs, results, strict=True):
            output = result[:rows].float() if result.is_floating_point() else result[:rows]
            if self.pad_batch is not None and output.data_ptr() == result.data_ptr():
                output = output.clone()  # a CUDA graph's output buffer is rewritten by its next replay
            outputs[name] = output
        if self.device.type == "cuda":
            # Whoever reads the outputs next (Triton, on its own streams) must see them written.
            torch.cuda.current_stream(self.device).synchronize()
        return outputs

    def __call__(self, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """One batch, numpy in and out (the builder's gate)."""
        return {name: output.cpu().numpy() for name, output in self.run(feeds).items()}


def _load_aoti(torch: Any, path: str, device_index: int) -> Any:
    """The package's runner: positional tensors in, the outputs' tensors out.

    Why not `torch._inductor.aoti_load_package`: it imports Inductor and reads the whole archive
    before it ends in the same C++ loader, 2.3 s of a stub's start on 2 cores (and of every
    recovery of a killed stub) against 0.02 s for the loader alone. A kit package has positional
    tensor inputs and a flat list of outputs, so the pytree plumbing around `boxed_run` is not
    needed; the torch that serves is the one that compiled (checked above). A torch without the
    loader takes the public path.
    """
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is None:
        from torch._inductor import aoti_load_package

        return aoti_load_package(path, device_index=device_index)
    loader = loader_class(path, "model", False, 1, device_index)  # model name, single-threaded, runners
    return lambda *tensors: loader.boxed_run(list(tensors))


def _inductor_options(compiled: dict[str, Any]) -> dict[str, Any]:
    """The spec's own Inductor options (`compile.inductor`); max_autotune is in the mode."""
    return {key: value for key, value in compiled.get("options", {}).items() if key != "max_autotune"}


def _utf8_locale() -> None:
    """Inductor reads its UTF-8 templates with open()'s default encoding, which follows the locale,
    and Triton's Python stub starts with none (ASCII)."""
    import contextlib
    import locale

    if locale.getpreferredencoding(False).replace("-", "").lower() != "utf8":
        # Without a UTF-8 locale here, a template with non-ASCII text fails, naming itself.
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


def _warm_main(directory: str, device: str) -> None:
    """Compile an inductor_cache variant cold and write the cache artifacts its servers start from."""
    import torch

    package = CompiledPackage(directory, device)
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        raise SystemExit("torch.compiler.save_cache_artifacts() returned nothing: no compiled artifact to keep")
    with open(os.path.join(directory, CACHE), "wb") as handle:
        handle.write(artifacts[0])
    print(json.dumps({"compile_seconds": package.load_seconds}))


def _gate_main(directory: str, device: str, feeds_path: str, out_path: str) -> None:
    """Run every batch of an .npz of feeds (keys `<batch>/<input>`) and write the outputs alike:
    the builder's gate, in a process of its own, since loading a package can crash a process."""
    package = CompiledPackage(directory, device)
    with np.load(feeds_path) as archive:
        batches: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
        for key in archive.files:
            batch, name = key.split("/", 1)
            batches.setdefault(batch, {})[name] = archive[key]
    outputs = {}
    for batch, feeds in sorted(batches.items(), key=lambda item: int(item[0])):
        for name, value in package(feeds).items():
            outputs[f"{batch}/{name}"] = value
    np.savez(out_path, **outputs)
    print(json.dumps({"load_seconds": package.load_seconds}))


try:  # inside Triton's Python backend, this file is the model
    import triton_python_backend_utils as pb_utils
except ImportError:  # the builder's gate, or an import for type checking
    pb_utils = None

if pb_utils is not None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from triton_kit_batching import InputArrivals, execute_batched, io_names, require_numpy_1
    from triton_kit_limits import InputLimit

    class TritonPythonModel:
        """One instance: the package on the instance's own device (KIND_GPU: its GPU)."""

        def initialize(self, args: dict[str, str]) -> None:
            require_numpy_1()
            config = json.loads(args["model_config"])
            self.batching, self.input_names, self.output_names = io_names(config)
            gpu = args.get("model_instance_kind") == "GPU"
            device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
            directory = os.path.join(args["model_repository"], args["model_version"])
            threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
            if threads:  # as ONNX Runtime's instances are bound; torch would take every core
                import torch

                torch.set_num_threads(int(threads))
            try:
                self.package = CompiledPackage(directory, device)
            except (RuntimeError, OSError, KeyError) as exc:
                raise pb_utils.TritonModelException(f"model '{args['model_name']}': {exc}") from None
            self.limits = {name: InputLimit.from_json(entry) for name, entry in self.package.limits.items()}
            self.arrivals = InputArrivals(args["model_name"], args["model_version"])
            form = (
                "AOTInductor package" if self.package.artifact == "aoti" else "compiled from Inductor's cache artifacts"
            )
            pb_utils.Logger.log_info(
                f"model '{args['model_name']}' instance {args['model_instance_name']}: {form} on {device} "
                f"in {self.package.load_seconds:.1f} s"
            )

        def execute(self, requests: list[Any]) -> list[Any]:
            # Inputs and outputs as torch tensors where Triton keeps them: on a GPU instance, a
            # previous ensemble step's GPU output comes in and the outputs go on without a host copy.
            responses: list[Any] = execute_batched(
                requests,
                self.input_names,
                self.output_names,
                self._run,
                batching=self.batching,
                dlpack=True,
                arrivals=self.arrivals,
            )
            return responses

        def finalize(self) -> None:
            self.arrivals.close()

        def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
            # A compiled kernel indexing out of bounds aborts the stub process (c10::Error is thrown
            # where nothing catches it), taking every request of the instance with it. A ValueError
            # here is answered INVALID_ARGUMENT for the request that holds the bad value only.
            for name, limit in self.limits.items():
                problem = (
                    limit.problem(_checkable(feeds[name], limit), batched=self.batching) if name in feeds else None
                )
                if problem is not None:
                    raise ValueError(f"input {name!r} {problem}")
            return self.package.run(feeds)

    def _checkable(tensor: Any, limit: InputLimit) -> np.ndarray[Any, Any]:
        """The tensor as the limit reads it: its values on the host where the limit bounds them
        (integer ids: a few KB), else only its shape, so a GPU image batch is not copied."""
        if tensor.device.type == "cpu" or limit.values is not None:
            host: np.ndarray[Any, Any] = tensor.cpu().numpy()  # no copy for a tensor already on the host
            return host
        return np.broadcast_to(np.empty((), np.float32), tuple(tensor.shape))


if __name__ == "__main__":
    if sys.argv[1] == "warm":
        _warm_main(*sys.argv[2:4])
    else:
        _gate_main(*sys.argv[1:5])

"""Run a whole dynamic batch of Triton requests through one call, inside Triton's Python stub.

Shared by every generated Python model and the compiled variants (the builder copies this file
next to each model.py; it imports nothing from the kit).

Requests whose inputs have equal per-item shapes are concatenated along the batch axis, run in
one call, and the results split back per request. Inputs are numpy arrays, or with `dlpack`
torch tensors where Triton placed them (the GPU too, where the model's config lets Triton keep
them there: FORCE_CPU_ONLY_INPUT_TENSORS "no"; BYTES stay numpy). Results are numpy arrays, or torch (DLPack)
tensors, which may live on the GPU. When the call raises, the group is run again
request by request, so only the requests that raise get an error and the others their answer:
INVALID_ARGUMENT for the `invalid` exceptions (bad input, such as an undecodable image), INTERNAL
for any other. `InputArrivals` counts where the inputs arrived, on the server's metrics endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

Run = Callable[[dict[str, np.ndarray[Any, Any]]], Mapping[str, np.ndarray[Any, Any]]]


def io_names(config: Mapping[str, Any]) -> tuple[bool, list[str], list[str]]:
    """Whether the model batches, and its input and output names, from the config Triton passes
    to `initialize` (as JSON)."""
    inputs = [tensor["name"] for tensor in config["input"]]
    return int(config.get("max_batch_size", 0)) > 0, inputs, [tensor["name"] for tensor in config["output"]]


def require_numpy_1() -> None:
    """Refuse to load under numpy 2: the Python backend stub of Triton 2.51 (the embedded server,
    NGC 24.10) was built before numpy 2 and reads its arrays' item size wrongly, so every output
    tensor would go back with its shape and no bytes, and every client would fail to decode it.

    Raises:
        pb_utils.TritonModelException: naming the numpy found and what to install.
    """
    if int(np.__version__.split(".")[0]) >= 2:
        raise pb_utils.TritonModelException(
            f"numpy {np.__version__} is installed where Triton's Python backend runs this model, and the "
            "Python backend stub of Triton 2.51 predates numpy 2: its output tensors would come back empty. "
            "Install numpy<2 in the serving environment (`make venv` does; nvidia-pytriton 0.7 requires it too)"
        )


class InputArrivals:
    """Bytes of numeric input a model received, by the memory Triton delivered them in, on the
    server's metrics endpoint: `kit_input_bytes{model, version, memory="gpu"|"cpu"}`.

    Inside a GPU ensemble, a step whose inputs stayed on the device counts every byte under "gpu";
    bytes under "cpu" there were copied to the host on the way. BYTES inputs (always on the host)
    are not counted. Each increment is a round trip to Triton (~0.1 ms, measured on a CPU), so
    executions only add to a tally, and a thread hands it to Triton every `FLUSH_S` seconds.
    """

    FLUSH_S = 0.5

    def __init__(self, model: str, version: str) -> None:
        # The family must outlive its metrics, or Triton refuses their increments.
        self._family = pb_utils.MetricFamily(
            name="kit_input_bytes",
            description="Bytes of numeric input a kit Python model received, by the memory Triton delivered them in",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        labels = {"model": model, "version": version}
        self._metrics = {memory: self._family.Metric(labels={**labels, "memory": memory}) for memory in ("gpu", "cpu")}
        self._tally = dict.fromkeys(self._metrics, 0)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_every, name="kit-input-bytes", daemon=True)
        self._flusher.start()

    def count(self, feeds: Sequence[Mapping[str, Any]]) -> None:
        """Add one execution's inputs to the tally."""
        arrived = dict.fromkeys(self._metrics, 0)
        for arrays in feeds:
            for value in arrays.values():
                if isinstance(value, np.ndarray):
                    if value.dtype != np.object_:
                        arrived["cpu"] += value.nbytes
                else:  # a torch tensor, by DLPack
                    arrived["gpu" if value.is_cuda else "cpu"] += value.numel() * value.element_size()
        with self._lock:
            for memory, size in arrived.items():
                self._tally[memory] += size

    def close(self) -> None:
        """Stop the thread and hand over what is left (the model's `finalize`)."""
        self._closed.set()
        self._flusher.join()
        self._flush()

    def _flush_every(self) -> None:
        while not self._closed.wait(self.FLUSH_S):
            try:
                self._flush()
            except Exception as exc:  # Triton refused the increment: count no more, serve on
                pb_utils.Logger.log_warn(f"kit_input_bytes is no longer counted for this instance: {exc}")
                return

    def _flush(self) -> None:
        with self._lock:
            tally, self._tally = self._tally, dict.fromkeys(self._metrics, 0)
        for memory, size in tally.items():
            if size:
                self._metrics[memory].increment(size)


def execute_batched(
    requests: Sequence[Any],
    input_names: Sequence[str],
    output_names: Sequence[str],
    run: Run,
    *,
    batching: bool,
    invalid: tuple[type[BaseException], ...] = (ValueError,),
    dlpack: bool = False,
    arrivals: InputArrivals | None = None,
) -> list[Any]:
    """One response per request, in order (Triton requires exactly that). With `dlpack`, `run`
    gets torch tensors on the device Triton delivered them on, instead of numpy arrays (BYTES
    inputs stay numpy object arrays). With `arrivals`, the inputs are counted there by memory."""
    responses: list[Any] = [None] * len(requests)
    feeds: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, request in enumerate(requests):
        arrays = {}
        for name in input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:  # an optional input the request left out
                arrays[name] = _as_torch(tensor) if dlpack else tensor.as_numpy()
        feeds.append(arrays)
        key = tuple((n, tuple(a.shape[1:]), str(a.dtype)) for n, a in sorted(arrays.items())) if batching else (index,)
        groups.setdefault(key, []).append(index)
    if arrivals is not None:
        arrivals.count(feeds)
    for members in groups.values():
        _run_group(requests, feeds, members, output_names, run, batching, invalid, responses)
    return responses


def _run_group(
    requests: Sequence[Any],
    feeds: list[dict[str, Any]],
    members: list[int],
    output_names: Sequence[str],
    run: Run,
    batching: bool,
    invalid: tuple[type[BaseException], ...],
    responses: list[Any],
) -> None:
    batch = {name: _assemble([feeds[i][name] for i in members]) for name in feeds[members[0]]}
    try:
        results = run(batch)
        missing = [name for name in output_names if name not in results]
        if missing:
            raise RuntimeError(f"the model returned no {missing} (it returned {sorted(results)})")
    except Exception as exc:
        if len(members) > 1:  # find the request(s) at fault, whatever the error; the others get their answer
            for index in members:
                _run_group(requests, feeds, [index], output_names, run, batching, invalid, responses)
            return
        if isinstance(exc, invalid):
            responses[members[0]] = _error(f"invalid input: {exc}", pb_utils.TritonError.INVALID_ARG)
        else:
            responses[members[0]] = _error(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
        return
    offset = 0
    for index in members:
        size = len(next(iter(feeds[index].values()))) if batching and feeds[index] else 0
        wanted = set(requests[index].requested_output_names()) or set(output_names)
        tensors = []
        for name in output_names:
            if name in wanted:
                value = results[name]
                part = value[offset : offset + size] if batching and len(members) > 1 else value
                tensors.append(_tensor(name, part))
        responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        offset += size


def _as_torch(tensor: Any) -> Any:
    """A Triton input as a torch tensor where it lies (GPU or host, no copy); BYTES, which have no
    DLPack form and are always on the host, as their numpy object array."""
    if tensor.is_cpu():
        array = tensor.as_numpy()
        if array.dtype == np.object_:
            return array
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())


def _tensor(name: str, value: Any) -> Any:
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return pb_utils.Tensor(name, np.ascontiguousarray(value))
    # A torch tensor (or another DLPack array), on the GPU or the CPU: Triton takes it as it is,
    # so a GPU tensor goes to the next ensemble step without a copy to the host.
    return pb_utils.Tensor.from_dlpack(name, value.contiguous() if hasattr(value, "contiguous") else value)


def _assemble(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch  # DLPack inputs are torch tensors (a model that asked for them imports torch anyway)

    return torch.cat(parts)


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

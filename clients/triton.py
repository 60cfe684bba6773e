"""A small client for services: infer a Triton model from NumPy arrays over gRPC or HTTP.

with TritonClient("127.0.0.1:8001", protocol="grpc") as client:
    client.wait_until_ready(model="image_classifier")
    logits = client.infer("image_classifier", {"image": batch})["logits"]
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients.errors import (
    ClientError,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)

__all__ = ["Protocol", "TritonClient"]

Protocol = Literal["grpc", "http"]


class TritonClient:
    """One connection to a Triton server, reused for every call; close it when done."""

    def __init__(self, url: str, protocol: Protocol = "grpc", *, timeout_s: float = 30.0) -> None:
        """Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint.
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: default per-call timeout.
        """
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol {protocol!r} is not supported; use 'grpc' or 'http'")
        self.url = url
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._client: Any
        if protocol == "grpc":
            self._client = grpcclient.InferenceServerClient(url)
        else:
            self._client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )

    def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (and `model`, if given) is ready; False when unreachable."""
        try:
            with _translate(model):
                ready = bool(self._client.is_server_ready())
                return ready and (model is None or bool(self._client.is_model_ready(model)))
        except ServerUnavailable:
            return False

    def wait_until_ready(self, *, model: str | None = None, timeout_s: float = 60.0) -> None:
        """Poll until the server (and `model`) is ready.

        Raises:
            ServerUnavailable: not ready within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while not self.is_ready(model):
            if time.monotonic() >= deadline:
                what = f"model {model!r} on {self.url}" if model else f"server {self.url}"
                raise ServerUnavailable(f"{what} was not ready within {timeout_s:.0f}s; is it running (make serve)?")
            time.sleep(0.2)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
        *,
        version: str = "",
        timeout_s: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run one request; return the outputs (all of them unless `outputs` names some)."""
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        # HTTP sends tensors as JSON unless told otherwise, which cannot carry FP16 and is slow.
        binary: dict[str, bool] = {} if self.protocol == "grpc" else {"binary_data": True}
        infer_inputs = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, **binary)
            infer_inputs.append(tensor)
        requested = None if outputs is None else [module.InferRequestedOutput(name, **binary) for name in outputs]
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with _translate(model, timeout):
            if self.protocol == "grpc":
                result = self._client.infer(
                    model, infer_inputs, model_version=version, outputs=requested, client_timeout=timeout
                )
            else:
                result = self._client.infer(
                    model, infer_inputs, model_version=version, outputs=requested, timeout=int(timeout * 1e6)
                )
            response = result.get_response(as_json=True) if self.protocol == "grpc" else result.get_response()
            return {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}

    def statistics(self, model: str) -> dict[str, Any]:
        """The server's statistics for `model` (the /v2/models/<m>/stats document)."""
        with _translate(model):
            if self.protocol == "grpc":
                stats: dict[str, Any] = self._client.get_inference_statistics(model, as_json=True)
            else:
                stats = self._client.get_inference_statistics(model)
        return stats

    def load_model(self, model: str) -> None:
        """Load (or reload) `model`; the server must run with --model-control-mode=explicit.

        Raises:
            ClientError: a subclass with the server's reason when the model does not load.
        """
        with _translate(model, loading=True):
            self._client.load_model(model)

    def unload_model(self, model: str) -> None:
        """Unload `model` (explicit model control mode)."""
        with _translate(model):
            self._client.unload_model(model)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextmanager
def _translate(model: str | None, timeout_s: float | None = None, *, loading: bool = False) -> Iterator[None]:
    """The one place where tritonclient and connection errors become the kit's errors."""
    subject = f"model {model!r}" if model else "server"
    try:
        yield
    except InferenceServerException as exc:
        error = _classify(exc, subject, timeout_s)
        if loading and not isinstance(error, ServerUnavailable):
            error = ModelNotReady(f"{subject} failed to load: {exc.message() or exc}")
        raise error from exc
    except (ConnectionError, OSError) as exc:  # the HTTP client raises these for refused/reset sockets
        raise ServerUnavailable(f"{subject}: cannot reach the server: {exc}") from exc


def _classify(exc: InferenceServerException, subject: str, timeout_s: float | None) -> ClientError:
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    lowered = message.lower()
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lowered or "timed out" in lowered:
        return InferenceTimeout(f"{subject}: no answer within {timeout_s}s: {message}")
    if "UNAVAILABLE" in status or "failed to connect" in lowered or "connection refused" in lowered:
        return ServerUnavailable(f"{subject}: server unavailable: {message}")
    if "NOT_FOUND" in status or "unknown model" in lowered or "is not ready" in lowered or "not found" in lowered:
        return ModelNotReady(f"{subject}: {message}")
    if "INVALID_ARGUMENT" in status or status == "400":
        return InvalidInput(f"{subject}: invalid input: {message}")
    return InferenceFailed(f"{subject}: inference failed: {message}")

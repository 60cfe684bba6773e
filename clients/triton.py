"""A client for services: infer a Triton model from NumPy arrays over gRPC or HTTP.

with TritonClient("127.0.0.1:8001", protocol="grpc") as client:
    client.wait_until_ready(model="image_classifier")
    logits = client.infer("image_classifier", {"image": batch})["logits"]

Inputs are checked against the model's metadata before they are sent, calls the server refused as
unavailable are retried with backoff, every call has a deadline, and every error is one of
`clients.errors` (translated in `clients._boundary`, the one place that knows tritonclient's).
The asyncio twin is `clients.aio.AsyncTritonClient`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any

import gevent
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from numpy.typing import NDArray

from ._base import ClientBase, Protocol
from ._boundary import UNLOADED_RECHECK_S, server_not_ready, translate, unloaded
from .channel import GrpcChannelOptions
from .errors import AccessDenied, ClientError, InferenceTimeout, ModelNotReady, ServerUnavailable
from .limits import InputLimits
from .shm import InputRegions
from .validation import ModelSignature

__all__ = ["Protocol", "TritonClient"]


class TritonClient(ClientBase):
    """One connection to a Triton server, reused for every call; close it when done.

    A gRPC client may be shared by threads. An HTTP client may not (tritonclient's HTTP client
    runs on gevent, whose hub is per thread): give each thread its own.
    """

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        channel_options: GrpcChannelOptions | None = None,
        admin_key: str | None = None,
        limits: InputLimits | str | PathLike[str] | None = None,
    ) -> None:
        """Open the connection (gRPC connects lazily, on the first call).

        Args:
            url: ``host:port`` of the server's gRPC or HTTP endpoint.
            protocol: ``"grpc"`` or ``"http"``.
            timeout_s: the deadline of a call that names none.
            retries: further attempts of a call the server refused as unavailable.
            backoff_s: the pause before the first retry; it doubles with each retry, with jitter.
            channel_options: gRPC channel settings (message sizes, keepalive); ignored for HTTP.
            admin_key: sent with model control, repository index and shared-memory calls, which a
                server started with TRITON_ADMIN_KEY locks; None reads TRITON_ADMIN_KEY.
            limits: the repository's input limits (clients.limits: an InputLimits, the
                ``input_limits.json`` the builder writes, or the repository folder); validation
                then refuses dims and integer values the model declares it cannot run.
        """
        super().__init__(
            url,
            protocol,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            channel_options=channel_options,
            admin_key=admin_key,
            limits=limits,
        )
        self._client: Any = self._connect()
        self._lock = threading.Lock()  # guards _busy_regions: a gRPC client is shared by threads

    def _connect(self) -> Any:
        if self.protocol == "grpc":
            return grpcclient.InferenceServerClient(self.url, channel_args=self.channel_options.channel_args())
        # No socket read timeout: the per-call gevent.Timeout is the deadline, so a socket timeout
        # can only come from connecting, and is reported as unreachable, not as slow.
        return httpclient.InferenceServerClient(self.url, connection_timeout=self.timeout_s, network_timeout=None)

    def _call(
        self,
        method: str,
        *args: Any,
        model: str | None = None,
        deadline_s: float | None = None,
        as_json: bool = False,
        loading: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call tritonclient's `method` once, within the deadline, translating what it raises."""
        try:
            return self._call_once(
                method, *args, model=model, deadline_s=deadline_s, as_json=as_json, loading=loading, **kwargs
            )
        except ModelNotReady as error:
            if model is None or loading or not self._stopping(error):
                raise
            raise server_not_ready(error) from error

    def _stopping(self, error: ModelNotReady) -> bool:
        """Whether a missing model is a stopping server's: it is not ready, or, for a model just
        unloaded, is not ready a moment later."""
        if not self._server_ready():
            return True
        if not unloaded(error):
            return False
        time.sleep(UNLOADED_RECHECK_S)
        return not self._server_ready()

    def _server_ready(self) -> bool:
        with contextlib.suppress(ClientError):
            return bool(self._call("is_server_ready"))
        return False

    def _call_once(
        self,
        method: str,
        *args: Any,
        model: str | None = None,
        deadline_s: float | None = None,
        as_json: bool = False,
        loading: bool = False,
        **kwargs: Any,
    ) -> Any:
        deadline = self._timeout(deadline_s)
        kwargs.update(self._admin_headers(method))
        with translate(model, deadline, loading=loading):
            if self.protocol == "grpc":
                return getattr(self._client, method)(*args, **kwargs, **self._grpc_kwargs(deadline, as_json=as_json))
            try:
                with gevent.Timeout(deadline):
                    return getattr(self._client, method)(*args, **kwargs)
            except gevent.Timeout:
                # Interrupted mid-request, the pooled connection may hold half a request or an unread
                # answer, or never go back to the pool (which then blocks the next call); start afresh.
                self._reconnect()
                raise

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
        self._client = self._connect()

    def is_live(self) -> bool:
        """Whether the server answers its liveness check; False when unreachable."""
        try:
            return bool(self._call("is_server_live"))
        except (ServerUnavailable, InferenceTimeout):
            return False

    def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (and `model`, if given) is ready; False when unreachable."""
        return self._ready(model, self.timeout_s)

    def _ready(self, model: str | None, timeout: float) -> bool:
        try:
            ready = bool(self._call("is_server_ready", model=model, deadline_s=timeout))
            return ready and (
                model is None or bool(self._call("is_model_ready", model, model=model, deadline_s=timeout))
            )
        except (ServerUnavailable, InferenceTimeout):
            return False

    def wait_until_ready(self, *, model: str | None = None, timeout_s: float = 60.0) -> None:
        """Poll until the server (and `model`) is ready.

        Raises:
            ServerUnavailable: not ready within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        # Each poll within what is left, so a hung server cannot stretch the wait by a whole call timeout.
        while not self._ready(model, max(0.1, min(self.timeout_s, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                what = f"model {model!r} on {self.url}" if model else f"server {self.url}"
                raise ServerUnavailable(f"{what} was not ready within {timeout_s:.0f}s; is it running (make serve)?")
            time.sleep(0.2)

    def metadata(self, model: str, *, version: str = "") -> dict[str, Any]:
        """The model's metadata: name, versions, platform, inputs and outputs (name, datatype, shape)."""
        return dict(self.retry.run(lambda: self._call("get_model_metadata", model, version, model=model, as_json=True)))

    def config(self, model: str, *, version: str = "") -> dict[str, Any]:
        """The model's configuration as the server completed it (the config itself, unwrapped)."""
        raw = self.retry.run(lambda: self._call("get_model_config", model, version, model=model, as_json=True))
        return self._unwrap_config(raw)

    def signature(self, model: str, *, version: str = "") -> ModelSignature:
        """What `model` accepts, fetched on first use and cached on this client."""
        key = (model, version)
        if key not in self._signatures:
            self._signatures[key] = self._signature(
                model, self.metadata(model, version=version), self.config(model, version=version)
            )
        return self._signatures[key]

    def models(self) -> list[dict[str, Any]]:
        """The repository index: each model's name, version, state (READY, UNAVAILABLE, ...) and reason."""
        return self._index(self.retry.run(lambda: self._call("get_model_repository_index", as_json=True)))

    def statistics(self, model: str) -> dict[str, Any]:
        """The server's statistics for `model` (the /v2/models/<m>/stats document)."""
        stats: dict[str, Any] = self.retry.run(
            lambda: self._call("get_inference_statistics", model, model=model, as_json=True)
        )
        return stats

    def load_model(self, model: str, *, config: str | None = None, timeout_s: float | None = None) -> None:
        """Load (or reload) `model`; the server must run with --model-control-mode=explicit.

        Args:
            model: the model's name.
            config: a model config as JSON, served instead of the repository's config.pbtxt
                (Triton's load override: the repository's files stay as they are).
            timeout_s: how long to wait; None for the client's timeout or 10 minutes, the longer.

        Raises:
            ClientError: a subclass with the server's reason when the model does not load.
        """
        self._forget(model)
        deadline = self._load_timeout(timeout_s)
        self.retry.run(
            lambda: self._call("load_model", model, config=config, model=model, deadline_s=deadline, loading=True)
        )

    def unload_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Unload `model` (explicit model control mode); `timeout_s` as for `load_model`."""
        self._forget(model)
        deadline = self._load_timeout(timeout_s)
        self.retry.run(lambda: self._call("unload_model", model, model=model, deadline_s=deadline))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
        *,
        version: str = "",
        timeout_s: float | None = None,
        validate: bool = True,
        shared_memory: bool = False,
    ) -> dict[str, NDArray[Any]]:
        """Run one request; return the outputs (all of them unless `outputs` names some).

        Args:
            model: the model's name.
            inputs: the input tensors by name; str arrays are sent as BYTES (UTF-8).
            outputs: the outputs to return; None for all.
            version: the model version; "" for the server's choice.
            timeout_s: this call's deadline (each attempt's); None for the client's.
            validate: check names, dtypes, shapes and batch size against the model first.
            shared_memory: pass the inputs in system shared memory (server on this host only).

        Raises:
            InvalidInput: the inputs do not fit the model (before sending, when validating).
            ModelNotReady: the model is unknown or not loaded.
            InferenceTimeout: no answer within the deadline.
            ServerUnavailable: every attempt was refused as unavailable.
            InferenceFailed: the model failed.
        """
        timeout = self._timeout(timeout_s)
        arrays = self._prepare(inputs)
        if validate:
            self.signature(model, version=version).check(arrays, outputs)
        if shared_memory:
            return self.retry.run(lambda: self._infer_shared(model, arrays, outputs, version, timeout))
        return self.retry.run(lambda: self._infer_once(model, arrays, outputs, version, timeout))

    def _infer_once(
        self,
        model: str,
        arrays: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None,
        version: str,
        timeout: float,
        regions: InputRegions | None = None,
    ) -> dict[str, NDArray[Any]]:
        kwargs = self._infer_kwargs(version, outputs, timeout)
        result = self._call("infer", model, self._tensors(arrays, regions), model=model, deadline_s=timeout, **kwargs)
        return self._outputs(result)

    def _infer_shared(
        self,
        model: str,
        arrays: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None,
        version: str,
        timeout: float,
    ) -> dict[str, NDArray[Any]]:
        self._retry_busy_regions()
        with translate(model):
            regions = InputRegions.create(arrays)
        attempted: list[str] = []
        try:
            for region in regions:
                attempted.append(region.name)
                self._call("register_system_shared_memory", region.name, region.key, region.byte_size, model=model)
            return self._infer_once(model, arrays, outputs, version, timeout, regions)
        finally:
            busy = self._unregister(attempted)
            with self._lock:
                self._busy_regions += busy
            # The server keeps its own mapping of a region still in use; unlinking ours is safe.
            regions.destroy()

    def _retry_busy_regions(self) -> None:
        with self._lock:
            pending, self._busy_regions = self._busy_regions, []
        busy = self._unregister(pending)
        with self._lock:
            self._busy_regions += busy

    def _unregister(self, names: Sequence[str]) -> list[str]:
        """Unregister regions; return those the server still uses (a timed-out request runs on)."""
        busy = []
        for name in names:
            try:
                # The client's own timeout, not the call's: a call that timed out must still clean up.
                self._call("unregister_system_shared_memory", name)
            except ServerUnavailable:
                pass  # a server that is gone took its registrations with it
            except AccessDenied:
                pass  # without the key nothing was registered, and asking again will not change that
            except ClientError:
                busy.append(name)
        return busy

    def close(self) -> None:
        """Unregister shared memory regions a timed-out request still held, then close the connection."""
        if self._client is None:
            return
        deadline = time.monotonic() + self.timeout_s
        pause = 0.05
        while self._busy_regions and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(1.0, pause * 2)
            self._retry_busy_regions()
        # Drop tritonclient's object here, not at interpreter exit: its __del__ closes the gRPC
        # channel again, which can block forever once gevent is shutting down.
        client, self._client = self._client, None
        client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

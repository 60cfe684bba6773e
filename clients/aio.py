"""The asyncio client: TritonClient's methods as coroutines, over tritonclient's gRPC or HTTP aio.

async with AsyncTritonClient("127.0.0.1:8001") as client:
    embeddings = await asyncio.gather(*(client.infer("text_embedding", {"text": t}) for t in batches))

One client serves any number of concurrent requests (one gRPC channel, or one HTTP connection
pool). Validation, retries and error translation are the sync client's: the same
`ModelSignature`, `RetryPolicy` (sleeping with asyncio) and `clients._boundary.translate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any

import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from numpy.typing import NDArray

from ._base import ClientBase, Protocol
from ._boundary import UNLOADED_RECHECK_S, DeadlineExpired, server_not_ready, translate, unloaded
from .channel import GrpcChannelOptions
from .errors import AccessDenied, ClientError, InferenceTimeout, ModelNotReady, ServerUnavailable
from .limits import InputLimits
from .shm import InputRegions
from .validation import ModelSignature

__all__ = ["AsyncTritonClient"]


class AsyncTritonClient(ClientBase):
    """One connection to a Triton server for asyncio code; close it (or use ``async with``) when done."""

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
        """Set the client up; it connects on the first call, inside the running event loop.

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
        self._client: Any = None

    def _connection(self) -> Any:
        # Created lazily: aiohttp's session and grpc.aio's channel belong to the loop that makes them.
        if self._client is None:
            if self.protocol == "grpc":
                self._client = grpcaio.InferenceServerClient(self.url, channel_args=self.channel_options.channel_args())
            else:
                # No aiohttp total timeout: the per-call asyncio deadline is the only one.
                self._client = httpaio.InferenceServerClient(self.url, conn_timeout=None)
        return self._client

    async def _call(
        self,
        method: str,
        *args: Any,
        model: str | None = None,
        deadline_s: float | None = None,
        as_json: bool = False,
        loading: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Await tritonclient's `method` once, within the deadline, translating what it raises."""
        try:
            return await self._call_once(
                method, *args, model=model, deadline_s=deadline_s, as_json=as_json, loading=loading, **kwargs
            )
        except ModelNotReady as error:
            if model is None or loading or not await self._stopping(error):
                raise
            raise server_not_ready(error) from error

    async def _stopping(self, error: ModelNotReady) -> bool:
        """Whether a missing model is a stopping server's (see TritonClient._stopping)."""
        if not await self._server_ready():
            return True
        if not unloaded(error):
            return False
        await asyncio.sleep(UNLOADED_RECHECK_S)
        return not await self._server_ready()

    async def _server_ready(self) -> bool:
        with contextlib.suppress(ClientError):
            return bool(await self._call("is_server_ready"))
        return False

    async def _call_once(
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
            client = self._connection()
            if self.protocol == "grpc":
                return await getattr(client, method)(*args, **kwargs, **self._grpc_kwargs(deadline, as_json=as_json))
            timer = asyncio.timeout(deadline)
            try:
                async with timer:
                    return await getattr(client, method)(*args, **kwargs)
            except TimeoutError as exc:
                if timer.expired():  # ours, not a socket's: aiohttp's connect timeouts stay connection errors
                    raise DeadlineExpired(f"{method} took longer than {deadline}s") from exc
                raise

    async def is_live(self) -> bool:
        """Whether the server answers its liveness check; False when unreachable."""
        try:
            return bool(await self._call("is_server_live"))
        except (ServerUnavailable, InferenceTimeout):
            return False

    async def is_ready(self, model: str | None = None) -> bool:
        """Whether the server (and `model`, if given) is ready; False when unreachable."""
        return await self._ready(model, self.timeout_s)

    async def _ready(self, model: str | None, timeout: float) -> bool:
        try:
            ready = bool(await self._call("is_server_ready", model=model, deadline_s=timeout))
            if ready and model is not None:
                ready = bool(await self._call("is_model_ready", model, model=model, deadline_s=timeout))
            return ready
        except (ServerUnavailable, InferenceTimeout):
            return False

    async def wait_until_ready(self, *, model: str | None = None, timeout_s: float = 60.0) -> None:
        """Poll until the server (and `model`) is ready.

        Raises:
            ServerUnavailable: not ready within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while not await self._ready(model, max(0.1, min(self.timeout_s, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                what = f"model {model!r} on {self.url}" if model else f"server {self.url}"
                raise ServerUnavailable(f"{what} was not ready within {timeout_s:.0f}s; is it running (make serve)?")
            await asyncio.sleep(0.2)

    async def metadata(self, model: str, *, version: str = "") -> dict[str, Any]:
        """The model's metadata: name, versions, platform, inputs and outputs (name, datatype, shape)."""
        raw = await self.retry.run_async(
            lambda: self._call("get_model_metadata", model, version, model=model, as_json=True)
        )
        return dict(raw)

    async def config(self, model: str, *, version: str = "") -> dict[str, Any]:
        """The model's configuration as the server completed it (the config itself, unwrapped)."""
        raw = await self.retry.run_async(
            lambda: self._call("get_model_config", model, version, model=model, as_json=True)
        )
        return self._unwrap_config(raw)

    async def signature(self, model: str, *, version: str = "") -> ModelSignature:
        """What `model` accepts, fetched on first use and cached on this client."""
        key = (model, version)
        if key not in self._signatures:
            metadata = await self.metadata(model, version=version)
            self._signatures[key] = self._signature(model, metadata, await self.config(model, version=version))
        return self._signatures[key]

    async def models(self) -> list[dict[str, Any]]:
        """The repository index: each model's name, version, state (READY, UNAVAILABLE, ...) and reason."""
        return self._index(await self.retry.run_async(lambda: self._call("get_model_repository_index", as_json=True)))

    async def statistics(self, model: str) -> dict[str, Any]:
        """The server's statistics for `model` (the /v2/models/<m>/stats document)."""
        stats: dict[str, Any] = await self.retry.run_async(
            lambda: self._call("get_inference_statistics", model, model=model, as_json=True)
        )
        return stats

    async def load_model(self, model: str, *, config: str | None = None, timeout_s: float | None = None) -> None:
        """Load (or reload) `model`; arguments and errors as `TritonClient.load_model`."""
        self._forget(model)
        deadline = self._load_timeout(timeout_s)
        await self.retry.run_async(
            lambda: self._call("load_model", model, config=config, model=model, deadline_s=deadline, loading=True)
        )

    async def unload_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Unload `model` (explicit model control mode); `timeout_s` as for `load_model`."""
        self._forget(model)
        deadline = self._load_timeout(timeout_s)
        await self.retry.run_async(lambda: self._call("unload_model", model, model=model, deadline_s=deadline))

    async def infer(
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
        """Run one request; return the outputs. Arguments and errors as `TritonClient.infer`."""
        timeout = self._timeout(timeout_s)
        arrays = self._prepare(inputs)
        if validate:
            (await self.signature(model, version=version)).check(arrays, outputs)
        if shared_memory:
            return await self.retry.run_async(lambda: self._infer_shared(model, arrays, outputs, version, timeout))
        return await self.retry.run_async(lambda: self._infer_once(model, arrays, outputs, version, timeout))

    async def _infer_once(
        self,
        model: str,
        arrays: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None,
        version: str,
        timeout: float,
        regions: InputRegions | None = None,
    ) -> dict[str, NDArray[Any]]:
        kwargs = self._infer_kwargs(version, outputs, timeout)
        tensors = self._tensors(arrays, regions)
        return self._outputs(await self._call("infer", model, tensors, model=model, deadline_s=timeout, **kwargs))

    async def _infer_shared(
        self,
        model: str,
        arrays: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None,
        version: str,
        timeout: float,
    ) -> dict[str, NDArray[Any]]:
        await self._retry_busy_regions()
        with translate(model):
            regions = InputRegions.create(arrays)
        attempted: list[str] = []
        try:
            for region in regions:
                attempted.append(region.name)
                await self._call(
                    "register_system_shared_memory", region.name, region.key, region.byte_size, model=model
                )
            return await self._infer_once(model, arrays, outputs, version, timeout, regions)
        finally:
            busy = await self._unregister(attempted)
            self._busy_regions += busy  # after the await: the list may have been swapped meanwhile
            # The server keeps its own mapping of a region still in use; unlinking ours is safe.
            regions.destroy()

    async def _retry_busy_regions(self) -> None:
        # Taken out first: another task may add regions while this one awaits the server.
        pending, self._busy_regions = self._busy_regions, []
        busy = await self._unregister(pending)
        self._busy_regions += busy

    async def _unregister(self, names: Sequence[str]) -> list[str]:
        """Unregister regions; return those the server still uses (a timed-out request runs on)."""
        busy = []
        for name in names:
            try:
                await self._call("unregister_system_shared_memory", name)
            except ServerUnavailable:
                pass  # a server that is gone took its registrations with it
            except AccessDenied:
                pass  # without the key nothing was registered, and asking again will not change that
            except ClientError:
                busy.append(name)
        return busy

    async def close(self) -> None:
        """Unregister shared memory regions a timed-out request still held, then close the connection."""
        if self._client is None:
            return
        deadline = time.monotonic() + self.timeout_s
        pause = 0.05
        while self._busy_regions and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)
            await self._retry_busy_regions()
        client, self._client = self._client, None
        with contextlib.suppress(Exception):
            await client.close()

    async def __aenter__(self) -> AsyncTritonClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

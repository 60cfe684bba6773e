"""What the sync and the asyncio client share: settings, the metadata cache, and building requests
and reading responses the same way over gRPC and HTTP. No I/O happens here."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from numpy.typing import NDArray

from .channel import GrpcChannelOptions
from .limits import InputLimits
from .retry import RetryPolicy
from .shm import InputRegions
from .validation import ModelSignature, prepare, triton_dtype

__all__ = ["ClientBase", "Protocol"]

Protocol = Literal["grpc", "http"]

LOAD_TIMEOUT_S = 600.0
"""The least time load_model and unload_model wait unless told otherwise."""

ADMIN_HEADER = "admin-key"
"""The header the kit's server expects its admin key in (server.supervisor.ADMIN_HEADER; the client does not import the server)."""
_ADMIN_CALLS = frozenset(
    {
        "load_model",
        "unload_model",
        "get_model_repository_index",
        "register_system_shared_memory",
        "unregister_system_shared_memory",
    }
)
"""The calls a server with an admin key set locks (model-repository and shared-memory APIs)."""


class ClientBase:
    """Settings and protocol details common to TritonClient and AsyncTritonClient."""

    def __init__(
        self,
        url: str,
        protocol: Protocol,
        *,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        channel_options: GrpcChannelOptions | None,
        admin_key: str | None = None,
        limits: InputLimits | str | PathLike[str] | None = None,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol {protocol!r} is not supported; use 'grpc' or 'http'")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.protocol: Protocol = protocol
        self.timeout_s = timeout_s
        self.retry = RetryPolicy(retries=retries, backoff_s=backoff_s)
        self.channel_options = channel_options or GrpcChannelOptions()
        self.admin_key = admin_key if admin_key is not None else os.environ.get("TRITON_ADMIN_KEY") or None
        self.limits = limits if isinstance(limits, InputLimits) or limits is None else InputLimits.load(limits)
        self._signatures: dict[tuple[str, str], ModelSignature] = {}
        # Shared memory regions the server would not unregister yet: a request that timed out on
        # our side still reads them. Retried before the next shared-memory call and on close().
        self._busy_regions: list[str] = []

    def _admin_headers(self, method: str) -> dict[str, Any]:
        """The admin key, as the `headers` argument of a call the server may lock."""
        if self.admin_key is None or method not in _ADMIN_CALLS:
            return {}
        # Triton reads a restricted gRPC protocol's key from metadata with this prefix.
        name = ADMIN_HEADER if self.protocol == "http" else f"triton-grpc-protocol-{ADMIN_HEADER}"
        return {"headers": {name: self.admin_key}}

    def _timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s

    def _load_timeout(self, timeout_s: float | None) -> float:
        # Loading (an ONNX session, a TensorRT engine) routinely takes longer than a request.
        return max(self.timeout_s, LOAD_TIMEOUT_S) if timeout_s is None else timeout_s

    def _grpc_kwargs(self, timeout: float, *, as_json: bool = False) -> dict[str, Any]:
        """Keyword arguments gRPC calls take and HTTP calls do not."""
        if self.protocol != "grpc":
            return {}
        return {"client_timeout": timeout, **({"as_json": True} if as_json else {})}

    def _signature(self, model: str, metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelSignature:
        limits = None if self.limits is None else self.limits.for_model(model)
        return ModelSignature.from_server(metadata, config, limits)

    def _forget(self, model: str) -> None:
        """Drop a model's cached signature (it was loaded or unloaded, its config may differ)."""
        for key in [key for key in self._signatures if key[0] == model]:
            del self._signatures[key]

    @staticmethod
    def _prepare(inputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return {name: prepare(array) for name, array in inputs.items()}

    def _tensors(self, arrays: Mapping[str, NDArray[Any]], regions: InputRegions | None = None) -> list[Any]:
        """tritonclient InferInputs carrying the arrays, or pointing at their shared memory regions."""
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        by_input = {region.input: region for region in regions or ()}
        tensors = []
        for name, array in arrays.items():
            tensor = module.InferInput(name, list(array.shape), triton_dtype(array))
            if name in by_input:
                tensor.set_shared_memory(by_input[name].name, by_input[name].byte_size)
            elif self.protocol == "http":
                # HTTP sends tensors as JSON unless told otherwise, which cannot carry FP16 and is slow.
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def _infer_kwargs(self, version: str, outputs: Sequence[str] | None, timeout: float) -> dict[str, Any]:
        module: Any = grpcclient if self.protocol == "grpc" else httpclient
        binary: dict[str, bool] = {} if self.protocol == "grpc" else {"binary_data": True}
        requested = None if outputs is None else [module.InferRequestedOutput(name, **binary) for name in outputs]
        kwargs: dict[str, Any] = {"model_version": version, "outputs": requested}
        if self.protocol == "http":
            # gRPC's deadline travels with the request; HTTP's has to be told (in microseconds).
            kwargs["timeout"] = max(1, int(timeout * 1e6))
        return kwargs

    def _outputs(self, result: Any) -> dict[str, NDArray[Any]]:
        response = result.get_response()
        names = (
            [o.name for o in response.outputs] if self.protocol == "grpc" else [o["name"] for o in response["outputs"]]
        )
        return {name: result.as_numpy(name) for name in names}

    @staticmethod
    def _unwrap_config(raw: Mapping[str, Any]) -> dict[str, Any]:
        """The model config itself: gRPC wraps it as ``{"config": {...}}``, HTTP does not."""
        return dict(raw["config"] if set(raw) == {"config"} else raw)

    @staticmethod
    def _index(raw: Any) -> list[dict[str, Any]]:
        """The repository index as a list of ``{"name", "version", "state", "reason"}`` dicts."""
        entries = raw.get("models", []) if isinstance(raw, Mapping) else raw
        return [
            {
                "name": str(entry.get("name", "")),
                "version": str(entry.get("version", "")),
                "state": str(entry.get("state", "")),
                "reason": str(entry.get("reason", "")),
            }
            for entry in entries
        ]

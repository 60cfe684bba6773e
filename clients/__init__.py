"""Python clients services use to call the kit's Triton server.

clients.triton       TritonClient: sync, gRPC or HTTP
clients.address      where the server is: TRITON_HOST and TRITON_{GRPC,HTTP,METRICS}_PORT
clients.aio          AsyncTritonClient: the same calls as coroutines
clients.errors       the errors both raise (translated in clients._boundary, nowhere else)
clients.validation   inputs checked against the model's metadata before sending
clients.limits       the repository's input_limits.json: bounds the config cannot state, checked too
clients.retry        retries of calls the server refused as unavailable
clients.channel      gRPC channel options (message sizes, keepalive)
clients.shm          system shared memory regions for large inputs
clients.cli          ``python -m clients``: health, models, infer, stats

Services install this package alone, as `triton_kit_client` (clients/pyproject.toml):
``pip install "triton-kit-client @ git+<kit repository>#subdirectory=clients"``.
"""

from .address import metrics_url, server_url
from .aio import AsyncTritonClient
from .channel import GrpcChannelOptions
from .errors import (
    AccessDenied,
    ClientError,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    ServerOverloaded,
    ServerUnavailable,
)
from .limits import InputLimits
from .retry import RetryPolicy
from .triton import TritonClient
from .validation import ModelSignature

__all__ = [
    "AccessDenied",
    "AsyncTritonClient",
    "ClientError",
    "GrpcChannelOptions",
    "InferenceFailed",
    "InferenceTimeout",
    "InputLimits",
    "InvalidInput",
    "ModelNotReady",
    "ModelSignature",
    "RetryPolicy",
    "ServerOverloaded",
    "ServerUnavailable",
    "TritonClient",
    "metrics_url",
    "server_url",
]

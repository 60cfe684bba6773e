"""Python clients services use to call the kit's Triton server.

clients.triton       TritonClient: sync, gRPC or HTTP
clients.aio          AsyncTritonClient: the same calls as coroutines
clients.errors       the errors both raise (translated in clients._boundary, nowhere else)
clients.validation   inputs checked against the model's metadata before sending
clients.retry        retries of calls the server refused as unavailable
clients.channel      gRPC channel options (message sizes, keepalive)
clients.shm          system shared memory regions for large inputs
clients.cli          ``python -m clients``: health, models, infer, stats
"""

from clients.aio import AsyncTritonClient
from clients.channel import GrpcChannelOptions
from clients.errors import (
    ClientError,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    ServerOverloaded,
    ServerUnavailable,
)
from clients.retry import RetryPolicy
from clients.triton import TritonClient
from clients.validation import ModelSignature

__all__ = [
    "AsyncTritonClient",
    "ClientError",
    "GrpcChannelOptions",
    "InferenceFailed",
    "InferenceTimeout",
    "InvalidInput",
    "ModelNotReady",
    "ModelSignature",
    "RetryPolicy",
    "ServerOverloaded",
    "ServerUnavailable",
    "TritonClient",
]

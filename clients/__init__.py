"""Python clients services use to call the kit's Triton server."""

from clients.errors import (
    ClientError,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)
from clients.triton import TritonClient

__all__ = [
    "ClientError",
    "InferenceFailed",
    "InferenceTimeout",
    "InvalidInput",
    "ModelNotReady",
    "ServerUnavailable",
    "TritonClient",
]

"""Errors raised by the kit's Triton clients; tritonclient's exceptions never reach callers.

    ClientError                root of everything a client call can raise
    ├── ServerUnavailable      the server cannot be reached, or refuses work (overload, shutting down)
    │   └── ServerOverloaded   the model's queue is full: refused at once, nothing ran
    ├── ModelNotReady          the model is unknown to the server or not loaded
    ├── AccessDenied           the server restricts the call to holders of its admin key
    ├── InvalidInput           the server rejected the request's inputs (name, dtype, shape)
    ├── InferenceTimeout       no answer within the call's timeout
    └── InferenceFailed        the model ran and failed

Each keeps the server's own message; `clients._boundary.translate` is the one place that maps
tritonclient exceptions, socket errors and deadlines onto these (for every client, sync and
asyncio). Validation against the model's metadata raises InvalidInput before anything is sent.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ClientError",
    "InferenceFailed",
    "InferenceTimeout",
    "InvalidInput",
    "ModelNotReady",
    "ServerOverloaded",
    "ServerUnavailable",
]


class ClientError(Exception):
    """Base of every error a kit client raises."""


class ServerUnavailable(ClientError):
    """Raised when the server cannot be reached (refused, reset, down) or answers UNAVAILABLE."""


class ServerOverloaded(ServerUnavailable):
    """Raised when the model's queue is full and the server refused the request on arrival (its
    queue policy's `max_queue_size`): the request never ran, so retrying it later, or on another
    server, is safe. Load tests count these as rejected, apart from failures."""


class ModelNotReady(ClientError):
    """Raised when the model is unknown to the server, or known but not loaded and ready."""


class AccessDenied(ClientError):
    """Raised when the server restricts the call (Triton's `--grpc-restricted-protocol` /
    `--http-restricted-api`, which the kit's server sets for model control, shared memory and
    logging) and the client gave no key, or the wrong one: pass `admin_key=` or set
    TRITON_ADMIN_KEY. Never retried: asking again without the key cannot succeed."""


class InvalidInput(ClientError):
    """Raised when a request's inputs do not fit the model (a wrong name, dtype or shape), found by
    the client before sending or by the server."""


class InferenceTimeout(ClientError):
    """Raised when the server does not answer within the call's timeout (never for a refused connection)."""


class InferenceFailed(ClientError):
    """Raised when the request reached the model and the model failed."""

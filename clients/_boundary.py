"""The one place where tritonclient's exceptions, socket errors and deadlines become the kit's errors.

Both clients (sync and asyncio, gRPC and HTTP) run every server call inside `translate(...)`:

    tritonclient InferenceServerException   classified by its status, then by its message
    gevent.Timeout, DeadlineExpired         InferenceTimeout (the kit's own per-call deadline fired)
    OSError, aiohttp.ClientError            ServerUnavailable (refused, reset, connect timeout)
    SharedMemoryException                   ClientError (the local region could not be made)

A socket-level timeout is an OSError and so a connection problem, never an InferenceTimeout:
only the per-call deadline the kit sets itself means "no answer within timeout_s".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import gevent
from tritonclient.utils import InferenceServerException
from tritonclient.utils.shared_memory import SharedMemoryException

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

__all__ = ["UNLOADED_RECHECK_S", "DeadlineExpired", "classify", "server_not_ready", "translate", "unloaded"]

# Messages are only consulted when the status says little: none, or HTTP's catch-all 400/500.
_GENERIC_CODES = ("", "400", "500", "UNKNOWN", "INTERNAL")
_QUEUE_FULL = "exceeds maximum queue size"
_UNAVAILABLE_HINTS = (
    _QUEUE_FULL,
    "failed to connect",
    "connection refused",
    "server is stopping",
    "server is not ready",
    "server not ready",
    "is not healthy",  # a dead Python stub: the kit's server reloads its model within seconds
)
_NOT_READY_HINTS = ("unknown model", "is not ready", "not found", "has no available versions")
_TIMEOUT_HINTS = ("deadline exceeded", "request timed out")
_RESTRICTED = "is restricted, expecting header"
_UNLOADED = "has no available versions"

UNLOADED_RECHECK_S = 0.1
"""How long after a model's "has no available versions" the clients ask the server's readiness
again: a stopping kit server unloads its ensembles first, and is ready until Triton's own drain
begins a moment later (server.supervisor.drain_ensembles)."""


class DeadlineExpired(Exception):
    """Raised by the asyncio client when its own per-call deadline fires (not a socket timeout)."""


@contextmanager
def translate(model: str | None, timeout_s: float | None = None, *, loading: bool = False) -> Iterator[None]:
    """Run a server call, raising the kit's error (with the server's message) for whatever it raises.

    Args:
        model: the model the call is about, named in the message; None for server-wide calls.
        timeout_s: the call's deadline, named in a timeout's message.
        loading: the call loads a model, so any refusal but an unreachable server is ModelNotReady.

    Raises:
        ClientError: the subclass that fits; the original exception is its ``__cause__``.
    """
    subject = f"model {model!r}" if model else "server"
    try:
        yield
    except InferenceServerException as exc:
        error = classify(exc, subject, timeout_s)
        if loading and not isinstance(error, ServerUnavailable):
            error = ModelNotReady(f"{subject} failed to load: {exc.message() or exc}")
        raise error from exc
    except (gevent.Timeout, DeadlineExpired) as exc:
        raise InferenceTimeout(f"{subject}: no answer within {timeout_s}s") from exc
    except SharedMemoryException as exc:
        reason = f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc)
        raise ClientError(f"{subject}: cannot set up system shared memory: {reason}") from exc
    except (OSError, aiohttp.ClientError) as exc:
        # TimeoutError is an OSError: a connect timeout is a reachability problem, not a slow model.
        raise ServerUnavailable(f"{subject}: cannot reach the server: {type(exc).__name__}: {exc}") from exc


def classify(exc: InferenceServerException, subject: str, timeout_s: float | None = None) -> ClientError:
    """The kit error for a tritonclient exception (gRPC ``StatusCode.X`` or HTTP status code)."""
    code = str(exc.status() or "").removeprefix("StatusCode.")
    message = str(exc.message() or exc)
    lowered = message.lower()
    generic = code in _GENERIC_CODES
    if _RESTRICTED in lowered:
        # Triton answers a restricted call without its key UNAVAILABLE (gRPC) or 403 (HTTP).
        return AccessDenied(
            f"{subject}: the server restricts this call to its admin key: {message}; "
            "pass admin_key= to the client or set TRITON_ADMIN_KEY"
        )
    if "request timeout expired" in lowered:
        # The request's own timeout ran out in the server's queue; Triton reports it as UNAVAILABLE.
        return InferenceTimeout(f"{subject}: no answer within {timeout_s}s: {message}")
    # Unavailability before timeouts: a refused connection must never read as a timeout. A stopping
    # server cancels the gRPC calls it still holds (CANCELLED, seen in a rolling restart under
    # load); the kit never cancels a call itself, so that too is the server going away.
    if code in ("UNAVAILABLE", "503", "CANCELLED") or (generic and any(hint in lowered for hint in _UNAVAILABLE_HINTS)):
        if _QUEUE_FULL in lowered:
            return ServerOverloaded(f"{subject}: queue full, refused: {message}")
        return ServerUnavailable(f"{subject}: server unavailable: {message}")
    if code in ("DEADLINE_EXCEEDED", "504") or (generic and any(hint in lowered for hint in _TIMEOUT_HINTS)):
        return InferenceTimeout(f"{subject}: no answer within {timeout_s}s: {message}")
    if code in ("NOT_FOUND", "404") or (generic and any(hint in lowered for hint in _NOT_READY_HINTS)):
        return ModelNotReady(f"{subject}: {message}")
    if code == "RESOURCE_EXHAUSTED":
        # gRPC's message size limits; a request over the limit never reached the model.
        if "sent message larger" in lowered:
            return InvalidInput(f"{subject}: request too large: {message}")
        return InferenceFailed(f"{subject}: response too large for the channel: {message}")
    if code in ("INVALID_ARGUMENT", "400"):
        return InvalidInput(f"{subject}: invalid input: {message}")
    return InferenceFailed(f"{subject}: inference failed: {message}")


def server_not_ready(error: ModelNotReady) -> ServerUnavailable:
    """A model missing from a server that is not ready itself: it is stopping (Triton unloads
    every model first) or still starting, so another server, or this one later, may answer."""
    return ServerUnavailable(f"{error} (the server is not ready: stopping or starting)")


def unloaded(error: ModelNotReady) -> bool:
    """Whether Triton said the model is in its repository but has no loaded version."""
    return _UNLOADED in str(error)

"""The server side's error root."""

from __future__ import annotations

__all__ = ["BackendBuildError", "ServerError"]


class ServerError(RuntimeError):
    """Raised when the embedded server cannot be found, prepared, started or made ready.

    The message says why and what to do; `log_tail` holds the server's last log lines, if any.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message + (f"\n--- last lines of the server log ---\n{log_tail}" if log_tail else ""))


class BackendBuildError(ServerError):
    """Triton's C++ ONNX Runtime backend could not be fetched, verified or compiled here.

    The message names the step, what went wrong and what to do; `log_tail` holds the build log's
    last lines, if any.
    """

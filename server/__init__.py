"""The embedded Triton server: the same repository files the NGC container serves, without Docker."""

from server.embedded import EmbeddedTriton, find_installation, prepare_backends
from server.errors import BackendBuildError, ServerError

__all__ = ["BackendBuildError", "EmbeddedTriton", "ServerError", "find_installation", "prepare_backends"]

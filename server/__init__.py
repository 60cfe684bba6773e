"""The embedded Triton server: the same repository files the NGC container serves, without Docker."""

from server.embedded import EmbeddedTriton, ServerError, find_installation, prepare_backends

__all__ = ["EmbeddedTriton", "ServerError", "find_installation", "prepare_backends"]

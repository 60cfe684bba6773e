"""Where the Triton server is: one convention for the whole kit.

`make serve` (the server listens there), the client CLI, the example service, `make loadtest` and
docker-compose.yml (the ports it publishes) all read the same variables:

    TRITON_HOST           the server's address              127.0.0.1
    TRITON_HTTP_PORT      HTTP/REST (KServe v2)             8000
    TRITON_GRPC_PORT      gRPC (KServe v2)                  8001
    TRITON_METRICS_PORT   Prometheus metrics                8002

A server listening on every address (0.0.0.0 or ::) is reached on loopback. An explicit URL
(`--url`, a client's first argument) wins over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

__all__ = ["DEFAULTS", "metrics_url", "server_url"]

DEFAULTS = {
    "TRITON_HOST": "127.0.0.1",
    "TRITON_HTTP_PORT": "8000",
    "TRITON_GRPC_PORT": "8001",
    "TRITON_METRICS_PORT": "8002",
}
_EVERY_ADDRESS = {"0.0.0.0", "::", "[::]", ""}


def server_url(protocol: Literal["grpc", "http"] = "grpc", environ: Mapping[str, str] | None = None) -> str:
    """`host:port` of the server's gRPC or HTTP endpoint, from the environment.

    Raises:
        ValueError: a port variable that is not a port number.
    """
    environ = os.environ if environ is None else environ
    return f"{_host(environ)}:{_port(f'TRITON_{protocol.upper()}_PORT', environ)}"


def metrics_url(environ: Mapping[str, str] | None = None) -> str:
    """The server's Prometheus endpoint, `http://host:port/metrics`, from the environment."""
    environ = os.environ if environ is None else environ
    return f"http://{_host(environ)}:{_port('TRITON_METRICS_PORT', environ)}/metrics"


def _host(environ: Mapping[str, str]) -> str:
    host = environ.get("TRITON_HOST", DEFAULTS["TRITON_HOST"]).strip()
    if host in _EVERY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _port(variable: str, environ: Mapping[str, str]) -> int:
    value = environ.get(variable, DEFAULTS[variable])
    if not value.strip().isdigit() or not 0 < int(value) < 65536:
        raise ValueError(
            f"{variable}={value!r} is not a port: set it to a number from 1 to 65535, or unset it ({DEFAULTS[variable]})"
        )
    return int(value)

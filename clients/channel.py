"""gRPC channel options: message size limits and keepalive, with defaults that suit Triton.

tritonclient's ``channel_args`` replaces its own defaults wholesale, message size limits included
(gRPC's own receive limit is 4 MiB, smaller than one image batch's tensors), so every list built
here carries the limits again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["INT32_MAX", "GrpcChannelOptions"]

INT32_MAX = 2**31 - 1
"""gRPC's largest message size: a protobuf message cannot be larger."""


@dataclass(frozen=True)
class GrpcChannelOptions:
    """The options of the one gRPC channel a client opens and reuses for every call.

    Attributes:
        max_send_message_bytes: the largest request the client sends.
        max_receive_message_bytes: the largest response the client accepts.
        keepalive_time_s: ping the server after this long without activity, so a dead connection
            (a restarted server, a dropped NAT entry) is found before a request is sent on it.
        keepalive_timeout_s: how long to wait for the ping's answer before closing the connection.
        keepalive_permit_without_calls: ping also when no call is in flight.
        http2_max_pings_without_data: pings in a row without a request in between. By default
            Triton's server counts a ping sooner than 5 minutes after the last (or any while idle)
            as a strike and sends GOAWAY "too_many_pings" at the third, so keep this at 2 unless
            the server's ``--grpc-keepalive-*`` options allow more.
        extra: further ``(key, value)`` channel arguments, appended last (so they win).
    """

    max_send_message_bytes: int = INT32_MAX
    max_receive_message_bytes: int = INT32_MAX
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    keepalive_permit_without_calls: bool = True
    http2_max_pings_without_data: int = 2
    extra: tuple[tuple[str, Any], ...] = ()

    def channel_args(self) -> list[tuple[str, Any]]:
        """The complete argument list for tritonclient's ``channel_args``."""
        return [
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", self.http2_max_pings_without_data),
            *self.extra,
        ]

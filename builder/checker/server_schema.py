"""Which Triton release's model-config schema a config needs.

The kit parses configs with tritonclient's schema, which is newer than the server it serves with
(Triton 2.51, NGC 24.10): a field added since parses here but stops the older server, which
refuses the whole config. The fields below are the additions to `model_config.proto` after
r24.10 (from triton-inference-server/common), each with the first release that has it.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message

__all__ = ["DEFAULT_SERVER_VERSION", "NEWER_FIELDS", "fields_newer_than"]

DEFAULT_SERVER_VERSION = "2.51"
"""The embedded server's and the NGC 24.10 image's Triton."""

NEWER_FIELDS = {
    "ModelConfig.model_metrics": "2.52",
    "ModelEnsembling.max_inflight_requests": "2.63",
}
"""`<message>.<field>` -> the first Triton release whose schema has it."""


def fields_newer_than(config: Message, server_version: str) -> Iterator[tuple[str, str]]:
    """(field path in the config, release that added it) for each set field the server lacks."""
    server = _release(server_version)
    for path, message, field in _set_fields(config, ""):
        added = NEWER_FIELDS.get(f"{message}.{field}")
        if added is not None and _release(added) > server:
            yield path, added


def _set_fields(message: Message, prefix: str) -> Iterator[tuple[str, str, str]]:
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        yield path, message.DESCRIPTOR.name, descriptor.name
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        for index, item in enumerate(value) if descriptor.is_repeated else [(None, value)]:
            yield from _set_fields(item, f"{path}{'' if index is None else f'[{index}]'}.")


def _release(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"server version {version!r}: give a Triton release such as 2.51") from None

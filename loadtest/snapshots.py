"""The server's statistics at each step boundary, for the report's server-side breakdown: the
loaded model's, and for an ensemble each composing model's too (the batching inside a pipeline is
only visible there). Written by the Locust shape and by the open-loop generator alike."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from clients import ClientError

__all__ = ["ensemble_members", "record", "record_async"]

FILENAME = "server_stats.jsonl"


def ensemble_members(config: dict[str, Any]) -> list[str]:
    """The models an ensemble's steps call, in order (nested ensembles are not expanded); none for
    a model that is not an ensemble."""
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return list(dict.fromkeys(step["model_name"] for step in steps))


def record(
    report_dir: Path,
    step: int,
    wall: float,
    statistics: Callable[[str], dict[str, Any]],
    model: str,
    members: list[str],
) -> None:
    """Append one snapshot, asking `statistics` (a client's) for the model and its members."""
    try:
        stats = {name: statistics(name)["model_stats"] for name in [model, *members]}
    except ClientError as exc:
        _append(report_dir, step, wall, {}, str(exc))
    else:
        _append(report_dir, step, wall, stats, "")


async def record_async(
    report_dir: Path,
    step: int,
    wall: float,
    statistics: Callable[[str], Awaitable[dict[str, Any]]],
    model: str,
    members: list[str],
) -> None:
    """`record` for an asyncio client."""
    try:
        stats = {name: (await statistics(name))["model_stats"] for name in [model, *members]}
    except ClientError as exc:
        _append(report_dir, step, wall, {}, str(exc))
    else:
        _append(report_dir, step, wall, stats, "")


def _append(report_dir: Path, step: int, wall: float, stats: dict[str, Any], error: str) -> None:
    model_stats: list[Any] = next(iter(stats.values()), [])
    members = dict(list(stats.items())[1:])
    line = {"step": step, "time": wall, "stats": model_stats, "members": members, "error": error, "taken": time.time()}
    with (report_dir / FILENAME).open("a") as handle:
        handle.write(json.dumps(line) + "\n")

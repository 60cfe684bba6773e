"""Batches of model inputs ({input name: array}, samples along the first axis), cut and joined
without ever mixing items of different shapes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Feed", "batched", "items_in", "take"]

Feed = dict[str, NDArray[Any]]


def items_in(feed: Feed) -> int:
    """The number of samples in a batch (its leading dimension)."""
    return int(next(iter(feed.values())).shape[0])


def take(batches: Iterable[Feed], start: int, count: int) -> Iterator[Feed]:
    """Items [start, start + count) of a sequence of batches, keeping the batches' boundaries."""
    position = 0
    for batch in batches:
        size = items_in(batch)
        lo, hi = max(start - position, 0), min(start + count - position, size)
        if lo < hi:
            yield {name: array[lo:hi] for name, array in batch.items()}
        position += size
        if position >= start + count:
            return


def batched(batches: Iterable[Feed], size: int) -> Iterator[Feed]:
    """Re-cut batches into batches of `size` items (the last may be smaller).

    Items of different shapes (sequences of different lengths) are never concatenated: a batch
    ends early where the next item's shape differs.
    """
    pending: list[Feed] = []
    count = 0
    for batch in batches:
        for index in range(items_in(batch)):
            item = {name: array[index : index + 1] for name, array in batch.items()}
            if pending and (count == size or _shapes(item) != _shapes(pending[0])):
                yield _concatenate(pending)
                pending, count = [], 0
            pending.append(item)
            count += 1
    if pending:
        yield _concatenate(pending)


def _shapes(feed: Feed) -> dict[str, tuple[int, ...]]:
    return {name: array.shape[1:] for name, array in feed.items()}


def _concatenate(items: list[Feed]) -> Feed:
    return {name: np.concatenate([item[name] for item in items]) for name in items[0]}

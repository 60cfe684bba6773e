"""When to try a call again: only when the server was unavailable, with exponential backoff and jitter.

ServerUnavailable means the request was refused before any work was done (connection refused,
overloaded queue, server not ready or shutting down), so repeating it is safe. Every other error is
final: a bad input stays bad, a missing model stays missing, a failed model would fail again, and
a timed-out request may still be running on the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ClientError, ServerUnavailable

__all__ = ["RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to repeat a call the server refused as unavailable.

    Attributes:
        retries: further attempts after the first (0: no retry).
        backoff_s: the delay before the first retry; each later one doubles, up to `max_backoff_s`.
        max_backoff_s: the cap on one delay.
    """

    retries: int = 2
    backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retries and backoff must not be negative: {self}")

    @property
    def attempts(self) -> int:
        """How many times a call is tried at most."""
        return self.retries + 1

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The pause before retry number `retry` (0 for the first retry).

        "Equal jitter": half the exponential step is fixed, half random, so clients refused together
        spread out yet each still waits at least half its step.
        """
        step = min(self.max_backoff_s, self.backoff_s * 2.0**retry)
        return step / 2 + (rng or random).uniform(0, step / 2)

    def min_total_delay(self) -> float:
        """The least time spent waiting when every attempt is refused (for tests and budgets)."""
        return sum(min(self.max_backoff_s, self.backoff_s * 2.0**retry) / 2 for retry in range(self.retries))

    def run(self, call: Callable[[], T]) -> T:
        """Call `call` until it succeeds, raises a final error, or the attempts are used up.

        Raises:
            ServerUnavailable: every attempt was refused; the message ends with the attempt count.
            ClientError: the first error that is not worth retrying, unchanged.
        """
        for retry in range(self.retries + 1):
            try:
                return call()
            except ServerUnavailable as error:
                if retry == self.retries:
                    raise self._gave_up(error) from error
                time.sleep(self.delay(retry))
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_async(self, call: Callable[[], Awaitable[T]]) -> T:
        """`run` for coroutines: the backoff sleeps without blocking the event loop."""
        for retry in range(self.retries + 1):
            try:
                return await call()
            except ServerUnavailable as error:
                if retry == self.retries:
                    raise self._gave_up(error) from error
                await asyncio.sleep(self.delay(retry))
        raise AssertionError("unreachable")  # pragma: no cover

    def _gave_up(self, error: ServerUnavailable) -> ClientError:
        attempts = f"{self.attempts} attempt{'s' if self.attempts > 1 else ''}"
        return type(error)(f"{error} (gave up after {attempts})")  # an overload stays one

"""Open-loop load: requests sent on a schedule whatever the server does, as perf_analyzer's
`--request-rate-range` does, so that a slow server cannot slow the load it is offered.

Each step offers one rate for `step_seconds`, with evenly spaced or Poisson arrivals. A request is
timed from its *scheduled* send time (a late answer counts all of its lateness). At most
`max_in_flight` requests are outstanding: an arrival beyond that is dropped by the generator and
counted as dropped, never sent late in silence. The files it writes are those of the Locust runs
(requests-*.csv, server_stats.jsonl), so one report serves both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from clients import AsyncTritonClient, ClientError, ServerOverloaded
from loadtest.report import DROPPED, FAILED, OK, REJECTED
from loadtest.settings import Settings
from loadtest.snapshots import ensemble_members, record_async

__all__ = ["arrivals", "run_open_loop"]


def arrivals(rate: float, seconds: float, poisson: bool, rng: np.random.Generator) -> NDArray[np.float64]:
    """Send times within one step, in seconds from its start: `rate` per second on average."""
    if poisson:
        gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 16)
        times: NDArray[np.float64] = np.cumsum(gaps)
        return times[times < seconds]
    # Centred in their slots: none falls on a step boundary, where the report splits the steps.
    return (np.arange(round(rate * seconds)) + 0.5) / rate


def run_open_loop(settings: Settings, payload: Mapping[str, NDArray[Any]], *, progress: bool = True) -> dict[str, Any]:
    """Offer each of `settings.rates` for `settings.step_seconds`; return what the generator did.
    `progress`: a line as each step starts."""
    return asyncio.run(_Generator(settings, payload, progress).run())


class _Generator:
    def __init__(self, settings: Settings, payload: Mapping[str, NDArray[Any]], progress: bool) -> None:
        self.settings = settings
        self.progress = progress
        self.payload = dict(payload)
        self.in_flight = 0
        self.sent = 0
        self.dropped = 0
        self.worst_lag_s = 0.0
        self.log: TextIO | None = None
        self.members: list[str] | None = None

    async def run(self) -> dict[str, Any]:
        settings = self.settings
        rng = np.random.default_rng(0)
        client = AsyncTritonClient(settings.url, protocol=settings.protocol, timeout_s=settings.timeout_s, retries=0)
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        try:
            with (settings.report_dir / "requests-openloop.csv").open("w", buffering=1 << 16) as self.log:
                # Wall-clock and monotonic time of the schedule's origin: the logs use wall time.
                origin_wall, origin = time.time() + 0.2, time.monotonic() + 0.2
                for step, rate in enumerate(settings.rates):
                    step_start = origin + step * settings.step_seconds
                    await self._sleep_until(step_start)
                    await self._snapshot(client, step, origin_wall + step * settings.step_seconds)
                    if self.progress:
                        print(
                            f"  step {step + 1}/{len(settings.rates)}: offering {rate:g} req/s for {settings.step_seconds:g} s"
                            f"  (so far: sent {self.sent}, in flight {self.in_flight}, dropped {self.dropped})",
                            flush=True,
                        )
                    for offset in arrivals(rate, settings.step_seconds, settings.poisson, rng):
                        due = step_start + float(offset)
                        await self._sleep_until(due)
                        self.worst_lag_s = max(self.worst_lag_s, time.monotonic() - due)
                        wall = origin_wall + (due - origin)
                        if self.in_flight >= settings.max_in_flight:
                            self.dropped += 1
                            self._record(wall, 0.0, DROPPED)
                            continue
                        # Counted here, not when the task first runs: the bound holds between the two.
                        self.in_flight += 1
                        self.sent += 1
                        task = asyncio.create_task(self._send(client, due, wall))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                end = origin + len(settings.rates) * settings.step_seconds
                await self._sleep_until(end)
                if tasks:  # the last requests finish (or time out) before the final snapshot
                    await asyncio.wait(tasks, timeout=settings.timeout_s + 5)
                await self._snapshot(
                    client, len(settings.rates), origin_wall + len(settings.rates) * settings.step_seconds
                )
        finally:
            for task in tasks:
                task.cancel()
            await client.close()
        return {
            "mode": "open loop",
            "arrivals": "poisson" if settings.poisson else "constant",
            "max_in_flight": settings.max_in_flight,
            "sent": self.sent,
            "dropped": self.dropped,
            # How late the generator itself was at its worst: a large value means the generator,
            # not the server, limited the offered rate (give it a core of its own).
            "worst_send_lag_ms": round(self.worst_lag_s * 1000, 3),
            "seconds": round(time.monotonic() - started, 1),
            "stopped_by_itself": True,
            "warning": (
                f"the generator fell {self.worst_lag_s * 1000:.0f} ms behind its schedule: the offered rate was not held"
            )
            if self.worst_lag_s > 0.05
            else None,
        }

    async def _send(self, client: AsyncTritonClient, due: float, wall: float) -> None:
        outcome = OK
        try:
            await client.infer(self.settings.model, self.payload, validate=False)
        except ServerOverloaded:
            outcome = REJECTED
        except ClientError:
            outcome = FAILED
        finally:
            self.in_flight -= 1
        self._record(wall, (time.monotonic() - due) * 1000, outcome)

    def _record(self, wall: float, latency_ms: float, outcome: int) -> None:
        assert self.log is not None
        self.log.write(f"{wall:.6f},{latency_ms:.3f},{outcome}\n")

    async def _snapshot(self, client: AsyncTritonClient, step: int, wall: float) -> None:
        """The server's statistics at a step boundary, as the Locust shape writes them."""
        if self.members is None:
            try:
                self.members = ensemble_members(await client.config(self.settings.model))
            except ClientError:
                self.members = []
        await record_async(self.settings.report_dir, step, wall, client.statistics, self.settings.model, self.members)

    @staticmethod
    async def _sleep_until(moment: float) -> None:
        delay = moment - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

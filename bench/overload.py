"""Benchmark: an open-loop overload, with the kit's bounded queues against Triton's unbounded
default, side by side in one run.

    make build-repo && .venv/bin/python bench/overload.py [--model image_classification] [--seconds 20]

For each queue setting the embedded server serves a copy of the repository (as built, or with
every `default_queue_policy` removed, which is Triton's default), and:
1. a closed loop of `--clients` clients finds the rate the model sustains;
2. an open loop offers `--times` that rate for `--seconds`: requests are sent on schedule whether
   or not earlier ones returned (at most `--max-in-flight` outstanding, the rest counted as
   dropped by the generator), and each latency runs from the scheduled send time, so a slow
   server cannot slow the offered load down (no coordinated omission);
3. the server's memory (tritonserver and its stub processes, resident) is sampled before, at
   the peak and after the last answer.
It reports answered, refused ("Exceeds maximum queue size") and timed-out requests, the
latency of answered ones (p50/p99) and how long the server took to drain. Results go to
bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import QUEUE_POLICY, RESULTS, ROOT, arguments, embedded, feed_for, header, machine, write
from clients import AsyncTritonClient, ClientError, InferenceTimeout, ServerUnavailable


def unbounded_copy(repo: Path, scratch: Path) -> Path:
    """The repository with every dynamic batcher's queue policy removed: Triton's default."""
    shutil.copytree(repo, scratch, symlinks=True)
    for config in scratch.glob("*/config.pbtxt"):
        config.write_text(QUEUE_POLICY.sub("", config.read_text()))
    return scratch


def server_memory_mb(pid: int) -> float:
    """Resident memory of the server and every process of its group (its stubs)."""
    total = 0
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pid:
                total += process.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return round(total / 2**20, 1)


async def closed_loop(url: str, model: str, feed: dict[str, NDArray[Any]], clients: int, seconds: float) -> float:
    """Requests per second `clients` back-to-back callers get: the rate the model sustains."""
    done = 0
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        async with AsyncTritonClient(url, retries=0, timeout_s=60) as client:
            while time.monotonic() < deadline:
                await client.infer(model, feed, validate=False)
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return done / (time.monotonic() - started)


async def open_loop(
    url: str, model: str, feed: dict[str, NDArray[Any]], rate: float, seconds: float, max_in_flight: int
) -> dict[str, Any]:
    """Requests sent at `rate` on schedule; latency from the scheduled time."""
    loop = asyncio.get_running_loop()
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    in_flight = 0
    async with AsyncTritonClient(url, retries=0, timeout_s=60) as client:
        await client.signature(model)

        async def one(scheduled: float) -> None:
            nonlocal in_flight
            try:
                await client.infer(model, feed, validate=False)
                outcomes["answered"] += 1
                latencies.append(loop.time() - scheduled)
            except ServerUnavailable as error:
                outcomes["refused" if "maximum queue size" in str(error).lower() else "unavailable"] += 1
            except InferenceTimeout:
                outcomes["timed_out"] += 1
            except ClientError:
                outcomes["failed"] += 1
            finally:
                in_flight -= 1

        tasks = set()
        start = loop.time()
        total = int(rate * seconds)
        for i in range(total):
            scheduled = start + i / rate
            if (delay := scheduled - loop.time()) > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                outcomes["dropped_by_generator"] += 1
                continue
            in_flight += 1
            task = asyncio.create_task(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_for = loop.time() - start
        await asyncio.gather(*tasks)
        drained_after = loop.time() - start - sent_for
    ordered = sorted(latencies)
    return {
        "offered_per_s": round(rate, 1),
        "sent_per_s": round((total - outcomes["dropped_by_generator"]) / sent_for, 1),
        "answered_per_s": round(outcomes["answered"] / (sent_for + drained_after), 1),
        **{key: outcomes[key] for key in ("answered", "refused", "timed_out", "unavailable", "failed")},
        "dropped_by_generator": outcomes["dropped_by_generator"],
        "refused_share": round(outcomes["refused"] / max(1, total), 3),
        "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1) if ordered else None,
        "drained_s_after_last_send": round(drained_after, 1),
    }


def run(repo: Path, label: str, args: argparse.Namespace, feed: dict[str, NDArray[Any]]) -> dict[str, Any]:
    log = RESULTS / f"overload-{label}.server.log"
    log.unlink(missing_ok=True)
    server = embedded(repo, log)
    server.start(timeout_s=600)
    try:
        pid = server.pid or 0
        asyncio.run(closed_loop(server.grpc_url, args.model, feed, 2, 2.0))  # warm every instance up
        idle = server_memory_mb(pid)
        sustained = asyncio.run(closed_loop(server.grpc_url, args.model, feed, args.clients, args.warm_seconds))
        peak, sampling = idle, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.5):
                peak = max(peak, server_memory_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rate = sustained * args.times
        figures = asyncio.run(open_loop(server.grpc_url, args.model, feed, rate, args.seconds, args.max_in_flight))
        sampling.set()
        sampler.join()
        time.sleep(3.0)
        memory = {"idle_mb": idle, "peak_mb": peak, "after_mb": server_memory_mb(pid)}
    finally:
        server.stop()
    result = {"sustained_closed_loop_per_s": round(sustained, 1), **figures, "server_memory": memory}
    print(f"{label}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--model", default="image_classification")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients that find the sustained rate")
    parser.add_argument("--warm-seconds", type=float, default=5.0)
    parser.add_argument("--times", type=float, default=4.0, help="the open loop offers this many times that rate")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the open loop offers it")
    parser.add_argument("--max-in-flight", type=int, default=20_000)
    args = parser.parse_args()
    if not (args.repo / args.model / "config.pbtxt").is_file():
        sys.exit(f"error: {args.repo} has no {args.model}; run `make build-repo` first")
    feed = feed_for(args.model)
    scratch = ROOT / ".triton" / "bench-overload"
    shutil.rmtree(scratch, ignore_errors=True)
    record: dict[str, Any] = {
        **header("overload"),
        "machine": machine(),
        "model": args.model,
        "times_sustained": args.times,
        "seconds": args.seconds,
        "bounded_as_built": run(args.repo, "bounded", args, feed),
        "unbounded_triton_default": run(unbounded_copy(args.repo, scratch / "repo"), "unbounded", args, feed),
    }
    print(f"wrote {write(record)}")


if __name__ == "__main__":
    main()

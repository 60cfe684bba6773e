"""A heartbeat for the build's long steps (export, quantization, compilation, TensorRT), so that a
step of a minute does not sit behind one silent line."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["HEARTBEAT_S", "heartbeat"]

HEARTBEAT_S = 10.0


@contextmanager
def heartbeat(log: Callable[[str], None], label: str, every_s: float | None = None) -> Iterator[None]:
    """Log ``<label>: still running (N s)`` every `every_s` seconds (HEARTBEAT_S) until the block ends."""
    interval = HEARTBEAT_S if every_s is None else every_s
    done = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not done.wait(interval):
            log(f"{label}: still running ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=beat, name=f"heartbeat {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()

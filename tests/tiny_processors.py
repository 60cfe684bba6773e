"""Tiny Python-model classes for the serving tests: each is a `source:` a test spec points at."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


class Fragile:
    """y = 2x, with a bug its author did not foresee: any value over 100 raises a RuntimeError
    (not a ValueError, so not a declared bad input). `returns: torch` answers with a torch tensor
    (handed to Triton by DLPack, as GPU preprocessing does) instead of a numpy array."""

    def __init__(self, returns: str = "numpy") -> None:
        self.returns = returns

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, Any]:
        x = inputs["x"]
        if (x > 100).any():
            raise RuntimeError("x over 100 overflows a table")
        y = (x * 2).astype(np.float32)
        if self.returns == "torch":
            import torch

            return {"y": torch.from_numpy(y)}
        return {"y": y}


class Slow:
    """y = x, after `seconds` of work: a request that is still running when the server is told to
    stop. With `started`, a call first creates that file, so a test knows the work began."""

    def __init__(self, seconds: float = 3.0, started: str | None = None) -> None:
        self.seconds = seconds
        self.started = started

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        import time
        from pathlib import Path

        if self.started is not None:
            Path(self.started).touch()
        time.sleep(self.seconds)
        return {"y": inputs["x"].astype(np.float32)}

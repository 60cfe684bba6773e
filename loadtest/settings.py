"""The settings of one load-test run, passed from the runner to Locust (and its workers) through
environment variables, since forked Locust workers inherit the environment."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = ["ENV_VAR", "Settings"]

ENV_VAR = "TRITON_LOADTEST_SETTINGS"


@dataclass(frozen=True)
class Settings:
    """What to load, how hard, and where the run's files go."""

    url: str
    model: str
    protocol: Literal["grpc", "http"] = "grpc"
    batch: int = 1
    step_users: int = 4
    step_seconds: float = 10.0
    steps: int = 1
    spawn_rate: float = 100.0
    # Open loop (loadtest/openloop.py): one offered rate per step, in requests per second.
    rates: tuple[float, ...] = ()
    poisson: bool = False
    max_in_flight: int = 256
    payload: Path | None = None
    expect: Path | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    timeout_s: float = 30.0
    report_dir: Path = Path("reports")

    @property
    def open_loop(self) -> bool:
        return bool(self.rates)

    @property
    def duration_s(self) -> float:
        return self.step_seconds * (len(self.rates) if self.rates else self.steps)

    def to_env(self) -> str:
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()})

    @classmethod
    def from_env(cls) -> Settings:
        """The settings the runner put in the environment.

        Raises:
            RuntimeError: the locustfile was started without the runner (`python -m loadtest`).
        """
        raw = os.environ.get(ENV_VAR)
        if raw is None:
            raise RuntimeError(f"{ENV_VAR} is not set: start load tests with `make loadtest` or `python -m loadtest`")
        values: dict[str, Any] = json.loads(raw)
        paths = {f.name for f in fields(cls) if "Path" in str(f.type)}
        converted: dict[str, Any] = {k: Path(v) if k in paths and v is not None else v for k, v in values.items()}
        converted["rates"] = tuple(converted.get("rates", ()))
        return cls(**converted)

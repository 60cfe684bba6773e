"""Locust users and load shape for the kit's Triton server.

Started by `python -m loadtest` (settings in TRITON_LOADTEST_SETTINGS), or by Locust itself, its
web UI included (on loopback unless --web-host says otherwise):

    locust -f loadtest/locustfile.py --host grpc://127.0.0.1:8001 --triton-model text_encoder
    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 --steps 2 --step-users 4

Without --host the server is the kit's address convention (TRITON_HOST, TRITON_GRPC_PORT).

Each user holds one kit client (one channel or connection, reused), sends the run's payload in a
closed loop, and reports every request to Locust with its response time and size; a response
that differs from the expected outputs counts as a failed request. The step shape adds users
step by step and, at each step boundary, snapshots the server's statistics so the report can
break every step down into queue and compute time.
"""

# ruff: noqa: E402, I001 -- import order matters here: gevent must patch grpc before any channel exists.
from locust import LoadTestShape, User, constant, events, task

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import faulthandler
import os
import time
from pathlib import Path

from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from clients import ClientError, ServerOverloaded, TritonClient, server_url
from loadtest.payloads import generated_payload, load_arrays
from loadtest.report import FAILED, OK, REJECTED
from loadtest.settings import ENV_VAR, Settings
from loadtest.snapshots import ensemble_members, record

# Filled in when the test starts: from the runner's environment, or from Locust's own options
# (the host may be typed into the web UI only then).
SETTINGS = Settings.from_env() if ENV_VAR in os.environ else Settings(url="", model="")
PAYLOAD: dict[str, NDArray[Any]] = {}
EXPECTED: dict[str, NDArray[Any]] | None = None


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--triton-model", default="text_encoder", include_in_web_ui=True, help="model (or ensemble) to load"
    )
    parser.add_argument(
        "--triton-batch", type=int, default=1, include_in_web_ui=True, help="items per generated request"
    )
    parser.add_argument("--step-users", type=int, default=4, include_in_web_ui=True, help="users added at each step")
    parser.add_argument("--step-seconds", type=float, default=10.0, include_in_web_ui=True, help="length of each step")
    parser.add_argument("--steps", type=int, default=3, include_in_web_ui=True, help="number of steps")
    parser.add_argument(
        "--triton-report-dir",
        default="",
        help="request logs and server snapshots (default reports/locust-<model>-<time>)",
    )
    # Neither this UI nor Triton's API asks who is calling: loopback unless told otherwise.
    parser.set_defaults(web_host="127.0.0.1", host=f"grpc://{server_url('grpc')}")


@events.init.add_listener
def _check_host(environment: Any, **_: Any) -> None:
    if ENV_VAR not in os.environ:
        try:
            _settings_from(environment)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None


_configured_for: str | None = None


def _ensure_settings(environment: Any) -> None:
    """Without the runner, the settings of Locust's options, for the host the test starts with
    (the web UI can change it until then); the shape's first tick comes before test_start."""
    global SETTINGS, _configured_for
    if ENV_VAR not in os.environ and _configured_for != environment.host:
        SETTINGS = _settings_from(environment)
        _configured_for = environment.host
    SETTINGS.report_dir.mkdir(parents=True, exist_ok=True)


@events.test_start.add_listener
def _configure(environment: Any, **_: Any) -> None:
    global PAYLOAD, EXPECTED
    _ensure_settings(environment)
    PAYLOAD = _payload()
    EXPECTED = load_arrays(SETTINGS.expect) if SETTINGS.expect else None


def _settings_from(environment: Any) -> Settings:
    """The run's settings from Locust's options: --host grpc://HOST:PORT or http://HOST:PORT."""
    options = environment.parsed_options
    scheme, separator, address = (environment.host or "").partition("://")
    if not separator or scheme not in ("grpc", "http") or not address.strip("/"):
        raise ValueError(
            f"--host {environment.host!r} names no Triton server: give grpc://HOST:PORT or http://HOST:PORT "
            f"(make serve's: grpc://{server_url('grpc')})"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Settings(
        url=address.strip("/"),
        model=options.triton_model,
        protocol=scheme,  # type: ignore[arg-type]
        batch=options.triton_batch,
        step_users=options.step_users,
        step_seconds=options.step_seconds,
        steps=options.steps,
        report_dir=Path(options.triton_report_dir or f"reports/locust-{options.triton_model}-{stamp}").resolve(),
    )


def _payload() -> dict[str, NDArray[Any]]:
    """The runner's payload (`python -m loadtest` writes it); without the runner (Locust started
    directly, as the compose profile does), one generated from the model's metadata."""
    written = SETTINGS.report_dir / "payload.npz"
    if written.exists():
        return load_arrays(written)
    with TritonClient(SETTINGS.url, protocol=SETTINGS.protocol, timeout_s=SETTINGS.timeout_s) as client:
        client.wait_until_ready(model=SETTINGS.model, timeout_s=120)
        batching = int(client.config(SETTINGS.model).get("max_batch_size", 0)) > 0
        return generated_payload(client.metadata(SETTINGS.model), SETTINGS.batch, batching)


_EXIT_GRACE_S = 5.0
_hang_report: TextIO | None = None


class WrongAnswer(Exception):
    """The server answered, but not what the reference says it should."""


class TritonUser(User):
    """Sends the payload to the model in a closed loop (no think time) over one protocol."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.triton = TritonClient(SETTINGS.url, protocol=SETTINGS.protocol, timeout_s=SETTINGS.timeout_s, retries=0)
        _open_clients.add(self.triton)

    def on_stop(self) -> None:
        _open_clients.discard(self.triton)
        self.triton.close()

    @task
    def infer(self) -> None:
        started = time.perf_counter()
        size = 0
        error: Exception | None = None
        try:
            outputs = self.triton.infer(SETTINGS.model, PAYLOAD, validate=False)
            size = sum(_nbytes(array) for array in outputs.values())
            if EXPECTED is not None:
                _check(outputs, EXPECTED)
        except (ClientError, WrongAnswer) as exc:
            error = exc
        self.environment.events.request.fire(
            request_type=SETTINGS.protocol,
            name=SETTINGS.model,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            response=None,
            context={},
            exception=error,
        )


class StepShape(LoadTestShape):
    """`steps` steps of `step_seconds`, each with `step_users` more users than the last."""

    def __init__(self) -> None:
        super().__init__()
        self.step = -1

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None  # set by Locust before the first tick
        _ensure_settings(self.runner.environment)
        step = int(self.get_run_time() // SETTINGS.step_seconds)
        if step != self.step:
            _snapshot(step)
            self.step = step
        if step >= SETTINGS.steps:
            return None
        return (step + 1) * SETTINGS.step_users, SETTINGS.spawn_rate


_request_log: TextIO | None = None
_open_clients: set[TritonClient] = set()


@events.test_stop.add_listener
def _close_clients(**_: Any) -> None:
    """Close what users left open: a gRPC client left to the garbage collector closes its channel
    in __del__ at interpreter exit, where it can block forever under gevent."""
    while _open_clients:
        _open_clients.pop().close()


@events.request.add_listener
def _log_request(response_time: float, exception: Exception | None, **_: Any) -> None:
    """Every request's time and outcome, one file per process, for exact per-step percentiles."""
    global _request_log
    if _request_log is None:
        _request_log = (SETTINGS.report_dir / f"requests-{os.getpid()}.csv").open("w", buffering=1 << 16)
    _request_log.write(f"{time.time():.6f},{response_time:.3f},{_outcome(exception)}\n")


def _outcome(exception: Exception | None) -> int:
    """The request log's outcome column: answered, failed, or rejected by a full queue (the
    server protecting the requests it admitted; counted apart from failures)."""
    if exception is None:
        return OK
    return REJECTED if isinstance(exception, ServerOverloaded) else FAILED


@events.quitting.add_listener
def _close_request_log(**_: Any) -> None:
    if _request_log is not None:
        _request_log.close()


@events.quitting.add_listener
def _exit_even_if_grpc_hangs(**_: Any) -> None:
    """The last resort if the process cannot exit once Locust has written its reports. The cause
    seen (about once in six runs) was a tritonclient closing its gRPC channel again from __del__
    at interpreter exit, under gevent; TritonClient.close() now releases that object while the
    hub still runs (12 of 12 runs exited cleanly). faulthandler's watchdog is a C thread that needs
    neither the GIL nor the hub: if the process still runs `_EXIT_GRACE_S` from now, it writes
    where it hung and ends it."""
    global _hang_report
    _hang_report = (SETTINGS.report_dir / f"exit-hang-{os.getpid()}.txt").open("w")
    faulthandler.dump_traceback_later(_EXIT_GRACE_S, exit=True, file=_hang_report)


_members: list[str] | None = None


def _snapshot(step: int) -> None:
    """Append the server's statistics for the model (and an ensemble's members), at a step
    boundary, to server_stats.jsonl."""
    global _members
    wall = time.time()
    with TritonClient(SETTINGS.url, protocol=SETTINGS.protocol, timeout_s=10, retries=0) as client:
        if _members is None:
            try:
                _members = ensemble_members(client.config(SETTINGS.model))
            except ClientError:
                _members = []
        record(SETTINGS.report_dir, step, wall, client.statistics, SETTINGS.model, _members)


def _check(outputs: dict[str, NDArray[Any]], expected: dict[str, NDArray[Any]]) -> None:
    for name, want in expected.items():
        got = outputs.get(name)
        if got is None:
            raise WrongAnswer(f"output {name!r} is missing from the response")
        if want.dtype == object or got.dtype == object:
            if got.tolist() != want.tolist():
                raise WrongAnswer(f"output {name!r} differs from the reference")
        elif got.shape != want.shape or not np.allclose(got, want, atol=SETTINGS.atol, rtol=SETTINGS.rtol):
            error = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
            raise WrongAnswer(
                f"output {name!r} differs from the reference (max abs error {error:.3g}, shape {got.shape})"
            )


def _nbytes(array: NDArray[Any]) -> int:
    if array.dtype == object:
        return sum(len(item) for item in array.ravel())
    return int(array.nbytes)

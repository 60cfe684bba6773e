"""The clients' pure logic: the backoff schedule, what is retried, and how errors are translated."""

from __future__ import annotations

import random

import gevent
import pytest
from tritonclient.utils import InferenceServerException

from clients import (
    AccessDenied,
    ClientError,
    GrpcChannelOptions,
    InferenceFailed,
    InferenceTimeout,
    InvalidInput,
    ModelNotReady,
    RetryPolicy,
    ServerOverloaded,
    ServerUnavailable,
    metrics_url,
    server_url,
)
from clients._boundary import DeadlineExpired, classify, translate
from clients.channel import INT32_MAX


def test_the_backoff_doubles_with_equal_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=6, backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(0)
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for retry, step in enumerate(steps):
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # jittered, not fixed
    assert policy.min_total_delay() == pytest.approx(sum(steps) / 2)
    assert policy.attempts == 7
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


def test_only_an_unavailable_server_is_retried_and_the_last_error_counts_the_attempts() -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.0)
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise ServerUnavailable("model 'm': server unavailable: Exceeds maximum queue size")

    with pytest.raises(ServerUnavailable) as caught:
        policy.run(refused)
    assert len(calls) == 3
    assert str(caught.value) == ("model 'm': server unavailable: Exceeds maximum queue size (gave up after 3 attempts)")

    def overloaded() -> None:
        raise ServerOverloaded("model 'm': queue full, refused: Exceeds maximum queue size")

    with pytest.raises(ServerOverloaded, match="gave up after 3 attempts"):  # still an overload, for load tests
        policy.run(overloaded)
    for final in (InvalidInput, ModelNotReady, InferenceFailed, InferenceTimeout):
        calls.clear()

        def fails(error: type[ClientError] = final) -> None:
            calls.append(1)
            raise error("final")

        with pytest.raises(final, match=r"^final$"):
            policy.run(fails)
        assert len(calls) == 1, final

    outcomes = iter([ServerUnavailable("busy"), "answer"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert policy.run(flaky) == "answer"


GRPC_AND_HTTP_ERRORS = [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; Connection timed out", ServerUnavailable),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ServerOverloaded),
    ("503", "Exceeds maximum queue size", ServerOverloaded),
    ("StatusCode.UNAVAILABLE", "Server is stopping", ServerUnavailable),
    ("StatusCode.CANCELLED", "CANCELLED", ServerUnavailable),  # a stopping server's calls in flight
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", InferenceTimeout),
    ("StatusCode.UNAVAILABLE", "Request timeout expired", InferenceTimeout),  # the request's own, in the queue
    ("StatusCode.INVALID_ARGUMENT", "input 'ids' not found in the request", InvalidInput),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found", ModelNotReady),
    ("400", "Request for unknown model: 'nope' is not found", ModelNotReady),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'nope' has no available versions", ModelNotReady),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'image'", InvalidInput),
    ("400", "inference request batch-size must be <= 16", InvalidInput),
    ("StatusCode.RESOURCE_EXHAUSTED", "CLIENT: Sent message larger than max (602157 vs. 1000)", InvalidInput),
    ("StatusCode.RESOURCE_EXHAUSTED", "Received message larger than max (4045 vs. 1000)", InferenceFailed),
    ("StatusCode.INTERNAL", "onnxruntime: failed to run the model", InferenceFailed),
    ("500", "Python model 'tokenizer' raised", InferenceFailed),
    # No admin key: not an unavailable server, so never retried.
    ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'admin-key'", AccessDenied),
    ("403", "This API is restricted, expecting header 'admin-key'", AccessDenied),
]


@pytest.mark.parametrize(("status", "message", "expected"), GRPC_AND_HTTP_ERRORS)
def test_server_errors_are_classified_by_status_then_message(
    status: str, message: str, expected: type[ClientError]
) -> None:
    error = classify(InferenceServerException(msg=message, status=status), "model 'm'", timeout_s=2.0)
    assert type(error) is expected
    assert message in str(error) and "model 'm'" in str(error)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
        (TimeoutError("timed out"), ServerUnavailable),  # a socket's (connect) timeout: a connection problem
        (gevent.Timeout(0.5), InferenceTimeout),  # the HTTP client's per-call deadline
        (DeadlineExpired("infer took longer than 0.5s"), InferenceTimeout),  # the asyncio client's
        (InferenceServerException(msg="unexpected input 'x'", status="400"), InvalidInput),
    ],
)
def test_translate_is_the_one_boundary(raised: BaseException, expected: type[ClientError]) -> None:
    with pytest.raises(expected) as caught, translate("m", 0.5):
        raise raised
    assert type(caught.value) is expected and caught.value.__cause__ is raised
    assert str(caught.value).startswith("model 'm'")


def test_a_load_refused_for_any_reason_but_reachability_is_model_not_ready() -> None:
    with pytest.raises(ModelNotReady, match="model 'm' failed to load: bad config"), translate("m", loading=True):
        raise InferenceServerException(msg="bad config", status="StatusCode.INVALID_ARGUMENT")
    with pytest.raises(ServerUnavailable), translate("m", loading=True):
        raise InferenceServerException(msg="failed to connect", status="StatusCode.UNAVAILABLE")


def test_kit_errors_pass_the_boundary_unchanged() -> None:
    error = InvalidInput("model 'm' has no input 'y'")
    with pytest.raises(InvalidInput) as caught, translate("m"):
        raise error
    assert caught.value is error


def test_custom_grpc_options_keep_the_message_size_limits() -> None:
    args = dict(GrpcChannelOptions(keepalive_time_s=60, extra=(("grpc.lb_policy_name", "round_robin"),)).channel_args())
    assert args["grpc.max_send_message_length"] == INT32_MAX
    assert args["grpc.max_receive_message_length"] == INT32_MAX
    assert args["grpc.keepalive_time_ms"] == 60_000 and args["grpc.keepalive_permit_without_calls"] == 1
    assert args["grpc.lb_policy_name"] == "round_robin"


@pytest.mark.parametrize(
    ("environ", "grpc", "http", "metrics"),
    [
        ({}, "127.0.0.1:8001", "127.0.0.1:8000", "http://127.0.0.1:8002/metrics"),
        (
            {"TRITON_HOST": "triton.internal", "TRITON_GRPC_PORT": "9001", "TRITON_HTTP_PORT": "9000"},
            "triton.internal:9001",
            "triton.internal:9000",
            "http://triton.internal:8002/metrics",
        ),
        # A server told to listen everywhere is reached on loopback; IPv6 literals get brackets.
        ({"TRITON_HOST": "0.0.0.0"}, "127.0.0.1:8001", "127.0.0.1:8000", "http://127.0.0.1:8002/metrics"),
        ({"TRITON_HOST": "::1", "TRITON_METRICS_PORT": "9"}, "[::1]:8001", "[::1]:8000", "http://[::1]:9/metrics"),
    ],
)
def test_every_part_of_the_kit_finds_the_server_from_the_same_variables(
    environ: dict[str, str], grpc: str, http: str, metrics: str
) -> None:
    assert server_url("grpc", environ) == grpc
    assert server_url("http", environ) == http
    assert metrics_url(environ) == metrics


@pytest.mark.parametrize("value", ["", "80o1", "0", "70000", "-1"])
def test_a_port_variable_that_is_not_a_port_is_named_with_what_to_do(value: str) -> None:
    with pytest.raises(
        ValueError, match=rf"TRITON_GRPC_PORT='{value}' is not a port: set it to a number from 1 to 65535"
    ):
        server_url("grpc", {"TRITON_GRPC_PORT": value})

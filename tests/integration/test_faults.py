"""Faults on the served side, in the spirit of Triton's L0_lifecycle tests: a backend process
killed under load, a server stopped with requests in flight, admin APIs asked for without the key.
Each asserts what a client of the kit sees."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import AccessDenied, ClientError, ModelNotReady, ServerOverloaded, ServerUnavailable, TritonClient
from server.admin_key import key_library
from server.embedded import SUPERVISOR_IN_CONTAINER, container_command
from server.installation import find_installation, prepare_backends, server_environment
from server.supervisor import KEY_LIBRARY_SETTING, kill_group, stub_processes, stub_regions
from tests.conftest import ROOT, echo_model, linear_model
from tests.integration.conftest import build_entries, make_server

pytestmark = [pytest.mark.server]

X = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)


def slow_model(seconds: float, max_batch_size: int = 1, max_queue_size: int | None = None) -> dict[str, object]:
    """A Python model busy `seconds` a request (y = x), with a queue of `max_queue_size` if given."""
    entry: dict[str, object] = {
        "name": "slow",
        "kind": "python",
        "source": "tests.tiny_processors:Slow",
        "options": {"seconds": seconds},
        "max_batch_size": max_batch_size,
        "inputs": [{"name": "x", "dtype": "TYPE_FP32", "dims": [4]}],
        "outputs": [{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
    }
    if max_queue_size is not None:
        entry["dynamic_batching"] = {"default_queue_policy": {"max_queue_size": max_queue_size}}
    return entry


# A stub's model of each kind the kit writes: a Python pre/post-processing model, and a compiled
# variant (the example's, copied), with the request a client sends it.
IDS = np.random.default_rng(0).integers(1, 8192, (1, 32), dtype=np.int64)
STUB_MODELS = {
    "python": ("echo", {"x": X}),
    "compiled": ("text_encoder_compiled", {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}),
}


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
@pytest.mark.parametrize("kind", sorted(STUB_MODELS))
def test_a_backend_process_killed_twice_in_a_row_costs_no_request_of_a_retrying_client(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kill -9 of the stub serving a model under load, then of its successor: the supervisor
    reloads the model each time, within seconds, and the client's retries carry every request over
    both gaps (Triton alone fails them for good). Each killed stub's shared memory goes with it."""
    model, feed = STUB_MODELS[kind]
    if kind == "python":
        repo = build_entries(tmp_path, echo_model(dynamic_batching={"max_queue_delay_microseconds": 500}))
    else:
        repo = tmp_path / "repo"
        shutil.copytree(request.getfixturevalue("example_repository") / model, repo / model)
    server = make_server(repo, tmp_path)
    # A stub killed with requests in it keeps its model generation alive for good (Triton 2.51's
    # Python backend, see docs/reliability.md): the stop then waits out the whole exit timeout.
    server.exit_timeout_s = 5
    server.start(timeout_s=240)
    regions = stub_regions(server.pid or 0)  # this server's, not those of servers beside it
    stop = threading.Event()
    outcomes: list[tuple[float, ClientError | None]] = []

    def load() -> None:
        with TritonClient(server.grpc_url, retries=8, backoff_s=0.2) as client:
            while not stop.is_set():
                try:
                    client.infer(model, feed)
                    outcomes.append((time.monotonic(), None))
                except ClientError as error:
                    outcomes.append((time.monotonic(), error))

    kills: list[float] = []
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(4):
                pool.submit(load)
            time.sleep(1.0)
            for round_ in (1, 2):
                victims = [pid for pid, name in stub_processes(server.pid or 0).items() if name.startswith(f"{model}_")]
                if not victims:  # the server itself went down (see below)
                    break
                regions |= stub_regions(server.pid or 0)
                kills.append(time.monotonic())
                os.kill(max(victims), signal.SIGKILL)  # the newest: of the live generation
                deadline = time.monotonic() + 60
                while len(server.reloads) < round_ and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2.0)  # load goes on against the reloaded model
            stop.set()
        regions |= stub_regions(server.pid or 0)
        log = server.log_tail(lines=10_000)
    finally:
        stop.set()
        server.stop()
    if "boost::interprocess::lock_exception" in log:
        # Triton's own abort, not the kit's: a stub killed while it holds its shared-memory queue's
        # lock takes the server down with it (bench/faults.py saw 1 in ~16 kills under load).
        pytest.skip("tritonserver aborted: the killed stub held its queue's lock (a Triton 2.51 limitation)")
    assert [r.get("model") for r in server.reloads] == [model, model], server.reloads
    # Serving again within 5 s each time, under load on 2 cores (issue 25's target).
    assert all("error" not in r and float(r["seconds"]) < 5.0 for r in server.reloads), server.reloads  # type: ignore[arg-type]
    failures = [error for _, error in outcomes if error is not None]
    after = [[at for at, error in outcomes if at > kill and error is None] for kill in kills]
    print(
        f"{model}'s stub killed twice: served again {[r['seconds'] for r in server.reloads]} s after each reload began; "
        f"{[len(a) for a in after]} requests answered after each kill, {len(failures)} failed"
    )
    assert failures == []
    assert len(after[1]) > 20 and len(after[0]) > len(after[1])  # the load went on through both gaps
    assert log.count(f"died: reloading model '{model}'") == 2
    assert regions and not [name for name in regions if Path("/dev/shm", name).exists()], "the stubs' regions are gone"


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_a_reload_with_a_new_config_is_not_mistaken_for_dead_stubs(tmp_path: Path) -> None:
    """A load request with a config override retires the old instances' stubs: the supervisor
    leaves them be, so the new config stays served (reloading would race it back to the old one)."""
    repo = build_entries(tmp_path, echo_model(dynamic_batching={"max_queue_delay_microseconds": 500}))
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:
        with TritonClient(server.grpc_url, timeout_s=60) as client:
            config = client.config("echo")
            for count in (3, 1, 2):
                config["instance_group"][0]["count"] = count
                client.load_model("echo", config=json.dumps(config))
                time.sleep(2.0)  # several supervisor scans after the old stubs left
                served = client.config("echo")["instance_group"][0]["count"]
                instances = [n for n in stub_processes(server.pid or 0).values() if n.startswith("echo_")]
                assert (served, len(instances)) == (count, count), (count, served, instances, server.reloads)
                assert client.infer("echo", {"x": X})
    finally:
        server.stop()
    assert server.reloads == []


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_a_model_unloading_in_a_drain_is_answered_as_unavailable_and_in_flight_work_finishes(
    tmp_path: Path,
) -> None:
    """SIGTERM with a slow request in flight: Triton unloads the idle model at once and waits for
    the busy one. A request to the unloaded model must read as a stopping server (retryable, so
    a client behind two servers moves on), not as a missing model; unloaded by hand on a server
    that stays up, it is missing for good."""
    repo = build_entries(tmp_path, linear_model(), slow_model(seconds=4.0, max_batch_size=8))
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    try:
        with TritonClient(server.grpc_url) as busy, TritonClient(server.grpc_url, retries=0) as client:
            client.unload_model("linear")
            with pytest.raises(ModelNotReady, match=r"has no available versions$"):
                client.infer("linear", {"x": X})
            client.load_model("linear")
            client.infer("linear", {"x": X})
            with ThreadPoolExecutor(max_workers=1) as pool:
                in_flight = pool.submit(busy.infer, "slow", {"x": X})
                time.sleep(1.0)
                server.terminate()
                errors: list[ClientError] = []
                while not in_flight.done():  # the whole drain: "stopping" first, then the model is gone
                    try:
                        client.infer("linear", {"x": X})
                    except ClientError as error:
                        errors.append(error)
                    time.sleep(0.05)
                finished = in_flight.result(timeout=30)
    finally:
        server.stop()
    assert errors, "the drain never refused a request"
    assert [e for e in errors if not isinstance(e, ServerUnavailable)] == []
    # Once the idle model is unloaded, Triton answers NOT_FOUND; the client asks the server.
    assert any("has no available versions (the server is not ready: stopping or starting)" in str(e) for e in errors)
    np.testing.assert_array_equal(finished["y"], X)


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_the_containers_supervisor_script_brings_a_killed_stub_back_and_drains_on_sigterm(tmp_path: Path) -> None:
    """What docker-compose.yml and the Kubernetes manifests run, with the wheel's tritonserver in
    place of the NGC image's: the same script and flags, the same recovery as `make serve`."""
    repo = build_entries(tmp_path, echo_model())
    ports = make_server(repo, tmp_path)  # for its free ports and backends folder
    installation = find_installation()
    prepare_backends(ports.backend_dir, installation)
    in_container = container_command(str(repo.resolve()))
    assert in_container[:4] == ["python3", SUPERVISOR_IN_CONTAINER, "--", "tritonserver"]
    command = [
        sys.executable, str(ROOT / "server" / "supervisor.py"), "--", str(installation.binary), *in_container[4:],
        f"--backend-directory={ports.backend_dir.resolve()}", f"--cache-directory={installation.caches}",
        "--http-address=127.0.0.1", f"--http-port={ports.http_port}", "--grpc-address=127.0.0.1",
        f"--grpc-port={ports.grpc_port}", f"--metrics-port={ports.metrics_port}",
    ]  # fmt: skip
    log = tmp_path / "supervised.log"
    # The kit image's set-up: a chosen admin key (model control, which the reload uses, needs it)
    # kept off the command line by the preloaded library.
    environment = {
        **server_environment(installation),
        "TRITON_ADMIN_KEY": "container-s3cret",
        KEY_LIBRARY_SETTING: str(key_library()),
    }
    with log.open("wb") as sink:
        wrapper = subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "watching the stub processes" not in log.read_text() and time.monotonic() < deadline:
            assert wrapper.poll() is None, log.read_text()
            time.sleep(0.2)
        (server_pid,) = [int(p) for p in Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()]
        (victim,) = [pid for pid, name in stub_processes(server_pid).items() if name.startswith("echo_")]
        assert b"container-s3cret" not in Path(f"/proc/{server_pid}/cmdline").read_bytes()
        with TritonClient(ports.grpc_url, retries=8, backoff_s=0.25) as client:
            expected = client.infer("echo", {"x": X})["y"]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while "serves again" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            np.testing.assert_array_equal(client.infer("echo", {"x": X})["y"], expected)
        assert "stub process of echo_0_0 died: reloading model 'echo'" in log.read_text()
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=60) == 0, log.read_text()
        assert not Path(f"/proc/{server_pid}").exists() and stub_processes(server_pid) == {}
    finally:
        if wrapper.poll() is None:
            # The server runs in a process group of its own: a killed script would leave it behind.
            servers = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()
            wrapper.kill()
            wrapper.wait()
            for pid in servers:
                kill_group(int(pid))


def test_log_settings_and_model_control_need_the_admin_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin key guards the admin APIs, and no process of the server shows it to other local
    users: not tritonserver's command line (which Triton 2.51 reads keys from), not a stub's, and
    not their environments either, once started."""
    monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
    repo = build_entries(tmp_path, linear_model(), echo_model())
    server = make_server(repo, tmp_path)
    server.admin_key = "s3cret"
    server.start(timeout_s=240)
    processes = [server.pid or 0, *stub_processes(server.pid or 0)]
    assert len(processes) == 2  # the server and echo's stub
    for pid in processes:
        for view in ("cmdline", "environ"):
            assert b"s3cret" not in Path(f"/proc/{pid}/{view}").read_bytes(), f"/proc/{pid}/{view} holds the key"
    assert b"@TRITON_KIT_ADMIN_KEY@" in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    # Closed before the stop: Triton waits out its exit timeout (30 s) for open HTTP connections.
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for call in (
            lambda headers: client.update_log_settings({"log_verbose_level": 1}, headers=headers),
            lambda headers: client.unload_model("linear", headers=headers),
        ):
            with pytest.raises(InferenceServerException, match="This API is restricted, expecting header 'admin-key'"):
                call(None)
            with pytest.raises(InferenceServerException, match="restricted"):
                call({"admin-key": "guess"})
        client.update_log_settings({"log_verbose_level": 0}, headers={"admin-key": "s3cret"})
        assert client.is_model_ready("linear")  # nothing above reached the model
        with TritonClient(server.grpc_url) as kit:
            expected = kit.infer("linear", {"x": X})["y"]  # inference needs no key
            for locked in (lambda: kit.infer("linear", {"x": X}, shared_memory=True), lambda: kit.models()):
                with pytest.raises(AccessDenied, match=r"restricted.*TRITON_ADMIN_KEY") as refused:
                    locked()
                assert "gave up after" not in str(refused.value)  # asked once: the key will not appear
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with TritonClient(url, protocol, admin_key="s3cret") as admin:
                np.testing.assert_array_equal(admin.infer("linear", {"x": X}, shared_memory=True)["y"], expected)
                admin.unload_model("linear")
                admin.load_model("linear")
                assert {m["name"]: m["state"] for m in admin.models()} == {"echo": "READY", "linear": "READY"}
    finally:
        client.close()
        server.stop()


def test_a_second_server_on_ports_in_use_refuses_to_start_instead_of_reporting_ready(tmp_path: Path) -> None:
    repo = build_entries(tmp_path, linear_model())
    first = make_server(repo, tmp_path / "first")
    first.start(timeout_s=240)
    try:
        second = make_server(repo, tmp_path / "second")
        second.http_port = first.http_port
        with pytest.raises(Exception, match=rf"port\(s\) {first.http_port} on 127.0.0.1 are in use"):
            second.start(timeout_s=60)
        assert second.pid is None
    finally:
        first.stop()


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_overload_is_refused_at_once_while_admitted_requests_are_answered(tmp_path: Path) -> None:
    """A queue bounded at 2 on a model busy for 1 s a request: of 12 sent at once, those beyond
    the one running and the two queued are refused as unavailable (retryable), none fails."""
    repo = build_entries(tmp_path, slow_model(seconds=1.0, max_queue_size=2))
    server = make_server(repo, tmp_path)
    server.start(timeout_s=240)
    clients = [TritonClient(server.grpc_url, retries=0, timeout_s=60) for _ in range(12)]
    try:
        for client in clients:
            client.signature("slow")  # connected and described before the burst

        def call(client: TritonClient) -> object:
            try:
                return client.infer("slow", {"x": X})
            except ClientError as error:
                return error

        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(call, clients))
    finally:
        for client in clients:
            client.close()
        server.stop()
    answered = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert refused and all(
        isinstance(r, ServerOverloaded) and "exceeds maximum queue size" in str(r).lower() for r in refused
    )
    assert len(answered) >= 3 and all(np.array_equal(r["y"], X) for r in answered)


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_a_load_test_counts_queue_refusals_as_rejected_not_failed(tmp_path: Path) -> None:
    """Locust users beyond what a queue of 1 admits are refused at once; the report counts them
    as rejected, keeps them out of throughput and latency, and a rejected-ratio threshold fails
    the run on them."""
    server = make_server(build_entries(tmp_path, slow_model(seconds=0.2, max_queue_size=1)), tmp_path)
    server.start(timeout_s=240)
    try:
        report = tmp_path / "report"
        run = subprocess.run(
            [sys.executable, "-m", "loadtest", "--model", "slow", "--url", server.grpc_url, "--steps", "1",
             "--step-seconds", "4", "--step-users", "8", "--report-dir", str(report), "--max-rejected-ratio", "0.01"],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        server.stop()
    total = json.loads((report / "summary.json").read_text())["total"]
    # One running and one queued at a time: of 8 closed-loop users most are refused, none fails.
    assert total["failures"] == 0 and total["rejected"] > total["requests"] / 2, total
    assert total["rps"] <= 1 / 0.2 * 1.5, total  # answered ones only: the slow model's pace
    assert total["p50_ms"] >= 200, total
    assert run.returncode == 1 and "rejected ratio" in run.stdout + run.stderr, run.stdout + run.stderr
    assert "rejected (queue full)" in run.stdout


@pytest.mark.serial  # kills, drains or overloads a server, within time limits
def test_a_rolling_restart_behind_a_retrying_client_fails_no_request(tmp_path: Path) -> None:
    """Two servers of one repository, one stopped (SIGTERM) under load: every request the
    stopping server refuses or drops comes back as ServerUnavailable, so a caller that moves to
    the other server on it (what a Kubernetes Service does for the kit's client) loses none."""
    repo = build_entries(tmp_path, linear_model(dynamic_batching={"max_queue_delay_microseconds": 500}))
    servers = [make_server(repo, tmp_path / name) for name in ("a", "b")]
    for server in servers:
        server.start(timeout_s=240)
    stop, served = threading.Event(), Counter[int]()
    failures: list[Exception] = []

    def caller() -> None:
        clients = [TritonClient(s.grpc_url, retries=0) for s in servers]
        turn = 0
        try:
            while not stop.is_set():
                for attempt in range(2):  # this server, then the other one
                    index = (turn + attempt) % 2
                    try:
                        clients[index].infer("linear", {"x": X})
                        served[index] += 1
                        break
                    except ServerUnavailable:
                        continue
                    except ClientError as error:
                        failures.append(error)
                        break
                else:
                    failures.append(AssertionError("both servers refused"))
                turn += 1
        finally:
            for client in clients:
                client.close()

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(4):
                pool.submit(caller)
            time.sleep(1.0)
            before = dict(served)
            servers[0].terminate()
            code = servers[0].wait()
            time.sleep(1.0)
            stop.set()
    finally:
        stop.set()
        for server in servers:
            server.stop()
    assert failures == []
    assert code == 0 and before.get(0, 0) > 0  # the first server had its share, then exited cleanly
    assert served[1] > before.get(1, 0) + 20  # the second one took the load over

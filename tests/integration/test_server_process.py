"""The embedded server process: it stops with its stub processes, from the API and from `make serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clients import TritonClient
from server import ServerError
from server.supervisor import stub_regions
from tests.conftest import ROOT, echo_model, ensemble_model, free_port, linear_model
from tests.integration.conftest import build_entries, make_server, process_group

pytestmark = pytest.mark.server


def test_stop_ends_the_server_and_its_stub_processes(tiny_repository: Path, tmp_path: Path) -> None:
    server = make_server(tiny_repository, tmp_path)
    server.start()
    try:
        pgid = server.pid
        assert pgid is not None
        assert len(process_group(pgid)) >= 2  # tritonserver and the Python model's stub
        with TritonClient(server.grpc_url) as client:
            assert client.infer("linear", {"x": np.ones((2, 4), dtype=np.float32)})["y"].shape == (2, 3)
            assert client.infer("echo", {"x": np.ones((2, 4), dtype=np.float32)})["y"].shape == (2, 4)
    finally:
        server.stop()
    assert process_group(pgid) == []


def test_a_model_that_fails_to_load_reports_the_server_log(tiny_repository: Path, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    (broken / "linear" / "1").mkdir(parents=True)
    (broken / "linear" / "config.pbtxt").write_text((tiny_repository / "linear" / "config.pbtxt").read_text())
    (broken / "linear" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = make_server(broken, tmp_path)
    with pytest.raises(ServerError) as caught:
        server.start(timeout_s=60)
    assert "before it was ready" in str(caught.value)
    assert "linear" in caught.value.log_tail


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_make_serve_drains_once_when_its_process_group_is_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    """A terminal's Ctrl-C and a process manager's SIGTERM reach every process of the group, and
    may reach the server again at once through make: one drain all the same, to its end (the
    request in flight answered, every model unloaded, no shared memory left). The request is an
    ensemble's, in its first step: its second must still run, though Triton refuses new work to
    every model once signalled, so the ensemble is drained before the server is."""
    started = tmp_path / "started"
    linear, echo = linear_model(), echo_model(options={"seconds": 3.0, "started": str(started)})
    steps = [("echo", {"x": "x"}, {"y": "echoed"}), ("linear", {"x": "echoed"}, {"y": "y"})]
    pipeline = ensemble_model("pipeline", steps, inputs=echo["inputs"], outputs=linear["outputs"])
    repo = build_entries(tmp_path, linear, echo, pipeline)
    ports = {name: str(free_port()) for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")}
    make = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"REPO={repo}"],
        cwd=ROOT,
        env={**os.environ, **ports},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, as a terminal's foreground job is
    )
    x = np.ones((1, 4), np.float32)
    try:
        with TritonClient(f"127.0.0.1:{ports['TRITON_GRPC_PORT']}", timeout_s=30, retries=0) as client:
            client.wait_until_ready(model="echo", timeout_s=120)
            server_pid = int(
                subprocess.check_output(
                    ["pgrep", "-f", f"tritonserver.*--http-port={ports['TRITON_HTTP_PORT']}"]
                ).split()[0]
            )
            regions = stub_regions(server_pid)
            assert regions and all((Path("/dev/shm") / name).exists() for name in regions)
            expected = client.infer("linear", {"x": x})["y"]
            started.unlink(missing_ok=True)  # the build's own checks ran the model
            with ThreadPoolExecutor(max_workers=1) as pool:
                in_flight = pool.submit(client.infer, "pipeline", {"x": x})
                deadline = time.monotonic() + 30
                while not started.exists() and time.monotonic() < deadline:  # in the model, not on its way
                    time.sleep(0.05)
                os.killpg(make.pid, sig)
                time.sleep(0.3)
                os.killpg(make.pid, sig)  # the same stop again, as a forwarding parent delivers it
                answer = in_flight.result(timeout=30)["y"]
        output, _ = make.communicate(timeout=90)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    np.testing.assert_array_equal(answer, expected)
    # make re-raises the signal it got on itself once its recipe ended (GNU make's convention);
    # the server process under it exits 0 and leaves nothing behind.
    text = output.decode(errors="replace")
    assert make.returncode in (0, -sig), text[-3000:]
    assert "Traceback" not in text
    deadline = time.monotonic() + 10
    while process_group(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_group(server_pid) == []
    assert text.count("stopping the server") == 1 and "forcing" not in text, text[-3000:]
    assert "draining still" in text
    assert "ensembles pipeline drained in" in text, text[-3000:]
    for model in ("linear", "echo", "pipeline"):
        assert f"successfully unloaded '{model}' version 1" in text, text[-3000:]
    assert not [name for name in regions if (Path("/dev/shm") / name).exists()], "the stubs' shared memory is gone"


def test_an_empty_repository_is_refused_rather_than_reported_ready(tmp_path: Path) -> None:
    (tmp_path / "repo" / "leftover").mkdir(parents=True)  # a failed build's remains: no config.pbtxt
    server = make_server(tmp_path / "repo", tmp_path)
    with pytest.raises(ServerError, match=r"holds no model .* would report ready and serve nothing; build it"):
        server.start(timeout_s=60)
    assert server.pid is None

"""`python -m loadtest` against the real server: a short run writes a complete report; thresholds
and references fail the run; the run stops by itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from clients import TritonClient
from server import EmbeddedTriton
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def summary_of(report: Path) -> dict:
    return json.loads((report / "summary.json").read_text())


def test_a_stepped_grpc_run_writes_the_whole_report(triton: EmbeddedTriton, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = loadtest(
        "--model", "text_encoder", "--url", triton.grpc_url, "--steps", "2", "--step-seconds", "3",
        "--step-users", "4", "--report-dir", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    # A line every few seconds while it runs, from Locust's own live figures.
    progress = [line for line in result.stdout.splitlines() if line.startswith("  ") and " s of 6" in line]
    assert progress and re.search(r"users \d+/8 +[\d.]+ req/s +p95 \S+ ms +requests \d+ +failed 0$", progress[-1]), (
        result.stdout
    )
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "steps.png", "summary.json"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = summary_of(report)
    assert summary["total"]["requests"] > 0 and summary["total"]["failures"] == 0
    assert [s["users"] for s in summary["steps"]] == [4, 8]
    for step in summary["steps"]:
        assert step["requests"] > 0 and step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
        server = step["server"]
        # The breakdown comes from the statistics API: the server saw what Locust sent.
        assert server["requests"] >= step["requests"] * 0.9
        assert server["compute_infer_us"] > 0 and server["avg_batch_size"] >= 1.0
    generator = summary["generator"]
    # Bounded: Locust ends by itself soon after the last step, gRPC channels and all.
    assert generator["stopped_by_itself"] is True and generator["seconds"] < 6 + 25
    assert generator["cpu_percent_per_process"]
    assert summary["thresholds"]["passed"] is True
    # Locust's own CSV agrees with the kit's request log, up to the requests of the last moments
    # (the summary counts the steps' span; Locust also what finished while it stopped).
    rows = (report / "locust_stats.csv").read_text().splitlines()
    locust_count = int(next(line for line in rows if ",Aggregated," in line).split(",")[2])
    assert summary["total"]["requests"] * 0.97 <= locust_count <= summary["total"]["requests"] * 1.03
    assert summary["total"]["requests"] == sum(s["requests"] for s in summary["steps"])


def test_an_http_run_against_an_ensemble(triton: EmbeddedTriton, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = loadtest(
        "--model", "text_embedding", "--protocol", "http", "--url", triton.http_url, "--steps", "1",
        "--step-seconds", "3", "--step-users", "2", "--report-dir", str(report), "--max-failure-ratio", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = summary_of(report)
    assert summary["protocol"] == "http" and summary["inputs"] == {"text": "BYTES"}
    assert summary["total"]["requests"] > 0 and summary["total"]["failures"] == 0
    # The pipeline's members, from their own statistics: each request passed through each of them.
    (step,) = summary["steps"]
    members = step["server"]["members"]
    assert list(members) == ["tokenizer", "text_encoder", "embedding_normalize"]
    for name, member in members.items():
        assert abs(member["inferences"] - step["server"]["requests"]) <= 2, name
        assert member["executions"] <= member["inferences"] and member["compute_infer_us"] > 0, name
        assert (
            f"   {name}: {member['inferences']:.0f} inferences in {member['executions']:.0f} executions"
            in result.stdout
        )


def test_an_impossible_threshold_fails_the_run(triton: EmbeddedTriton, tmp_path: Path) -> None:
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("min_rps: 1000000000\nmax_p95_ms: 0.001\n")
    result = loadtest(
        "--model", "text_encoder", "--url", triton.grpc_url, "--steps", "1", "--step-seconds", "2",
        "--report-dir", str(tmp_path / "report"), "--thresholds", str(thresholds),
    )  # fmt: skip
    assert result.returncode == 1
    assert "threshold violated: throughput" in result.stderr and "threshold violated: p95 latency" in result.stderr
    assert summary_of(tmp_path / "report")["thresholds"]["passed"] is False


def test_answers_are_checked_against_a_reference(triton: EmbeddedTriton, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payload = {"input_ids": rng.integers(0, 8192, (1, 12)), "attention_mask": np.ones((1, 12), dtype=np.int64)}
    np.savez(tmp_path / "payload.npz", **payload)
    with TritonClient(triton.grpc_url) as client:
        right = client.infer("text_encoder", payload)
    np.savez(tmp_path / "right.npz", **right)
    np.savez(tmp_path / "wrong.npz", embedding=right["embedding"] + 0.5)
    common = [
        "--model",
        "text_encoder",
        "--url",
        triton.grpc_url,
        "--steps",
        "1",
        "--step-seconds",
        "2",
        "--payload",
        str(tmp_path / "payload.npz"),
    ]
    good = loadtest(
        *common,
        "--expect",
        str(tmp_path / "right.npz"),
        "--report-dir",
        str(tmp_path / "good"),
        "--max-failure-ratio",
        "0",
    )
    assert good.returncode == 0, good.stderr
    assert summary_of(tmp_path / "good")["total"]["failures"] == 0
    bad = loadtest(
        *common,
        "--expect",
        str(tmp_path / "wrong.npz"),
        "--report-dir",
        str(tmp_path / "bad"),
        "--max-failure-ratio",
        "0",
    )
    assert bad.returncode == 1
    total = summary_of(tmp_path / "bad")["total"]
    assert total["requests"] > 0 and total["failures"] == total["requests"]
    assert "differs from the reference" in (tmp_path / "bad" / "locust_failures.csv").read_text()


def test_no_server_is_a_clear_setup_error(tmp_path: Path) -> None:
    result = loadtest(
        "--model", "text_encoder", "--url", f"127.0.0.1:{free_port()}", "--report-dir", str(tmp_path / "r")
    )
    assert result.returncode == 2
    assert "start the server with `make serve`" in result.stderr
    assert "Traceback" not in result.stderr


def test_locust_started_directly_generates_its_payload(triton: EmbeddedTriton, tmp_path: Path) -> None:
    # What the compose `loadtest` profile does: Locust on the locustfile, settings from the
    # environment, no runner to write the payload first.
    settings = {
        "url": triton.grpc_url,
        "model": "text_encoder",
        "steps": 1,
        "step_seconds": 2,
        "step_users": 2,
        "report_dir": str(tmp_path),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "loadtest/locustfile.py",
            "--headless",
            "--csv",
            str(tmp_path / "locust"),
            "--exit-code-on-error",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, "TRITON_LOADTEST_SETTINGS": json.dumps(settings), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    hung = [p for p in tmp_path.glob("exit-hang-*.txt") if p.stat().st_size]
    # 0, or 1 from the watchdog that ended a process grpcio kept from exiting (its report says where).
    assert result.returncode == 0 or (result.returncode == 1 and hung), result.stderr[-2000:]
    aggregated = next(
        line for line in (tmp_path / "locust_stats.csv").read_text().splitlines() if ",Aggregated," in line
    )
    requests, failures = (int(v) for v in aggregated.split(",")[2:4])
    assert requests > 0 and failures == 0


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add("127.0.0.1" if address == "0100007F" else address)
    return found


def test_several_processes_keep_the_locust_master_on_loopback(triton: EmbeddedTriton, tmp_path: Path) -> None:
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(listening_addresses(5557))  # Locust's master port
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = loadtest(
            "--model", "text_encoder", "--url", triton.grpc_url, "--steps", "1", "--step-seconds", "4",
            "--step-users", "2", "--processes", "2", "--report-dir", str(tmp_path / "report"),
        )  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr + result.stdout
    assert seen == {"127.0.0.1"}


@pytest.mark.serial  # holds the server to request rates
def test_an_open_loop_run_holds_its_rates_as_the_server_counts_them(triton: EmbeddedTriton, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = loadtest(
        "--model", "text_encoder", "--url", triton.grpc_url, "--rate", "40", "80", "--step-seconds", "3",
        "--report-dir", str(report), "--max-failure-ratio", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = summary_of(report)
    steps = summary["steps"]
    assert [s["offered_rps"] for s in steps] == [40, 80]
    for step in steps:
        # Every scheduled arrival was sent, answered, and seen by the server in its own step.
        assert step["requests"] == round(step["offered_rps"] * 3) and step["dropped"] == step["failures"] == 0
        assert step["rps"] >= 0.98 * step["offered_rps"]
        assert abs(step["server"]["requests"] - step["requests"]) <= 2
    assert sum(s["server"]["requests"] for s in steps) == summary["total"]["requests"] == 360
    assert summary["knee"]["held_rps"] == 80 and summary["knee"]["broke_at_rps"] is None
    assert summary["generator"]["mode"] == "open loop" and summary["generator"]["sent"] == 360
    assert "step 2/2: offering 80 req/s" in result.stdout and "open loop: held up to 80 req/s" in result.stdout


@pytest.mark.serial  # holds the server to request rates
def test_an_open_loop_drops_what_exceeds_its_bound_and_says_where_the_server_broke(
    triton: EmbeddedTriton, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    result = loadtest(
        "--model", "image_classifier", "--url", triton.grpc_url, "--rate", "2", "400", "--step-seconds", "2",
        "--max-in-flight", "1", "--report-dir", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    summary = summary_of(report)
    gentle, flood = summary["steps"]
    assert gentle["dropped"] == 0 and gentle["requests"] == 4
    # One request at a time: most of the 800 arrivals were never sent, and none was lost silently.
    assert flood["dropped"] > 400 and flood["requests"] + flood["dropped"] == 800
    assert summary["generator"]["sent"] == summary["total"]["requests"]
    assert sum(s["server"]["requests"] for s in summary["steps"]) == summary["generator"]["sent"]
    assert summary["knee"] == {
        "held_rps": 2.0, "held_p95_ms": gentle["p95_ms"], "broke_at_rps": 400.0, "broke_p95_ms": flood["p95_ms"]
    }  # fmt: skip


def test_a_report_folder_in_use_is_refused_unless_overwritten(triton: EmbeddedTriton, tmp_path: Path) -> None:
    report = tmp_path / "report"
    args = ("--model", "text_encoder", "--url", triton.grpc_url, "--rate", "20", "--step-seconds", "1")
    assert loadtest(*args, "--report-dir", str(report)).returncode == 0
    first = summary_of(report)
    again = loadtest(*args, "--report-dir", str(report))
    assert again.returncode == 2 and f"report folder {report} is not empty" in again.stderr
    assert summary_of(report) == first  # untouched
    (report / "stale.csv").write_text("left by someone\n")
    replaced = loadtest(*args, "--report-dir", str(report), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (report / "stale.csv").exists() and len(summary_of(report)["steps"]) == 1


def plain_locust(*args: str, **popen: object) -> subprocess.Popen[str]:
    """Locust started on the locustfile by hand, with only its own options (no runner settings)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_LOADTEST_SETTINGS"}
    return subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def test_plain_locust_runs_headless_from_its_own_options(triton: EmbeddedTriton, tmp_path: Path) -> None:
    process = plain_locust(
        "--headless", "--host", f"grpc://{triton.grpc_url}", "--triton-model", "text_encoder", "--steps", "2",
        "--step-users", "2", "--step-seconds", "2", "--triton-report-dir", str(tmp_path), "--csv", str(tmp_path / "locust"),
    )  # fmt: skip
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]
    snapshots = (tmp_path / "server_stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in snapshots] == [0, 1, 2]  # the step shape ran
    aggregated = next(
        line for line in (tmp_path / "locust_stats.csv").read_text().splitlines() if ",Aggregated," in line
    )
    requests, failures = (int(v) for v in aggregated.split(",")[2:4])
    assert requests > 0 and failures == 0


def test_plain_locust_refuses_a_host_that_names_no_triton_server(tmp_path: Path) -> None:
    process = plain_locust("--headless", "--host", "localhost:8001", "-t", "1s")
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "error: --host 'localhost:8001' names no Triton server: give grpc://HOST:PORT or http://HOST:PORT" in output
    assert "Traceback" not in output


def test_plain_locust_serves_its_web_ui_on_loopback_and_loads_from_it(triton: EmbeddedTriton, tmp_path: Path) -> None:
    port = free_port()
    process = plain_locust(
        "--web-port", str(port), "--host", f"grpc://{triton.grpc_url}", "--triton-model", "text_encoder",
        "--steps", "1", "--step-users", "2", "--step-seconds", "60", "--triton-report-dir", str(tmp_path),
    )  # fmt: skip
    ui = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while listening_addresses(port) == set() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listening_addresses(port) == {"127.0.0.1"}  # not every interface
        started = urllib.request.urlopen(
            urllib.request.Request(f"{ui}/swarm", data=b"user_count=2&spawn_rate=2", method="POST"), timeout=10
        )
        assert json.load(started)["success"] is True
        requests = 0
        while requests == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            stats = json.load(urllib.request.urlopen(f"{ui}/stats/requests", timeout=10))
            requests = next((s["num_requests"] for s in stats["stats"] if s["name"] == "text_encoder"), 0)
        assert requests > 0 and stats["fail_ratio"] == 0
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.mark.serial  # holds the server to request rates
def test_a_bounded_tune_measures_candidates_resumes_and_writes_the_winner_into_the_spec(tmp_path: Path) -> None:
    # A spec of its own (--write edits it), the tiny model built from it, the embedded server.
    from builder.pipeline import build_repository
    from builder.spec import OnnxModelSpec, load_spec
    from loadtest.tune import Candidate

    spec = tmp_path / "models.yaml"
    spec.write_text(TUNE_SPEC)
    build_repository(spec, tmp_path / "repo", target="cpu", log=lambda _: None)
    out = tmp_path / "tune"
    args = ["tune", "--model", "linear", "--p95-ms", "50", "--spec", str(spec), "--repo", str(tmp_path / "repo"),
            "--step-seconds", "0.5", "--start-rps", "1000", "--out", str(out)]  # fmt: skip
    first = loadtest(*args, "--budget-s", "20", "--confirmations", "0")
    assert first.returncode == 0, first.stdout + first.stderr
    summary = json.loads((out / "tune.json").read_text())
    measured = [json.loads(line) for line in (out / "tune.jsonl").read_text().splitlines()]
    assert summary["baseline"]["label"] == measured[0]["label"] and summary["baseline"]["sustained_rps"] > 0
    assert len(measured) >= 2 and summary["candidates"] == len(measured)
    # Each candidate's rate is one it held: answered in full within the budget.
    for result in measured:
        held = [t for t in result["trials"] if t["held"]]
        assert result["sustained_rps"] == (round(max(t["offered_rps"] for t in held), 1) if held else 0.0)
        assert all(t["p95_ms"] <= 50 for t in held)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "tune.csv").read_text().count("\n") == len(
        measured
    ) + 1
    # Run again on the same folder: what was measured is not measured again, and costs no budget.
    again = loadtest(*args, "--budget-s", "1", "--confirmations", "1", "--write")
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(f"{result['label']}: measured before" in again.stdout for result in measured)
    assert len((out / "tune.jsonl").read_text().splitlines()) == len(measured)  # its 1 s went before a new one
    winner = json.loads((out / "tune.json").read_text())["winner"]
    model = load_spec(spec).model("linear")
    assert isinstance(model, OnnxModelSpec)
    expected = Candidate(
        **{**winner["candidate"], "preferred_batch_size": tuple(winner["candidate"]["preferred_batch_size"])}
    )
    assert Candidate.of(model) == expected
    assert spec.read_text().startswith("# the tune test's spec\n")  # comments kept
    if winner["label"] != summary["baseline"]["label"]:
        assert "wrote the winner's options into" in again.stdout
        changed = [
            line for line in (out / "spec.patch").read_text().splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]  # fmt: skip
        # Only the tuned options move; the rest of the file is left as written.
        keys = (
            "count:",
            "max_queue_delay_microseconds:",
            "preferred_batch_size:",
            "intra_op_thread_count",
            "cpu:",
            "dynamic_batching:",
            "instance_group:",
        )
        assert changed and all(any(key in line for key in keys) for line in changed), changed


# tests.tiny_models:linear, laid out as models.yaml is (the layout --write keeps).
TUNE_SPEC = """\
# the tune test's spec
models:
  - name: linear
    source: tests.tiny_models:linear        # [N, 4] -> [N, 3]
    max_batch_size: 8
    inputs:
      - {name: x, dtype: TYPE_FP32, dims: [4]}
    outputs:
      - {name: y, dtype: TYPE_FP32, dims: [3]}
"""

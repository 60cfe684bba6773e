"""Benchmark: faults under load on the embedded server, repeated, with what clients saw.

    make build-repo && .venv/bin/python bench/faults.py [--repo model_repository] [--clients 8] [--drain-clients 128]

1. Stub kills: for each kind of Python-backend model the kit writes (a pre-processing model behind
   its pipeline, a compiled variant), kill -9 its stub twice in a row under closed-loop clients of
   the kit's retrying client. Per kill: seconds until the supervisor's reload served again,
   requests answered after it and requests failed. (ONNX models run in the server's process, in
   Triton's onnxruntime backend: they have no stub to lose.)
2. Drain: SIGTERM to the process group of `python -m server` (as a process manager stops it, and as
   make forwards it) under `--drain-clients` closed-loop clients of `text_encoder` (ONNX), then of
   `text_embedding` (an ensemble).
   A request in flight at the signal (sent before it, answered after) should be answered; one sent
   after it is refused, retryably. Recorded: both counts with the errors' messages, the exit code,
   whether Triton logged every model unloaded, and the files its stubs left in /dev/shm. A request
   the client sent just before the signal may reach the server after it: counted in flight.
3. The server's resident memory (with its stubs) after the kills and under the drain's load.
4. Whether memory is bounded (`--bursts`, `--repeat-kills`): tritonserver's own resident memory
   and its whole tree's after each of several bursts of `image_classification` (JPEG decode, 16
   clients), then after each of several kills of `tokenizer`'s stub under load. Triton 2.51 never
   unloads the generation a stub died in when requests were running in it (the server's stop then
   reports it as a live model until its exit timeout): each such kill leaves one behind.

Results go to bench/results/faults.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BACKENDS, RESULTS, ROOT, arguments, embedded, feed_for, header, machine, write
from clients import ClientError, ServerUnavailable, TritonClient
from server.embedded import EmbeddedTriton, free_port
from server.supervisor import is_ready, stub_processes

# Drained under load: an ONNX model alone, and a pipeline (an ensemble of three steps).
DRAINED = ("text_encoder", "text_embedding")

# The model whose stub is killed, and the model the clients call to reach it.
VICTIMS = {"tokenizer": "text_embedding", "text_encoder_compiled": "text_encoder_compiled"}


def payload(model: str) -> dict[str, NDArray[Any]]:
    if model.startswith("text_encoder"):
        ids = np.random.default_rng(0).integers(1, 8192, (1, 32), dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return feed_for(model)


class ClosedLoop:
    """`clients` threads calling `model` back to back, each outcome stamped with its send time."""

    def __init__(self, url: str, model: str, clients: int, retries: int) -> None:
        self.url, self.model, self.clients, self.retries = url, model, clients, retries
        self.outcomes: list[tuple[float, float, str]] = []  # sent, answered, "ok" or the error's class
        self.messages: Counter[str] = Counter()  # each error's message, its request id left out
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=clients)

    def __enter__(self) -> ClosedLoop:
        for _ in range(self.clients):
            self._pool.submit(self._caller)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)

    def _caller(self) -> None:
        feed = payload(self.model)
        with TritonClient(self.url, retries=self.retries, backoff_s=0.2, timeout_s=60) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    client.infer(self.model, feed)
                    outcome = "ok"
                except ServerUnavailable as exc:
                    outcome = "unreachable" if "cannot reach" in str(exc) else type(exc).__name__
                    self.messages[re.sub(r"\[request id: [^]]*\] ", "", str(exc))[:200]] += 1
                except ClientError as exc:
                    outcome = type(exc).__name__
                    self.messages[re.sub(r"\[request id: [^]]*\] ", "", str(exc))[:200]] += 1
                self.outcomes.append((sent, time.monotonic(), outcome))
                if outcome == "unreachable":
                    return  # the server is gone


def stub_kills(repo: Path, clients: int, scratch: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    server = embedded(repo, scratch / "kills.log")
    server.start(timeout_s=600)
    try:
        for victim, called in VICTIMS.items():
            if not (repo / victim).is_dir():
                results[victim] = "not in the repository"
                continue
            kills = []
            with ClosedLoop(server.grpc_url, called, clients, retries=6) as load:
                time.sleep(2.0)
                for _ in range(2):
                    kills.append(kill_and_wait(server, victim))
                    time.sleep(2.0)
            for index, kill in enumerate(kills):
                until = kills[index + 1]["killed_at"] if index + 1 < len(kills) else float("inf")
                window = [o for o in load.outcomes if kill["killed_at"] <= o[0] < until]
                kill["answered_after"] = sum(1 for o in window if o[2] == "ok")
                kill["failed_after"] = dict(Counter(o[2] for o in window if o[2] != "ok"))
                del kill["killed_at"]
            results[victim] = {"called": called, "clients": clients, "kills": kills}
            print(f"{victim}: {results[victim]}", flush=True)
        results["server_memory_mb"] = tree_memory_mb(server.pid or 0)
    finally:
        server.stop()
    return results


def kill_and_wait(server: EmbeddedTriton, victim: str) -> dict[str, Any]:
    stubs = [pid for pid, name in stub_processes(server.pid or 0).items() if name.startswith(f"{victim}_")]
    before = len(server.reloads)
    killed_at = time.monotonic()
    # The newest stub: one of the live generation, not one a reload retired that has yet to exit.
    os.kill(max(stubs), signal.SIGKILL)
    deadline = killed_at + 60
    while len(server.reloads) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    reload = server.reloads[before] if len(server.reloads) > before else {"error": "no reload within 60 s"}
    return {
        "killed_at": killed_at,
        "serving_again_after_kill_s": round(time.monotonic() - killed_at, 2),
        "reload_s": reload.get("seconds"),
        "reload_error": reload.get("error"),
    }


def memory_series(repo: Path, scratch: Path, bursts: int, burst_s: float, kills: int) -> dict[str, Any]:
    """Memory after each image burst, then after each stub kill, on one server."""
    server = embedded(repo, scratch / "memory.log")
    server.start(timeout_s=600)
    pid = server.pid or 0

    def sample() -> dict[str, float]:
        time.sleep(1.0)  # the last responses out, the batchers idle
        return {"server_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1), "tree_mb": tree_memory_mb(pid)}

    record: dict[str, Any] = {"started": sample(), "image_bursts": [], "tokenizer_kills": []}
    try:
        for _ in range(bursts):
            with ClosedLoop(server.grpc_url, "image_classification", 16, retries=0) as load:
                time.sleep(burst_s)
            record["image_bursts"].append({**sample(), "answered": sum(o[2] == "ok" for o in load.outcomes)})
        with ClosedLoop(server.grpc_url, "text_embedding", 8, retries=6):
            time.sleep(2.0)
            for _ in range(kills):
                kill = kill_and_wait(server, "tokenizer")
                record["tokenizer_kills"].append({**sample(), "reload_s": kill["reload_s"]})
    finally:
        server.stop()
    log = (scratch / "memory.log").read_text(errors="replace")
    live = re.findall(r"Timeout \d+: Found (\d+) live models", log)
    record["live_models_at_stop_end"] = int(live[-1]) if live else None
    record["exit_timeout_expired"] = "Exit timeout expired" in log
    bursts_mb = [b["server_mb"] for b in record["image_bursts"]]
    kills_mb = [k["server_mb"] for k in record["tokenizer_kills"]]
    record["growth_mb"] = {
        "first_burst": round(bursts_mb[0] - record["started"]["server_mb"], 1) if bursts_mb else None,
        "later_bursts": round(bursts_mb[-1] - bursts_mb[0], 1) if bursts_mb else None,
        "per_kill": round((kills_mb[-1] - kills_mb[0]) / (len(kills_mb) - 1), 1) if len(kills_mb) > 1 else None,
    }
    print(f"memory: {record}", flush=True)
    return record


def tree_memory_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server and its stubs)."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return round(total / 2**20, 1)


def drain(repo: Path, clients: int, scratch: Path, model: str) -> dict[str, Any]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = scratch / "drain.log"
    shm_before = set(os.listdir("/dev/shm"))
    with log.open("wb") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--repo",
                str(repo),
                "--backend-dir",
                str(BACKENDS),
            ]
            + [f"--{name}-port={port}" for name, port in ports.items()],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while not is_ready(f"127.0.0.1:{ports['http']}") and time.monotonic() < deadline:
            time.sleep(0.5)
        url = f"127.0.0.1:{ports['grpc']}"
        with ClosedLoop(url, model, clients, retries=0) as load:
            time.sleep(5.0)
            memory = tree_memory_mb(server.pid)
            signalled = time.monotonic()
            os.killpg(server.pid, signal.SIGTERM)
            time.sleep(0.1)
            os.killpg(server.pid, signal.SIGTERM)  # the same stop again, as make forwards it
            code = server.wait(timeout=120)
            stopped = time.monotonic()
    text = log.read_text(errors="replace")
    in_flight = [o for o in load.outcomes if o[0] < signalled <= o[1]]
    after = [o for o in load.outcomes if o[0] >= signalled]
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    return {
        "model": model,
        "clients": clients,
        "in_flight_at_signal": len(in_flight),
        "in_flight_answered": sum(1 for o in in_flight if o[2] == "ok"),
        "in_flight_failed": dict(Counter(o[2] for o in in_flight if o[2] != "ok")),
        "errors": dict(load.messages.most_common(6)),
        "sent_after_signal": dict(Counter(o[2] for o in after)),
        "drain_s": round(stopped - signalled, 2),
        "exit_code": code,
        "models_unloaded": sum(f"successfully unloaded '{m}'" in text for m in models),
        "models": len(models),
        "stopping_lines": text.count("stopping the server"),
        "dev_shm_left": sorted(set(os.listdir("/dev/shm")) - shm_before),
        "server_memory_mb_under_load": memory,
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients during the stub kills")
    parser.add_argument("--drain-clients", type=int, default=128, help="closed-loop clients during the drain")
    parser.add_argument("--bursts", type=int, default=6, help="image bursts of the memory series (0: none)")
    parser.add_argument("--burst-s", type=float, default=5.0, help="seconds of one image burst")
    parser.add_argument("--repeat-kills", type=int, default=6, help="tokenizer kills of the memory series")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args()
    scratch = ROOT / ".triton" / "bench-faults"
    scratch.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        **header("faults"),
        "machine": machine(),
        "command": " ".join(["bench/faults.py", *sys.argv[1:]]),
    }
    record["stub_kills"] = stub_kills(args.repo, args.clients, scratch)
    record["drain"] = [drain(args.repo, args.drain_clients, scratch, model) for model in DRAINED]
    if args.bursts or args.repeat_kills:
        record["memory"] = memory_series(args.repo, scratch, args.bursts, args.burst_s, args.repeat_kills)
    print(json.dumps(record, indent=2))
    write(record, args.out)


if __name__ == "__main__":
    main()

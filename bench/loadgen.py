"""Benchmark: requests/s one Locust worker generates over gRPC and HTTP, against a plain
tritonclient loop, all against the same tiny model on the embedded server, side by side in one run.

    .venv/bin/python bench/loadgen.py [--seconds 10] [--users 16]

A tiny model (Linear 4 -> 3) makes the server cheap, so the figures show what the generators can
send. Results go to bench/results/loadgen.json; quote them as ratios (the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, arguments, embedded, header, machine, thread_loop, write
from builder.pipeline import build_repository
from tests.conftest import linear_model


def plain_loop(protocol: str, url: str, seconds: float, threads: int) -> float:
    """Requests/s of `threads` threads each calling tritonclient synchronously in a loop."""
    data = np.ones((1, 4), dtype=np.float32)

    @contextmanager
    def caller() -> Iterator[Callable[[], object]]:
        module: Any = grpcclient if protocol == "grpc" else httpclient
        client = module.InferenceServerClient(url)
        tensor = module.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        yield lambda: client.infer("linear", [tensor])
        client.close()

    return thread_loop(caller, threads, seconds)


def locust_run(protocol: str, url: str, seconds: float, users: int, report: Path) -> dict[str, Any]:
    """Requests/s and generator CPU of one Locust process with `users` users."""
    subprocess.run(
        [sys.executable, "-m", "loadtest", "--model", "linear", "--protocol", protocol, "--url", url, "--steps", "1",
         "--step-seconds", str(seconds), "--step-users", str(users), "--report-dir", str(report)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    summary = json.loads((report / "summary.json").read_text())
    return {
        "rps": summary["total"]["rps"],
        "failures": summary["total"]["failures"],
        "generator_cpu_percent": summary["generator"]["cpu_percent_per_process"],
    }


def main() -> None:
    parser = arguments(__doc__, repo=False)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models.yaml").write_text(
            yaml.safe_dump({"models": [linear_model(dynamic_batching={"max_queue_delay_microseconds": 0})]})
        )
        build_repository(root / "models.yaml", root / "repo", target="cpu", log=lambda _: None)
        server = embedded(root / "repo", root / "log", root / "backends")
        server.start()
        try:
            results: dict[str, dict[str, Any]] = {
                "grpc": {
                    "plain_loop_1_thread": plain_loop("grpc", server.grpc_url, args.seconds, 1),
                    f"plain_loop_{args.users}_threads": plain_loop("grpc", server.grpc_url, args.seconds, args.users),
                    "locust_1_process": locust_run("grpc", server.grpc_url, args.seconds, args.users, root / "grpc"),
                },
                "http": {
                    "plain_loop_1_thread": plain_loop("http", server.http_url, args.seconds, 1),
                    f"plain_loop_{args.users}_threads": plain_loop("http", server.http_url, args.seconds, args.users),
                    "locust_1_process": locust_run("http", server.http_url, args.seconds, args.users, root / "http"),
                },
            }
        finally:
            server.stop()
    for figures in results.values():
        locust = figures["locust_1_process"]["rps"]
        figures["ratio_locust_to_plain_1_thread"] = round(locust / figures["plain_loop_1_thread"], 2)
        figures["ratio_locust_to_plain_threads"] = round(locust / figures[f"plain_loop_{args.users}_threads"], 2)
    record = {
        **header("loadgen"),
        "machine": machine(processor=True),
        "model": "linear (tiny), embedded Triton 2.51 on the same machine",
        "seconds": args.seconds,
        "users": args.users,
        "results": results,
    }
    write(record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

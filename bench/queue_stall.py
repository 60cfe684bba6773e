"""Benchmark: what a bounded queue costs one ONNX model on Triton 2.51, and what avoids it, side
by side in one run.

    make build-repo && .venv/bin/python bench/queue_stall.py [--model text_encoder] [--seconds 10]
        [--concurrency 1 8]

Why: any `default_queue_policy` (a bound, a timeout, a timeout override) turns off Triton's
payload prefetching, and then 2.51's dynamic batcher waits, with a 500 ms timeout, for an instance
to report itself free. That wake-up can be lost (the instance frees itself between the batcher's
check and its wait), and a queue behind a lone instance then stands still until the timeout or the
next arrival: closed-loop clients, which send nothing while they wait, see 500 ms stalls. With a
second instance, one is usually parked free and the check succeeds.

The model is served in three forms, one server each, from copies of the built repository:
- one instance of `--threads` intra-op threads (default: all cores), the kit's bounded queue;
- the same without the queue policy (Triton's unbounded default, prefetching on);
- as built (the spec's instances and threads, with the bounded queue).
Each is measured with the kit's closed loop (`python -m loadtest --steps 1`) at every
`--concurrency`. Results go to bench/results/queue_stall-<model>.json; quote the ratios.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import QUEUE_POLICY, RESULTS, ROOT, arguments, embedded, header, machine, usable_cores, write
from clients import TritonClient
from loadtest.report import request_log

THREADS = re.compile(r'parameters \{ key: "intra_op_thread_count" value: \{ string_value: "(\d+)" \} \}')
CPU_COUNT = re.compile(r"(  kind: KIND_CPU\n  count: )\d+\n")
FORMS = ("one_instance_bounded", "one_instance_unbounded", "as_built")
RATIO = "rps_vs_one_instance_bounded"


def variant(repo: Path, model: str, scratch: Path, form: str, threads: int) -> Path:
    """A repository holding only `model`, in `form`: as_built, or one instance of `threads`
    intra-op threads with the built queue policy (one_instance_bounded) or none (one_instance_unbounded)."""
    shutil.copytree(repo / model, scratch / model, symlinks=True)
    config = scratch / model / "config.pbtxt"
    text = config.read_text()
    if form != "as_built":
        if not CPU_COUNT.search(text):
            raise SystemExit(f"error: {model} has no KIND_CPU instance group to change: build with TARGET=cpu")
        text = CPU_COUNT.sub(r"\g<1>1\n", text)
        setting = f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}\n'
        text = THREADS.sub(setting.strip(), text) if THREADS.search(text) else text + setting
    if form == "one_instance_unbounded":
        text = QUEUE_POLICY.sub("", text)
    config.write_text(text)
    return scratch


def closed_loop(model: str, url: str, users: int, seconds: float, report: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, "-m", "loadtest", "--model", model, "--url", url, "--steps", "1", "--step-users",
         str(users), "--step-seconds", str(seconds), "--report-dir", str(report)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    step = json.loads((report / "summary.json").read_text())["steps"][0]
    server = step["server"] or {}
    return {
        "rps": round(step["rps"], 1),
        "p50_ms": step["p50_ms"],
        "p95_ms": step["p95_ms"],
        "p99_ms": step["p99_ms"],
        "over_400_ms": int((request_log(report)[1] > 400).sum()),
        "server_queue_us": server.get("queue_us"),
        "avg_batch": server.get("avg_batch_size"),
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--model", default="text_encoder")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--threads", type=int, default=usable_cores(), help="intra-op threads of the one-instance forms"
    )
    args = parser.parse_args()
    if not (args.repo / args.model / "config.pbtxt").is_file():
        raise SystemExit(f"error: {args.repo} has no model {args.model!r}: run `make build-repo` first")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in FORMS:
            scratch = Path(tmp) / form
            repo = variant(args.repo, args.model, scratch / "repo", form, args.threads)
            config = (repo / args.model / "config.pbtxt").read_text()
            server = embedded(repo, scratch / "triton.log")
            server.start(timeout_s=180)
            try:
                with TritonClient(server.grpc_url, timeout_s=30) as client:
                    client.wait_until_ready(model=args.model, timeout_s=120)
                figures = {}
                for users in args.concurrency:
                    print(f"{form}: concurrency {users}", flush=True)
                    figures[f"c{users}"] = closed_loop(
                        args.model, server.grpc_url, users, args.seconds, scratch / f"report-{users}"
                    )
            finally:
                server.stop()
            results[form] = {
                "queue_policy": "default_queue_policy" in config,
                "instances": int(m.group(0).split()[-1]) if (m := CPU_COUNT.search(config)) else None,
                "intra_op_threads": int(m.group(1)) if (m := THREADS.search(config)) else None,
                **figures,
            }
    for users in args.concurrency:
        key = f"c{users}"
        base = results["one_instance_bounded"][key]["rps"] or float("nan")
        for form in FORMS[1:]:
            results[form][key]["rps_vs_one_instance_bounded"] = round(results[form][key]["rps"] / base, 2)
    record = {
        **header("queue_stall"),
        "machine": machine(kernel=True),
        "server": "embedded Triton 2.51 (nvidia-pytriton)",
        "model": args.model,
        "seconds": args.seconds,
        "generator": "the kit's closed loop (python -m loadtest, Locust), gRPC",
        "results": results,
    }
    out = write(record, RESULTS / f"queue_stall-{args.model}.json")
    for form, figures in results.items():
        print(
            f"{form:>10} (queue policy {figures['queue_policy']}, instances {figures['instances']}, "
            f"threads {figures['intra_op_threads']}):"
        )
        for users in args.concurrency:
            row = figures[f"c{users}"]
            print(
                f"    c{users}: {row['rps']:.0f} req/s  p50 {row['p50_ms']:.1f}  p95 {row['p95_ms']:.1f}  "
                f"p99 {row['p99_ms']:.1f} ms  over 400 ms: {row['over_400_ms']}"
                + (f"  ({row[RATIO]}x one instance, bounded)" if RATIO in row else "")
            )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()

"""`python -m loadtest`: load a Triton server and write the report folder.

    python -m loadtest --model text_encoder --step-users 4 --steps 3 --step-seconds 10   closed loop (Locust users)
    python -m loadtest --model text_encoder --rate 200 400 600 --step-seconds 10         open loop (offered rates)

Closed loop: each Locust user sends its next request when the last one returns, so a slow server
slows the load. Open loop (--rate): requests leave on schedule whatever the server does, latency is
timed from the scheduled send, and the report shows offered against achieved rate and the knee.

The server must be running (`make serve`, or any URL). The run is bounded: Locust stops after the
last step, and is killed if it has not stopped 30 s later. Exit codes: 0 passed, 1 a threshold
was violated (or no request completed), 2 the run could not start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from numpy.typing import NDArray

from builder.errors import BuildError
from clients import ClientError, TritonClient
from clients.address import server_url
from loadtest.openloop import run_open_loop
from loadtest.payloads import generated_payload, load_arrays, perf_analyzer_data, spec_payload
from loadtest.report import Thresholds, build_summary, plot_steps, violations
from loadtest.settings import ENV_VAR, Settings
from loadtest.tune import CONFIRMATIONS, TuneError, tune

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GRACE_S = 30.0
PROGRESS_S = 5.0
CPU_BOUND = 90.0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["payload"]:
        return payload_main(argv[1:])
    if argv[:1] == ["tune"]:
        return tune_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        url = args.url or server_url(args.protocol)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = args.report_dir or Path("reports") / f"{args.model}-{args.protocol}-{stamp}"
    settings = Settings(
        url=url,
        model=args.model,
        protocol=args.protocol,
        batch=args.batch,
        step_users=args.step_users,
        step_seconds=args.step_seconds,
        steps=args.steps,
        spawn_rate=args.spawn_rate,
        rates=tuple(args.rate or ()),
        poisson=args.poisson,
        max_in_flight=args.max_in_flight,
        payload=args.payload,
        expect=args.expect,
        report_dir=report_dir.resolve(),
    )
    try:
        thresholds = _thresholds(args)
        payload, metadata = _prepare(settings, args.spec)
    except (ClientError, OSError, ValueError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.report_dir.is_dir() and any(settings.report_dir.iterdir()):
        if not args.overwrite:
            print(
                f"error: report folder {settings.report_dir} is not empty (an earlier run's?): its request logs "
                "and server snapshots would mix with this run's; leave --report-dir out for a fresh timestamped "
                "folder, choose an empty one, or pass --overwrite to replace it",
                file=sys.stderr,
            )
            return 2
        shutil.rmtree(settings.report_dir)
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    np.savez(settings.report_dir / "payload.npz", **payload)
    load = (
        f"open loop, {len(settings.rates)} step(s) of {settings.step_seconds:g}s offering "
        f"{', '.join(f'{r:g}' for r in settings.rates)} req/s"
        if settings.open_loop
        else f"{settings.steps} step(s) of {settings.step_seconds:g}s adding {settings.step_users} user(s), "
        f"{args.processes} process(es)"
    )
    print(
        f"load test: {settings.model} over {settings.protocol} at {settings.url}, {load} -> {settings.report_dir}",
        file=sys.stderr,
    )
    generator = run_open_loop(settings, payload) if settings.open_loop else _run_locust(settings, args.processes)
    summary = build_summary(
        settings.report_dir,
        {
            "model": settings.model,
            "protocol": settings.protocol,
            "url": settings.url,
            "batch": settings.batch,
            "step_users": settings.step_users,
            "step_seconds": settings.step_seconds,
            "rates": list(settings.rates),
            "inputs": {t["name"]: t["datatype"] for t in metadata["inputs"]},
            "reference": str(settings.expect) if settings.expect else None,
            "generator": generator,
        },
    )
    broken = violations(summary, thresholds)
    summary["thresholds"] = {**thresholds.__dict__, "violations": broken, "passed": not broken}
    (settings.report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["steps"]:
        plot_steps(summary, settings.report_dir / "steps.png")
    _print(summary)
    for line in broken:
        print(f"threshold violated: {line}", file=sys.stderr)
    return 1 if broken else 0


def tune_main(argv: Sequence[str]) -> int:
    """`python -m loadtest tune`: the serving options under which a model sustains the highest
    open-loop rate within a p95 budget (see loadtest/tune.py); `make tune MODEL=... P95_MS=...`."""
    parser = argparse.ArgumentParser(prog="python -m loadtest tune", description=tune_main.__doc__)
    parser.add_argument("--model", required=True, help="an ONNX model of the spec")
    parser.add_argument("--p95-ms", type=float, required=True, help="the latency budget: p95 at the client")
    parser.add_argument("--spec", type=Path, default=Path("models.yaml"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"), help="what the embedded server serves")
    parser.add_argument("--url", help="a running server in explicit model-control mode, instead of the embedded one")
    parser.add_argument("--budget-s", type=float, default=900.0, help="stop trying candidates after this (default 900)")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="length of each measured rate (default 3)")
    parser.add_argument("--start-rps", type=float, default=50.0, help="the first rate offered (default 50)")
    parser.add_argument(
        "--out", type=Path, help="report folder (default reports/tune-<model>-<time>); reuse it to resume"
    )
    parser.add_argument("--write", action="store_true", help="apply the winner's options to the spec file")
    parser.add_argument(
        "--confirmations", type=int, default=CONFIRMATIONS, choices=range(6), metavar="0-5",
        help=f"measure the baseline and the winner again this many times each, in turns, after the search; "
        f"the winner stands if the medians say so (default {CONFIRMATIONS}; 0 takes one measurement's word)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or Path("reports") / f"tune-{args.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = tune(
            args.spec, args.model, args.p95_ms, out, url=args.url, repository=args.repo, budget_s=args.budget_s,
            step_seconds=args.step_seconds, start_rps=args.start_rps, log=lambda line: print(line, flush=True),
            write=args.write, confirmations=args.confirmations,
        )  # fmt: skip
    except (TuneError, ClientError, BuildError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    baseline, winner = summary["baseline"], summary["winner"]
    print(f"baseline: {baseline['sustained_rps']:g} req/s within p95 {args.p95_ms:g} ms ({baseline['label']})")
    print(
        f"winner:   {winner['sustained_rps']:g} req/s ({winner['label']})"
        + (
            f", {summary['ratio']:.2f}x the baseline (medians of {len(summary['confirmation']['baseline']['rps'])} "
            "measurements each, in turns)"
            if summary["ratio"]
            else ""
        )
    )
    patch = out / "spec.patch"
    if not patch.read_text():
        print(f"the spec's options are the best found: nothing to change (report in {out})")
    elif summary["written"]:
        print(
            f"wrote the winner's options into {args.spec} (the change: {patch}); run `make build-repo` to render them"
        )
    else:
        print(
            f"report in {out}; the change to the spec: {patch} (apply with `patch -p0 < {patch}`, or run again with --write)"
        )
    return 0


def payload_main(argv: Sequence[str]) -> int:
    """`python -m loadtest payload`: write the payload a run would send, as .npz or as
    perf_analyzer's --input-data JSON, for other tools to send the same requests."""
    parser = argparse.ArgumentParser(prog="python -m loadtest payload", description=payload_main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument(
        "--url", help="host:port of the server (default: TRITON_HOST and TRITON_GRPC_PORT / TRITON_HTTP_PORT)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--spec", type=Path, default=Path("models.yaml"))
    parser.add_argument("--format", choices=["npz", "perf-analyzer"], default="perf-analyzer")
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    args = parser.parse_args(argv)
    try:
        url = args.url or server_url(args.protocol)
        with TritonClient(url, protocol=args.protocol, timeout_s=10) as client:
            metadata, config = client.metadata(args.model), client.config(args.model)
        batching = int(config.get("max_batch_size", 0)) > 0
        payload = _payload_for(args.model, metadata, args.batch, batching, args.spec)
        if args.format == "npz":
            with args.out.open("wb") as handle:
                np.savez(handle, **payload)
        else:
            args.out.write_text(json.dumps(perf_analyzer_data(payload, batching)) + "\n")
    except (ClientError, OSError, ValueError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in payload.items())
    print(f"wrote {args.out} ({args.format}): {shapes}", file=sys.stderr)
    if args.format == "perf-analyzer":
        print(
            f"  perf_analyzer -m {args.model} --input-data {args.out} -b {args.batch if batching else 1} -u {url}",
            file=sys.stderr,
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model (or ensemble) to load")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument(
        "--url", help="host:port of the server (default: TRITON_HOST and TRITON_GRPC_PORT / TRITON_HTTP_PORT)"
    )
    parser.add_argument("--batch", type=int, default=1, help="items per request for generated payloads (default 1)")
    parser.add_argument("--step-users", type=int, default=4, help="users added at each step (default 4)")
    parser.add_argument("--step-seconds", type=float, default=10.0, help="length of each step (default 10)")
    parser.add_argument("--steps", type=int, default=3, help="number of steps; 1 is a constant load (default 3)")
    parser.add_argument("--spawn-rate", type=float, default=100.0, help="users started per second (default 100)")
    parser.add_argument(
        "--rate",
        type=float,
        nargs="+",
        metavar="RPS",
        help="open loop: offer these request rates, one step each (e.g. --rate 200 400 600); replaces the users",
    )
    parser.add_argument("--poisson", action="store_true", help="open loop: Poisson arrivals (default: evenly spaced)")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="open loop: requests outstanding at most; arrivals beyond are dropped and counted (default 256)",
    )
    parser.add_argument("--processes", type=int, default=1, help="Locust processes (one per core to load harder)")
    parser.add_argument(
        "--payload",
        type=Path,
        help=".npz of input arrays (default: drawn as --spec declares the model, else from its metadata)",
    )
    parser.add_argument(
        "--spec", type=Path, default=Path("models.yaml"), help="the spec of the model's inputs (default models.yaml)"
    )
    parser.add_argument("--expect", type=Path, help=".npz of expected outputs: a different answer is a failed request")
    parser.add_argument(
        "--report-dir",
        type=Path,
        help="where the report goes (default reports/<model>-<protocol>-<time>); must be empty",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace what --report-dir holds")
    parser.add_argument(
        "--thresholds", type=Path, help="YAML with max_failure_ratio, max_rejected_ratio, max_p95_ms, min_rps"
    )
    parser.add_argument("--max-failure-ratio", type=float, help="fail the run above this failure ratio (e.g. 0.01)")
    parser.add_argument(
        "--max-rejected-ratio", type=float, help="fail the run above this share refused by a full queue (e.g. 0.05)"
    )
    parser.add_argument("--max-p95-ms", type=float, help="fail the run above this p95 latency")
    parser.add_argument("--min-rps", type=float, help="fail the run below this throughput")
    return parser


def _thresholds(args: argparse.Namespace) -> Thresholds:
    values: dict[str, Any] = {}
    if args.thresholds:
        loaded = yaml.safe_load(args.thresholds.read_text()) or {}
        unknown = set(loaded) - set(Thresholds.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"{args.thresholds}: unknown threshold(s) {sorted(unknown)}; allowed: {', '.join(Thresholds.__dataclass_fields__)}"
            )
        values.update(loaded)
    for name in Thresholds.__dataclass_fields__:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)  # flags win over the file
    return Thresholds(**values)


def _prepare(settings: Settings, spec: Path | None) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """Check the server and model answer; build the payload."""
    with TritonClient(settings.url, protocol=settings.protocol, timeout_s=10) as client:
        try:
            client.wait_until_ready(model=settings.model, timeout_s=10)
        except ClientError as exc:
            raise ClientError(f"{exc}; start the server with `make serve` or pass --url") from exc
        metadata = client.metadata(settings.model)
        config = client.config(settings.model)
    if settings.payload is not None:
        return load_arrays(settings.payload), metadata
    batching = int(config.get("max_batch_size", 0)) > 0
    return _payload_for(settings.model, metadata, settings.batch, batching, spec), metadata


def _payload_for(
    model: str, metadata: dict[str, Any], batch: int, batching: bool, spec: Path | None
) -> dict[str, NDArray[Any]]:
    """As the spec declares the model's inputs where it does, from the metadata otherwise."""
    declared = spec_payload(spec, model, batch) if spec is not None and spec.is_file() else None
    return declared if declared is not None else generated_payload(metadata, batch, batching)


def _run_locust(settings: Settings, processes: int) -> dict[str, Any]:
    """Run Locust to the end of its shape (or kill it after the grace period); measure its CPU."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--csv", str(settings.report_dir / "locust"), "--html", str(settings.report_dir / "locust.html"),
        "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    if processes > 1:  # its workers connect to the master here; nothing else should reach it
        command += ["--processes", str(processes), "--master-bind-host", "127.0.0.1"]
    env = {**os.environ, ENV_VAR: settings.to_env(), "PYTHONPATH": str(ROOT)}
    deadline = time.monotonic() + settings.duration_s + GRACE_S
    started = time.monotonic()
    with (settings.report_dir / "locust.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        cpu: dict[int, tuple[float, float]] = {}
        stopped_by_itself = True
        shown = started
        while process.poll() is None:
            _sample_cpu(process.pid, cpu)
            if time.monotonic() > deadline:
                stopped_by_itself = False
                _kill(process)
                break
            if time.monotonic() - shown >= PROGRESS_S:
                shown = time.monotonic()
                _show_progress(settings, shown - started)
            time.sleep(0.5)
        process.wait()
    hangs = []
    for report in sorted(settings.report_dir.glob("exit-hang-*.txt")):
        if report.stat().st_size:
            hangs.append(report.name)
        else:
            report.unlink()  # the watchdog was armed but the process exited by itself
    usage = [round(100 * seconds / max(time.monotonic() - first, 1e-3), 1) for first, seconds in cpu.values()]
    busiest = max(usage, default=0.0)
    return {
        "processes": processes,
        "cpu_percent_per_process": usage,
        "seconds": round(time.monotonic() - started, 1),
        "stopped_by_itself": stopped_by_itself,
        # Where Locust's own watchdog had to end a process stuck exiting (see locustfile).
        "exit_hang_reports": hangs,
        "locust_exit_code": process.returncode,
        "warning": (
            f"the load generator was CPU-bound ({busiest:.0f}% of a core): the server may have more to give; "
            "rerun with --processes N"
        )
        if busiest >= CPU_BOUND
        else None,
    }


def _show_progress(settings: Settings, elapsed_s: float) -> None:
    """One line on how the run goes, from the latest row Locust wrote to its stats history."""
    try:
        with (settings.report_dir / "locust_stats_history.csv").open() as history:
            rows = [row for row in csv.DictReader(history) if row["Name"] == "Aggregated"]
    except (OSError, KeyError, csv.Error):
        rows = []
    line = f"  {elapsed_s:4.0f} s of {settings.duration_s:.0f}"
    if rows:
        now = rows[-1]
        line += (
            f"  users {now['User Count']}/{settings.steps * settings.step_users}  {float(now['Requests/s']):.1f} req/s  p95 {now['95%']} ms"
            f"  requests {now['Total Request Count']}  failed {now['Total Failure Count']}"
        )
    print(line, flush=True)


def _sample_cpu(pid: int, cpu: dict[int, tuple[float, float]]) -> None:
    """Record each Locust process's CPU seconds so far (first seen, latest total)."""
    try:
        parent = psutil.Process(pid)
        for member in [parent, *parent.children(recursive=True)]:
            times = member.cpu_times()
            first = cpu.get(member.pid, (time.monotonic(), 0.0))[0]
            cpu[member.pid] = (first, times.user + times.system)
    except psutil.Error:
        pass  # a process that just ended keeps its last sample


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def _print(summary: dict[str, Any]) -> None:
    open_loop = bool(summary.get("rates"))
    load = f"{'offered':>8}" if open_loop else f"{'users':>6}"
    extra = f" {'drop':>5}" if open_loop else ""
    print(
        f"{load} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'fail':>5} {'reject':>6}{extra} {'queue us':>9} {'infer us':>9} {'batch':>6}"
    )
    for step in summary["steps"]:
        server = step["server"] or {}
        offered = f"{step['offered_rps']:>8g}" if open_loop else f"{step['users']:>6}"
        dropped = f" {step['dropped']:>5}" if open_loop else ""
        print(
            f"{offered} {step['rps']:>9.1f} {step['p50_ms']:>8.1f} {step['p95_ms']:>8.1f} {step['p99_ms']:>8.1f} "
            f"{step['failures']:>5} {step['rejected']:>6}{dropped} {server.get('queue_us', 0):>9.0f} {server.get('compute_infer_us', 0):>9.0f} {server.get('avg_batch_size', 0):>6.2f}"
        )
        # An ensemble's own queue and batch say little: its members batch on their own.
        for name, member in (server.get("members") or {}).items():
            if member:
                print(
                    f"{'':>8}   {name}: {member['inferences']:.0f} inferences in {member['executions']:.0f} executions "
                    f"(batch {member['avg_batch_size']:.2f}), queue {member['queue_us']:.0f} us, "
                    f"infer {member['compute_infer_us']:.0f} us per request"
                )
    total = summary["total"]
    print(
        f"total: {total['requests']} requests, {total['failures']} failed, {total['rejected']} rejected (queue full), "
        f"{total['rps']:.1f} req/s, p95 {total['p95_ms']:.1f} ms"
    )
    if "knee" in summary:
        knee = summary["knee"]
        held = (
            f"held up to {knee['held_rps']:g} req/s (p95 {knee['held_p95_ms']:.1f} ms)"
            if knee["held_rps"]
            else "held no offered rate"
        )
        broke = (
            f"; not {knee['broke_at_rps']:g} req/s (p95 {knee['broke_p95_ms']:.1f} ms)" if knee["broke_at_rps"] else ""
        )
        print(f"open loop: {held}{broke}")
    if summary["generator"]["warning"]:
        print(f"warning: {summary['generator']['warning']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the example ONNX models served by the embedded Triton server against ONNX Runtime in
this process at the batch the server formed, side by side in one run, on a 2-core machine.

    make build-repo && .venv/bin/python bench/onnxruntime_backend.py [--seconds 10] [--rounds 3]
        [--generator auto] [--compare-backend-dir PATH --compare-label python-imitation]

Why: what serving costs over the runtime it wraps. The served figure is gRPC, the server, its
dynamic batcher and the onnxruntime backend; the in-process one is the runtime alone, with the
same threading as the served config (a count-2 x 1-thread config: two Python threads, each with
its own 1-intra-op-thread InferenceSession, running batches of the served average batch size,
rounded, back to back). Their ratio, served / in-process, is the serving overhead's complement.

- image_classifier: batch-1 requests at concurrency 4; text_encoder: seq 32 (the spec's typical
  dims), batch-1 requests at concurrency 8. One server per backend serves --repo with only these
  two loaded (explicit model control); both sides send the spec's payload (loadtest.payloads).
- Load: perf_analyzer 2.51 --concurrency-range N over gRPC (bench/generators.py installs
  it), else the kit's closed loop (`python -m loadtest --steps 1`); the JSON says which ran.
- The average batch is the server's inference_count / execution_count over the served run.
- Rounds alternate served and in-process; each figure is a median of --rounds with its min-max.
- Where the two cores go while served: the generator's CPU share, the server's, and the CPU
  milliseconds a sample cost the server against what it costs ONNX Runtime in-process at the
  same batch (with the generator on the same cores, served / in-process can at best reach
  1 - the generator's share of the two cores).
- Backends: the folder the embedded server assembles (prepare_backends), and with
  --compare-backend-dir a second one, served as it is (not re-assembled, which would replace its
  onnxruntime backend with the kit's), labelled --compare-label.
Results go to bench/results/onnxruntime_backend.json; quote the ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import onnxruntime as ort
import psutil
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generators import PERF_ANALYZER_VERSION, Unavailable, perf_analyzer, run_kit, run_perf_analyzer
from bench.harness import RESULTS, ROOT, arguments, embedded, header, usable_cores, versions, write
from builder.checker.config import parse_config
from clients import TritonClient
from loadtest.payloads import perf_analyzer_data, spec_payload
from server.embedded import EmbeddedTriton

CONCURRENCY = {"image_classifier": 4, "text_encoder": 8}
DEFAULT_LABEL = "default"
KIT = "kit closed loop (python -m loadtest --steps 1)"


@dataclass(frozen=True)
class Generator:
    """What loads the server: perf_analyzer (its binary and environment) or the kit's closed loop."""

    name: str
    binary: Path | None = None
    env: dict[str, str] | None = None
    note: str = ""


@dataclass(frozen=True)
class ServedLayout:
    """The served config's CPU instances and ONNX Runtime intra-op threads, and its largest batch."""

    instances: int
    intra_op_threads: int
    max_batch_size: int

    @classmethod
    def of(cls, config_path: Path) -> ServedLayout:
        config = parse_config(config_path.read_text(), str(config_path))
        threads = config.parameters.get("intra_op_thread_count")
        return cls(
            instances=sum(group.count or 1 for group in config.instance_group) or 1,
            intra_op_threads=int(threads.string_value) if threads else 0,  # 0: ONNX Runtime's default
            max_batch_size=config.max_batch_size,
        )


def choose_generator(choice: str) -> Generator:
    """perf_analyzer where it runs (installed on first use), else the kit's closed loop for `auto`."""
    if choice == "kit":
        return Generator(KIT)
    try:
        binary, env = perf_analyzer()
    except Unavailable as exc:
        if choice == "perf_analyzer":
            raise SystemExit(f"error: {exc}") from exc
        return Generator(KIT, note=f"perf_analyzer unavailable: {exc}")
    return Generator(f"perf_analyzer {PERF_ANALYZER_VERSION}", binary, env)


def describe(backend_dir: Path) -> str:
    """Which onnxruntime backend a backends folder holds."""
    if (backend_dir / "onnxruntime" / "libtriton_onnxruntime.so").is_file():
        return "Triton's C++ onnxruntime backend (libtriton_onnxruntime.so)"
    if (backend_dir / "onnxruntime" / "model.py").is_file():
        return "Python-based onnxruntime backend (model.py on the Python backend)"
    return "no onnxruntime backend"


@contextmanager
def serving(repo: Path, backend_dir: Path, assemble: bool, log: Path, models: list[str]) -> Iterator[EmbeddedTriton]:
    """An embedded server of `repo` on free ports with `models` loaded; with `assemble` False,
    `backend_dir` is served as it was assembled elsewhere."""
    server = embedded(repo, log, backend_dir, model_control_mode="explicit", assemble_backends=assemble)
    server.start(timeout_s=180)
    try:
        with TritonClient(server.grpc_url, timeout_s=120) as client:
            for model in models:
                client.load_model(model)
                for _ in range(4):  # the first requests start the sessions: not measured
                    client.infer(model, payload(model, 1))
        yield server
    finally:
        server.stop()


_PAYLOADS: dict[tuple[str, int], dict[str, NDArray[Any]]] = {}


def payload(model: str, batch: int) -> dict[str, NDArray[Any]]:
    """The inputs the spec declares for `model`, `batch` items (seeded: the same every call)."""
    if (model, batch) not in _PAYLOADS:
        drawn = spec_payload(ROOT / "models.yaml", model, batch)
        if drawn is None:
            raise SystemExit(f"error: models.yaml declares no ONNX model {model!r}")
        _PAYLOADS[model, batch] = drawn
    return _PAYLOADS[model, batch]


def _counts(client: TritonClient, model: str) -> tuple[int, int]:
    stats = client.statistics(model)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (user and system, its threads included)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_served(
    generator: Generator, server: EmbeddedTriton, model: str, concurrency: int, seconds: float, work: Path
) -> dict[str, Any]:
    """One generator run at the model's concurrency; its figures, the server's average batch, and
    the CPU the server took: where the two cores went (the generator's share is its cpu_percent)."""
    load = argparse.Namespace(model=model, protocol="grpc", seconds=seconds)
    url = server.grpc_url
    with TritonClient(url, timeout_s=30) as client:
        before = _counts(client, model)
        cpu, started = cpu_seconds(server.pid or 0), time.monotonic()
        if generator.binary is not None and generator.env is not None:
            data = work / f"{model}-input-data.json"
            if not data.exists():
                data.write_text(json.dumps(perf_analyzer_data(payload(model, 1), batching=True)) + "\n")
            flags = ["--concurrency-range", str(concurrency)]
            figures = run_perf_analyzer(generator.binary, generator.env, load, url, data, flags, work / "pa.txt")
        else:
            report = Path(tempfile.mkdtemp(prefix="kit-", dir=work))
            ran = run_kit(load, url, ["--steps", "1", "--step-users", str(concurrency)], report)
            figures = {**ran.pop("steps", [{}])[0], **ran}
        cpu, wall = cpu_seconds(server.pid or 0) - cpu, time.monotonic() - started
        inferences, executions = (b - a for a, b in zip(before, _counts(client, model), strict=True))
    figures["avg_batch"] = round(inferences / executions, 2) if executions else None
    figures["server_cpu_percent"] = round(100 * cpu / wall, 1)
    figures["server_cpu_ms_per_sample"] = round(1000 * cpu / inferences, 3) if inferences else None
    figures["samples_per_s"] = figures.get("rps")  # batch-1 requests: a request is a sample
    return figures


def sessions(model_path: Path, layout: ServedLayout) -> list[ort.InferenceSession]:
    """One session per served instance, each with the served intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = layout.intra_op_threads  # sequential execution: no inter-op pool
    return [
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        for _ in range(layout.instances)
    ]


def measure_in_process(
    runners: list[ort.InferenceSession], feeds: dict[str, NDArray[Any]], seconds: float
) -> dict[str, float]:
    """Samples per second of every session running `feeds` back to back, one thread each, and the
    CPU milliseconds each sample took."""
    batch = len(next(iter(feeds.values())))
    for session in runners:
        session.run(None, feeds)  # warm
    done = [0] * len(runners)
    cpu, began = time.process_time(), time.monotonic()
    deadline = began + seconds

    def run(index: int, session: ort.InferenceSession) -> None:
        while time.monotonic() < deadline:
            session.run(None, feeds)
            done[index] += 1

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples, cpu = sum(done) * batch, time.process_time() - cpu
    return {
        "samples_per_s": round(samples / (time.monotonic() - began), 1),
        "cpu_ms_per_sample": round(1000 * cpu / samples, 3),
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, and the ratio's median with its min-max."""

    def spread(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"median": None, "min": None, "max": None}
        return {"median": round(median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}

    served = [r["served"]["samples_per_s"] for r in rounds if r["served"].get("samples_per_s")]
    return {
        "served_samples_per_s": spread(served),
        "in_process_samples_per_s": spread([r["in_process"]["samples_per_s"] for r in rounds]),
        "avg_batch": spread([r["served"]["avg_batch"] for r in rounds if r["served"].get("avg_batch")]),
        "ratio_served_to_in_process": spread([r["ratio"] for r in rounds if r["ratio"] is not None]),
        # Where the cores went while served: the generator's share, the server's, and the CPU a
        # sample cost the server against in-process ONNX Runtime at the same batch.
        "generator_cpu_percent": spread([r["served"]["cpu_percent"] for r in rounds if r["served"].get("cpu_percent")]),
        "server_cpu_percent": spread([r["served"]["server_cpu_percent"] for r in rounds]),
        "server_cpu_ms_per_sample": spread(
            [r["served"]["server_cpu_ms_per_sample"] for r in rounds if r["served"]["server_cpu_ms_per_sample"]]
        ),
        "in_process_cpu_ms_per_sample": spread([r["in_process"]["cpu_ms_per_sample"] for r in rounds]),
    }


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--models", nargs="+", choices=sorted(CONCURRENCY), default=sorted(CONCURRENCY))
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (perf_analyzer: per window)")
    parser.add_argument("--rounds", type=int, default=3, help="served and in-process measurements, in turns")
    parser.add_argument("--generator", choices=["auto", "perf_analyzer", "kit"], default="auto")
    parser.add_argument(
        "--concurrency",
        type=int,
        help=f"concurrent requests for every model (default per model: {CONCURRENCY}); more keeps both instances busy",
    )
    parser.add_argument("--compare-backend-dir", type=Path, help="a second backends folder, served as assembled")
    parser.add_argument("--compare-label", default="compare", help="its name in the results")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnxruntime_backend.json")
    args = parser.parse_args()
    for model in args.models:
        if not (args.repo / model / "1" / "model.onnx").is_file():
            raise SystemExit(f"error: {args.repo} has no {model}/1/model.onnx: run `make build-repo` first")
    compare = args.compare_backend_dir
    if compare is not None and not (compare / "python" / "libtriton_python.so").is_file():
        raise SystemExit(f"error: {compare} is no assembled backends folder (it lacks python/libtriton_python.so)")
    generator = choose_generator(args.generator)
    if generator.note:
        print(f"note: {generator.note}; using the kit's closed loop", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="kit-ort-backend-"))  # the default backends are assembled here
    backends = {DEFAULT_LABEL: (work / "backends", True)}
    if compare is not None:
        backends[args.compare_label] = (compare, False)
    layout = {model: ServedLayout.of(args.repo / model / "config.pbtxt") for model in args.models}
    concurrency = {model: args.concurrency or CONCURRENCY[model] for model in args.models}
    runners = {model: sessions(args.repo / model / "1" / "model.onnx", layout[model]) for model in args.models}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {label: [] for label in backends} for m in args.models}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        servers = {
            label: stack.enter_context(serving(args.repo, folder, assemble, work / f"{label}.log", args.models))
            for label, (folder, assemble) in backends.items()
        }
        kinds = {label: {"dir": str(folder), "kind": describe(folder)} for label, (folder, _) in backends.items()}
        for round_ in range(args.rounds):
            for model in args.models:
                for label, server in servers.items():
                    print(f"round {round_ + 1}/{args.rounds}: {model} on {label}", flush=True)
                    served = measure_served(generator, server, model, concurrency[model], args.seconds, work)
                    batch = max(1, min(round(served["avg_batch"] or 1), layout[model].max_batch_size))
                    alone = measure_in_process(runners[model], payload(model, batch), args.seconds)
                    rate = alone["samples_per_s"]
                    ratio = round(served["samples_per_s"] / rate, 3) if served.get("samples_per_s") else None
                    results[model][label].append(
                        {"served": served, "in_process": {"batch": batch, **alone}, "ratio": ratio}
                    )
    record = {
        **header("onnxruntime_backend"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores(),
            **versions("python", "onnxruntime"),
        },
        "server": "embedded Triton 2.51 (nvidia-pytriton), gRPC, batch-1 requests",
        "generator": generator.name,
        "generator_note": generator.note or None,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "backends": kinds,
        "models": {
            model: {
                "concurrency": concurrency[model],
                "served_config": asdict(layout[model]),
                "input_shapes": {name: list(array.shape[1:]) for name, array in payload(model, 1).items()},
                **{label: {**summary(rounds), "rounds": rounds} for label, rounds in per_backend.items()},
            }
            for model, per_backend in results.items()
        },
    }
    write(record, args.out)
    _print(record, list(backends))
    print(f"recorded in {args.out}")
    return 0


def _print(record: dict[str, Any], labels: list[str]) -> None:
    print(f"\n{record['generator']}, {record['seconds']:g} s x {record['rounds']} rounds (medians, ratio min-max):")
    print(
        f"  {'model':<17} {'backend':<18} {'served/s':>9} {'in-proc/s':>10} {'batch':>6} {'ratio':>6}  spread"
        "       generator% server%  CPU ms/sample served, in-process"
    )
    for model, figures in record["models"].items():
        for label in labels:
            row = figures[label]
            ratio = row["ratio_served_to_in_process"]
            spread = f"{ratio['min']}-{ratio['max']}" if ratio["median"] is not None else "-"
            print(
                f"  {model:<17} {label:<18} {row['served_samples_per_s']['median'] or float('nan'):>9.1f} "
                f"{row['in_process_samples_per_s']['median'] or float('nan'):>10.1f} "
                f"{row['avg_batch']['median'] or float('nan'):>6.2f} {ratio['median'] or float('nan'):>6.3f}  {spread:<11}"
                f" {row['generator_cpu_percent']['median'] or float('nan'):>10.0f} {row['server_cpu_percent']['median']:>7.0f}"
                f"  {row['server_cpu_ms_per_sample']['median'] or float('nan'):.2f}, {row['in_process_cpu_ms_per_sample']['median']:.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())

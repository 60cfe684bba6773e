"""Benchmark: FP32 against INT8 ONNX of the example classifier, in-process (ONNX Runtime) and
through the embedded Triton server, at a few batch sizes, side by side in one run.

    make build-repo && .venv/bin/python bench/precision.py [--repo model_repository] [--rounds 3]

FP32 and INT8 are measured in alternating rounds on the same machine, so their ratio holds up
on a shared, noisy machine better than either figure alone. The accuracy figures are the ones
the build's gate measured (the variant's build.json). Results go to bench/results/precision.json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import arguments, embedded, header, machine, thread_loop, versions, write
from clients import TritonClient

MODELS = {"fp32": "image_classifier", "int8": "image_classifier_int8"}
BATCH_SIZES = (1, 4, 16)


def alternate(run: Callable[[str], float], rounds: int) -> dict[str, float]:
    """Median of `run(precision)` over alternating rounds of FP32 and INT8."""
    samples: dict[str, list[float]] = {precision: [] for precision in MODELS}
    for _ in range(rounds):
        for precision in MODELS:
            samples[precision].append(run(precision))
    return {precision: statistics.median(values) for precision, values in samples.items()}


def in_process(repo: Path, images: NDArray[Any], rounds: int, calls: int) -> dict[str, Any]:
    """Latency of one session.run per batch size, with the thread count the served config uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    sessions = {
        precision: ort.InferenceSession(
            str(repo / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for precision, name in MODELS.items()
    }
    results = {}
    for size in BATCH_SIZES:
        feed = {"image": images[:size]}
        for session in sessions.values():
            session.run(None, feed)  # first-run allocations

        def run(precision: str, feed: dict[str, NDArray[Any]] = feed) -> float:
            started = time.perf_counter()
            for _ in range(calls):
                sessions[precision].run(None, feed)
            return (time.perf_counter() - started) / calls

        results[f"batch_{size}"] = _figures(alternate(run, rounds), size)
    return results


def served(repo: Path, images: NDArray[Any], rounds: int, calls: int, seconds: float) -> dict[str, Any]:
    """Sequential request latency per batch size, and throughput of 4 concurrent batch-1 clients."""
    with tempfile.TemporaryDirectory() as tmp:
        served_repo = Path(tmp) / "repo"
        for name in MODELS.values():
            shutil.copytree(repo / name, served_repo / name)
        server = embedded(served_repo, Path(tmp) / "log", Path(tmp) / "backends")
        server.start(timeout_s=240)
        try:
            results: dict[str, Any] = {}
            with TritonClient(server.grpc_url) as client:
                for size in BATCH_SIZES:
                    feed = {"image": images[:size]}
                    for name in MODELS.values():
                        client.infer(name, feed)

                    def run(precision: str, feed: dict[str, NDArray[Any]] = feed) -> float:
                        started = time.perf_counter()
                        for _ in range(calls):
                            client.infer(MODELS[precision], feed)
                        return (time.perf_counter() - started) / calls

                    results[f"batch_{size}"] = _figures(alternate(run, rounds), size)
            rate = alternate(lambda precision: _concurrent(server.grpc_url, MODELS[precision], images[:1], seconds), 2)
            results["concurrent_4_clients_batch_1"] = {
                **{f"{p}_images_per_s": round(v, 1) for p, v in rate.items()},
                "throughput_ratio_int8_to_fp32": round(rate["int8"] / rate["fp32"], 2),
            }
        finally:
            server.stop()
    return results


def _concurrent(url: str, model: str, image: NDArray[Any], seconds: float) -> float:
    @contextmanager
    def caller() -> Iterator[Callable[[], object]]:
        with TritonClient(url) as client:
            yield lambda: client.infer(model, {"image": image})

    return thread_loop(caller, 4, seconds)


def _figures(latency: dict[str, float], size: int) -> dict[str, Any]:
    return {
        "fp32_ms": round(latency["fp32"] * 1000, 2),
        "int8_ms": round(latency["int8"] * 1000, 2),
        "fp32_images_per_s": round(size / latency["fp32"], 1),
        "int8_images_per_s": round(size / latency["int8"], 1),
        "speedup_int8_over_fp32": round(latency["fp32"] / latency["int8"], 2),
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="calls per round and batch size")
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrent-throughput round")
    args = parser.parse_args()
    missing = [name for name in MODELS.values() if not (args.repo / name / "1" / "model.onnx").is_file()]
    if missing:
        sys.exit(f"error: {args.repo} has no {', '.join(missing)}; run `make build-repo` first")
    images = np.random.default_rng(0).standard_normal((max(BATCH_SIZES), 3, 224, 224)).astype(np.float32)
    gate = json.loads((args.repo / MODELS["int8"] / "1" / "build.json").read_text())["accuracy"]
    record = {
        **header("precision"),
        "machine": machine(processor=True),
        **versions("onnxruntime"),
        "models": MODELS,
        "in_process_onnxruntime_2_threads": in_process(args.repo, images, args.rounds, args.calls),
        "embedded_triton_grpc": served(args.repo, images, args.rounds, args.calls, args.seconds),
        "accuracy_gate": gate,
    }
    write(record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

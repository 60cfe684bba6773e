"""Benchmark: the example models served on the GPU by the embedded server, against ONNX Runtime's
CUDA provider in-process at the batch the server formed, side by side in one run.

    make build-repo && .venv/bin/python bench/gpu.py [--repo model_repository] [--seconds 8] [--rounds 3]

On a GPU host (`make build-repo` builds for the gpu target there). It measures:
- served throughput of batch-1 requests at 16/64/256 concurrent requests (the median of
  `--rounds` rounds, with each round's rate), spread over client
  processes so the generator is not the limit (their CPU is reported), over gRPC and, for
  images, with the tensors in system shared memory; with the server's own breakdown (queue,
  input, infer, output) and GPU utilisation sampled by nvidia-smi;
- in-process ONNX Runtime CUDA at the average batch the server formed, host copies counted
  (inputs bound from host numpy, outputs back to host, as the backend does);
- every batch size 1..max_batch_size served alone, to show no size collapses (each first
  formed size would otherwise stall while the CUDA provider tunes kernels), and in-process the
  cost of a size's first call, with exhaustive and heuristic convolution search;
- the CPU provider on the same host, as the baseline;
- the served figures at 1, 2 and 4 GPU instances per model (`--instances`), as built, served by
  Triton's C++ onnxruntime backend; in-process, the cost of the input shape changing from call to
  call, and the input's memory (heap, POSIX shared memory, pinned).

Results go to bench/results/gpu.json with the device, driver and stack versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch  # also loads the CUDA and cuDNN libraries onnxruntime-gpu's CUDA provider links against
import tritonclient.grpc as grpcclient
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    RESULTS,
    ROOT,
    arguments,
    breakdown,
    drive,
    embedded,
    header,
    machine,
    median_round,
    payload,
    run_bound,
    session,
    statistics_of,
    usable_cores,
    versions,
    write,
)
from server import EmbeddedTriton

CONCURRENCY = (16, 64, 256)
MODELS = ("image_classifier", "text_encoder")


# --- what the GPU says ------------------------------------------------------------------------


class GpuSampler:
    """nvidia-smi's utilisation and memory, sampled every 200 ms while a phase runs."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        output = self.process.communicate(timeout=10)[0]
        rows = [[float(v) for v in line.split(",")] for line in output.splitlines() if line.count(",") == 1]
        self.figures = {
            "gpu_util_mean_percent": round(statistics.mean(r[0] for r in rows), 1) if rows else None,
            "gpu_util_max_percent": max((r[0] for r in rows), default=None),
            "gpu_memory_used_mib": max((r[1] for r in rows), default=None),
        }


def served(server: EmbeddedTriton, seconds: float, processes: int, rounds: int) -> dict[str, Any]:
    """Each load point `rounds` times in turn (the rounds of one point apart, so drift of the
    shared host spreads over all points); the median round's figures, with every round's rate."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        for model in MODELS:
            modes = [("grpc", False), ("grpc_system_shm", True)] if model == "image_classifier" else [("grpc", False)]
            for mode, use_shm in modes:
                for concurrency in CONCURRENCY:
                    before = statistics_of(client, model)
                    try:
                        with GpuSampler() as sampler:
                            load = drive(server.grpc_url, model, concurrency, seconds, use_shm, processes)
                    except Exception as exc:  # one failed point must not cost the others
                        print(f"served {model} {mode} c{concurrency}: failed: {exc!r}", flush=True)
                        continue
                    figures = {**load, **breakdown(before, statistics_of(client, model)), **sampler.figures}
                    runs.setdefault((model, mode, concurrency), []).append(figures)
                    print(f"round {round_ + 1} served {model} {mode} c{concurrency}: {figures}", flush=True)
    client.close()
    results: dict[str, Any] = {}
    for (model, mode, concurrency), rounds_run in runs.items():
        results.setdefault(model, {}).setdefault(mode, {})[f"concurrency_{concurrency}"] = median_round(rounds_run)
    return results


def sweep_served(server: EmbeddedTriton, model: str, max_batch: int, calls: int) -> list[dict[str, Any]]:
    """Each batch size alone, sequentially: the server runs exactly that size."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rows = []
    for size in range(1, max_batch + 1):
        inputs = []
        for name, array in payload(model, size).items():
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        before = statistics_of(client, model)
        started = time.perf_counter()
        for _ in range(calls):
            client.infer(model, inputs)
        latency = (time.perf_counter() - started) / calls
        after = statistics_of(client, model)
        executions = after["executions"] - before["executions"]
        infer_ms = (after["compute_infer"][1] - before["compute_infer"][1]) / max(executions, 1) / 1e6
        rows.append(
            {
                "batch": size,
                "request_ms": round(latency * 1000, 3),
                "execution_infer_ms": round(infer_ms, 3),
                "items_per_s": round(size / latency, 1),
            }
        )
    client.close()
    return _flag_collapse(rows)


def _flag_collapse(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size's request latency over its neighbours' mean: a collapse (an execution stalled by
    the provider's per-shape tuning) stands out as several times its neighbours."""
    for index, row in enumerate(rows):
        neighbours = [rows[j]["request_ms"] for j in (index - 1, index + 1) if 0 <= j < len(rows)]
        row["latency_to_neighbours"] = round(row["request_ms"] / statistics.mean(neighbours), 2)
    return rows


# --- in-process ONNX Runtime ---------------------------------------------------------------------


def data_path(repo: Path) -> dict[str, Any]:
    """Where a GPU instance's time goes before the GPU: the same call with the input in heap,
    in POSIX shared memory (as Triton's Python backend hands it over) or in pinned memory, and
    with the config's 2 CPU threads or ONNX Runtime's default."""
    import mmap

    results: dict[str, Any] = {}
    for threads in (2, None):
        sess = session(repo, "image_classifier", "cuda", threads=threads)
        for batch in (1, 16):
            heap = payload("image_classifier", batch)["image"]
            with open(f"/dev/shm/bench_{os.getpid()}", "w+b") as handle:
                handle.truncate(heap.nbytes)
                mapped = mmap.mmap(handle.fileno(), heap.nbytes)
                shared = np.frombuffer(mapped, dtype=np.float32).reshape(heap.shape)
                shared[...] = heap
                pinned = torch.empty(heap.nbytes, dtype=torch.uint8, pin_memory=True).numpy().view(np.float32)
                pinned = pinned.reshape(heap.shape)
                pinned[...] = heap
                for label, array in (("heap", heap), ("posix_shm", shared), ("pinned", pinned)):
                    key = f"threads_{threads or 'default'}_batch_{batch}_{label}"
                    results[key] = round(rate(sess, {"image": array}, 1.0, bound=True), 1)
                del shared
                mapped.close()
            os.unlink(f"/dev/shm/bench_{os.getpid()}")
    print(f"data path: {results}", flush=True)
    return results


def rate(sess: ort.InferenceSession, feed: dict[str, NDArray[Any]], seconds: float, bound: bool) -> float:
    """Items per second of back-to-back calls at the feed's batch size."""
    call = (lambda: run_bound(sess, feed)) if bound else (lambda: sess.run(None, feed))
    call()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return len(next(iter(feed.values()))) * calls / (time.perf_counter() - started)


def first_calls(repo: Path, model: str, max_batch: int, search: str) -> list[dict[str, Any]]:
    """A fresh session's first and steady call at each size, in the order a batcher meets them."""
    sess = session(repo, model, "cuda", cudnn_conv_algo_search=search)
    rows = []
    for size in range(1, max_batch + 1):
        feed = payload(model, size)
        started = time.perf_counter()
        run_bound(sess, feed)
        first = time.perf_counter() - started
        steady = rate(sess, feed, 0.3, bound=True)
        rows.append({"batch": size, "first_call_ms": round(first * 1000, 2), "steady_items_per_s": round(steady, 1)})
    return rows


def with_instances(repo: Path, scratch: Path, count: int) -> Path:
    """A copy of the repository's two example models with `count` GPU instances each."""
    for model in MODELS:
        target = scratch / model
        shutil.copytree(repo / model, target, dirs_exist_ok=True)
        config = (target / "config.pbtxt").read_text()
        config = re.sub(r"(  kind: KIND_GPU\n  count: )\d+\n", rf"\g<1>{count}\n", config)
        (target / "config.pbtxt").write_text(config)
    return scratch


def shape_changes(repo: Path, model: str, sizes: tuple[int, int], calls: int = 20) -> dict[str, float]:
    """Milliseconds per call with one batch size throughout, and with two sizes taking turns (as a
    dynamic batcher under light load forms them), both sizes warmed first: a provider that plans
    per input shape and keeps one plan pays its planning again at every change."""
    sess = session(repo, model, "cuda")
    feeds = [payload(model, size) for size in sizes]
    for feed in feeds:
        for _ in range(3):
            run_bound(sess, feed)

    def per_call(order: list[dict[str, NDArray[Any]]]) -> float:
        started = time.perf_counter()
        for feed in order:
            run_bound(sess, feed)
        return round((time.perf_counter() - started) / len(order) * 1000, 2)

    same = per_call([feeds[0]] * calls)
    alternating = per_call([feeds[i % 2] for i in range(calls)])
    return {"same_size_ms": same, "alternating_sizes_ms": alternating, "ratio": round(alternating / same, 1)}


def environment() -> dict[str, Any]:
    query = "name,driver_version,memory.total,compute_cap"
    smi = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return {
        "gpu": smi.stdout.strip(),
        "cpu_cores": usable_cores(),
        "machine": machine(processor=True, cores=False),
        "triton": "2.51.0 (embedded, nvidia-pytriton 0.7.0)",
        "versions": versions("python", "onnxruntime", "numpy", "torch", "onnx", "tritonclient"),
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per served load point")
    parser.add_argument("--rounds", type=int, default=3, help="of each served load point; the median is kept")
    parser.add_argument("--processes", type=int, default=max(2, usable_cores() // 2))
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument(
        "--instances",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4],
        help="GPU instance counts to serve with, each in its own server (default 1,2,4)",
    )
    args = parser.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"error: onnxruntime {ort.__version__} has no CUDA provider; run on a GPU host after `make venv`")
    config = (args.repo / "image_classifier" / "config.pbtxt").read_text()
    if "KIND_GPU" not in config:
        sys.exit(f"error: {args.repo} was built for the cpu target; run `make build-repo` on the GPU host")
    ort.preload_dlls()
    max_batch = {"image_classifier": 16, "text_encoder": 32}
    record: dict[str, Any] = {**header("gpu"), **environment()}
    print(json.dumps(record, indent=2), flush=True)

    record["in_process_data_path_images_per_s"] = data_path(args.repo)
    record["served"] = {}
    log = args.out.with_suffix(".server.log")
    log.unlink(missing_ok=True)
    for count in args.instances:
        label = f"instances_{count}"
        scratch = with_instances(args.repo, ROOT / ".triton" / f"bench-repo-{label}", count)
        server = embedded(scratch, log)
        started = time.perf_counter()
        server.start(timeout_s=600)
        record.setdefault("server_ready_s", {})[label] = round(time.perf_counter() - started, 1)
        try:
            record.setdefault("backend_log", []).extend(
                line for line in log.read_text().splitlines()[-400:] if "onnxruntime" in line
            )
            record["served"][label] = served(server, args.seconds, args.processes, args.rounds)
            if count == args.instances[0]:
                record.setdefault("served_sweep", {})[label] = {
                    m: sweep_served(server, m, max_batch[m], 20) for m in MODELS
                }
        finally:
            server.stop()

    in_process: dict[str, Any] = {}
    for model in MODELS:
        cuda = session(args.repo, model, "cuda")
        cpu = session(args.repo, model, "cpu", threads=usable_cores())
        matched: dict[str, Any] = {}
        for label, models in record["served"].items():
            for mode, points in models.get(model, {}).items():
                for point, figures in points.items():
                    batch = max(1, round(figures["average_batch"]))
                    cuda_rate = rate(cuda, payload(model, batch), 1.5, bound=True)
                    matched[f"{label}_{mode}_{point}"] = {
                        "batch": batch,
                        "in_process_cuda_items_per_s": round(cuda_rate, 1),
                        "served_items_per_s": figures["requests_per_s"],
                        "ratio_served_to_in_process": round(figures["requests_per_s"] / cuda_rate, 2),
                    }
        full = payload(model, max_batch[model])
        in_process[model] = {
            "matched_batch": matched,
            f"cuda_batch_{max_batch[model]}_items_per_s": round(rate(cuda, full, 2.0, bound=True), 1),
            f"cpu_provider_batch_{max_batch[model]}_items_per_s": round(rate(cpu, full, 2.0, bound=False), 1),
        }
    for model, sizes in (("image_classifier", (5, 6)), ("text_encoder", (13, 14))):
        in_process[model]["shape_changes"] = shape_changes(args.repo, model, sizes)
        print(f"{model} shape changes: {in_process[model]['shape_changes']}", flush=True)
    in_process["image_classifier"]["first_call_per_size"] = {
        search: first_calls(args.repo, "image_classifier", 16, search) for search in ("EXHAUSTIVE", "HEURISTIC")
    }
    record["in_process"] = in_process
    write(record, args.out)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

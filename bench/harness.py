"""The harness every bench script uses for what they all do alike: the command line, an embedded
server on free ports, closed loops (client processes over gRPC, or threads) with the server's own
breakdown, in-process ONNX Runtime calls as the backend makes them, the machine and versions a
record names, and writing bench/results/<name>.json. Each script keeps only its measurement, and
puts the repository on sys.path before importing this (the scripts run as `bench/<name>.py`).
The generators run as processes (perf_analyzer, the kit's loadtest) are in bench/generators.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import re
import resource
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from numpy.typing import NDArray
from tritonclient.utils import np_to_triton_dtype

from server.embedded import EmbeddedTriton, free_port

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "model_repository"
RESULTS = ROOT / "bench" / "results"
BACKENDS = ROOT / ".triton" / "bench-backends"
SEQUENCE = 32  # the text encoder's input length in `payload`
# A dynamic batcher's queue policy in a config.pbtxt: without it, Triton's default (unbounded).
QUEUE_POLICY = re.compile(r"^\s*default_queue_policy \{.*\}\n", re.MULTILINE)
# cudnn_conv_algo_search as Triton's onnxruntime backend numbers it (src/onnxruntime.cc), EXHAUSTIVE by default.
CONV_ALGO_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}


def arguments(doc: str | None, repo: bool = True) -> argparse.ArgumentParser:
    """A script's command line: its docstring as the help, and `--repo` (the built repository)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if repo:
        parser.add_argument("--repo", type=Path, default=REPO)
    return parser


def embedded(repo: Path, log: Path, backend_dir: Path = BACKENDS, **options: Any) -> EmbeddedTriton:
    """A server for `repo` on free ports, logging to `log` (`options`: more EmbeddedTriton fields)."""
    return EmbeddedTriton(
        repo,
        backend_dir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=log,
        **options,
    )


# --- what a record names, and writing it -----------------------------------------------------------


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def machine(*, processor: bool = False, cores: bool = True, kernel: bool = False) -> str:
    """The machine in one line: its architecture, then the processor, usable cores and kernel as asked."""
    parts = [platform.machine()]
    parts += [platform.processor() or "cpu"] if processor else []
    parts += [f"cores: {usable_cores()}"] if cores else []
    parts += [f"kernel {platform.release()}"] if kernel else []
    return ", ".join(parts)


def versions(*packages: str) -> dict[str, str | None]:
    """Each package's __version__, None where it does not import; "python" is the interpreter's."""
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            python = package == "python"
            found[package] = platform.python_version() if python else importlib.import_module(package).__version__
        except (ImportError, AttributeError):
            found[package] = None
    return found


def header(benchmark: str) -> dict[str, Any]:
    """What every record opens with: the benchmark's name and when it ran."""
    return {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M")}


def write(record: dict[str, Any], out: Path | None = None) -> Path:
    """`record` as indented JSON at `out` (default bench/results/<its benchmark>.json)."""
    out = out or RESULTS / f"{record['benchmark']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def payload(model: str, batch: int, seed: int = 0) -> dict[str, NDArray[Any]]:
    """Random inputs of the example ONNX models (image_classifier*, text_encoder*), `batch` items."""
    rng = np.random.default_rng(seed)
    if model.startswith("image_classifier"):
        return {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    return {
        "input_ids": rng.integers(0, 8192, (batch, SEQUENCE), dtype=np.int64),
        "attention_mask": np.ones((batch, SEQUENCE), dtype=np.int64),
    }


def feed_for(model: str) -> dict[str, NDArray[Any]]:
    """One request of the example pipelines: a JPEG for image_classification, a sentence for text_embedding."""
    if model == "image_classification":
        image = (ROOT / "models/calibration/images/scene_0000.jpg").read_bytes()
        return {"image_bytes": np.array([[image]], dtype=object)}
    if model == "text_embedding":
        return {"text": np.array([[b"a short sentence to embed, of typical length"]], dtype=object)}
    raise SystemExit(f"error: --model {model!r}: use image_classification or text_embedding")


# --- closed loops ---------------------------------------------------------------------------------


Feed = Callable[[str, int], dict[str, NDArray[Any]]]
"""(model, client index) -> one request's inputs; picklable (a module-level function), since the
client processes are spawned."""


def _client_process(url: str, model: str, threads: int, seconds: float, use_shm: bool, feed: Feed, out: Any) -> None:
    counts = [0] * threads
    errors = [0] * threads
    deadline = [0.0]
    ready = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        request = feed(model, index)
        inputs, region = [], None
        for name, array in request.items():
            inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        if use_shm:  # one region per client, registered once: requests carry its name, not bytes
            name = f"bench_{os.getpid()}_{index}"
            nbytes = sum(a.nbytes for a in request.values())
            region = shm.create_shared_memory_region(name, f"/{name}", nbytes)
            shm.set_shared_memory_region(region, list(request.values()))
            client.register_system_shared_memory(name, f"/{name}", nbytes)
            offset = 0
            for tensor, array in zip(inputs, request.values(), strict=True):
                tensor.set_shared_memory(name, array.nbytes, offset)
                offset += array.nbytes
        else:
            for tensor, array in zip(inputs, request.values(), strict=True):
                tensor.set_data_from_numpy(array)
        ready.wait(timeout=300)
        while time.perf_counter() < deadline[0]:
            try:
                client.infer(model, inputs)
                counts[index] += 1
            except Exception:
                errors[index] += 1
        if region is not None:
            client.unregister_system_shared_memory(f"bench_{os.getpid()}_{index}")
            shm.destroy_shared_memory_region(region)
        client.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    deadline[0] = time.perf_counter() + 1e9
    ready.wait(timeout=300)
    started = time.perf_counter()
    cpu_started = resource.getrusage(resource.RUSAGE_SELF)
    deadline[0] = started + seconds
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    busy = (cpu.ru_utime - cpu_started.ru_utime) + (cpu.ru_stime - cpu_started.ru_stime)
    out.put({"requests": sum(counts), "errors": sum(errors), "seconds": elapsed, "cpu_seconds": busy})


def random_request(model: str, index: int) -> dict[str, NDArray[Any]]:
    """The default feed: `payload` of one item, seeded by the client's index."""
    return payload(model, 1, seed=index)


def drive(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    use_shm: bool,
    processes: int,
    feed: Feed = random_request,
) -> dict[str, Any]:
    """Closed-loop batch-1 requests (`feed`'s, default `payload`'s) from `processes` processes
    sharing `concurrency` clients."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    workers = [
        context.Process(target=_client_process, args=(url, model, share, seconds, use_shm, feed, out))
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = max(r["seconds"] for r in results)
    return {
        "requests_per_s": round(sum(r["requests"] for r in results) / elapsed, 1),
        "errors": sum(r["errors"] for r in results),
        "client_processes": len(workers),
        "generator_cpu_cores": round(sum(r["cpu_seconds"] for r in results) / elapsed, 2),
    }


def thread_loop(caller: Callable[[], AbstractContextManager[Callable[[], Any]]], threads: int, seconds: float) -> float:
    """Calls per second of `threads` threads, each calling back to back for `seconds` the call that
    `caller()` sets up (its client, opened before the clock starts and closed after)."""
    counts = [0] * threads

    def worker(index: int) -> None:
        with caller() as call:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                call()
                counts[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / seconds


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the round with the median `requests_per_s`, with every round's rate and
    their spread (range over median): the shared hosts drift between rounds."""
    median = sorted(rounds, key=lambda f: f["requests_per_s"])[len(rounds) // 2]
    rates = [f["requests_per_s"] for f in rounds]
    spread = round((max(rates) - min(rates)) / median["requests_per_s"], 3) if median["requests_per_s"] else None
    return {**median, "rounds_requests_per_s": rates, "spread": spread}


# --- what the server says -----------------------------------------------------------------------


def statistics_of(client: Any, model: str) -> dict[str, Any]:
    """The server's counts and nanoseconds for `model` (a tritonclient.grpc client's statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {
        "inferences": int(stats.get("inference_count", 0)),
        "executions": int(stats.get("execution_count", 0)),
        **{
            part: (
                int(stats["inference_stats"][part].get("count", 0)),
                int(stats["inference_stats"][part].get("ns", 0)),
            )
            for part in ("queue", "compute_input", "compute_infer", "compute_output")
        },
    }


def breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Average batch formed and per-request microseconds in each server step, between two reads."""
    executions = after["executions"] - before["executions"]
    inferences = after["inferences"] - before["inferences"]
    figures: dict[str, Any] = {"average_batch": round(inferences / executions, 2) if executions else 0.0}
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        count = after[part][0] - before[part][0]
        figures[f"{part}_us"] = round((after[part][1] - before[part][1]) / count / 1000, 1) if count else 0.0
    return figures


# --- in-process ONNX Runtime, as the backend runs it ----------------------------------------------


def session(repo: Path, model: str, provider: str, threads: int | None = None, **cuda: str) -> ort.InferenceSession:
    """A session with the threads and CUDA options Triton's onnxruntime backend reads from the
    model's config (its `parameters`), and its CUDA provider defaults."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or int(parameters.get("intra_op_thread_count", 0))
    options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", 0))
    providers: list[Any] = ["CPUExecutionProvider"]
    if provider == "cuda":
        options_cuda = {
            "device_id": "0",
            "cudnn_conv_algo_search": CONV_ALGO_SEARCH[parameters.get("cudnn_conv_algo_search", "0")],
            "do_copy_in_default_stream": "1",
            **cuda,
        }
        providers.insert(0, ("CUDAExecutionProvider", options_cuda))
    return ort.InferenceSession(str(repo / model / "1" / "model.onnx"), options, providers=providers)


def run_bound(sess: ort.InferenceSession, feed: dict[str, NDArray[Any]]) -> None:
    """One call as the backend makes it: inputs from host memory, outputs back to host memory."""
    binding = sess.io_binding()
    for name, array in feed.items():
        binding.bind_cpu_input(name, array)
    for output in sess.get_outputs():
        binding.bind_output(output.name, "cpu")
    sess.run_with_iobinding(binding)
    binding.copy_outputs_to_cpu()

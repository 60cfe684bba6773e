"""Benchmark: the compiled PyTorch variants (`format: torch_compiled`) against the ONNX models they
sit beside, in-process and served by the embedded server, side by side in one run.

    make build-repo && .venv/bin/python bench/compiled.py [--repo model_repository] [--seconds 5]

On the repository's target (its configs say which):
- cpu: image_classifier as FP32 ONNX and INT8 ONNX (ONNX Runtime, 2 threads as served) against
  image_classifier_compiled (AOTInductor, FP32, 2 torch threads); text_encoder likewise;
- gpu: image_classifier_fp16 (ONNX Runtime's CUDA provider, as the backend runs it) against
  image_classifier_compiled_fp16; text_encoder likewise.
In-process: the latency of one call at batch sizes 1, 4 and max_batch_size, inputs from host
memory and outputs back to it, engines taking turns over rounds (their ratio holds up on a
noisy machine better than either figure). Served: batch-1 requests from closed-loop clients (4
on cpu; 64 and 256 over client processes on gpu), engines one after the other in one server.
On gpu, where the time of one max-size call goes: copying its inputs to the GPU, the compiled
model on inputs already there, the whole call, ONNX Runtime's whole call, and the ratio to it
that the compiled call could reach were its kernels free (Amdahl's bound). Each compiled variant's compile and load seconds
are the build's (its build.json). Results go to bench/results/compiled-<target>.json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from server.python_models.triton_kit_compiled import CompiledPackage

Feed = dict[str, NDArray[Any]]

# The engines compared, per target: (label, model in the repository, runs as).
ENGINES = {
    "cpu": {
        "image_classifier": [
            ("onnx_fp32", "image_classifier", "onnx"),
            ("onnx_int8", "image_classifier_int8", "onnx"),
            ("compiled_fp32", "image_classifier_compiled", "compiled"),
        ],
        "text_encoder": [
            ("onnx_fp32", "text_encoder", "onnx"),
            ("onnx_int8", "text_encoder_int8", "onnx"),
            ("compiled_fp32", "text_encoder_compiled", "compiled"),
        ],
    },
    "gpu": {
        "image_classifier": [
            ("onnx_fp16", "image_classifier_fp16", "onnx"),
            ("compiled_fp16", "image_classifier_compiled_fp16", "compiled"),
        ],
        "text_encoder": [
            ("onnx_fp16", "text_encoder_fp16", "onnx"),
            ("compiled_fp16", "text_encoder_compiled_fp16", "compiled"),
        ],
    },
}
MAX_BATCH = {"image_classifier": 16, "text_encoder": 32}


def engine(repo: Path, model: str, runs_as: str, target: str) -> Callable[[Feed], Any]:
    """One call as the server makes it: host arrays in, host arrays out."""
    if runs_as == "eager":
        return eager(model, target)
    if runs_as == "compiled":
        package = CompiledPackage(str(repo / model / "1"), "cuda:0" if target == "gpu" else "cpu")
        return package
    sess = harness.session(repo, model, "cuda" if target == "gpu" else "cpu")
    return lambda feed: harness.run_bound(sess, feed)


def eager(model: str, target: str) -> Callable[[Feed], Any]:
    """The PyTorch module itself, uncompiled, in the compiled variant's precision: what compiling buys."""
    from builder.export.source import instantiate
    from builder.spec import OnnxModelSpec, load_spec

    spec = load_spec(harness.ROOT / "models.yaml").model(model)
    assert isinstance(spec, OnnxModelSpec)
    device, dtype = ("cuda", torch.float16) if target == "gpu" else ("cpu", torch.float32)
    module = instantiate(spec, spec.versions[0]).to(device=device, dtype=dtype)
    names = [t.name for t in spec.inputs]

    def run(feed: Feed) -> Any:
        with torch.inference_mode():
            args = [torch.from_numpy(feed[n]).to(device) for n in names]
            out = module(*(a.to(dtype) if a.is_floating_point() else a for a in args))
            return out.float().cpu().numpy()

    return run


def in_process(repo: Path, target: str, family: str, rounds: int, calls: int) -> dict[str, Any]:
    compared = [*ENGINES[target][family], ("pytorch_eager", family, "eager")]
    engines = {label: engine(repo, model, runs_as, target) for label, model, runs_as in compared}
    results: dict[str, Any] = {}
    for size in (1, 4, MAX_BATCH[family]):
        feed = harness.payload(family, size)
        for run in engines.values():
            for _ in range(3):
                run(feed)  # first-call set-up, and every kernel warmed
        samples: dict[str, list[float]] = {label: [] for label in engines}
        for _ in range(rounds):
            for label, run in engines.items():
                run(feed)  # untimed: the other engines' threads stop spinning, this one's wake
                started = time.perf_counter()
                for _ in range(calls):
                    run(feed)
                samples[label].append((time.perf_counter() - started) / calls)
        latency = {label: statistics.median(values) for label, values in samples.items()}
        row: dict[str, Any] = {f"{label}_items_per_s": round(size / value, 1) for label, value in latency.items()}
        row.update({f"{label}_ms": round(value * 1000, 3) for label, value in latency.items()})
        baseline, compiled = next(iter(latency)), next(label for label in latency if label.startswith("compiled"))
        row[f"ratio_{compiled}_to_{baseline}"] = round(latency[baseline] / latency[compiled], 2)
        row[f"ratio_{compiled}_to_pytorch_eager"] = round(latency["pytorch_eager"] / latency[compiled], 2)
        results[f"batch_{size}"] = row
        print(f"in-process {family} batch {size}: {row}", flush=True)
    return results


def where_time_goes(repo: Path, family: str, calls: int = 50) -> dict[str, Any]:
    """GPU only: one max-size batch through the compiled variant split into its parts, since a
    small model's call is bound by moving its inputs, not by its kernels."""
    model = next(m for label, m, _ in ENGINES["gpu"][family] if label.startswith("compiled"))
    baseline = next(m for label, m, _ in ENGINES["gpu"][family] if label.startswith("onnx"))
    package = CompiledPackage(str(repo / model / "1"), "cuda:0")
    onnx_call = engine(repo, baseline, "onnx", "gpu")
    feed = harness.payload(family, MAX_BATCH[family])
    resident = [torch.from_numpy(feed[name]).to("cuda") for name in package.inputs]
    resident = [t.to(package.dtype) if t.is_floating_point() else t for t in resident]

    def on_device() -> Any:
        if package.pad_batch is not None:
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        return package.runner(*resident)

    def timed(run: Callable[[], Any]) -> float:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
        return round((time.perf_counter() - started) / calls * 1000, 3)

    with torch.inference_mode():
        parts = {
            "input_mb": round(sum(a.nbytes for a in feed.values()) / 1e6, 2),
            "host_to_device_ms": timed(lambda: [torch.from_numpy(a).to("cuda") for a in feed.values()]),
            "compiled_on_device_ms": timed(on_device),
            "whole_call_ms": timed(lambda: package(feed)),
            f"{baseline}_whole_call_ms": timed(lambda: onnx_call(feed)),
        }
    # Amdahl's bound: were the compiled kernels free, the call would still pay for everything else.
    rest = parts["whole_call_ms"] - parts["compiled_on_device_ms"]
    parts["ratio_to_onnx"] = round(parts[f"{baseline}_whole_call_ms"] / parts["whole_call_ms"], 2)
    parts["ratio_to_onnx_if_kernels_were_free"] = round(parts[f"{baseline}_whole_call_ms"] / rest, 2)
    print(f"where the time goes, {model} at batch {MAX_BATCH[family]}: {parts}", flush=True)
    return parts


def served(repo: Path, target: str, seconds: float, processes: int) -> dict[str, Any]:
    scratch = harness.ROOT / ".triton" / f"bench-compiled-{target}"
    shutil.rmtree(scratch, ignore_errors=True)
    for compared in ENGINES[target].values():
        for _, model, _ in compared:
            shutil.copytree(repo / model, scratch / model)
    log = harness.RESULTS / f"compiled-{target}.server.log"
    log.unlink(missing_ok=True)
    server = harness.embedded(scratch, log)
    started = time.perf_counter()
    server.start(timeout_s=900)
    results: dict[str, Any] = {"server_ready_s": round(time.perf_counter() - started, 1)}
    concurrency = (64, 256) if target == "gpu" else (4,)
    try:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url)
        for family, engines in ENGINES[target].items():
            for label, model, _ in engines:
                for clients in concurrency:
                    before = harness.statistics_of(client, model)
                    load = harness.drive(server.grpc_url, model, clients, seconds, False, processes)
                    figures = {**load, **harness.breakdown(before, harness.statistics_of(client, model))}
                    results.setdefault(family, {}).setdefault(label, {})[f"concurrency_{clients}"] = figures
                    print(f"served {family} {label} c{clients}: {figures}", flush=True)
            for clients in concurrency:
                rates = {
                    label: results[family][label][f"concurrency_{clients}"]["requests_per_s"] for label, *_ in engines
                }
                baseline, compiled = next(iter(rates)), next(label for label in rates if label.startswith("compiled"))
                results[family][f"ratio_{compiled}_to_{baseline}_concurrency_{clients}"] = round(
                    rates[compiled] / rates[baseline], 2
                )
        client.close()
        results["load_lines"] = [
            line for line in log.read_text().splitlines() if "instance" in line and " in " in line
        ][-8:]
    finally:
        server.stop()
    return results


def main() -> None:
    parser = harness.arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="calls per round and batch size")
    parser.add_argument("--seconds", type=float, default=5.0, help="per served load point")
    parser.add_argument("--processes", type=int, default=max(1, harness.usable_cores() // 2))
    args = parser.parse_args()
    target = "gpu" if "KIND_GPU" in (args.repo / "image_classifier" / "config.pbtxt").read_text() else "cpu"
    missing = [m for family in ENGINES[target].values() for _, m, _ in family if not (args.repo / m / "1").is_dir()]
    if missing:
        sys.exit(f"error: {args.repo} ({target} target) has no {', '.join(missing)}; run `make build-repo` first")
    if target == "gpu":
        ort.preload_dlls()
    torch.set_num_threads(2)  # as the served configs bound each instance (intra_op_thread_count)
    record: dict[str, Any] = {
        **harness.header("compiled"),
        "target": target,
        "machine": harness.machine(),
        "gpu": torch.cuda.get_device_name() if target == "gpu" else None,
        "versions": harness.versions("torch", "onnxruntime", "numpy"),
        "builds": {
            m: json.loads((args.repo / m / "1" / "build.json").read_text())["compiled"]
            for family in ENGINES[target].values()
            for _, m, runs_as in family
            if runs_as == "compiled"
        },
    }
    record["in_process"] = {
        family: in_process(args.repo, target, family, args.rounds, args.calls) for family in ENGINES[target]
    }
    if target == "gpu":
        record["where_time_goes"] = {family: where_time_goes(args.repo, family) for family in ENGINES[target]}
    record["served_grpc_batch_1"] = served(args.repo, target, args.seconds, args.processes)
    harness.write(record, harness.RESULTS / f"compiled-{target}.json")
    print(json.dumps({k: v for k, v in record.items() if k != "builds"}, indent=2))


if __name__ == "__main__":
    main()

"""The image_classification pipeline end to end on a GPU host, from JPEG bytes:

- served: each pipeline of the gpu target alone on the GPU, closed loops of gRPC clients each
  sending one 500x375 JPEG per request: `image_classification` as declared (image_preprocess's
  `gpu` class decodes with nvJPEG, resizes and normalizes on the GPU; the batch stays there for
  image_classifier) at 16, 64 and 256 clients; its variants through the FP16 classifiers (ONNX
  Runtime's CUDA provider, the compiled engine) at 256;
- cpu_decode: the same ensemble with the cpu target's preprocessing (Pillow on the CPU, FP32 copied
  to the GPU), one instance per core (its best: Pillow's decode bounds it);
- in_process: the same pipeline in one process on the same GPU, batch 16: GpuImagePreprocess, then
  ONNX Runtime's CUDA provider with the batch bound where it lies (IO binding), then
  ClassifierPostprocess, from 1 and from 4 threads;
- agreement: top-1 of the GPU pipeline against the CPU pipeline (in process, one CUDA session for
  both, so only the preprocessing differs), the pixels' difference in 8-bit levels; and each
  served pipeline's answers with 256 images in flight at once (~154 MB of FP32 between two steps,
  past Triton's default 64 MB CUDA pool), with the pool fallbacks its log shows; once more with
  Triton's default pool, which the kit's replaces (server.supervisor.cuda_pool_flags says why);
- where the time goes: each step's queue and compute per request from the server's statistics
  (the classifier's compute_input holds the copy of its input), where each Python step's inputs
  arrived, GPU or host memory (kit_input_bytes), and GPU utilisation sampled by nvidia-smi.

Run on a GPU host with a repository built for the gpu target:

    python3 bench/pipeline.py --repo model_repository --seconds 3 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from numpy.typing import NDArray

from bench.gpu import GpuSampler, environment
from bench.harness import (
    RESULTS,
    ROOT,
    arguments,
    breakdown,
    drive,
    embedded,
    header,
    median_round,
    session,
    statistics_of,
    thread_loop,
    usable_cores,
    write,
)
from builder.checker.config import parse_config
from builder.python_model import assemble_python_model
from builder.render import render_config
from builder.spec import PythonModelSpec, load_spec
from models.calibration import jpeg
from models.image_pipeline import STD, ClassifierPostprocess, GpuImagePreprocess, ImagePreprocess

PIPELINE = "image_classification"
PHASES = {
    "gpu_decode": PIPELINE,
    "onnx_fp16": "image_classification_fp16",
    "compiled_fp16": "image_classification_compiled_fp16",
}
"""The gpu target's pipelines served: as declared, and through each FP16 build of the classifier."""
CONCURRENCY = (16, 64, 256)
IN_FLIGHT = 256
"""Images whose answers are checked all in flight at once: ~154 MB of FP32 between two steps."""
LOGS = ROOT / ".triton" / "bench-logs"
IMAGES = ROOT / ".triton" / "bench-images"
WIDTH, HEIGHT, QUALITY = 500, 375, 90
BATCH = 16


def write_images(count: int, seed: int = 0) -> list[bytes]:
    """`count` photo-like 500x375 JPEGs (quality 90), generated once from `seed` into .triton/bench-images."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    paths = [IMAGES / f"scene_{seed}_{index:04d}.jpg" for index in range(count)]
    if not all(path.is_file() for path in paths):
        rng = np.random.default_rng(seed)
        for path in paths:
            path.write_bytes(jpeg(rng, WIDTH, HEIGHT, QUALITY))
    return [path.read_bytes() for path in paths]


def jpeg_request(model: str, index: int) -> dict[str, NDArray[Any]]:
    """A client's request: one of the benchmark JPEGs, by the client's index (the harness's feed)."""
    paths = sorted(IMAGES.glob("scene_*.jpg"))
    return {"image_bytes": np.array([[paths[index % len(paths)].read_bytes()]], dtype=object)}


# --- in process ------------------------------------------------------------------------------------


class InProcessPipeline:
    """GPU preprocessing, ONNX Runtime CUDA fed from the device, postprocessing: one call a batch."""

    def __init__(self, repo: Path) -> None:
        self.preprocess = GpuImagePreprocess(device="cuda:0")
        self.session = session(repo, "image_classifier", "cuda")
        self.postprocess = ClassifierPostprocess(labels=str(repo / "image_postprocess" / "1" / "files" / "labels.txt"))

    def logits(self, images: Any) -> NDArray[np.float32]:
        """The classifier's logits for a batch of FP32 images, a torch tensor on the GPU or an array."""
        binding = self.session.io_binding()
        if isinstance(images, np.ndarray):
            binding.bind_cpu_input("image", images)
        else:
            binding.bind_input("image", "cuda", 0, np.float32, list(images.shape), images.data_ptr())
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]  # type: ignore[no-any-return]

    def __call__(self, encoded: NDArray[Any]) -> dict[str, NDArray[Any]]:
        images = self.preprocess({"image_bytes": encoded})["image"]
        return self.postprocess({"logits": self.logits(images)})


def batches_of(images: list[bytes]) -> list[NDArray[Any]]:
    """The images as the pipeline's requests of BATCH (the last one may be short), [n, 1] bytes each."""
    return [np.array(images[i : i + BATCH], dtype=object).reshape(-1, 1) for i in range(0, len(images), BATCH)]


def in_process(pipeline: InProcessPipeline, images: list[bytes], seconds: float) -> dict[str, Any]:
    batches = [batch for batch in batches_of(images) if len(batch) == BATCH]
    for batch in batches[:3]:
        pipeline(batch)
    figures: dict[str, Any] = {"batch": BATCH}
    for threads in (1, 4):

        @contextmanager
        def caller() -> Iterator[Any]:
            turn = [0]

            def call() -> None:
                pipeline(batches[turn[0] % len(batches)])
                turn[0] += 1

            yield call

        with GpuSampler() as sampler:
            calls = thread_loop(caller, threads, seconds)
        figures[f"threads_{threads}"] = {"images_per_s": round(calls * BATCH, 1), **sampler.figures}
        print(f"in process, {threads} thread(s): {figures[f'threads_{threads}']}", flush=True)
    return figures


def agreement(pipeline: InProcessPipeline, images: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Top-1 of the GPU preprocessing against the CPU's through one CUDA session, and their
    pixels; and the CPU pipeline's top-1 label of each image (Pillow, ONNX Runtime CUDA FP32)."""
    cpu = ImagePreprocess()
    same, levels, off_by_more = 0, [], 0
    labels: list[bytes] = []
    for encoded in batches_of(images):
        on_gpu = pipeline.preprocess({"image_bytes": encoded})["image"]
        on_cpu = cpu({"image_bytes": encoded})["image"]
        difference = np.abs(on_gpu.cpu().numpy() - on_cpu) * (STD * 255).reshape(3, 1, 1)  # in 8-bit levels
        levels.append(float(difference.mean()))
        off_by_more += int((difference > 1.01).sum())
        cpu_logits = pipeline.logits(on_cpu)
        same += int((pipeline.logits(on_gpu).argmax(1) == cpu_logits.argmax(1)).sum())
        labels.extend(pipeline.postprocess({"logits": cpu_logits})["labels"][:, 0])
    figures = {
        "images": len(images),
        "top1_agreement": round(same / len(images), 4),
        "mean_difference_levels": round(float(np.mean(levels)), 3),
        "values_off_by_more_than_one_level": off_by_more,
    }
    return figures, labels


# --- served ----------------------------------------------------------------------------------------


def members(repo: Path, pipeline: str) -> list[str]:
    """The models an ensemble's steps run, from its config."""
    config = parse_config((repo / pipeline / "config.pbtxt").read_text(), pipeline)
    return [step.model_name for step in config.ensemble_scheduling.step]


def pipeline_repository(
    repo: Path, scratch: Path, pipeline: str = PIPELINE, cpu_decode: bool = False, instances: int | None = None
) -> Path:
    """`pipeline` and the models it runs from `repo`, alone (nothing else loads on the GPU beside
    them); with `cpu_decode`, image_preprocess as the cpu target builds it (`instances` CPU
    instances, or as declared)."""
    shutil.rmtree(scratch, ignore_errors=True)
    for name in (pipeline, *members(repo, pipeline)):
        if name != "image_preprocess" or not cpu_decode:
            shutil.copytree(repo / name, scratch / name)
    if not cpu_decode:
        return scratch
    spec = load_spec(ROOT / "models.yaml")
    model = next(m for m in spec.models if m.name == "image_preprocess")
    assert isinstance(model, PythonModelSpec)
    assemble_python_model(model, "models.yaml", scratch / model.name / "1", "cpu")
    config = render_config(model, "models.yaml", "cpu")
    if instances is not None:
        config = re.sub(r"(  kind: KIND_CPU\n  count: )\d+\n", rf"\g<1>{instances}\n", config)
    (scratch / model.name / "config.pbtxt").write_text(config)
    return scratch


def top1_in_flight(url: str, pipeline: str, images: Sequence[bytes]) -> list[bytes]:
    """The top-1 label the pipeline answers for each image, all of them sent at once (one client
    each), so as many preprocessed images wait between the steps as there are images."""

    def top1(image: bytes) -> bytes:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        result = client.infer(pipeline, [tensor], outputs=[grpcclient.InferRequestedOutput("labels")])
        client.close()
        return bytes(result.as_numpy("labels")[0, 0])

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        return list(pool.map(top1, images))


def served(
    repo: Path,
    pipeline: str,
    label: str,
    options: argparse.Namespace,
    checked: tuple[Sequence[bytes], Sequence[bytes]],
    concurrency: Sequence[int] = CONCURRENCY,
    server_args: Sequence[str] = (),
) -> dict[str, Any]:
    """`pipeline` under each load point `rounds` times (rounds apart): the median round's figures.
    Before them, its top-1 answers for the images of `checked` all in flight at once, against the
    labels `checked` expects (the CPU pipeline's); after them, the CUDA-pool fallbacks its log
    shows, and where each Python step's inputs arrived (bytes by memory)."""
    images, expected = checked
    log = LOGS / f"pipeline-{label}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    server = embedded(repo, log, extra_args=list(server_args))
    server.start(timeout_s=600)
    runs: dict[int, list[dict[str, Any]]] = {}
    steps = members(repo, pipeline)
    try:
        answered = top1_in_flight(server.grpc_url, pipeline, images)
        figures: dict[str, Any] = {
            "pipeline": pipeline,
            "top1_agreement_in_flight": round(
                sum(a == b for a, b in zip(answered, expected, strict=True)) / len(expected), 4
            ),
            "images_in_flight": len(expected),
        }
        print(f"{label}: {figures}", flush=True)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for _ in range(options.rounds):
            for clients in concurrency:
                before = {name: statistics_of(client, name) for name in (pipeline, *steps)}
                with GpuSampler() as sampler:
                    load = drive(
                        server.grpc_url, pipeline, clients, options.seconds, False, options.processes, jpeg_request
                    )
                after = {name: breakdown(before[name], statistics_of(client, name)) for name in (pipeline, *steps)}
                point = {**load, **sampler.figures, "steps": after}
                runs.setdefault(clients, []).append(point)
                print(f"{label} c{clients}: {json.dumps(point)}", flush=True)
        client.close()
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    figures["pool_fallbacks"] = text.count("falling back to pinned system memory")
    figures["failed_gpu_copies"] = text.count("failed to copy data")
    arrived: dict[str, dict[str, float]] = {}
    for memory, model, value in re.findall(
        r'kit_input_bytes\{memory="(\w+)",model="(\w+)",version="1"\} (\S+)', metrics
    ):
        arrived.setdefault(model, {})[memory] = float(value)
    figures["input_bytes"] = arrived
    figures.update({f"concurrency_{clients}": median_round(measured) for clients, measured in runs.items()})
    return figures


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per served load point")
    parser.add_argument("--rounds", type=int, default=3, help="of each served load point; the median is kept")
    parser.add_argument("--processes", type=int, default=max(2, usable_cores() // 2), help="client processes")
    parser.add_argument("--images", type=int, default=512, help="distinct JPEGs (agreement is judged on all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"error: onnxruntime {ort.__version__} has no CUDA provider; run on a GPU host after `make venv`")
    if "KIND_GPU" not in (args.repo / "image_preprocess" / "config.pbtxt").read_text():
        sys.exit(
            f"error: {args.repo}'s image_preprocess is not the gpu target's; run `make build-repo` on the GPU host"
        )
    ort.preload_dlls()
    images = write_images(args.images)
    record: dict[str, Any] = {
        **header("pipeline"),
        **environment(),
        "command": "python3 bench/pipeline.py " + " ".join(sys.argv[1:]),
        "images": {
            "count": len(images),
            "size": f"{WIDTH}x{HEIGHT}",
            "jpeg_quality": QUALITY,
            "mean_kb": round(sum(map(len, images)) / len(images) / 1000, 1),
        },
    }
    print(json.dumps(record, indent=2), flush=True)
    pipeline = InProcessPipeline(args.repo)
    record["agreement"], cpu_top1 = agreement(pipeline, images)
    print(f"agreement: {record['agreement']}", flush=True)
    record["in_process"] = in_process(pipeline, images, args.seconds)
    write(record, args.out)
    checked = (images[:IN_FLIGHT], cpu_top1[:IN_FLIGHT])
    scratch = ROOT / ".triton"
    record["served"] = {}
    for label, name in PHASES.items():  # each alone on the GPU: one server each
        if not (args.repo / name).is_dir():
            record["served"][label] = {
                "pipeline": name,
                "skipped": f"{name} is not in {args.repo} (the build's summary says why)",
            }
            continue
        repo = pipeline_repository(args.repo, scratch / f"bench-repo-{label}", name)
        points = CONCURRENCY if name == PIPELINE else (256,)
        record["served"][label] = served(repo, name, label, args, checked, points)
        write(record, args.out)  # what is measured so far survives a run cut short
    # Pillow's decode is the CPU path's bound: one instance per core is its best on this host.
    label = "cpu_decode_one_instance_per_core"
    repo = pipeline_repository(args.repo, scratch / f"bench-repo-{label}", cpu_decode=True, instances=usable_cores())
    record["served"][label] = served(repo, PIPELINE, label, args, checked)
    write(record, args.out)
    # Triton's own pool size, to show what the kit's avoids: only the answers with all images in flight.
    repo = pipeline_repository(args.repo, scratch / "bench-repo-triton_default_pool")
    default_pool = [f"--cuda-memory-pool-byte-size=0:{64 << 20}"]
    record["served"]["triton_default_pool"] = served(
        repo, PIPELINE, "triton_default_pool", args, checked, (), default_pool
    )
    record["ratios"] = ratios(record)
    write(record, args.out)
    print(json.dumps(record["ratios"], indent=2))


def ratios(record: dict[str, Any]) -> dict[str, float]:
    """The issue's targets, side by side from one run."""
    served = record["served"]
    best_in_process = max(record["in_process"][f"threads_{t}"]["images_per_s"] for t in (1, 4))
    c256 = {label: figures["concurrency_256"] for label, figures in served.items() if "concurrency_256" in figures}
    figures = {
        "served_c256_to_in_process": round(c256["gpu_decode"]["requests_per_s"] / best_in_process, 2),
        "gpu_decode_c256_to_cpu_decode_c256": round(
            c256["gpu_decode"]["requests_per_s"] / c256["cpu_decode_one_instance_per_core"]["requests_per_s"], 2
        ),
    }
    if "onnx_fp16" in c256 and "compiled_fp16" in c256:
        figures["compiled_fp16_to_onnx_fp16_c256"] = round(
            c256["compiled_fp16"]["requests_per_s"] / c256["onnx_fp16"]["requests_per_s"], 2
        )
        per_image = {
            label: c256[label]["steps"][model]["compute_infer_us"] / c256[label]["steps"][model]["average_batch"]
            for label, model in (
                ("onnx_fp16", "image_classifier_fp16"),
                ("compiled_fp16", "image_classifier_compiled_fp16"),
            )
        }
        figures["classifier_compute_per_image_onnx_fp16_to_compiled_fp16"] = round(
            per_image["onnx_fp16"] / per_image["compiled_fp16"], 2
        )
    return figures


if __name__ == "__main__":
    main()

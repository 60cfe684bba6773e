"""Every benchmark table of the site, one declaration each (docs/hooks/bench.py says how).

A new results file gets its table here: `@table("<file>.json", command=...)` over a function
from the file's JSON to (header, rows); a page shows it with `{{ bench("<function name>") }}`.
`command=` is needed where the file records none, as is `machine=`/`date=` where it lacks them.
"""

from __future__ import annotations

from typing import Any

from docs.hooks.bench import Rows, ms, n, pct, table, x

__all__: list[str] = []  # the declarations register themselves in docs.hooks.bench.TABLES

MODELS = ("image_classifier", "text_encoder")


@table("precision.json", command="make build-repo && .venv/bin/python bench/precision.py")
def precision_speedup(r: dict[str, Any]) -> Rows:
    batches = ("batch_1", "batch_4", "batch_16")
    served = r["embedded_triton_grpc"]
    rows = [
        ["INT8 / FP32 in-process (ONNX Runtime, 2 threads)"]
        + [x(r["in_process_onnxruntime_2_threads"][b]["speedup_int8_over_fp32"]) for b in batches],
        ["INT8 / FP32 through the embedded server (gRPC)"] + [x(served[b]["speedup_int8_over_fp32"]) for b in batches],
    ]
    return ["", "batch 1", "batch 4", "batch 16"], rows


@table("precision.json", command="make build-repo && .venv/bin/python bench/precision.py")
def precision_gate(r: dict[str, Any]) -> Rows:
    gate = r["accuracy_gate"]
    rows = [
        [
            f"`{name}`",
            str(o["samples"]),
            f"{pct(o['top1_agreement'], 2)} ({o['top1_classes']} classes)",
            f"{o['cosine_mean']:.5f} (min {o['cosine_min']:.5f})",
            f"{o['max_abs_error']:.4f} / {o['mean_abs_error']:.4f}",
            "passed" if gate["passed"] else "failed",
        ]
        for name, o in gate["outputs"].items()
    ]
    return ["output", "held-out samples", "top-1 agreement", "cosine", "abs error max / mean", "gate"], rows


def _compiled(r: dict[str, Any], precision: str) -> Rows:
    rows = []
    for model in MODELS:
        batches = r["in_process"][model]
        served = r["served_grpc_batch_1"][model]
        served_cells = ", ".join(
            f"{x(v)} ({k.rsplit('_', 1)[1]} clients)" for k, v in served.items() if k.startswith("ratio_")
        )
        for baseline in (f"onnx_{precision}", "pytorch_eager"):
            key = f"ratio_compiled_{precision}_to_{baseline}"
            label = "ONNX Runtime" if baseline.startswith("onnx") else "eager PyTorch"
            rows.append(
                [f"{model}: compiled / {label}"]
                + [f"{x(b[key])} ({name.split('_')[1]})" for name, b in batches.items()]
                + [served_cells if baseline.startswith("onnx") else ""]
            )
    return ["", "batch 1", "batch 4", "max batch", "served (batch-1 requests)"], rows


@table("compiled-cpu.json", command="make build-repo && .venv/bin/python bench/compiled.py")
def compiled_cpu(r: dict[str, Any]) -> Rows:
    return _compiled(r, "fp32")


@table("compiled-gpu.json", command="make build-repo && .venv/bin/python bench/compiled.py")
def compiled_gpu(r: dict[str, Any]) -> Rows:
    return _compiled(r, "fp16")


@table("compiled-gpu.json", command="make build-repo && .venv/bin/python bench/compiled.py")
def compiled_gpu_time(r: dict[str, Any]) -> Rows:
    rows = [
        [
            model,
            f"{t['input_mb']:.2f} MB",
            ms(t["host_to_device_ms"], 2),
            ms(t["compiled_on_device_ms"], 2),
            ms(t["whole_call_ms"], 2),
            ms(next(v for k, v in t.items() if k.endswith("_fp16_whole_call_ms")), 2),
            x(t["ratio_to_onnx_if_kernels_were_free"]),
        ]
        for model, t in r["where_time_goes"].items()
    ]
    header = ["model", "input", "copy to GPU", "compiled kernels", "compiled call", "ONNX Runtime call"]
    return [*header, "bound if kernels took no time"], rows


@table("compiled-cpu.json", command="make build-repo && .venv/bin/python bench/compiled.py")
def compiled_cpu_build(r: dict[str, Any]) -> Rows:
    return _builds(r)


@table("compiled-gpu.json", command="make build-repo && .venv/bin/python bench/compiled.py")
def compiled_gpu_build(r: dict[str, Any]) -> Rows:
    return _builds(r)


def _builds(r: dict[str, Any]) -> Rows:
    rows = []
    for name, build in r["builds"].items():
        seconds = build["seconds"]
        load = seconds.get("load", seconds.get("load_and_run"))
        artifact = build.get("artifact", "aoti")
        rows.append([name, artifact, f"{seconds['export']:.1f} s", f"{seconds['compile']:.1f} s", f"{load:.1f} s"])
    return ["variant", "artifact", "export", "compile", "load (gate)"], rows


@table(
    "checker_conformance.json",
    command=".venv/bin/python bench/checker_conformance.py server/qa/L0_model_config",
    machine="x86_64, cores: 2",
)
def checker_conformance(r: dict[str, Any]) -> Rows:
    t = r["totals"]
    rows = [
        [
            "invalid configs",
            str(t["invalid_cases"]),
            f"{t['flagged_for_the_servers_reason']} ({t['share_flagged_for_the_servers_reason']:.3f})",
            str(t["flagged_for_another_reason_only"]),
            f"{t['missed']} missed",
        ],
        ["valid configs", str(t["valid_cases"]), "", "", f"{t['false_alarms']} false alarms"],
    ]
    rows.append(["left out (model files from NVIDIA's data volume)", str(t["unreproducible_left_out"]), "", "", ""])
    return ["cases", "count", "flagged for the server's reason", "for another reason only", "errors"], rows


ORT_BACKEND = "make build-repo && .venv/bin/python bench/onnxruntime_backend.py --seconds 8 --rounds 3"


@table(
    "onnxruntime_backend.json",
    command=f"{ORT_BACKEND} --compare-backend-dir <the Python imitation's backends>",
)
def onnxruntime_backend(r: dict[str, Any]) -> Rows:
    rows = []
    for model, m in r["models"].items():
        cpp, imitation = m["default"]["served_samples_per_s"], m["python-imitation"]["served_samples_per_s"]
        rows.append(
            [
                model,
                str(m["concurrency"]),
                n(cpp["median"], 1),
                n(imitation["median"], 1),
                x(cpp["median"] / imitation["median"]),
                x(m["default"]["ratio_served_to_in_process"]["median"]),
            ]
        )
    header = ["model", "concurrency", "C++ backend, samples/s", "Python imitation", "C++ / imitation"]
    return [*header, "served / in-process"], rows


def _cores(r: dict[str, Any]) -> Rows:
    rows = []
    for model, m in r["models"].items():
        d = m["default"]
        served, alone = d["server_cpu_ms_per_sample"]["median"], d["in_process_cpu_ms_per_sample"]["median"]
        rows.append(
            [
                model,
                str(m["concurrency"]),
                x(d["ratio_served_to_in_process"]["median"]),
                f"{d['generator_cpu_percent']['median']:.0f}%",
                f"{d['server_cpu_percent']['median']:.0f}%",
                f"{served:.2f} vs {alone:.2f} ms ({x(served / alone)})",
            ]
        )
    header = ["model", "concurrency", "served / in-process", "generator's CPU", "server's CPU"]
    return [*header, "CPU per sample, served vs in-process"], rows


@table("onnxruntime_backend-cores.json", command=ORT_BACKEND)
def onnxruntime_backend_cores(r: dict[str, Any]) -> Rows:
    return _cores(r)


@table("onnxruntime_backend-cores-c16.json", command=f"{ORT_BACKEND} --concurrency 16")
def onnxruntime_backend_cores_c16(r: dict[str, Any]) -> Rows:
    return _cores(r)


@table("faults.json")
def faults_kills(r: dict[str, Any]) -> Rows:
    rows = [
        [
            f"`{model}`" + (f" (behind `{k['called']}`)" if k["called"] != model else ""),
            str(k["clients"]),
            ", ".join(f"{kill['serving_again_after_kill_s']:.2f} s" for kill in k["kills"]),
            str(sum(sum(kill["failed_after"].values()) for kill in k["kills"])),
        ]
        for model, k in r["stub_kills"].items()
        if isinstance(k, dict)
    ]
    return ["stub killed (kill -9)", "closed-loop clients", "serving again after each kill", "failed requests"], rows


@table("faults.json")
def faults_drain(r: dict[str, Any]) -> Rows:
    rows = [
        [
            f"`{d['model']}`",
            str(d["clients"]),
            f"{d['in_flight_answered']} of {d['in_flight_at_signal']}",
            n(d["sent_after_signal"].get("ServerUnavailable", 0)),
            f"{d['drain_s']:.1f} s",
            str(d["exit_code"]),
            f"{d['models_unloaded']} of {d['models']}",
            str(len(d["dev_shm_left"])),
        ]
        for d in r["drain"]
    ]
    header = ["SIGTERM twice, under", "clients", "in flight answered", "later refused (ServerUnavailable)"]
    return [*header, "drain", "exit", "models unloaded", "left in /dev/shm"], rows


@table("faults.json")
def faults_memory(r: dict[str, Any]) -> Rows:
    m = r["memory"]
    rows = [
        ["tritonserver at start", f"{m['started']['server_mb']:.0f} MB"],
        ["after the first burst of requests", f"+{m['growth_mb']['first_burst']:.0f} MB"],
        [f"after {len(m['image_bursts']) - 1} more bursts", f"+{m['growth_mb']['later_bursts']:.0f} MB"],
        ["per stub killed with requests in it (Triton's)", f"+{m['growth_mb']['per_kill']:.1f} MB"],
        ["the server with its stubs, at start", f"{m['started']['tree_mb']:,.0f} MB"],
    ]
    return ["server memory", ""], rows


@table("gpu.json", command="make build-repo && .venv/bin/python bench/gpu.py --seconds 3 --rounds 3 --instances 4")
def gpu_served(r: dict[str, Any]) -> Rows:
    rows = []
    for instances, models in r["served"].items():
        for model, transports in models.items():
            unit = "img/s" if model.startswith("image") else "seq/s"
            for transport, levels in transports.items():
                matched = r["in_process"][model]["matched_batch"]
                cells = []
                for level, s in levels.items():
                    low, high = min(s["rounds_requests_per_s"]), max(s["rounds_requests_per_s"])
                    ratio = matched[f"{instances}_{transport}_{level}"]["ratio_served_to_in_process"]
                    cells.append(f"{n(s['requests_per_s'])} {unit} ({n(low)}-{n(high)}), {x(ratio)}")
                label = f"{model}, {transport.replace('_system_shm', ', system shared memory')}"
                rows.append([label, *cells])
    image, text = r["in_process"]["image_classifier"], r["in_process"]["text_encoder"]
    rows.append(
        [
            "in-process ONNX Runtime, host copies counted",
            f"CUDA, image batch 16: {n(image['cuda_batch_16_items_per_s'])} img/s",
            f"CUDA, text batch 32: {n(text['cuda_batch_32_items_per_s'])} seq/s",
            f"CPU provider: {n(image['cpu_provider_batch_16_items_per_s'])} img/s, "
            f"{n(text['cpu_provider_batch_32_items_per_s'])} seq/s",
        ]
    )
    return ["batch-1 requests, 4 GPU instances", "16 concurrent", "64 concurrent", "256 concurrent"], rows


@table("loadgen.json", command=".venv/bin/python bench/loadgen.py --seconds 10 --users 16")
def loadgen(r: dict[str, Any]) -> Rows:
    g, h = r["results"]["grpc"], r["results"]["http"]

    def locust(p: dict[str, Any]) -> str:
        return f"{n(p['locust_1_process']['rps'])} ({p['locust_1_process']['generator_cpu_percent'][0]:.0f}% CPU)"

    rows = [
        ["plain tritonclient loop, 1 thread", n(g["plain_loop_1_thread"]), n(h["plain_loop_1_thread"])],
        ["plain tritonclient loop, 16 threads", n(g["plain_loop_16_threads"]), n(h["plain_loop_16_threads"])],
        ["Locust, 1 process, 16 users (kit client)", locust(g), locust(h)],
        ["Locust / 16-thread loop", x(g["ratio_locust_to_plain_threads"]), x(h["ratio_locust_to_plain_threads"])],
    ]
    return ["generator", "gRPC req/s", "HTTP req/s"], rows


@table("overload.json", command="make build-repo && .venv/bin/python bench/overload.py --seconds 10")
def overload(r: dict[str, Any]) -> Rows:
    rows = []
    for key, label in (
        ("bounded_as_built", "bounded (as built)"),
        ("unbounded_triton_default", "unbounded (Triton's)"),
    ):
        o, mem = r[key], r[key]["server_memory"]
        rows.append(
            [
                label,
                pct(o["refused_share"]),
                f"{o['p50_ms'] / 1000:.1f} s / {o['p99_ms'] / 1000:.1f} s",
                f"{o['drained_s_after_last_send']:.1f} s",
                f"{n(mem['idle_mb'])} / {n(mem['peak_mb'])} / {n(mem['after_mb'])} MB",
            ]
        )
    header = ["queue", "refused", "answered p50 / p99", "drained after the last send"]
    return [*header, "server memory idle / peak / after"], rows


def _queue_stall(r: dict[str, Any]) -> Rows:
    forms = r["results"]
    levels = [k for k in forms["one_instance_bounded"] if k.startswith("c")]
    rows = []
    for key, form in forms.items():
        instances, threads = form["instances"], form["intra_op_threads"]
        label = f"{instances} instance{'s' if instances > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}, "
        label += "bounded queue" if form["queue_policy"] else "Triton's unbounded queue"
        cells = []
        for level in levels:
            s = form[level]
            ratio = f" ({x(s['rps_vs_one_instance_bounded'])})" if "rps_vs_one_instance_bounded" in s else ""
            cells.append(f"{n(s['rps'])} req/s{ratio}, p99 {ms(s['p99_ms'], 0)}")
        rows.append(
            [label + (" (as built)" if key == "as_built" else ""), *cells, str(form[levels[-1]]["over_400_ms"])]
        )
    header = ["form", *(f"{level[1:]} concurrent" for level in levels), f"requests over 400 ms at {levels[-1][1:]}"]
    return header, rows


QUEUE_STALL = "make build-repo && .venv/bin/python bench/queue_stall.py"


@table("queue_stall-text_encoder.json", command=f"{QUEUE_STALL} --model text_encoder --seconds 10")
def queue_stall_text_encoder(r: dict[str, Any]) -> Rows:
    return _queue_stall(r)


@table("queue_stall-image_classifier.json", command=f"{QUEUE_STALL} --model image_classifier --seconds 8")
def queue_stall_image_classifier(r: dict[str, Any]) -> Rows:
    return _queue_stall(r)


@table(
    "tune-text_encoder.json",
    command="make tune MODEL=text_encoder P95_MS=20",
    # The file records no machine or date: those of the commit that added it (2-core CI machine).
    machine="x86_64, cores: 2",
    date="2026-12-01",
)
def tune_text_encoder(r: dict[str, Any]) -> Rows:
    rows = [
        [
            role,
            r[role]["label"],
            ", ".join(n(v) for v in r["confirmation"][role]["rps"]),
            n(r["confirmation"][role]["median"]),
        ]
        for role in ("baseline", "winner")
    ]
    rows.append(["winner / baseline", f"{r['candidates']} candidates measured", "", x(r["ratio"])])
    return ["", "options", f"req/s within p95 {r['p95_budget_ms']:.0f} ms, in turns", "median"], rows


VS_PERF_ANALYZER = "make build-repo && .venv/bin/python bench/vs_perf_analyzer.py"


def _closed_loop(r: dict[str, Any]) -> list[str]:
    c = r["closed_loop"]
    pa = c["perf_analyzer"]
    kit = c["kit"]

    def cpu(runs: list[dict[str, Any]]) -> str:
        low, high = min(run["cpu_percent"] for run in runs), max(run["cpu_percent"] for run in runs)
        return f"{low:.0f}%" if round(low) == round(high) else f"{low:.0f}-{high:.0f}%"

    return [
        r["protocol"],
        f"{', '.join(n(run['rps']) for run in pa)} req/s; {cpu(pa)} CPU",
        f"{', '.join(n(run['steps'][0]['rps']) for run in kit)} req/s; {cpu(kit)} CPU",
        x(c["ratio_kit_to_perf_analyzer"]),
    ]


@table("vs_perf_analyzer.json", command=VS_PERF_ANALYZER)
def vs_perf_analyzer_closed(r: dict[str, Any]) -> Rows:
    header = [f"concurrency {r['closed_loop']['concurrency']}", "perf_analyzer (3 runs)", "kit (3 runs, Locust)"]
    return [*header, "kit / perf_analyzer, medians"], [_closed_loop(r)]


@table("vs_perf_analyzer-http.json", command=f"{VS_PERF_ANALYZER} --protocol http --rates 400 800")
def vs_perf_analyzer_closed_http(r: dict[str, Any]) -> Rows:
    header = [f"concurrency {r['closed_loop']['concurrency']}", "perf_analyzer (3 runs)", "kit (3 runs, Locust)"]
    return [*header, "kit / perf_analyzer, medians"], [_closed_loop(r)]


@table("vs_perf_analyzer.json", command=VS_PERF_ANALYZER)
def vs_perf_analyzer_open(r: dict[str, Any]) -> Rows:
    o = r["open_loop"]
    rates = list(o["perf_analyzer"])
    pa = ["perf_analyzer (`--request-rate-range --async`)"]
    pa += [f"{o['perf_analyzer'][rate]['rps']:.1f}, p95 {ms(o['perf_analyzer'][rate]['p95_ms'])}" for rate in rates]
    kit = ["kit (`--rate`)"]
    kit += [
        f"{o['kit'][rate]['steps'][0]['rps']:.1f}, p95 {ms(o['kit'][rate]['steps'][0]['p95_ms'])}" for rate in rates
    ]
    return [f"{r['protocol']}, offered req/s: answered, p95", *rates], [pa, kit]

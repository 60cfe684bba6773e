"""Benchmark: the kit's load generator against NVIDIA's perf_analyzer 2.51, side by side in one
run, on the embedded server.

    make build-repo && .venv/bin/python bench/vs_perf_analyzer.py [--model text_encoder] [--protocol grpc]
        [--concurrency 4] [--rates 200 400 600 800] [--seconds 10] [--rounds 3]

perf_analyzer is the binary of the tritonclient 2.51 wheel (2.60's needs glibc 2.38); it links
libb64 (Debian's libb64-0d) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel) even on a
CPU host. The first run installs the three into ~/.cache/triton-model-kit/perf_analyzer-2.51.0
(PyPI and Debian's archive must be reachable; no root needed); where that cannot be done the
script says why and exits 3 without recording anything.

Both tools send the same request: the payload the kit draws from the spec, written as
perf_analyzer's --input-data JSON (`python -m loadtest payload`). The server loads only the model.
- Closed loop: perf_analyzer's --concurrency-range C (synchronous calls, --seconds windows until stable)
  against `python -m loadtest --steps 1 --step-users C` (Locust), in turns, --rounds times each.
- Open loop: perf_analyzer's --request-rate-range R --async against `python -m loadtest --rate R`,
  in turns: the achieved rate and p95 at each offered rate.
Each generator's CPU time is measured too: both share the machine with the server. Results go to
bench/results/vs_perf_analyzer.json; quote the ratios, not the absolute figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients import TritonClient  # noqa: E402
from loadtest.tune import TuneError, model_server  # noqa: E402

PERF_ANALYZER_VERSION = "2.51.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "triton-model-kit"
UNAVAILABLE_EXIT = 3


class Unavailable(Exception):
    """perf_analyzer cannot run here; the message says why and what would make it run."""


def perf_analyzer() -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in, installed on first use."""
    if platform.machine() != "x86_64":
        raise Unavailable(f"perf_analyzer's wheel is built for x86_64 only; this machine is {platform.machine()}")
    home = CACHE / f"perf_analyzer-{PERF_ANALYZER_VERSION}"
    binary, libs = home / "perf_analyzer", home / "lib"
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")])),
    }
    if not binary.exists():
        _install(home)
    missing = [line.split()[0] for line in _run(["ldd", str(binary)], env).splitlines() if "not found" in line]
    if "libb64.so.0d" in missing:
        _install_libb64(libs)
        missing.remove("libb64.so.0d")
    if missing:
        raise Unavailable(f"perf_analyzer in {home} needs libraries this machine lacks: {', '.join(missing)}")
    version = _run([str(binary), "--version"], env).strip()
    if PERF_ANALYZER_VERSION not in version:
        raise Unavailable(f"{binary} answered {version!r} to --version: delete {home} to reinstall it")
    return binary, env


def _install(home: Path) -> None:
    """perf_analyzer from the tritonclient wheel, libcudart.so.12 from NVIDIA's runtime wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--platform", "manylinux2014_x86_64", "--dest", tmp,
            f"tritonclient=={PERF_ANALYZER_VERSION}", CUDA_RUNTIME,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise Unavailable(
                f"pip could not download perf_analyzer's wheels (is PyPI reachable?): {done.stderr[-400:]}"
            )
        staging = Path(tmp) / "home"
        (staging / "lib").mkdir(parents=True)
        for wheel in Path(tmp).glob("*.whl"):
            shutil.unpack_archive(wheel, Path(tmp) / wheel.stem, format="zip")
        found = {path.name: path for path in Path(tmp).rglob("*") if path.name in {"perf_analyzer", "libcudart.so.12"}}
        if set(found) != {"perf_analyzer", "libcudart.so.12"}:
            raise Unavailable(f"the downloaded wheels lack {sorted({'perf_analyzer', 'libcudart.so.12'} - set(found))}")
        shutil.copy(found["perf_analyzer"], staging / "perf_analyzer")
        shutil.copy(found["libcudart.so.12"], staging / "lib" / "libcudart.so.12")
        (staging / "perf_analyzer").chmod(0o755)
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)


def _install_libb64(libs: Path) -> None:
    """Debian's libb64-0d unpacked beside perf_analyzer: `apt-get download` needs no root."""
    if not shutil.which("apt-get"):
        raise Unavailable("perf_analyzer needs libb64.so.0d: install your distribution's libb64 package")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["apt-get", "download", "libb64-0d"], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("libb64-0d*.deb"))
        if done.returncode or not debs:
            raise Unavailable(
                f"perf_analyzer needs libb64.so.0d and `apt-get download libb64-0d` failed: {done.stderr[-300:]}"
                " (run `apt-get update` first, or install libb64-0d as root)"
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        for library in (Path(tmp) / "x").rglob("libb64.so.0d*"):
            shutil.copy(library, libs / library.name, follow_symlinks=True)


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return done.stdout + done.stderr  # perf_analyzer prints its version on stderr


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_perf_analyzer(
    binary: Path, env: dict[str, str], args: argparse.Namespace, url: str, data: Path, load: list[str], out: Path
) -> dict[str, Any]:
    """One perf_analyzer measurement (`load`: its concurrency or request-rate flags)."""
    csv_file = out.with_suffix(".csv")
    command = [
        str(binary), "-m", args.model, "-i", args.protocol, "-u", url, "--input-data", str(data),
        "--measurement-interval", str(int(args.seconds * 1000)), "--stability-percentage", "25",
        "--max-trials", "8", "-f", str(csv_file), *load,
    ]  # fmt: skip
    cpu = _children_cpu_s()
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds, cpu = time.monotonic() - started, _children_cpu_s() - cpu
    out.write_text(done.stdout + done.stderr)
    if done.returncode or not csv_file.exists():
        return {"error": (done.stdout + done.stderr).strip().splitlines()[-1:], "command": " ".join(command)}
    with csv_file.open() as handle:
        row = next(csv.DictReader(handle))
    return {
        "rps": round(float(row["Inferences/Second"]), 1),
        "p50_ms": round(float(row["p50 latency"]) / 1000, 2),
        "p95_ms": round(float(row["p95 latency"]) / 1000, 2),
        "p99_ms": round(float(row["p99 latency"]) / 1000, 2),
        "server_queue_us": float(row["Server Queue"]),
        "server_infer_us": float(row["Server Compute Infer"]),
        # perf_analyzer's own warning that it could not send on schedule (rate mode).
        "fell_behind": "not able to keep up" in done.stdout,
        "cpu_percent": round(100 * cpu / seconds, 1),
        "command": " ".join(command),
    }


def run_kit(args: argparse.Namespace, url: str, load: list[str], out: Path) -> dict[str, Any]:
    """One `python -m loadtest` run (`load`: its users or rate flags); its summary's figures."""
    command = [
        sys.executable, "-m", "loadtest", "--model", args.model, "--protocol", args.protocol, "--url", url,
        "--step-seconds", str(args.seconds), "--report-dir", str(out), *load,
    ]  # fmt: skip
    cpu = _children_cpu_s()
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds, cpu = time.monotonic() - started, _children_cpu_s() - cpu
    if done.returncode or not (out / "summary.json").exists():
        return {"error": done.stderr.strip().splitlines()[-3:], "command": " ".join(command)}
    summary = json.loads((out / "summary.json").read_text())
    steps = [
        {
            "offered_rps": step.get("offered_rps"),
            "rps": round(step["rps"], 1),
            "p50_ms": step["p50_ms"],
            "p95_ms": step["p95_ms"],
            "p99_ms": step["p99_ms"],
            "dropped": step.get("dropped", 0),
            "failures": step["failures"],
            "server_queue_us": (step["server"] or {}).get("queue_us"),
            "server_infer_us": (step["server"] or {}).get("compute_infer_us"),
        }
        for step in summary["steps"]
    ]
    return {"steps": steps, "cpu_percent": round(100 * cpu / seconds, 1), "command": " ".join(command)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="text_encoder")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 400.0, 600.0, 800.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (perf_analyzer: per window)")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop measurements of each tool, in turns")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_perf_analyzer.json")
    args = parser.parse_args()
    try:
        binary, env = perf_analyzer()
    except Unavailable as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    work = Path(tempfile.mkdtemp(prefix="kit-vs-pa-"))
    try:
        with model_server(None, args.repo, args.model, args.protocol) as url:
            closed, opened = measure(binary, env, args, url, work)
    except TuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "benchmark": "vs_perf_analyzer",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, cores: {len(os.sched_getaffinity(0))}, kernel {platform.release()}",
        "server": "embedded Triton 2.51 (nvidia-pytriton), the model alone loaded",
        "model": args.model,
        "protocol": args.protocol,
        "perf_analyzer": PERF_ANALYZER_VERSION,
        "seconds": args.seconds,
        "closed_loop": {"concurrency": args.concurrency, **closed, **_closed_ratio(closed)},
        "open_loop": {**opened, "rows": _open_rows(opened)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    _print(record)
    print(f"recorded in {args.out}")
    return 0


def measure(
    binary: Path, env: dict[str, str], args: argparse.Namespace, url: str, work: Path
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Both tools, closed loop in turns then open loop rate by rate, against the server at `url`."""
    with TritonClient(url, protocol=args.protocol, timeout_s=120) as client:
        client.load_model(args.model)
    data = work / "input-data.json"
    subprocess.run(
        [sys.executable, "-m", "loadtest", "payload", "--model", args.model, "--protocol", args.protocol,
         "--url", url, "--out", str(data)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    closed: dict[str, list[dict[str, Any]]] = {"perf_analyzer": [], "kit": []}
    for round_ in range(args.rounds):
        print(f"closed loop, round {round_ + 1}/{args.rounds}: concurrency {args.concurrency}", flush=True)
        closed["perf_analyzer"].append(
            run_perf_analyzer(binary, env, args, url, data, ["--concurrency-range", str(args.concurrency)],
                              work / f"pa-closed-{round_}.txt")
        )  # fmt: skip
        closed["kit"].append(
            run_kit(args, url, ["--steps", "1", "--step-users", str(args.concurrency)], work / f"kit-closed-{round_}")
        )
    opened: dict[str, Any] = {"perf_analyzer": {}, "kit": {}}
    for rate in args.rates:
        print(f"open loop: {rate:g} req/s", flush=True)
        opened["perf_analyzer"][f"{rate:g}"] = run_perf_analyzer(
            binary,
            env,
            args,
            url,
            data,
            ["--request-rate-range", f"{rate:g}", "--async"],
            work / f"pa-open-{rate:g}.txt",
        )
        opened["kit"][f"{rate:g}"] = run_kit(args, url, ["--rate", f"{rate:g}"], work / f"kit-open-{rate:g}")
    return closed, opened


def _closed_ratio(closed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    pa = [run["rps"] for run in closed["perf_analyzer"] if "rps" in run]
    kit = [run["steps"][0]["rps"] for run in closed["kit"] if "steps" in run]
    if not pa or not kit:
        return {"ratio_kit_to_perf_analyzer": None}
    return {
        "median_rps": {"perf_analyzer": median(pa), "kit": median(kit)},
        "ratio_kit_to_perf_analyzer": round(median(kit) / median(pa), 3),
    }


def _open_rows(opened: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rate, pa in opened["perf_analyzer"].items():
        kit = opened["kit"][rate]
        step = kit["steps"][0] if "steps" in kit else {}
        rows.append(
            {
                "offered_rps": float(rate),
                "perf_analyzer_rps": pa.get("rps"),
                "perf_analyzer_p95_ms": pa.get("p95_ms"),
                "kit_rps": step.get("rps"),
                "kit_p95_ms": step.get("p95_ms"),
                "kit_dropped": step.get("dropped"),
                "kit_held": round(step["rps"] / float(rate), 3) if step else None,
            }
        )
    return rows


def _print(record: dict[str, Any]) -> None:
    closed = record["closed_loop"]
    print(f"\nclosed loop, concurrency {closed['concurrency']} ({record['model']}, {record['protocol']}):")
    for tool in ("perf_analyzer", "kit"):
        figures = [
            (run["rps"], run["p95_ms"], run["cpu_percent"]) if "rps" in run
            else (run["steps"][0]["rps"], run["steps"][0]["p95_ms"], run["cpu_percent"]) if "steps" in run
            else (float("nan"), float("nan"), float("nan"))
            for run in closed[tool]
        ]  # fmt: skip
        print(f"  {tool:>13}: " + "; ".join(f"{r:.0f} req/s p95 {p:.1f} ms cpu {c:.0f}%" for r, p, c in figures))
    print(f"  kit / perf_analyzer (medians): {closed['ratio_kit_to_perf_analyzer']}")
    print(f"\nopen loop ({record['model']}, {record['protocol']}):")
    print(f"  {'offered':>8} {'pa req/s':>9} {'pa p95':>7} {'kit req/s':>10} {'kit p95':>8} {'held':>6} {'dropped':>8}")
    for row in record["open_loop"]["rows"]:
        print(
            f"  {row['offered_rps']:>8g} {row['perf_analyzer_rps'] or float('nan'):>9.1f} "
            f"{row['perf_analyzer_p95_ms'] or float('nan'):>7.1f} {row['kit_rps'] or float('nan'):>10.1f} "
            f"{row['kit_p95_ms'] or float('nan'):>8.1f} {row['kit_held'] or float('nan'):>6.3f} {row['kit_dropped']!s:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())

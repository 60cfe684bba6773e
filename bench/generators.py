"""The load generators the bench scripts run as processes, each run timed with the CPU its process
took: NVIDIA's perf_analyzer 2.51 (installed on first use) and the kit's `python -m loadtest`.
bench/vs_perf_analyzer.py compares the two; bench/onnxruntime_backend.py loads a server with either.
A library of the bench scripts, beside bench/harness.py; not a benchmark itself.
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
from typing import Any

from bench.harness import ROOT

PERF_ANALYZER_VERSION = "2.51.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "triton-model-kit"


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


def _timed(
    command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`command` run to its end, its output captured, and the CPU its process took (percent of a core)."""
    cpu = _children_cpu_s()
    started = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds, cpu = time.monotonic() - started, _children_cpu_s() - cpu
    return done, round(100 * cpu / seconds, 1)


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
    done, cpu_percent = _timed(command, env=env)
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
        "cpu_percent": cpu_percent,
        "command": " ".join(command),
    }


def run_kit(args: argparse.Namespace, url: str, load: list[str], out: Path) -> dict[str, Any]:
    """One `python -m loadtest` run (`load`: its users or rate flags); its summary's figures."""
    command = [
        sys.executable, "-m", "loadtest", "--model", args.model, "--protocol", args.protocol, "--url", url,
        "--step-seconds", str(args.seconds), "--report-dir", str(out), *load,
    ]  # fmt: skip
    done, cpu_percent = _timed(command, cwd=ROOT)
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
    return {"steps": steps, "cpu_percent": cpu_percent, "command": " ".join(command)}

"""The report of a run: per-step throughput and latency from every request, the server-side
breakdown of each step from the statistics API, a plot, and thresholds."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FAILED", "OK", "REJECTED", "Thresholds", "build_summary", "plot_steps", "violations"]

# The outcome column of the request logs.
FAILED, OK, REJECTED = 0, 1, 2

_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Thresholds:
    """Limits the run must stay within; None disables one."""

    max_failure_ratio: float | None = None
    max_rejected_ratio: float | None = None
    max_p95_ms: float | None = None
    min_rps: float | None = None


def build_summary(report_dir: Path, run: dict[str, Any]) -> dict[str, Any]:
    """Steps bounded by the server snapshots; requests from every process's request log.

    Throughput and latency percentiles are those of answered requests: a refused or failed one
    comes back fast and would flatter both (as perf_analyzer, which leaves them out too).
    """
    snapshots = sorted(
        (json.loads(line) for line in (report_dir / "server_stats.jsonl").read_text().splitlines() if line.strip()),
        key=lambda s: s["step"],
    )
    times, latencies, outcomes = _requests(report_dir)
    failed, rejected = outcomes == FAILED, outcomes == REJECTED
    steps = []
    for before, after in itertools.pairwise(snapshots):
        inside = (times >= before["time"]) & (times < after["time"])
        seconds = after["time"] - before["time"]
        answered = inside & (outcomes == OK)
        steps.append(
            {
                "step": before["step"],
                "users": (before["step"] + 1) * run["step_users"],
                "seconds": round(seconds, 3),
                "requests": int(inside.sum()),
                "failures": int((inside & failed).sum()),
                "rejected": int((inside & rejected).sum()),
                "rps": round(float(answered.sum()) / seconds, 2) if seconds > 0 else 0.0,
                **_percentiles(latencies[answered]),
                "server": _server_breakdown(before, after),
            }
        )
    # The run is the span of the steps: requests still finishing while Locust stops are left out.
    start, end = (snapshots[0]["time"], snapshots[-1]["time"]) if len(snapshots) > 1 else (0.0, 0.0)
    inside = (times >= start) & (times < end)
    total = {
        "requests": int(inside.sum()),
        "failures": int((inside & failed).sum()),
        "failure_ratio": _ratio(inside & failed, inside),
        "rejected": int((inside & rejected).sum()),
        "rejected_ratio": _ratio(inside & rejected, inside),
        "rps": round(float((inside & (outcomes == OK)).sum()) / (end - start), 2) if end > start else 0.0,
        **_percentiles(latencies[inside & (outcomes == OK)]),
    }
    return {**run, "steps": steps, "total": total}


def violations(summary: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Each threshold the run broke, as a sentence with the measured value."""
    total = summary["total"]
    found = []
    if total["requests"] == 0:
        found.append("no request completed")
    if thresholds.max_failure_ratio is not None and total["failure_ratio"] > thresholds.max_failure_ratio:
        found.append(f"failure ratio {total['failure_ratio']:.2%} exceeds {thresholds.max_failure_ratio:.2%}")
    if thresholds.max_rejected_ratio is not None and total["rejected_ratio"] > thresholds.max_rejected_ratio:
        found.append(
            f"rejected ratio {total['rejected_ratio']:.2%} (queue full) exceeds {thresholds.max_rejected_ratio:.2%}"
        )
    if thresholds.max_p95_ms is not None and total["p95_ms"] > thresholds.max_p95_ms:
        found.append(f"p95 latency {total['p95_ms']:.1f} ms exceeds {thresholds.max_p95_ms:.1f} ms")
    if thresholds.min_rps is not None and total["rps"] < thresholds.min_rps:
        found.append(f"throughput {total['rps']:.1f} req/s is below {thresholds.min_rps:.1f} req/s")
    return found


def plot_steps(summary: dict[str, Any], path: Path) -> None:
    """Throughput (bars) and p50/p95/p99 latency (lines) for each step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; chosen before pyplot is imported
    import matplotlib.pyplot as plt

    steps = summary["steps"]
    users = [s["users"] for s in steps]
    figure, throughput = plt.subplots(figsize=(8, 4.5))
    throughput.bar(
        users, [s["rps"] for s in steps], width=max(1, summary["step_users"]) * 0.6, color="#9ecae1", label="throughput"
    )
    throughput.set_xlabel("concurrent users")
    throughput.set_ylabel("requests / s")
    latency = throughput.twinx()
    for key, style in (("p50_ms", "-o"), ("p95_ms", "-s"), ("p99_ms", "-^")):
        latency.plot(users, [s[key] for s in steps], style, label=key.replace("_ms", ""))
    latency.set_ylabel("latency (ms)")
    handles = throughput.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    labels = throughput.get_legend_handles_labels()[1] + latency.get_legend_handles_labels()[1]
    latency.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
    throughput.set_title(f"{summary['model']} over {summary['protocol']}, batch {summary['batch']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _requests(report_dir: Path) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    rows = [
        line.split(",")
        for log in sorted(report_dir.glob("requests-*.csv"))
        for line in log.read_text().splitlines()
        if line
    ]
    if not rows:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    table = np.array(rows, dtype=np.float64)
    return table[:, 0], table[:, 1], table[:, 2].astype(np.int64)


def _ratio(part: NDArray[Any], whole: NDArray[Any]) -> float:
    return round(float(part.sum() / whole.sum()), 4) if whole.any() else 0.0


def _percentiles(latencies: NDArray[Any]) -> dict[str, float]:
    if not len(latencies):
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3)}


def _server_breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float] | None:
    """Per-request server times and the average batch size in a step, from two statistics snapshots."""
    if not before["stats"] or not after["stats"]:
        return None
    a, b = before["stats"][0], after["stats"][0]
    requests = _count(b, "success") - _count(a, "success")
    executions = int(b.get("execution_count", 0)) - int(a.get("execution_count", 0))
    inferences = int(b.get("inference_count", 0)) - int(a.get("inference_count", 0))
    breakdown: dict[str, float] = {
        "requests": float(requests),
        "executions": float(executions),
        "inferences": float(inferences),
    }
    for phase in _PHASES:
        spent = _ns(b, phase) - _ns(a, phase)
        breakdown[f"{phase}_us"] = round(spent / requests / 1000, 1) if requests else 0.0
    breakdown["avg_batch_size"] = round(inferences / executions, 2) if executions else 0.0
    return breakdown


def _count(stats: dict[str, Any], phase: str) -> int:
    return int(stats.get("inference_stats", {}).get(phase, {}).get("count", 0))


def _ns(stats: dict[str, Any], phase: str) -> int:
    return int(stats.get("inference_stats", {}).get(phase, {}).get("ns", 0))

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

from loadtest.snapshots import FILENAME as SNAPSHOTS

__all__ = [
    "DROPPED",
    "FAILED",
    "OK",
    "REJECTED",
    "Thresholds",
    "build_summary",
    "knee",
    "plot_steps",
    "request_log",
    "violations",
]

# The outcome column of the request logs: answered, failed, refused by a full queue, or (open loop)
# never sent because the generator's bound on requests in flight was reached.
FAILED, OK, REJECTED, DROPPED = 0, 1, 2, 3

# Open loop: a step holds its offered rate when it answers at least this share of it.
HELD = 0.98

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
        (json.loads(line) for line in (report_dir / SNAPSHOTS).read_text().splitlines() if line.strip()),
        key=lambda s: s["step"],
    )
    times, latencies, outcomes = request_log(report_dir)
    failed, rejected, dropped = outcomes == FAILED, outcomes == REJECTED, outcomes == DROPPED
    rates = run.get("rates") or []
    steps = []
    for before, after in itertools.pairwise(snapshots):
        inside = (times >= before["time"]) & (times < after["time"])
        seconds = after["time"] - before["time"]
        answered = inside & (outcomes == OK)
        load = {"offered_rps": rates[before["step"]]} if rates else {"users": (before["step"] + 1) * run["step_users"]}
        steps.append(
            {
                "step": before["step"],
                **load,
                "seconds": round(seconds, 3),
                "requests": int((inside & ~dropped).sum()),
                "failures": int((inside & failed).sum()),
                "rejected": int((inside & rejected).sum()),
                "dropped": int((inside & dropped).sum()),
                "rps": round(float(answered.sum()) / seconds, 2) if seconds > 0 else 0.0,
                **_percentiles(latencies[answered]),
                "server": _server_breakdown(before, after),
            }
        )
    # The run is the span of the steps: requests still finishing while Locust stops are left out.
    start, end = (snapshots[0]["time"], snapshots[-1]["time"]) if len(snapshots) > 1 else (0.0, 0.0)
    inside = (times >= start) & (times < end)
    total = {
        "requests": int((inside & ~dropped).sum()),
        "dropped": int((inside & dropped).sum()),
        "failures": int((inside & failed).sum()),
        "failure_ratio": _ratio(inside & failed, inside),
        "rejected": int((inside & rejected).sum()),
        "rejected_ratio": _ratio(inside & rejected, inside),
        "rps": round(float((inside & (outcomes == OK)).sum()) / (end - start), 2) if end > start else 0.0,
        **_percentiles(latencies[inside & (outcomes == OK)]),
    }
    summary = {**run, "steps": steps, "total": total}
    if rates:
        summary["knee"] = knee(steps)
    return summary


def knee(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Open loop: the highest offered rate the server held (answered >= 98% of it, nothing failed,
    refused or dropped) and the first it did not, where the latency curve bends."""
    held = None
    for step in steps:
        clean = step["failures"] == step["rejected"] == step["dropped"] == 0
        if clean and step["rps"] >= HELD * step["offered_rps"]:
            held = step
            continue
        return {
            "held_rps": held["offered_rps"] if held else None,
            "held_p95_ms": held["p95_ms"] if held else None,
            "broke_at_rps": step["offered_rps"],
            "broke_p95_ms": step["p95_ms"],
        }
    return {
        "held_rps": held["offered_rps"] if held else None,
        "held_p95_ms": held["p95_ms"] if held else None,
        "broke_at_rps": None,
        "broke_p95_ms": None,
    }


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
    """Throughput (bars) and p50/p95/p99 latency (lines) for each step above; below, where the
    server spent each request's time (queue and compute, stacked), and for an ensemble each
    member's queue and compute time per request. A PNG, both latency axes from zero."""
    import matplotlib

    matplotlib.use("Agg")  # no display; chosen before pyplot is imported
    import matplotlib.pyplot as plt

    steps = summary["steps"]
    open_loop = "offered_rps" in steps[0]
    load = [s["offered_rps"] if open_loop else s["users"] for s in steps]
    width = ((load[1] - load[0]) if len(load) > 1 else max(load[0], 1)) * 0.6
    figure, (throughput, server) = plt.subplots(2, 1, figsize=(8, 7), height_ratios=[3, 2], sharex=True)
    throughput.bar(load, [s["rps"] for s in steps], width=width, color="#9ecae1", label="achieved")
    if open_loop:
        throughput.plot(load, load, ":", color="#555555", label="offered")
    throughput.set_ylabel("requests / s")
    throughput.set_ylim(bottom=0)
    latency = throughput.twinx()
    for key, style in (("p50_ms", "-o"), ("p95_ms", "-s"), ("p99_ms", "-^")):
        latency.plot(load, [s[key] for s in steps], style, label=key.replace("_ms", ""))
    latency.set_ylabel("latency at the client (ms)")
    latency.set_ylim(bottom=0)
    handles = throughput.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    labels = throughput.get_legend_handles_labels()[1] + latency.get_legend_handles_labels()[1]
    throughput.legend(handles, labels, loc="upper left", ncol=5, frameon=False, fontsize="small")
    throughput.set_title(f"{summary['model']} over {summary['protocol']}, batch {summary['batch']}")

    bottom = np.zeros(len(steps))
    for phase in _PHASES:
        spent = np.array([((s["server"] or {}).get(f"{phase}_us", 0.0)) / 1000 for s in steps])
        server.bar(load, spent, width=width, bottom=bottom, label=phase.replace("_", " "))
        bottom += spent
    members = {name for s in steps for name in ((s["server"] or {}).get("members") or {})}
    for name in sorted(members):
        per_request = [
            (m["queue_us"] + m["compute_infer_us"]) / 1000
            if (m := ((s["server"] or {}).get("members") or {}).get(name))
            else 0.0
            for s in steps
        ]
        server.plot(load, per_request, "-o", label=f"{name}: queue + infer")
    server.set_ylabel("server time per request (ms)")
    server.set_ylim(bottom=0)
    server.set_xlabel("offered requests / s (open loop)" if open_loop else "concurrent users")
    server.legend(loc="upper left", ncol=2, frameon=False, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def request_log(report_dir: Path) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Every request a run logged (requests-*.csv): wall send times, latencies in ms, outcomes."""
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


def _server_breakdown(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Per-request server times and the average batch size in a step, from two statistics
    snapshots; for an ensemble, the same for each composing model under "members"."""
    breakdown: dict[str, Any] | None = _breakdown(before["stats"], after["stats"])
    if breakdown is None:
        return None
    members = {
        name: _breakdown(before.get("members", {}).get(name, []), stats)
        for name, stats in after.get("members", {}).items()
    }
    if members:
        breakdown["members"] = members
    return breakdown


def _breakdown(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not before or not after:
        return None
    a, b = before[0], after[0]
    requests = _count(b, "success") - _count(a, "success")
    executions = int(b.get("execution_count", 0)) - int(a.get("execution_count", 0))
    inferences = int(b.get("inference_count", 0)) - int(a.get("inference_count", 0))
    breakdown: dict[str, Any] = {
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

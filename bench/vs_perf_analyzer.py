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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generators import PERF_ANALYZER_VERSION, Unavailable, perf_analyzer, run_kit, run_perf_analyzer
from bench.harness import RESULTS, ROOT, arguments, header, machine, write
from clients import TritonClient
from loadtest.tune import TuneError, model_server

UNAVAILABLE_EXIT = 3


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--model", default="text_encoder")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 400.0, 600.0, 800.0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (perf_analyzer: per window)")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop measurements of each tool, in turns")
    parser.add_argument("--out", type=Path, default=RESULTS / "vs_perf_analyzer.json")
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
        **header("vs_perf_analyzer"),
        "machine": machine(kernel=True),
        "server": "embedded Triton 2.51 (nvidia-pytriton), the model alone loaded",
        "model": args.model,
        "protocol": args.protocol,
        "perf_analyzer": PERF_ANALYZER_VERSION,
        "seconds": args.seconds,
        "closed_loop": {"concurrency": args.concurrency, **closed, **_closed_ratio(closed)},
        "open_loop": {**opened, "rows": _open_rows(opened)},
    }
    write(record, args.out)
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

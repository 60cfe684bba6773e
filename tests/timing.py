"""Where the test suite's time goes: a pytest plugin that records every phase of every test, and a
summary of the record per test file, with the fixture set-ups that cost the most.

`make test-durations` runs the suite with `--timings-file` and prints the summary; by hand:
`pytest --timings-file=t.json ...` then `python -m tests.timing t.json`. A test's set-up phase is
where its fixtures run (the first test of a file pays for the file's servers and builds); with
pytest-xdist the controller records the workers' phases, each tagged with its worker.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

__all__ = ["main", "summary"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--timings-file", metavar="PATH", help="record every test phase's duration here (JSON; see tests/timing.py)"
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--timings-file")
    if path and not hasattr(config, "workerinput"):  # the controller records, xdist workers report to it
        config.pluginmanager.register(_Recorder(Path(path)), "triton-kit-timings")


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.began = time.monotonic()
        self.phases: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.phases.append(
            {
                "test": report.nodeid,
                "phase": report.when,
                "seconds": round(report.duration, 3),
                "outcome": report.outcome,
                "worker": getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None),
            }
        )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        record = {
            "wall_s": round(time.monotonic() - self.began, 1),
            "args": session.config.invocation_params.args,
            "phases": self.phases,
        }
        # Several invocations (make test's parallel and serial parts) append to one file.
        runs = json.loads(self.path.read_text()) if self.path.is_file() else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps([*runs, record], indent=1))


def summary(runs: list[dict[str, Any]], top: int = 12) -> str:
    """Per test file: tests, seconds in set-up (fixtures), call and teardown; then the costliest
    set-ups; then each run's wall time."""
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tests: dict[str, set[str]] = defaultdict(set)
    setups = []
    for run in runs:
        for phase in run["phases"]:
            file = phase["test"].split("::")[0]
            files[file][phase["phase"]] += phase["seconds"]
            tests[file].add(phase["test"])
            if phase["phase"] == "setup":
                setups.append((phase["seconds"], phase["test"]))
    lines = [f"{'file':<58} {'tests':>5} {'setup s':>8} {'call s':>8} {'teardown s':>10} {'total s':>8}"]
    rows = sorted(files.items(), key=lambda item: -sum(item[1].values()))
    for file, phases in rows:
        total = sum(phases.values())
        lines.append(
            f"{file:<58} {len(tests[file]):>5} {phases['setup']:>8.1f} {phases['call']:>8.1f} "
            f"{phases['teardown']:>10.1f} {total:>8.1f}"
        )
    lines.append(f"{'all':<58} {sum(map(len, tests.values())):>5} {'':>8} {'':>8} {'':>10} "
                 f"{sum(sum(p.values()) for p in files.values()):>8.1f}")  # fmt: skip
    lines += ["", "costliest set-ups (fixtures; the first test of a file or worker pays):"]
    lines += [f"  {seconds:7.1f} s  {test}" for seconds, test in sorted(setups, reverse=True)[:top]]
    lines += ["", "runs:"]
    lines += [f"  {run['wall_s']:7.1f} s wall  {' '.join(run['args'])}" for run in runs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.timing", description=summary.__doc__)
    parser.add_argument("record", type=Path, help="the file pytest --timings-file wrote")
    parser.add_argument("--top", type=int, default=12, help="how many of the costliest set-ups to list")
    args = parser.parse_args(argv)
    print(summary(json.loads(args.record.read_text()), args.top))


if __name__ == "__main__":
    main()

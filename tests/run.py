"""`make test`: every test that needs no Docker engine, in two parts.

1. In parallel on `--workers` pytest-xdist workers, a test file per worker at a time
   (`--dist loadfile`: a file's module-scoped servers start once), in the order of
   `pytest_collection_modifyitems` in tests/conftest.py.
2. Then, alone, the tests marked `serial`: those that kill processes, time a drain or hold the
   machine to a request rate, which a second worker's load would make flaky.

The tests marked `docker` (the compose stack brought up for real) are `make test-system`'s. A `-m`
among the arguments narrows both parts; every other argument goes to pytest as it is. The exit
status is pytest's: the first part's failure, else the second's; 5 only when neither part
selected a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

NOT_HERE = "not docker"  # make test-system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.run", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--workers", default="2", help="pytest-xdist workers for the first part (default 2)")
    parser.add_argument("-m", dest="markers", help="a marker expression narrowing both parts")
    ours, pytest_args = parser.parse_known_args(argv)
    narrowed = f"({ours.markers}) and " if ours.markers else ""
    # The files in the order tests/conftest.py gives them (xdist would sort them by their number of tests).
    workers = ["-n", ours.workers, "--dist", "loadfile", "--no-loadscope-reorder"]
    parts = [
        ("in parallel", [*workers, "-m", f"{narrowed}not serial and {NOT_HERE}"]),
        ("alone", ["-m", f"{narrowed}serial and {NOT_HERE}"]),
    ]
    codes = []
    for index, (how, options) in enumerate(parts):
        if index and any(arg.startswith("--cov") for arg in pytest_args):
            options = [*options, "--cov-append"]
        print(f"== make test, part {index + 1} of {len(parts)}: the tests that run {how} ==", flush=True)
        codes.append(subprocess.call([sys.executable, "-m", "pytest", *options, *pytest_args]))
    failed = [code for code in codes if code not in (0, 5)]
    return failed[0] if failed else (5 if all(code == 5 for code in codes) else 0)


if __name__ == "__main__":
    sys.exit(main())

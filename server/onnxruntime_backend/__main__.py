"""`python -m server.onnxruntime_backend`: build Triton's onnxruntime backend for this environment
now (cached; `make build-repo` runs this) and print the folder holding it."""

from __future__ import annotations

import argparse
import sys

from server.errors import ServerError
from server.installation import find_installation
from server.onnxruntime_backend import ensure_backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.onnxruntime_backend", description=__doc__)
    parser.parse_args(argv)  # --help, and a clear error for anything else
    try:
        installation = find_installation()
        built = ensure_backend(installation.python_backend / "libtriton_python.so")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())

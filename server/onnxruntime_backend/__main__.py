"""`python -m server.onnxruntime_backend [--copy-to DIR]`: build Triton's onnxruntime backend for
this environment now (cached; `make build-repo` runs this) and print the folder holding it; with
--copy-to, also copy it there (`make image` puts it in the image's build context)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from server.errors import ServerError
from server.installation import find_installation
from server.onnxruntime_backend import BACKEND_LIBRARY, ensure_backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.onnxruntime_backend", description=__doc__)
    parser.add_argument("--copy-to", type=Path, help="also copy the built backend into this folder")
    args = parser.parse_args(argv)
    try:
        installation = find_installation()
        built = ensure_backend(installation.python_backend / "libtriton_python.so")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built / BACKEND_LIBRARY, args.copy_to / BACKEND_LIBRARY)
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())

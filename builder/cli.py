"""Command line of the builder: `python -m builder build|check`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from builder.checker import PlanTarget, check_repository
from builder.checker.server_schema import DEFAULT_SERVER_VERSION
from builder.errors import BuildError
from builder.targets import TARGETS, Target

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code (0 ok, 1 build failed, 2 bad usage)."""
    parser = argparse.ArgumentParser(prog="python -m builder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the model repository from the spec")
    build.add_argument("--spec", type=Path, default=Path("models.yaml"), help="spec file (default: models.yaml)")
    build.add_argument(
        "--repo", type=Path, default=Path("model_repository"), help="repository to build (default: model_repository)"
    )
    build.add_argument("--force", action="store_true", help="export every model again, even if unchanged")
    build.add_argument(
        "--target",
        choices=["auto", *TARGETS],
        default="auto",
        help="render configs for GPU or CPU-only hosts (default: auto, the one that fits this machine)",
    )
    check = commands.add_parser("check", help="check an existing repository against Triton's rules")
    check.add_argument(
        "--repo", type=Path, default=Path("model_repository"), help="repository to check (default: model_repository)"
    )
    check.add_argument("--target", choices=TARGETS, help="also flag what does not fit this kind of host (GPU on cpu)")
    check.add_argument(
        "--tensorrt-version",
        help="flag TensorRT plans built with another TensorRT version (e.g. 10.5 for Triton 24.10)",
    )
    check.add_argument(
        "--compute-capability",
        help="flag TensorRT plans and compiled CUDA packages built for another GPU (e.g. 9.0 for H100/H200)",
    )
    check.add_argument(
        "--strict-model-config",
        action="store_true",
        help="as the server flag of that name: no auto-complete, every model needs a full config",
    )
    check.add_argument(
        "--server-version",
        default=DEFAULT_SERVER_VERSION,
        help=f"the Triton release serving the repository, whose config schema applies (default {DEFAULT_SERVER_VERSION})",
    )
    check.add_argument(
        "--torch-version",
        help="flag compiled packages built by another torch (default: the torch installed here, which serves them)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            return _build(args.spec, args.repo, args.force, None if args.target == "auto" else args.target)
        plans = PlanTarget(args.tensorrt_version, args.compute_capability, args.torch_version)
        return _check(args.repo, args.target, plans, args.strict_model_config, args.server_version)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _build(spec: Path, repo: Path, force: bool, target: Target | None) -> int:
    from builder.pipeline import build_repository  # torch is slow to import; keep `--help` fast

    started = time.perf_counter()
    summary = build_repository(spec, repo, force=force, target=target)
    counts = {status: sum(r.status == status for r in summary.results) for status in ("built", "cached", "skipped")}
    skipped = f", {counts['skipped']} skipped (see the lines above)" if counts["skipped"] else ""
    print(
        f"built {repo} for the {summary.target} target: {len(summary.results)} model version(s), {counts['built']} built, "
        f"{counts['cached']} reused{skipped}, in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def _check(repo: Path, target: Target | None, plans: PlanTarget, strict: bool, server_version: str) -> int:
    if not repo.is_dir():
        print(f"error: {repo} is not a directory; build it with `make build-repo` or pass REPO=<path>", file=sys.stderr)
        return 2
    problems = check_repository(repo, target, plans, strict_model_config=strict, server_version=server_version)
    for problem in problems:
        print(problem)
    print(f"{repo}: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0

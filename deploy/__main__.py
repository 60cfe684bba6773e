"""`python -m deploy`: render the Kubernetes manifests, or check them and docker-compose.yml.

python -m deploy k8s --target gpu --repository s3://bucket/model_repository > triton.yaml
python -m deploy check      # compose file and both manifest variants against their schemas, and
                            # the compose file interpolated as Compose does with no variable set
python -m deploy image-context .triton/image   # what the kit image copies from the host (make image)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.image import stage_image_context
from deploy.render import KUBERNETES_VERSION, Manifests, compose_problems, manifest_problems, render_manifests
from server.errors import ServerError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    k8s = commands.add_parser("k8s", help="print (or write) the Kubernetes manifests")
    k8s.add_argument("--target", choices=["gpu", "cpu"], default="gpu")
    k8s.add_argument(
        "--repository",
        default="pvc:model-repository",
        help="s3://bucket/path or pvc:<claim> (default pvc:model-repository)",
    )
    k8s.add_argument("--image-version", default="24.10", help="NGC Triton release (default 24.10 = Triton 2.51)")
    k8s.add_argument("--replicas", type=int, default=1, help="minimum replicas (default 1)")
    k8s.add_argument("--max-replicas", type=int, default=4, help="HPA ceiling (default 4)")
    k8s.add_argument(
        "--queue-target-us", type=int, default=50_000, help="HPA target queue time per request (default 50000)"
    )
    k8s.add_argument("--out", type=Path, help="write here instead of stdout")
    commands.add_parser(
        "check", help=f"validate docker-compose.yml and the manifests (Kubernetes {KUBERNETES_VERSION})"
    )
    context = commands.add_parser(
        "image-context", help="build here and stage what the kit image copies from the host (make image)"
    )
    context.add_argument("destination", type=Path, help="the folder the Dockerfile copies from (.triton/image)")
    args = parser.parse_args(argv)
    if args.command == "image-context":
        try:
            staged = stage_image_context(args.destination)
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("\n".join(map(str, staged)))
        return 0
    if args.command == "k8s":
        try:
            text = Manifests(
                target=args.target,
                repository=args.repository,
                image_version=args.image_version,
                replicas=args.replicas,
                max_replicas=args.max_replicas,
                queue_target_us=args.queue_target_us,
            ).render()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    problems = [f"docker-compose.yml: {p}" for p in compose_problems()]
    for target in ("gpu", "cpu"):
        for repository in ("pvc:model-repository", "s3://bucket/model_repository"):
            problems += [
                f"{target} manifests ({repository}): {p}"
                for p in manifest_problems(render_manifests(target=target, repository=repository))
            ]
    for problem in problems:
        print(problem)
    print(
        f"{len(problems)} problem(s) in docker-compose.yml and the Kubernetes {KUBERNETES_VERSION} manifests",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

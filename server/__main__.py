"""`python -m server`: run the embedded Triton server in the foreground (what `make serve` does).

Ports come from TRITON_HTTP_PORT, TRITON_GRPC_PORT and TRITON_METRICS_PORT (8000/8001/8002 by
default) unless given as flags. Ctrl-C or SIGTERM drains the server (the ensembles first, then
every other model; in-flight requests finish) and stops it with its stub processes; the same
signal again, 2 s or more later, forces it down.
A model whose stub process dies is reloaded (see server/supervisor.py). Log settings and tracing
need the admin key, TRITON_ADMIN_KEY (header `admin-key`); set, model control needs it too.
On a GPU host each GPU's CUDA memory pool, which holds the GPU tensors between ensemble steps, is
1024 MB (TRITON_CUDA_MEMORY_POOL_MB; see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from server.embedded import EmbeddedTriton, ServerError

REPEAT_IGNORED_S = 2.0
"""A second signal sooner than this after the first is the same stop delivered twice (a signal to
the process group reaches make too, and make forwards it to its recipe), not a person forcing."""

# Triton 2.51 reports a host without NVIDIA's driver as errors, then serves on the CPU regardless.
NO_GPU_NOTE = (
    "no NVIDIA GPU on this host, so the server's lines 'CudaDriverHelper has not been initialized', "
    "'CUDA driver version is insufficient', 'Failed to initialize NVML' and 'DCGM unable to start' "
    "are expected: it serves on the CPU"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("model_repository"), help="model repository (default: model_repository)"
    )
    parser.add_argument(
        "--backend-dir", type=Path, default=Path(".triton/backends"), help="where the backends are assembled"
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("TRITON_HOST", "127.0.0.1"),
        help="address to listen on (TRITON_HOST, default 127.0.0.1)",
    )
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("TRITON_HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("TRITON_GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("TRITON_METRICS_PORT", 8002)))
    parser.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default="none")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="do not reload a model whose stub process died (and keep --model-control-mode as given)",
    )
    args = parser.parse_args()
    server = EmbeddedTriton(
        repository=args.repo,
        backend_dir=args.backend_dir,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        model_control_mode=args.model_control_mode,
        log_verbose=args.log_verbose,
        supervise=not args.no_supervise,
    )

    signals = itertools.count()
    first_signal = [math.inf]  # when the first signal came; inf until its handler has noted it

    def shut_down(signum: int, frame: FrameType | None) -> None:
        # Only signal here: the main thread is inside server.wait(), and waiting on the same
        # process from a handler deadlocks on Popen's wait lock. A handler can be interrupted by
        # the next signal's (make forwards the group's within microseconds): next() on a counter
        # is one step, so exactly one of them takes the first signal's part.
        name = signal.Signals(signum).name
        if next(signals) == 0:
            first_signal[0] = time.monotonic()
            print(f"\n{name}: stopping the server (again, after {REPEAT_IGNORED_S:.0f} s, to force)", file=sys.stderr)
            server.terminate()
        elif time.monotonic() - first_signal[0] >= REPEAT_IGNORED_S:
            print(f"{name} again: forcing the server down", file=sys.stderr)
            server.kill()
        else:
            print(f"{name} again at once, the same stop (make forwards the group's): draining still", file=sys.stderr)

    signal.signal(signal.SIGINT, shut_down)
    signal.signal(signal.SIGTERM, shut_down)
    try:
        server.start(wait=True)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"Triton is ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics {server.metrics_url} "
        f"(repository {args.repo}); Ctrl-C stops it",
        file=sys.stderr,
    )
    if not Path("/dev/nvidiactl").exists():
        print(f"note: {NO_GPU_NOTE}", file=sys.stderr)
    code = server.wait()
    server.stop()  # ends stubs a killed server may have left behind
    return 0 if first_signal[0] < math.inf else code  # a stop asked for is a success


if __name__ == "__main__":
    sys.exit(main())

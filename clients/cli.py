"""`python -m clients`: ask a running Triton server whether it is healthy, what it serves, and to infer.

    python -m clients health [--model M]          live/ready as JSON; exit 1 if not ready
    python -m clients models                      the repository index with each model's state
    python -m clients infer MODEL [inputs]        outputs as one line of JSON
        --input NAME=FILE.npy                     an input from a .npy file (repeatable)
        --json FILE                               inputs from {"name": nested lists}; dtypes from the model
        --image PATH / --text STRING              the model's one BYTES input: an image file's raw bytes,
                                                  or a UTF-8 string (repeat for a batch)
    python -m clients stats MODEL                 the server's statistics for MODEL

The server is --url (default: TRITON_HOST with TRITON_GRPC_PORT or TRITON_HTTP_PORT, as `make serve`
uses them: 127.0.0.1:8001 for gRPC, 127.0.0.1:8000 for HTTP). Errors are printed as
``error: <message>`` with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.utils import triton_to_np_dtype

from .address import server_url
from .errors import ClientError, InvalidInput
from .triton import TritonClient
from .validation import ModelSignature, triton_dtype

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.url is None:
            args.url = server_url(args.protocol)
        limits = getattr(args, "limits", None)
        with TritonClient(args.url, protocol=args.protocol, timeout_s=args.timeout, limits=limits) as client:
            status: int = args.run(client, args)
            return status
    except (ClientError, OSError, ValueError) as exc:  # a bad file or JSON is the caller's error too
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m clients", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_common(top, url=None, protocol="grpc", timeout=30.0)
    # The same options after the command; SUPPRESS keeps a subcommand from resetting what came before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, url=argparse.SUPPRESS, protocol=argparse.SUPPRESS, timeout=argparse.SUPPRESS)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    health = commands.add_parser("health", parents=[common], help="is the server (and a model) live and ready")
    health.add_argument("--model", help="also check that this model is ready")
    health.set_defaults(run=_health)

    models = commands.add_parser("models", parents=[common], help="the repository index with model states")
    models.set_defaults(run=_models)

    infer = commands.add_parser("infer", parents=[common], help="run one request and print its outputs")
    infer.add_argument("model")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="repeatable")
    infer.add_argument("--json", type=Path, metavar="FILE", help='{"input": nested lists, ...}')
    infer.add_argument("--image", action="append", default=[], type=Path, metavar="PATH", help="repeatable")
    infer.add_argument("--text", action="append", default=[], metavar="STRING", help="repeatable")
    infer.add_argument("--output", action="append", metavar="NAME", help="only these outputs (repeatable)")
    infer.add_argument("--shared-memory", action="store_true", help="send inputs in system shared memory")
    infer.add_argument(
        "--limits", type=Path, metavar="PATH", help="refuse inputs beyond the repository's input_limits.json"
    )
    infer.set_defaults(run=_infer)

    stats = commands.add_parser("stats", parents=[common], help="the server's statistics for a model")
    stats.add_argument("model")
    stats.set_defaults(run=_stats)
    return top


def _add_common(parser: argparse.ArgumentParser, *, url: Any, protocol: Any, timeout: Any) -> None:
    parser.add_argument(
        "--url", default=url, help="host:port (default: TRITON_HOST and TRITON_GRPC_PORT / TRITON_HTTP_PORT)"
    )
    parser.add_argument("--protocol", choices=["grpc", "http"], default=protocol, help="default: grpc")
    parser.add_argument("--timeout", type=float, default=timeout, metavar="SECONDS", help="per call (default: 30)")


def _health(client: TritonClient, args: argparse.Namespace) -> int:
    live = client.is_live()
    ready = live and client.is_ready(args.model)
    print(
        json.dumps({"url": client.url, "protocol": client.protocol, "live": live, "ready": ready, "model": args.model})
    )
    if not ready:
        what = f"model {args.model!r} on {client.url}" if args.model else f"server {client.url}"
        print(f"error: {what} is not {'ready' if live else 'reachable'}", file=sys.stderr)
        return 1
    return 0


def _models(client: TritonClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.models(), indent=2))
    return 0


def _stats(client: TritonClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.statistics(args.model), indent=2))
    return 0


def _infer(client: TritonClient, args: argparse.Namespace) -> int:
    signature = client.signature(args.model)
    inputs = _inputs(signature, args)
    outputs = client.infer(args.model, inputs, args.output, shared_memory=args.shared_memory)
    print(json.dumps({"model": args.model, "outputs": {name: _jsonable(array) for name, array in outputs.items()}}))
    return 0


def _inputs(signature: ModelSignature, args: argparse.Namespace) -> dict[str, NDArray[Any]]:
    """The request's inputs from --input, --json, --image and --text; each input given once."""
    inputs: dict[str, NDArray[Any]] = {}

    def add(name: str, array: NDArray[Any]) -> None:
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given more than once")
        inputs[name] = array

    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(f"--input takes NAME=FILE.npy, got {item!r}")
        add(name, np.load(path, allow_pickle=False))  # no pickles: a .npy file must not run code
    if args.json is not None:
        document = json.loads(args.json.read_text())
        if not isinstance(document, dict):
            raise InvalidInput(f"{args.json} must hold an object mapping input names to nested lists")
        for name, value in document.items():
            add(name, _array(signature, name, value))
    items = [path.read_bytes() for path in args.image] + [text.encode() for text in args.text]
    if items:
        add(*_bytes_input(signature, items))
    if not inputs:
        raise InvalidInput(f"no inputs given; model {signature.model!r} takes: {', '.join(signature.inputs)}")
    return inputs


def _array(signature: ModelSignature, name: str, value: Any) -> NDArray[Any]:
    spec = signature.inputs.get(name)
    if spec is None:
        return np.array(value)  # validation names the model's inputs
    if spec.datatype == "BYTES":
        return np.array(value, dtype=object)
    return np.array(value, dtype=triton_to_np_dtype(spec.datatype))


def _bytes_input(signature: ModelSignature, items: list[bytes]) -> tuple[str, NDArray[Any]]:
    """The model's only BYTES input holding `items`, one per batch entry."""
    candidates = [spec for spec in signature.inputs.values() if spec.datatype == "BYTES"]
    if len(candidates) != 1:
        raise InvalidInput(
            f"--image and --text need a model with exactly one BYTES input; {signature.model!r} has {len(candidates)}"
        )
    spec = candidates[0]
    batching = signature.max_batch_size > 0
    item_shape = [1 if d == -1 else d for d in (spec.shape[1:] if batching else spec.shape)]
    if int(np.prod(item_shape)) != 1 or (not batching and len(items) > 1):
        raise InvalidInput(
            f"model {signature.model!r} input {spec.name!r} of shape {list(spec.shape)} "
            f"does not take {len(items)} item(s) one per request"
        )
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return spec.name, array.reshape(([len(items)] if batching else []) + item_shape)


def _jsonable(array: NDArray[Any]) -> dict[str, Any]:
    if array.dtype == object or array.dtype.kind == "S":
        data = np.vectorize(
            lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b), otypes=[object]
        )(array).tolist()
    else:
        data = array.tolist()
    return {"datatype": triton_dtype(array), "shape": list(array.shape), "data": data}

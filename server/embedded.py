"""Start and stop the real Triton server that ships in the `nvidia-pytriton` wheel, without Docker.

The wheel carries `tritonserver` (Triton 2.51, the NGC 24.10 release) with the Python backend
only. The kit assembles a backends directory of its own next to it:

    <backend-dir>/python/        libtriton_python.so, its utils, and the stub for this Python
    <backend-dir>/onnxruntime/   Triton's own C++ ONNX Runtime backend, built from its r24.10
                                 sources against the environment's onnxruntime (server.onnxruntime_backend)

so `platform: "onnxruntime_onnx"` configs load unchanged and run as in the NGC container. The
server runs in its own process group, which `stop()` always ends, stub processes included.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from server.admin_key import key_library
from server.errors import ServerError
from server.installation import TritonInstallation, find_installation, prepare_backends, server_environment
from server.supervisor import (
    ADMIN_HEADER,
    KEY_PLACEHOLDER,
    StubSupervisor,
    cuda_pool_flags,
    drain_ensembles,
    is_ready,
    key_environment,
    kill_group,
    remove_regions,
    request,
    restricted_flags,
    stamped,
    stub_regions,
)

__all__ = [
    "ADMIN_HEADER",
    "BATCHING_RUNTIME",
    "COMPILED_RUNTIME",
    "SUPERVISOR_IN_CONTAINER",
    "EmbeddedTriton",
    "ServerError",
    "container_command",
]

BATCHING_RUNTIME = Path(__file__).resolve().parent / "python_models" / "triton_kit_batching.py"
"""Runs a dynamic batch as one call inside Triton's Python stub; copied next to every model.py."""
COMPILED_RUNTIME = BATCHING_RUNTIME.parent / "triton_kit_compiled.py"
"""Serves a compiled PyTorch model; copied as the model.py of every torch_compiled variant."""


EXIT_TIMEOUT_S = 30
SUPERVISOR_IN_CONTAINER = "/opt/kit/supervisor.py"
"""Where docker-compose.yml and the Kubernetes manifests mount server/supervisor.py."""


def server_flags(model_control_mode: str = "none", exit_timeout_s: int = EXIT_TIMEOUT_S) -> list[str]:
    """The server flags every deployment of the kit uses: the embedded server, docker-compose.yml
    and the Kubernetes manifests (tests hold the three to the same list)."""
    return [
        f"--model-control-mode={model_control_mode}",
        "--strict-readiness=true",
        f"--exit-timeout-secs={exit_timeout_s}",
    ]


def container_command(model_repository: str = "/models") -> list[str]:
    """The command NVIDIA's container runs (docker-compose.yml, the Kubernetes manifests): the
    server with the shared flags, in explicit model-control mode with every model loaded, under
    the kit's supervisor, which reloads a model whose stub process dies (as `make serve` does)."""
    return [
        "python3",
        SUPERVISOR_IN_CONTAINER,
        "--",
        "tritonserver",
        f"--model-repository={model_repository}",
        *server_flags("explicit"),
        "--load-model=*",
    ]


@dataclass
class EmbeddedTriton:
    """A Triton server process serving `repository` on the given ports.

    Use it as a context manager, or call `start()` and `stop()`; `stop()` is safe to call twice.
    The flags are the ones docker-compose.yml and the Kubernetes manifests pass to the NGC image.
    """

    repository: Path
    backend_dir: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    model_control_mode: str = "none"
    exit_timeout_s: int = EXIT_TIMEOUT_S
    log_verbose: int = 0
    extra_args: Sequence[str] = ()
    log_file: Path | None = None
    assemble_backends: bool = True
    """Assemble `backend_dir` at start (prepare_backends); False serves a folder assembled elsewhere as it is."""
    supervise: bool = True
    """Reload a model whose stub process died (see server.supervisor); with model_control_mode
    "none" the server then runs in explicit mode with every model loaded at start."""
    admin_key: str | None = field(default_factory=lambda: os.environ.get("TRITON_ADMIN_KEY") or None, repr=False)
    """Unlocks the admin APIs: requests send it in the `admin-key` header (gRPC metadata
    `triton-grpc-protocol-admin-key`). Unset, log settings and tracing are locked with a random
    key and model control is left to whoever reaches the ports (loopback by default); set, model
    control, the repository index and shared-memory registration need it too (the kit's clients
    send TRITON_ADMIN_KEY)."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _key: str = field(default="", init=False, repr=False)
    _reloads: list[dict[str, object]] = field(default_factory=list, init=False, repr=False)
    _supervisor: StubSupervisor | None = field(default=None, init=False, repr=False)
    _log_handle: IO[bytes] | None = field(default=None, init=False, repr=False)
    _terminating: threading.Thread | None = field(default=None, init=False, repr=False)
    _key_library: Path | None = field(default=None, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def reloads(self) -> list[dict[str, object]]:
        """The supervisor's recoveries since start(), kept after stop(): model, instances lost, and
        seconds to serve again (or the error)."""
        return list(self._reloads)

    @property
    def effective_model_control_mode(self) -> str:
        """The mode the server runs in: explicit, every model loaded at start, where a supervised
        server was asked for "none" (reloading needs model control)."""
        return "explicit" if self.supervise and self.model_control_mode == "none" else self.model_control_mode

    def command(self, installation: TritonInstallation) -> list[str]:
        """The tritonserver command line."""
        mode = self.effective_model_control_mode
        control = ["--load-model=*"] if mode != self.model_control_mode else []
        return [
            str(installation.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.backend_dir.resolve()}",
            f"--cache-directory={installation.caches}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            *server_flags(mode, self.exit_timeout_s),
            *control,
            # The key itself reaches the server through its environment (see server/admin_key.py).
            *restricted_flags(KEY_PLACEHOLDER, lock_model_control=self.admin_key is not None),
            f"--log-verbose={self.log_verbose}",
            *self._cuda_pool_flags(),
            *self.extra_args,
        ]

    def _cuda_pool_flags(self) -> list[str]:
        try:
            return cuda_pool_flags(self.extra_args)
        except ValueError as exc:
            raise ServerError(str(exc)) from None

    def start(self, *, wait: bool = True, timeout_s: float = 180.0) -> None:
        """Start the server; with `wait`, return once it reports ready.

        Raises:
            ServerError: it could not start, exited, or was not ready in time (it is stopped then).
        """
        if self._process is not None:
            raise ServerError("this server is already started; stop() it first")
        if not (self.repository / ".").is_dir():
            raise ServerError(f"model repository {self.repository} does not exist; build it with `make build-repo`")
        if self.model_control_mode == "none" and not any(
            (entry / "config.pbtxt").is_file() for entry in self.repository.iterdir() if entry.is_dir()
        ):
            # Triton would start, load nothing and answer every readiness probe with "ready".
            raise ServerError(
                f"model repository {self.repository} holds no model (no <model>/config.pbtxt): a server of it "
                "would report ready and serve nothing; build it with `make build-repo` (its summary says what failed)"
            )
        taken = [port for port in (self.http_port, self.grpc_port, self.metrics_port) if _in_use(self.host, port)]
        if taken:
            # Checked first: a readiness probe would reach the other server and call this one ready.
            raise ServerError(
                f"port(s) {', '.join(map(str, taken))} on {self.host} are in use (another Triton server?); stop it, "
                "or choose other ports (TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT)"
            )
        installation = find_installation()
        if self.assemble_backends:
            prepare_backends(self.backend_dir, installation)
        command = self.command(installation)
        self._key = self.admin_key or secrets.token_urlsafe(24)
        self._reloads.clear()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_file.open("ab")
        self._key_library = key_library()
        environment = key_environment(self._key, self._key_library, server_environment(installation))
        self._process = subprocess.Popen(
            command,
            env=environment,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT if self._log_handle else None,
            start_new_session=True,  # its own process group: stop() ends the stubs with it
        )
        if wait:
            try:
                self.wait_until_ready(timeout_s)
                self._check_admin_key()
            except BaseException:
                self.stop()
                raise
            self.start_supervisor()

    def _check_admin_key(self) -> None:
        """Raise ServerError unless the server took the admin key from its preloaded library."""
        try:
            request(self.http_url, {ADMIN_HEADER: self._key}, "GET", "/v2/logging")
        except OSError as exc:
            raise ServerError(
                f"the server did not take the admin key its preloaded library ({self._key_library}) should have put "
                f"in its flags: {exc}; check LD_PRELOAD is not disabled for tritonserver",
                self.log_tail(),
            ) from exc

    def start_supervisor(self) -> None:
        """Watch the stubs from now on (start() does this once the server is ready)."""
        if self.supervise and self._process is not None and self._supervisor is None:
            self._supervisor = StubSupervisor(
                self._process.pid, self.http_url, {ADMIN_HEADER: self._key}, self._note, self._reloads
            )
            self._supervisor.start()

    def _note(self, line: str) -> None:
        """The supervisor's lines, into the server's log (or stderr, where the server writes)."""
        text = stamped(line) + "\n"
        if self._log_handle is not None:
            self._log_handle.write(text.encode())
            self._log_handle.flush()
        else:
            sys.stderr.write(text)

    def wait_until_ready(self, timeout_s: float = 180.0) -> None:
        """Poll /v2/health/ready until the server and every model in it are ready.

        Raises:
            ServerError: the process exited, or `timeout_s` passed first.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise ServerError(f"tritonserver exited with code {code} before it was ready", self.log_tail())
            if is_ready(self.http_url):
                return
            time.sleep(0.2)
        url = f"http://{self.http_url}/v2/health/ready"
        raise ServerError(
            f"tritonserver was not ready after {timeout_s:.0f}s ({url}); a model may still be loading or failed to load",
            self.log_tail(),
        )

    def stop(self) -> int | None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after the exit timeout); return its exit code."""
        process, self._process = self._process, None
        regions: set[str] = set()
        if self._supervisor is not None:
            self._supervisor.stop()  # the stubs' exits below are no crash
            self._supervisor.join(timeout=5)
            regions |= self._supervisor.regions
            self._supervisor = None
        if process is None:
            return None
        terminating, self._terminating = self._terminating, None
        try:
            regions |= stub_regions(process.pid)
            if terminating is not None:
                terminating.join()  # terminate() is draining the ensembles, then signals the server
            elif process.poll() is None:
                self._drain_then_signal(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.exit_timeout_s + 10)
        finally:
            kill_group(process.pid)
            process.wait()
            remove_regions(regions)  # what killed stubs, or a killed server, left in /dev/shm
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None
        return process.returncode

    def terminate(self) -> None:
        """Ask the server to shut down without waiting: a thread drains the ensembles, then sends
        SIGTERM; safe inside a signal handler. Called again, it does nothing more."""
        if self._supervisor is not None:
            self._supervisor.stop()
        process = self._process
        if process is None or process.poll() is not None or self._terminating is not None:
            return

        self._terminating = threading.Thread(
            target=self._drain_then_signal, args=(process,), name="triton-drain", daemon=True
        )
        self._terminating.start()

    def _drain_then_signal(self, process: subprocess.Popen[bytes]) -> None:
        """Let the ensembles finish their in-flight requests before Triton stops every scheduler
        (see server.supervisor.drain_ensembles; only model control can unload them), then SIGTERM."""
        if self.effective_model_control_mode == "explicit":
            drain_ensembles(self.http_url, {ADMIN_HEADER: self._key}, self._note)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """End the server's whole process group at once (SIGKILL)."""
        if self._process is not None:
            kill_group(self._process.pid)

    def wait(self) -> int:
        """Block until the server exits by itself; return its exit code."""
        if self._process is None:
            raise ServerError("the server is not started")
        return self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, when it is written to a file."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on loopback nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False

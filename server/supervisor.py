"""Bring a model back when the process serving one of its instances dies.

Triton runs every Python-backend instance (compiled variants, pre/post-processing models; ONNX
models run inside the server's process, in its onnxruntime backend) in a stub process of its
own. When a stub dies (killed, out of memory, a crash in native code), Triton 2.51 answers each
later request of that instance with "Stub process '<instance>' is not healthy" for good, while
every health and readiness probe stays green. The supervisor watches the server's stub processes and, when one dies, reloads its
model: Triton loads fresh instances beside the broken ones and swaps them in, so the model
serves again within seconds and requests to the rest of the repository never notice.

A reload needs the model-control API, so a supervised server runs in explicit model-control
mode with every model loaded at start.

The embedded server (`python -m server`) runs a supervisor thread. NVIDIA's container runs this
file as its entrypoint's command (docker-compose.yml, deploy/kubernetes), around `tritonserver`:

    python3 supervisor.py -- tritonserver --model-repository=/models --model-control-mode=explicit ...

It needs nothing but the standard library of Python 3.10 (the NGC 24.10 image's), so it runs as
a plain script there, mounted read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

__all__ = [
    "ADMIN_HEADER",
    "CUDA_POOL_SETTING",
    "DEFAULT_CUDA_POOL_MB",
    "KEY_LIBRARY_SETTING",
    "KEY_PLACEHOLDER",
    "STUB",
    "StubSupervisor",
    "cuda_pool_flags",
    "drain_ensembles",
    "is_ready",
    "key_environment",
    "kill_group",
    "main",
    "model_of",
    "remove_regions",
    "request",
    "restricted_flags",
    "stamped",
    "stub_processes",
    "stub_regions",
]

ADMIN_HEADER = "admin-key"
"""The HTTP header holding the admin key (gRPC prefixes it: `triton-grpc-protocol-admin-key`)."""

STUB = "triton_python_backend_stub"
_REGION_ARG = 2
_INSTANCE_ARG = 8
_REGION_PREFIX = "triton_python_backend_shm_region_"
_INSTANCE = re.compile(r"(.+)_\d+_\d+")
"""Where the stub's command line names its shared-memory region and what it serves, in Triton 2.51."""
_GROUP = re.compile(r"(.+)_\d+")  # an instance stub's group: Triton names instances <group>_<index>


KEY_PLACEHOLDER = "@TRITON_KIT_ADMIN_KEY@"
"""Where the admin key goes in the server's flags when a preloaded library puts it there
(server/key_from_env.cc): the command line then shows this, not the key."""
KEY_LIBRARY_SETTING = "TRITON_KIT_KEY_LIBRARY"
"""Names that library for this script (the kit image sets it); unset, the key is in the flags."""


DEFAULT_CUDA_POOL_MB = 1024
CUDA_POOL_SETTING = "TRITON_CUDA_MEMORY_POOL_MB"
"""Overrides DEFAULT_CUDA_POOL_MB, the CUDA memory pool of each GPU (see cuda_pool_flags)."""
_POOL_FLAG = "--cuda-memory-pool-byte-size="


def cuda_pool_flags(
    command: Iterable[str], environment: dict[str, str] | None = None, devices: Path = Path("/dev")
) -> list[str]:
    """Triton's flags sizing the CUDA memory pool of each GPU this process sees, bar those the
    command sizes itself; none on a host without GPUs.

    The pool holds every GPU tensor between two steps of an ensemble, for every request in flight
    (a 224x224 FP32 image: 602 KB). Triton's default is 64 MB a GPU, about 100 images; past it, a
    Python-backend model's GPU output is given pinned host memory instead, which the Python backend
    of Triton 2.51 copies into with the wrong direction: the stub logs "failed to copy data: invalid
    argument" and the request succeeds with whatever the buffer held (python_backend's
    infer_response.cc, pb_memory.cc; triton-inference-server/server#7148). 1 GB a GPU holds about
    1,700 such images in flight; TRITON_CUDA_MEMORY_POOL_MB sets another size.

    Raises:
        ValueError: TRITON_CUDA_MEMORY_POOL_MB is not a whole number of megabytes.
    """
    environment = dict(os.environ) if environment is None else environment
    setting = environment.get(CUDA_POOL_SETTING, str(DEFAULT_CUDA_POOL_MB))
    if not setting.isdigit():
        raise ValueError(
            f"{CUDA_POOL_SETTING}={setting!r}: give the CUDA memory pool of each GPU in whole megabytes, "
            f"e.g. {DEFAULT_CUDA_POOL_MB} (the kit's default), or 64 (Triton's)"
        )
    sized = {flag.removeprefix(_POOL_FLAG).split(":", 1)[0] for flag in command if flag.startswith(_POOL_FLAG)}
    return [
        f"{_POOL_FLAG}{gpu}:{int(setting) << 20}"
        for gpu in range(_visible_gpus(environment, devices))
        if str(gpu) not in sized
    ]


def _visible_gpus(environment: dict[str, str], devices: Path) -> int:
    """How many CUDA devices a process started here sees: CUDA_VISIBLE_DEVICES where set, else the
    GPU device files (a container gets those of its own GPUs only)."""
    visible = environment.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        listed = [entry for entry in visible.split(",") if entry.strip()]
        return 0 if not listed or listed[0].strip().startswith("-") else len(listed)
    return len([entry for entry in devices.glob("nvidia*") if entry.name.removeprefix("nvidia").isdigit()])


def key_environment(key: str, library: Path, environment: dict[str, str]) -> dict[str, str]:
    """`environment` with what the preloaded `library` needs to put `key` in place of
    KEY_PLACEHOLDER; the library removes all of it again before the server starts any stub."""
    preloaded = environment.get("LD_PRELOAD", "")
    return {
        **environment,
        "TRITON_KIT_ADMIN_KEY": key,
        "TRITON_KIT_LD_PRELOAD_REST": preloaded,  # put back in LD_PRELOAD for the stubs
        "LD_PRELOAD": f"{library} {preloaded}".strip(),
    }


def restricted_flags(key: str, lock_model_control: bool) -> list[str]:
    """Triton's flags locking the admin APIs behind `key`: log settings and tracing always; model
    control, the repository index and shared-memory registration too where the key was chosen
    (left open otherwise, for whoever reaches the ports)."""
    locked = ["logging", "trace", *(["model-repository", "shared-memory"] if lock_model_control else [])]
    restricted = f"{','.join(locked)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]


def stub_processes(group: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """The live stub processes of a process group: pid -> model instance name."""
    return {pid: argv[_INSTANCE_ARG] for pid, argv in _stubs(group, proc).items()}


def stub_regions(group: int, proc: Path = Path("/proc")) -> set[str]:
    """The shared-memory regions (names under /dev/shm) of a process group's live stubs."""
    return {argv[_REGION_ARG] for argv in _stubs(group, proc).values()}


def remove_regions(names: Iterable[str], shm: Path = Path("/dev/shm")) -> list[str]:
    """Unlink the stubs' regions still in `shm`; return those removed. A stub killed, or a server
    killed before its stubs, leaves its region behind (Triton removes it only on a clean exit)."""
    removed = []
    for name in sorted(names):
        if name.startswith(_REGION_PREFIX) and "/" not in name:
            with contextlib.suppress(FileNotFoundError):
                (shm / name).unlink()
                removed.append(name)
    return removed


def _stubs(group: int, proc: Path) -> dict[int, list[str]]:
    """The live stub processes of a process group: pid -> command line."""
    stubs = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended while being read
            continue
        # The command name in parentheses may hold spaces; the fields after it do not.
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) != group or state in ("Z", "X") or len(argv) <= _INSTANCE_ARG:
            continue
        if os.path.basename(argv[0].decode(errors="replace")) == STUB:
            stubs[int(entry.name)] = [arg.decode(errors="replace") for arg in argv]
    return stubs


def at_full_strength(config: str, living: Iterable[str]) -> bool:
    """Whether every instance group of the served `config` (JSON) has as many `living` stubs as
    its count: then a stub that left was retired by a reload (Triton 2.51 adds and removes
    instances in place when only the groups change), not lost."""
    try:
        groups = {
            # A KIND_GPU group's count is per GPU.
            group["name"]: int(group.get("count", 1)) * max(1, len(group.get("gpus") or []))
            for group in json.loads(config).get("instance_group", [])
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    alive = Counter(match.group(1) for name in living if (match := _GROUP.fullmatch(name)))
    return bool(groups) and all(alive[name] >= count for name, count in groups.items())


def model_of(instance: str) -> str:
    """The model a stub serves: Triton names instance stubs `<model>_<group>_<index>`, and the
    short-lived stub that completes a loading model's config after the model."""
    match = _INSTANCE.fullmatch(instance)
    return match.group(1) if match else instance


RECOVERY_PARAMETER = "triton_kit.recovery"
"""A parameter counting the supervisor's reloads of a Python-backend model: Triton skips a load
whose config equals the one it serves, so each recovery's override must differ from the last."""

ENSEMBLE_DRAIN_S = 20.0
"""How long a stop waits for ensembles to finish their in-flight requests before signalling the
server; the compose file's and the pods' 60 s stop grace covers it and the server's exit timeout."""

RETIRED_GRACE_S = 60.0
"""How long a stub a reload retired may finish its in-flight work before it counts as leaked and is ended."""


class StubSupervisor(threading.Thread):
    """Watches the stubs of the server whose process group is `group` and reloads the model of
    any that dies, through the server's HTTP endpoint `http_url` with the admin key `headers`.
    Where the reload fails, the model is unloaded, so readiness says it does not serve."""

    def __init__(
        self,
        group: int,
        http_url: str,
        headers: dict[str, str],
        log: Callable[[str], None],
        reloads: list[dict[str, object]],
        interval_s: float = 0.25,
    ) -> None:
        super().__init__(name="triton-stub-supervisor", daemon=True)
        self.group = group
        self.http_url = http_url
        self.headers = headers
        self.log = log
        self.interval_s = interval_s
        self.reloads = reloads
        """Appended to at each recovery: model, instances lost, seconds to serve again, error if any."""
        self.regions: set[str] = set()
        """Every stub's shared-memory region seen, for the server's stop to remove what is left."""
        self._retired: dict[int, float] = {}  # pid -> when a reload of the supervisor's retired it
        self._generation = 0
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop watching (before the server is stopped, so its own shutdown is not read as crashes)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        known = self._scan()
        while not self._stopping.wait(self.interval_s):
            current = self._scan()
            # A stub a reload retired can outlive it: it must not stand in for the live instance of
            # the same name, or that instance's death would go unnoticed.
            living = {name for pid, name in current.items() if pid not in self._retired}
            lost: dict[str, list[str]] = {}
            for pid, instance in known.items():
                # A reload (the supervisor's, or a load request with a new config) starts the new
                # instances before it retires the old: a stub whose instance lives on under a new
                # process was retired, not killed, and reloading then would race the load request
                # and could serve the config it replaced. The stub a load starts to complete the
                # model's config (named as the model) exits by design once that is done.
                if pid not in current and instance not in living and _INSTANCE.fullmatch(instance):
                    lost.setdefault(model_of(instance), []).append(instance)
            for model, instances in lost.items():
                if self._stopping.is_set():
                    return
                retiring = {pid for pid, name in current.items() if model_of(name) == model}
                if self._recover(model, instances):
                    # The reload retires the old instances' stubs, healthy ones too: they exit on their own.
                    self._retired.update(dict.fromkeys(retiring, time.monotonic()))
            if lost:
                current = self._scan()
            self._end_lingering(current)
            known = {pid: name for pid, name in current.items() if pid not in self._retired}

    def _scan(self) -> dict[int, str]:
        stubs = _stubs(self.group, Path("/proc"))
        self.regions.update(argv[_REGION_ARG] for argv in stubs.values())
        return {pid: argv[_INSTANCE_ARG] for pid, argv in stubs.items()}

    def _end_lingering(self, current: dict[int, str]) -> None:
        now = time.monotonic()
        for pid, since in list(self._retired.items()):
            if pid not in current:
                del self._retired[pid]
            elif now - since > RETIRED_GRACE_S:
                self.log(
                    f"stub process {pid} of {current[pid]} outlived its reload by {RETIRED_GRACE_S:.0f} s: ending it"
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                del self._retired[pid]

    def _recover(self, model: str, instances: list[str]) -> bool:
        """Reload `model`; return whether a reload ran (it then retired the model's stubs)."""
        started = time.monotonic()
        entry: dict[str, object] = {"model": model, "instances": sorted(instances)}
        try:
            config = self._request("GET", f"/v2/models/{model}/config")
            alive = [name for pid, name in self._scan().items() if pid not in self._retired]
            if at_full_strength(config, alive):
                return False  # a load request changed the model's instances
            self.log(f"stub process of {', '.join(sorted(instances))} died: reloading model '{model}'")
            override = json.loads(config)
            self._generation += 1
            override.setdefault("parameters", {})[RECOVERY_PARAMETER] = {"string_value": str(self._generation)}
            self._request(
                "POST", f"/v2/repository/models/{model}/load", {"parameters": {"config": json.dumps(override)}}
            )
        except (OSError, ValueError) as exc:
            entry["error"] = str(exc)
            self.log(f"model '{model}' could not be reloaded: {exc}")
            self._unload(model)
        else:
            entry["seconds"] = round(time.monotonic() - started, 2)
            self.log(f"model '{model}' serves again after {entry['seconds']} s")
        self.reloads.append(entry)
        return True

    def _unload(self, model: str) -> None:
        """Take a model that cannot be brought back out of service: its readiness (and the
        server's, which asks every model) then reports it, instead of green over dead stubs."""
        try:
            self._request("POST", f"/v2/repository/models/{model}/unload")
        except OSError as exc:
            self.log(f"model '{model}' could not be unloaded either: {exc}")
        else:
            self.log(f"model '{model}' unloaded: it is not ready until loaded again")

    def _request(self, method: str, path: str, body: object = None) -> str:
        return request(self.http_url, self.headers, method, path, body)


def request(http_url: str, headers: dict[str, str], method: str, path: str, body: object = None) -> str:
    """One call to the server's HTTP API (admin `headers` included); its body, or OSError unless 200."""
    host, port = http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        data = None if body is None else json.dumps(body).encode()
        # http.client sends header names as given (urllib would capitalise them).
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"{method} {path}: HTTP {response.status}: {text}")
    return text


def drain_ensembles(
    http_url: str, headers: dict[str, str], log: Callable[[str], None], timeout_s: float = ENSEMBLE_DRAIN_S
) -> list[str]:
    """Unload the server's ensembles, outermost first, each once its in-flight requests are done;
    return those unloaded. Called before the server is signalled to stop.

    Why: on SIGTERM Triton stops every model's scheduler at once, so an ensemble request between
    two steps is refused its next one ("scheduler for model has stopped accepting new inference
    requests") and lost. Unloaded first, an ensemble finishes what it holds on steps that still
    serve. A request for it meanwhile is answered NOT_FOUND, which the kit's clients take for a
    stopping server once its readiness, asked again a moment later, is down. Needs explicit model
    control; any refusal leaves the stop as Triton's.
    """
    began = time.monotonic()
    try:
        ready = [
            entry["name"]
            for entry in json.loads(request(http_url, headers, "POST", "/v2/repository/index", {"ready": True}))
        ]
        configs = {name: json.loads(request(http_url, headers, "GET", f"/v2/models/{name}/config")) for name in ready}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"ensembles not drained before the stop: {exc}")
        return []
    steps = {
        name: {step.get("model_name") for step in config.get("ensemble_scheduling", {}).get("step", [])}
        for name, config in configs.items()
        if config.get("platform") == "ensemble"
    }
    unloaded: list[str] = []
    while steps:
        inner = set().union(*steps.values())
        layer = sorted(name for name in steps if name not in inner) or sorted(steps)  # a cycle: all at once
        try:
            for name in layer:
                request(http_url, headers, "POST", f"/v2/repository/models/{name}/unload")
            while not _unloaded(http_url, headers, layer):
                if time.monotonic() - began > timeout_s:
                    log(
                        f"ensembles {', '.join(layer)} still had requests in flight after {timeout_s:.0f} s: signalling the server"
                    )
                    return unloaded
                time.sleep(0.01)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"ensembles not drained before the stop: {exc}")
            return unloaded
        unloaded += layer
        for name in layer:
            del steps[name]
    if unloaded:
        log(
            f"ensembles {', '.join(unloaded)} drained in {time.monotonic() - began:.2f} s, their requests in flight answered: signalling the server"
        )
    return unloaded


def _unloaded(http_url: str, headers: dict[str, str], names: list[str]) -> bool:
    """Whether none of `names` is loaded or unloading (Triton keeps an unloading model until its
    last in-flight request is answered)."""
    states = {
        entry["name"]: entry.get("state")
        for entry in json.loads(request(http_url, headers, "POST", "/v2/repository/index"))
    }
    return all(states.get(name) in (None, "UNAVAILABLE") for name in names)


def main(argv: list[str] | None = None) -> int:
    """Run `tritonserver` under a supervisor: its exit code is this one's; SIGTERM drains it."""
    parser = argparse.ArgumentParser(
        prog="supervisor.py",
        description="Run tritonserver and reload any model whose Python-backend stub process dies.",
        epilog="The admin key comes from TRITON_ADMIN_KEY (random per start where unset).",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver FLAGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's command line after --, e.g. -- tritonserver --model-repository=/models ...")
    if "--model-control-mode=explicit" not in command:
        parser.error(
            "the supervisor reloads models through model control: add --model-control-mode=explicit "
            "--load-model=* to the tritonserver command"
        )
    chosen = os.environ.get("TRITON_ADMIN_KEY") or None
    key = chosen or secrets.token_urlsafe(24)
    port = next((flag.split("=", 1)[1] for flag in command if flag.startswith("--http-port=")), "8000")
    http_url = f"127.0.0.1:{port}"

    def log(line: str) -> None:
        print(stamped(line), file=sys.stderr, flush=True)

    library = Path(os.environ.get(KEY_LIBRARY_SETTING) or "/nonexistent")
    if library.is_file():  # the kit image's: the key stays off the command line (server/admin_key.py)
        flags = restricted_flags(KEY_PLACEHOLDER, chosen is not None)
        environment = key_environment(key, library, dict(os.environ))
    else:
        flags, environment = restricted_flags(key, chosen is not None), None
        if chosen:
            log(
                f"the admin key is on tritonserver's command line (set {KEY_LIBRARY_SETTING} to the kit's "
                "libtriton_kit_key_from_env.so to keep it off)"
            )
    try:
        flags += cuda_pool_flags(command)
    except ValueError as exc:
        parser.error(str(exc))
    # Its own process group: the stubs it starts are told apart from anything else in the container.
    server = subprocess.Popen([*command, *flags], env=environment, start_new_session=True)
    supervisor = StubSupervisor(server.pid, http_url, {ADMIN_HEADER: key}, log, [])

    draining: list[threading.Thread] = []

    def drain_then_forward(signum: int) -> None:
        drain_ensembles(http_url, {ADMIN_HEADER: key}, log)
        if server.poll() is None:
            server.send_signal(signum)

    def forward(signum: int, frame: FrameType | None) -> None:
        supervisor.stop()  # the stubs' exits in the drain are no crash
        if not draining:
            # Not in the handler itself: the drain makes HTTP calls and waits.
            draining.append(threading.Thread(target=drain_then_forward, args=(signum,), daemon=True))
            draining[0].start()
        elif not draining[0].is_alive() and server.poll() is None:
            server.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    refused = False
    while server.poll() is None and not supervisor.stopping:
        if is_ready(http_url):
            try:  # the reloads below need the key: prove the server took it
                request(http_url, {ADMIN_HEADER: key}, "GET", "/v2/logging")
            except OSError as exc:
                log(f"the server did not take the admin key ({exc}): stopping it")
                refused = True
                forward(signal.SIGTERM, None)
                break
            # Once every model has loaded: the stubs seen then are the ones to keep alive.
            supervisor.start()
            log(f"watching the stub processes of tritonserver (pid {server.pid})")
            break
        time.sleep(1.0)
    code = server.wait()
    supervisor.stop()
    regions = supervisor.regions | stub_regions(server.pid)
    kill_group(server.pid)  # stubs a killed server left behind
    remove_regions(regions)  # and their shared memory
    return 1 if refused else code


def stamped(line: str) -> str:
    """A supervisor line as it goes into the server's log."""
    return f"[kit supervisor] {time.strftime('%H:%M:%S')} {line}"


def kill_group(pgid: int) -> None:
    """End whatever is left of a server's process group (the stubs of a server that was killed)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def is_ready(http_url: str) -> bool:
    """Whether the server at `http_url` (host:port) answers its readiness probe with 200."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


if __name__ == "__main__":
    sys.exit(main())

"""Bring a model back when the process serving one of its instances dies.

Triton runs every Python-backend instance (the kit's ONNX Runtime backend, compiled variants,
pre/post-processing models) in a stub process of its own. When a stub dies (killed, out of
memory, a crash in native code), Triton 2.51 answers each later request of that instance with
"Stub process '<instance>' is not healthy" for good, while every health and readiness probe
stays green. The supervisor watches the server's stub processes and, when one dies, reloads its
model: Triton loads fresh instances beside the broken ones and swaps them in, so the model
serves again within seconds and requests to the rest of the repository never notice.

A reload needs the model-control API, so a supervised server runs in explicit model-control
mode with every model loaded at start.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["STUB", "StubSupervisor", "model_of", "stub_processes"]

STUB = "triton_python_backend_stub"
_INSTANCE_ARG = 8
_INSTANCE = re.compile(r"(.+)_\d+_\d+")
"""Where the stub's command line names what it serves, in Triton 2.51."""


def stub_processes(group: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """The live stub processes of a process group: pid -> model instance name."""
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
            stubs[int(entry.name)] = argv[_INSTANCE_ARG].decode(errors="replace")
    return stubs


def model_of(instance: str) -> str:
    """The model a stub serves: Triton names instance stubs `<model>_<group>_<index>`, and the
    stub it keeps per model (for the model's own config) after the model."""
    match = _INSTANCE.fullmatch(instance)
    return match.group(1) if match else instance


class StubSupervisor(threading.Thread):
    """Watches the stubs of the server whose process group is `group` and reloads the model of
    any that dies, through the server's HTTP endpoint `http_url` with the admin key `headers`."""

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
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop watching (before the server is stopped, so its own shutdown is not read as crashes)."""
        self._stopping.set()

    def run(self) -> None:
        known = stub_processes(self.group)
        while not self._stopping.wait(self.interval_s):
            current = stub_processes(self.group)
            lost: dict[str, list[str]] = {}
            for pid, instance in known.items():
                if pid not in current:
                    lost.setdefault(model_of(instance), []).append(instance)
            for model, instances in lost.items():
                if self._stopping.is_set():
                    return
                self._recover(model, instances)
            if lost:
                # A reload retires the old instances' stubs, healthy ones too: they exit on their own.
                retired = {pid for pid, instance in current.items() if model_of(instance) in lost}
                current = {pid: name for pid, name in stub_processes(self.group).items() if pid not in retired}
            known = current

    def _recover(self, model: str, instances: list[str]) -> None:
        self.log(f"stub process of {', '.join(sorted(instances))} died: reloading model '{model}'")
        started = time.monotonic()
        entry: dict[str, object] = {"model": model, "instances": sorted(instances)}
        try:
            config = self._request("GET", f"/v2/models/{model}/config")
            # An unchanged model is not reloaded; one given its own config as an override is.
            self._request("POST", f"/v2/repository/models/{model}/load", {"parameters": {"config": config}})
        except OSError as exc:
            entry["error"] = str(exc)
            self.log(f"model '{model}' could not be reloaded: {exc}")
        else:
            entry["seconds"] = round(time.monotonic() - started, 2)
            self.log(f"model '{model}' serves again after {entry['seconds']} s")
        self.reloads.append(entry)

    def _request(self, method: str, path: str, body: object = None) -> str:
        host, port = self.http_url.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            data = None if body is None else json.dumps(body).encode()
            # http.client sends header names as given (urllib would capitalise them).
            connection.request(method, path, body=data, headers=self.headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        if response.status != 200:
            raise OSError(f"{method} {path}: HTTP {response.status}: {text}")
        return text

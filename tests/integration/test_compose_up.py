"""`docker compose up` for real: the kit image serving the example repository (profile `cpu`) and
Prometheus scraping it (profile `monitoring`), brought up, probed over loopback and torn down.

Nothing is pulled from a registry: the base image comes from Debian's archive
(deploy/docker/debian-base.sh), the kit image installs from a wheelhouse served on 127.0.0.1, and
Prometheus is Debian's package (deploy/docker/prometheus.Dockerfile). Needs a Docker engine,
docker-compose and, the first time, root with debootstrap for the base image: `.ci/run` sets them
up where it can; elsewhere these tests skip and say what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clients import TritonClient
from models import image_classifier, text_encoder
from tests.conftest import ROOT, free_port
from tests.integration.test_pipelines import TEXTS, encoded, reference_classification, reference_embedding
from tests.integration.test_serving import assert_close, token_batch

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BASE_IMAGE = os.environ.get("KIT_TEST_BASE_IMAGE", "kit-debian-base:bookworm")
KIT_IMAGE = "triton-model-kit:compose-test"
PROMETHEUS_IMAGE = "kit-prometheus:compose-test"
WHEELHOUSE = Path(os.environ.get("KIT_TEST_WHEELHOUSE", Path.home() / ".cache" / "triton-model-kit" / "wheelhouse"))


def run(*command: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def checked(*command: str, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    result = run(*command, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def engine() -> str:
    """The Docker CLI, talking to a running engine, and docker-compose; skip when there is none."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI: install Docker (Debian: apt-get install docker.io docker-compose)")
    if run(docker, "info", timeout=30).returncode != 0:
        pytest.skip("no Docker engine answers: start dockerd (.ci/run does, as root)")
    if shutil.which("docker-compose") is None:
        pytest.skip("no docker-compose (Debian: apt-get install docker-compose)")
    return docker


@pytest.fixture(scope="module")
def base_image(engine: str) -> str:
    """A Debian base image built from the archive once; kept for later runs."""
    if run(engine, "image", "inspect", BASE_IMAGE, timeout=30).returncode == 0:
        return BASE_IMAGE
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip(f"no {BASE_IMAGE} image and no root with debootstrap to build it (deploy/docker/debian-base.sh)")
    checked("bash", str(ROOT / "deploy/docker/debian-base.sh"), BASE_IMAGE, timeout=900)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def wheelhouse_url() -> Iterator[str]:
    """The kit image's packages, downloaded by this machine's pip (its index, its CA bundle) and
    served on loopback, so the image build reaches nothing else."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    checked(
        sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(WHEELHOUSE),
        "-c", str(ROOT / "requirements.lock"), "-r", str(ROOT / "deploy/docker/serve-requirements.in"), "torch",
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(WHEELHOUSE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def images(engine: str, base_image: str, wheelhouse_url: str) -> dict[str, str]:
    """The kit image and the Debian Prometheus image, built with the plain builder."""
    started = time.monotonic()
    # As `make image` does: what the image copies from the host, built here, into the build context.
    checked(sys.executable, "-m", "deploy", "image-context", str(ROOT / ".triton" / "image"))
    checked(
        engine, "build", "--network", "host", "--file", str(ROOT / "deploy/docker/Dockerfile"),
        "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"PIP_FIND_LINKS={wheelhouse_url}",
        "--build-arg", "PIP_NO_INDEX=1", "--tag", KIT_IMAGE, str(ROOT),
    )  # fmt: skip
    checked(
        engine, "build", "--network", "host", "--file", str(ROOT / "deploy/docker/prometheus.Dockerfile"),
        "--build-arg", f"BASE_IMAGE={base_image}", "--tag", PROMETHEUS_IMAGE, str(ROOT),
    )  # fmt: skip
    print(f"\nimages built in {time.monotonic() - started:.0f} s")
    return {"kit": KIT_IMAGE, "prometheus": PROMETHEUS_IMAGE}


@dataclass(frozen=True)
class Stack:
    """A compose project brought up from the repository's docker-compose.yml."""

    project: str
    env: dict[str, str]
    http: str
    grpc: str
    prometheus: str

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        compose_file = str(ROOT / "docker-compose.yml")
        return run("docker-compose", "-f", compose_file, "-p", self.project, *args, timeout=timeout, env=self.env)

    def container(self, service: str) -> dict[str, Any]:
        (container_id,) = self.compose("ps", "-q", service).stdout.split()
        inspected: list[dict[str, Any]] = json.loads(checked("docker", "inspect", container_id))
        return inspected[0]


@pytest.fixture(scope="module")
def stack(
    images: dict[str, str], example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    ports = {name: free_port() for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")}
    prometheus_port = free_port()
    env = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        "PROMETHEUS_PORT": str(prometheus_port),
        "KIT_IMAGE": images["kit"],
        "PROMETHEUS_IMAGE": images["prometheus"],
        "MODEL_REPOSITORY": str(example_repository),
        "TRITON_BIND_ADDRESS": "127.0.0.1",
    }
    stack = Stack(
        project=f"kittest{os.getpid()}",
        env=env,
        http=f"127.0.0.1:{ports['TRITON_HTTP_PORT']}",
        grpc=f"127.0.0.1:{ports['TRITON_GRPC_PORT']}",
        prometheus=f"http://127.0.0.1:{prometheus_port}",
    )
    started = time.monotonic()
    # Grafana's image cannot come from a registry here: the monitoring profile is brought up
    # without it, by naming the services.
    up = stack.compose(
        "--profile", "cpu", "--profile", "monitoring", "up", "-d", "--no-build", "triton-cpu", "prometheus"
    )
    try:
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 300
        while (health := stack.container("triton-cpu")["State"]["Health"]["Status"]) != "healthy":
            assert health != "unhealthy" and time.monotonic() < deadline, stack.compose("logs", "triton-cpu").stdout
            time.sleep(2)
        print(f"\ncompose up to healthy in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        down = stack.compose("down", "--volumes", "--remove-orphans", timeout=180)
        left = checked("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}")
        assert down.returncode == 0 and left.strip() == "", down.stderr + left


def test_the_kit_image_runs_unprivileged_with_a_read_only_repository(stack: Stack) -> None:
    container = stack.container("triton-cpu")
    assert container["Config"]["User"] == "10001:10001"
    assert container["HostConfig"]["ReadonlyRootfs"] is True
    assert container["HostConfig"]["CapDrop"] == ["ALL"]
    (models,) = [m for m in container["Mounts"] if m["Destination"] == "/models"]
    assert models["RW"] is False
    # Both published ports answer on loopback only.
    bindings = container["HostConfig"]["PortBindings"]
    assert {b["HostIp"] for port in ("8000/tcp", "8001/tcp", "8002/tcp") for b in bindings[port]} == {"127.0.0.1"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_example_model_answers_over_the_published_ports_as_pytorch_does(stack: Stack, protocol: str) -> None:
    rng = np.random.default_rng(7)
    images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    ids, mask = token_batch(rng, [5, 31], width=31)
    with torch.inference_mode():
        logits = image_classifier.build()(torch.from_numpy(images)).numpy()
        embedding = text_encoder.build()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    pictures = [encoded("JPEG", (240, 320), 1), encoded("PNG", (300, 200), 2)]
    with TritonClient(stack.grpc if protocol == "grpc" else stack.http, protocol=protocol) as client:  # type: ignore[arg-type]
        for model in ("image_classifier", "image_classifier_compiled"):
            assert_close("image_classifier", "logits", client.infer(model, {"image": images})["logits"], logits)
        for model in ("text_encoder", "text_encoder_compiled"):
            served = client.infer(model, {"input_ids": ids, "attention_mask": mask})["embedding"]
            assert_close("text_encoder", "embedding", served, embedding)
        texts = np.array([[t.encode()] for t in TEXTS], dtype=object)
        np.testing.assert_allclose(
            client.infer("text_embedding", {"text": texts})["embedding"],
            reference_embedding(TEXTS),
            atol=1e-4,
            rtol=1e-3,
        )
        labels = client.infer("image_classification", {"image_bytes": np.array([[p] for p in pictures], dtype=object)})
        assert labels["labels"].tolist() == reference_classification(pictures)["labels"].tolist()


def test_prometheus_scrapes_the_servers_inference_counts(stack: Stack) -> None:
    with TritonClient(stack.grpc) as client:
        ids, mask = token_batch(np.random.default_rng(3), [4], width=4)
        for _ in range(3):
            client.infer("text_encoder", {"input_ids": ids, "attention_mask": mask})
        served = client.statistics("text_encoder")
    counted = served["model_stats"][0]["inference_stats"]["success"]["count"]
    query = f"{stack.prometheus}/api/v1/query?query=" + urllib.parse.quote('nv_inference_count{model="text_encoder"}')
    deadline = time.monotonic() + 60
    scraped = -1.0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(query, timeout=5) as answer:
                result = json.load(answer)["data"]["result"]
        except (urllib.error.URLError, OSError):
            result = []
        if result and (scraped := float(result[0]["value"][1])) >= int(counted):
            break
        time.sleep(2)
    # Prometheus reached the server by its compose name, `triton`, and saw what the server counted.
    assert scraped >= int(counted) >= 3
    assert result[0]["metric"]["instance"] == "triton:8002"

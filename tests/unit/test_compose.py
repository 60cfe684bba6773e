"""docker-compose.yml keeps its safety defaults (CI has no Docker engine to run it)."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def test_compose_serves_the_repository_read_only_on_loopback_with_a_pinned_image() -> None:
    triton = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_VERSION:-24.10}")
    assert "latest" not in triton["image"]
    assert triton["volumes"] == ["./model_repository:/models:ro"]
    assert all(port.startswith("${TRITON_BIND_ADDRESS:-127.0.0.1}:") for port in triton["ports"])
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "--strict-readiness=true" in triton["command"]

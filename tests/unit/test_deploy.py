"""docker-compose.yml and the Kubernetes manifests: valid against their schemas, safe by default,
and started with the same server flags as the embedded server (CI has no Docker engine or cluster;
the Compose command line, where installed, reads the compose file as `docker compose up` would)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.interpolate import interpolate
from deploy.render import HPA_METRIC, compose_problems, manifest_problems, render_manifests
from server.embedded import (
    EXIT_TIMEOUT_S,
    SUPERVISOR_IN_CONTAINER,
    EmbeddedTriton,
    container_command,
    server_flags,
)
from server.installation import find_installation
from server.supervisor import ENSEMBLE_DRAIN_S
from tests.conftest import ROOT

INSTALL = {"docker-compose": "Debian: apt-get install docker-compose", "docker compose": "the Docker CLI plugin"}
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert compose_problems() == []


def test_the_compose_validation_catches_a_broken_file(tmp_path: Path) -> None:
    broken = dict(COMPOSE, services={"triton": {**SERVICES["triton"], "ports": 8000, "restart": ["always"]}})
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    problems = compose_problems(tmp_path / "compose.yml")
    assert any(p.startswith("services/triton/ports") for p in problems)
    assert any(p.startswith("services/triton/restart") for p in problems)


def test_compose_publishes_ports_on_loopback_only_by_default() -> None:
    published = [port for service in SERVICES.values() for port in service.get("ports", [])]
    assert published
    assert all(port.startswith("${TRITON_BIND_ADDRESS:-127.0.0.1}:") for port in published)


def test_compose_pins_every_image_and_mounts_the_repository_read_only() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
    for name in ("triton", "triton-cpu"):
        assert "${MODEL_REPOSITORY:-./model_repository}:/models:ro" in SERVICES[name]["volumes"]
    assert SERVICES["triton"]["image"] == "nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_VERSION:-24.10}-py3"
    # The CPU service is the kit's own image, built from the repository when it is missing.
    assert SERVICES["triton-cpu"]["image"] == "${KIT_IMAGE:-triton-model-kit:0.1.0}"
    assert SERVICES["triton-cpu"]["build"] == {"context": ".", "dockerfile": "deploy/docker/Dockerfile"}


def test_compose_triton_is_healthchecked_restarted_and_tuned() -> None:
    for name in ("triton", "triton-cpu"):
        service = SERVICES[name]
        assert "http://localhost:8000/v2/health/ready" in service["healthcheck"]["test"] or any(
            "http://127.0.0.1:8000/v2/health/ready" in part for part in service["healthcheck"]["test"]
        )
        assert service["healthcheck"]["start_period"]
        assert service["restart"] == "unless-stopped"
        # Room for the supervisor's drain of the ensembles, then the server's own.
        assert int(service["stop_grace_period"].removesuffix("s")) > ENSEMBLE_DRAIN_S + EXIT_TIMEOUT_S
        assert service["shm_size"] and service["ulimits"]["stack"]
        # Either one is `triton` to Prometheus and Locust.
        assert service["networks"]["default"]["aliases"] == ["triton"]
    assert SERVICES["triton"]["ulimits"]["memlock"] == -1 and "memlock" not in SERVICES["triton-cpu"]["ulimits"]
    assert SERVICES["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert SERVICES["triton"]["profiles"] == ["gpu"]
    assert "deploy" not in SERVICES["triton-cpu"] and SERVICES["triton-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["triton-cpu"]["read_only"] is True


def test_compose_inlines_no_secret_and_scrapes_triton() -> None:
    # No default either: Compose's ${VAR:-} gives "" when unset, which Grafana's start-up check refuses.
    assert SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    prometheus = yaml.safe_load((ROOT / "deploy/monitoring/prometheus.yml").read_text())
    assert "triton:8002" in prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {SERVICES[n]["profiles"][0] for n in ("prometheus", "grafana")} == {"monitoring"}
    assert {SERVICES[n]["profiles"][0] for n in ("locust-master", "locust-worker")} == {"loadtest"}


def test_every_compose_service_runs_without_capabilities_or_privilege_escalation() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"triton", "triton-cpu", "prometheus", "grafana", "locust-master", "locust-worker"}
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not service.get("privileged"), name


def test_compose_interpolates_every_value_with_no_variable_set() -> None:
    # Compose interpolates the whole file before it applies profiles: one failure stops them all.
    services = interpolate(COMPOSE, {})["services"]
    assert services["triton"]["ports"][0] == "127.0.0.1:8000:8000"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ""
    assert json.loads(services["locust-master"]["environment"]["TRITON_LOADTEST_SETTINGS"])["steps"] == 3


def test_the_compose_check_reports_a_required_variable_in_a_profiled_service(tmp_path: Path) -> None:
    path = _with_a_required_variable_in_a_profile(tmp_path)
    (problem,) = compose_problems(path)
    assert problem.startswith("services/extra/environment/TOKEN: required variable TOKEN is unset: set TOKEN")
    assert "stops `docker compose up` of every profile" in problem


@pytest.mark.parametrize(
    ("environ", "password"),
    [({}, None), ({"GRAFANA_ADMIN_PASSWORD": ""}, None), ({"GRAFANA_ADMIN_PASSWORD": "s3"}, "s3")],
)
def test_grafana_starts_only_with_an_admin_password(
    tmp_path: Path, environ: dict[str, str], password: str | None
) -> None:
    result = _start_grafana(interpolate(COMPOSE, environ)["services"]["grafana"], tmp_path)
    if password is None:
        assert result.returncode != 0 and result.stdout == ""
        assert "GRAFANA_ADMIN_PASSWORD is unset or empty" in result.stderr
        assert "GRAFANA_ADMIN_PASSWORD=... docker compose --profile monitoring up -d" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"grafana /run.sh, admin password {password}\n"


@pytest.mark.parametrize("cli", ["docker-compose", "docker compose"])
@pytest.mark.parametrize("profile", [None, "gpu", "cpu", "monitoring", "loadtest"])
def test_compose_reads_the_file_with_no_variable_set(tmp_path: Path, cli: str, profile: str | None) -> None:
    result = _compose(cli, tmp_path, ROOT / "docker-compose.yml", profile, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cli", ["docker-compose", "docker compose"])
def test_compose_stops_at_a_required_variable_in_a_profile_it_does_not_start(tmp_path: Path, cli: str) -> None:
    # What the Python check above models: the profile "extra" is not selected, yet Compose refuses.
    result = _compose(cli, tmp_path, _with_a_required_variable_in_a_profile(tmp_path), None, "config", "-q")
    assert result.returncode != 0 and "set TOKEN" in result.stderr


@pytest.mark.parametrize("cli", ["docker-compose", "docker compose"])
def test_compose_renders_grafanas_start_up_check_as_the_python_interpolation_does(tmp_path: Path, cli: str) -> None:
    result = _compose(cli, tmp_path, ROOT / "docker-compose.yml", "monitoring", "config")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]["grafana"]
    ours = interpolate(COMPOSE, {})["services"]["grafana"]
    # `config` prints a compose file, so it may escape $ again as $$.
    assert [arg.replace("$$", "$") for arg in rendered["entrypoint"]] == ours["entrypoint"]
    assert rendered["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ours["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_the_docs_say_what_each_profile_needs_from_the_environment() -> None:
    lines = (ROOT / "docs/compose.md").read_text().split("## What each profile needs", 1)[1].splitlines()
    start = lines.index("| profile | required | optional (default) |") + 2
    rows = {}
    for row in itertools.takewhile(lambda line: line.startswith("|"), lines[start:]):
        profile, required, optional = (cell.strip() for cell in row.strip("|").split("|"))
        rows[profile] = (required, optional)
    table = " ".join(" ".join(cells) for cells in rows.values())
    read = {
        name
        for value in _string_values(COMPOSE)
        for name in re.findall(r"\$\{?([_a-zA-Z][_a-zA-Z0-9]*)", value.replace("$$", ""))  # $$ is a literal $
    }
    assert read and {name for name in read if f"`{name}`" not in table} == set()
    assert {profile: required for profile, (required, _) in rows.items() if required != "nothing"} == {
        "`monitoring`: Prometheus, Grafana": "`GRAFANA_ADMIN_PASSWORD`"
    }


def test_the_grafana_dashboard_charts_tritons_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy/monitoring/grafana/dashboards/triton.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in (
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_request_failure",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "kit_input_bytes",
    ):
        assert metric in expressions, metric
    source = yaml.safe_load((ROOT / "deploy/monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["datasources"][0]["uid"]}


def test_every_deployment_starts_the_server_with_the_same_flags_under_the_supervisor() -> None:
    command = container_command()
    assert command[:4] == ["python3", SUPERVISOR_IN_CONTAINER, "--", "tritonserver"]
    assert SERVICES["triton"]["command"] == command
    assert "./server/supervisor.py:/opt/kit/supervisor.py:ro" in SERVICES["triton"]["volumes"]
    # The kit image runs `python -m server`: the embedded server, which supervises its own stubs.
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    (entrypoint,) = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT "))[:3] == ["python", "-m", "server"]
    assert SERVICES["triton-cpu"]["command"] == ["--repo", "/models"]
    documents = render_manifests()
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == command
    # The script itself travels in a ConfigMap mounted where the command looks for it.
    (kit,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert kit["data"]["supervisor.py"] == (ROOT / "server" / "supervisor.py").read_text()
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kit"]
    assert mount["mountPath"] == str(Path(SUPERVISOR_IN_CONTAINER).parent)
    assert {"name": "kit", "configMap": {"name": kit["metadata"]["name"]}} in pod["volumes"]
    # The embedded server passes the same flags; unsupervised, it keeps the mode it is given.
    supervised = EmbeddedTriton(Path("model_repository"), Path(".triton/backends")).command(find_installation())
    assert all(flag in supervised for flag in command[5:])
    plain = EmbeddedTriton(Path("model_repository"), Path(".triton/backends"), supervise=False)
    assert all(flag in plain.command(find_installation()) for flag in server_flags())


@pytest.mark.parametrize("target", ["gpu", "cpu"])
@pytest.mark.parametrize("repository", ["pvc:model-repository", "s3://bucket/model_repository"])
def test_the_manifests_validate_against_the_kubernetes_schemas(target: str, repository: str) -> None:
    documents = render_manifests(target=target, repository=repository)
    assert [d["kind"] for d in documents] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "ConfigMap",
    ]
    assert manifest_problems(documents) == []


def test_the_schema_check_catches_a_broken_manifest() -> None:
    documents = render_manifests()
    documents[0]["spec"]["replicas"] = "two"
    documents[1]["spec"]["portz"] = []
    problems = manifest_problems(documents)
    assert (
        len(problems) == 2
        and problems[0].startswith("Deployment triton:")
        and problems[1].startswith("Service triton:")
    )


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_the_manifests_keep_their_safety_defaults(target: str) -> None:
    deployment, service, budget, autoscaler, monitor, _ = render_manifests(target=target, repository="s3://bucket/repo")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    limits = container["resources"]["limits"]
    assert limits["cpu"] and limits["memory"]
    assert ("nvidia.com/gpu" in limits) == (target == "gpu")
    assert pod["terminationGracePeriodSeconds"] > ENSEMBLE_DRAIN_S + EXIT_TIMEOUT_S
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Secrets (the admin key, S3 credentials) are never inlined: only this setting is a value.
    assert [env for env in container["env"] if "valueFrom" not in env] == [
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}
    ]
    assert {env["name"] for env in container["env"]} >= {"TRITON_ADMIN_KEY", "AWS_ACCESS_KEY_ID"}
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}
    assert budget["spec"]["minAvailable"] == 1
    assert autoscaler["spec"]["metrics"][0]["pods"]["metric"]["name"] == HPA_METRIC
    adapter = yaml.safe_load((ROOT / "deploy/kubernetes/prometheus-adapter-rules.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == HPA_METRIC
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_the_pod_meets_the_restricted_pod_security_standard(target: str) -> None:
    """The rules of Kubernetes' "restricted" profile that a pod spec decides."""
    (deployment,) = [d for d in render_manifests(target=target) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in volume for volume in pod["volumes"])
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
        assert not context.get("privileged") and not any("hostPort" in port for port in container["ports"])


def test_a_repository_that_is_neither_s3_nor_a_volume_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy", "k8s", "--repository", "/data/models"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "give s3://bucket/path" in result.stderr and "pvc:<claim name>" in result.stderr


def _with_a_required_variable_in_a_profile(tmp_path: Path) -> Path:
    extra = {"image": "busybox:1.37", "profiles": ["extra"], "environment": {"TOKEN": "${TOKEN:?set TOKEN}"}}
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(dict(COMPOSE, services={**SERVICES, "extra": extra})))
    return path


def _start_grafana(grafana: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Grafana's entrypoint, interpolated, run by the local sh in its environment; the image's
    /run.sh (which starts Grafana) is stood in for by a script that prints what it was given."""
    shell, flag, script = grafana["entrypoint"]
    assert (shell, flag) == ("sh", "-c") and script.endswith("; exec /run.sh")
    run_sh = tmp_path / "run.sh"
    run_sh.write_text('#!/bin/sh\necho "grafana /run.sh, admin password $GF_SECURITY_ADMIN_PASSWORD"\n')
    run_sh.chmod(0o755)
    return subprocess.run(
        [shell, flag, script.replace("/run.sh", str(run_sh))],
        env={"PATH": os.environ["PATH"], **grafana["environment"]},
        capture_output=True,
        text=True,
    )


def _compose(
    cli: str, tmp_path: Path, path: Path, profile: str | None, *command: str
) -> subprocess.CompletedProcess[str]:
    """The Compose command line on `path` in an empty environment: no variable and no .env file."""
    argv = cli.split()
    if shutil.which(argv[0]) is None or subprocess.run([*argv, "version"], capture_output=True).returncode != 0:
        pytest.skip(f"{cli} is not installed ({INSTALL[cli]}); the Python interpolation check runs without it")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    return subprocess.run(
        [
            *argv,
            "--env-file",
            str(empty_env_file),
            "-f",
            str(path),
            *(["--profile", profile] if profile else []),
            *command,
        ],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )


def _string_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [value for item in node for value in _string_values(item)]
    return [node] if isinstance(node, str) else []


def test_the_image_context_holds_every_file_the_dockerfile_copies_from_the_host(tmp_path: Path) -> None:
    """`python -m deploy image-context` (make image) stages exactly what the Dockerfile's COPY lines
    take from .triton/image: a file missing there fails the image build, one extra is dead weight."""
    staged = subprocess.run(
        [sys.executable, "-m", "deploy", "image-context", str(tmp_path / "image")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TRITON_KIT_KEY_LIBRARY": ""},  # compiled here, as on a host
    )
    assert staged.returncode == 0, staged.stderr
    copied = re.findall(r"^COPY \.triton/image/(\S+) ", (ROOT / "deploy/docker/Dockerfile").read_text(), re.MULTILINE)
    assert sorted(copied) == sorted(p.name for p in (tmp_path / "image").iterdir())
    assert sorted(Path(line).name for line in staged.stdout.split()) == [
        "libtriton_kit_key_from_env.so",
        "libtriton_onnxruntime.so",
    ]

"""Render the Kubernetes manifests, and validate them and docker-compose.yml offline.

Validation uses the schemas shipped in pinned packages, so it runs without a cluster, a Docker
engine or a network: the Compose Specification's JSON schema (vendored by check-jsonschema) and
the Kubernetes JSON schemas of the targeted version (kubernetes-validate). The compose file is
also interpolated the way Compose reads it (deploy/interpolate.py), which no schema can check.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jsonschema
import kubernetes_validate
import yaml

from deploy.interpolate import interpolation_problems
from server.embedded import EXIT_TIMEOUT_S, SUPERVISOR_IN_CONTAINER, container_command
from server.supervisor import ENSEMBLE_DRAIN_S

__all__ = ["KUBERNETES_VERSION", "Manifests", "compose_problems", "manifest_problems", "render_manifests"]

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.30.0"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:{version}-py3"
HPA_METRIC = "triton_queue_time_us_per_request"
_TEMPLATE = jinja2.Environment(
    loader=jinja2.FileSystemLoader(ROOT / "deploy" / "kubernetes"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
).get_template("triton.yaml.j2")


@dataclass(frozen=True)
class Manifests:
    """What a deployment needs to know; the defaults suit one model server per GPU."""

    target: Literal["cpu", "gpu"] = "gpu"
    repository: str = "pvc:model-repository"
    image_version: str = "24.10"
    name: str = "triton"
    replicas: int = 1
    max_replicas: int = 4
    queue_target_us: int = 50_000
    cpu: str = "4"
    memory: str = "16Gi"
    s3_secret: str = "triton-s3-credentials"
    admin_secret: str = "triton-admin-key"

    def render(self) -> str:
        """The manifests as one multi-document YAML text."""
        s3 = self.repository.startswith("s3://")
        if not s3 and not self.repository.startswith("pvc:"):
            raise ValueError(
                f"repository {self.repository!r}: give s3://bucket/path (credentials from the Secret "
                f"{self.s3_secret!r}) or pvc:<claim name> (a volume holding the built model_repository/)"
            )
        return _TEMPLATE.render(
            target=self.target,
            name=self.name,
            repository=self.repository,
            image=TRITON_IMAGE.format(version=self.image_version),
            server_command=container_command(self.repository if s3 else "/models"),
            supervisor_dir=str(Path(SUPERVISOR_IN_CONTAINER).parent),
            supervisor_source=(ROOT / "server" / "supervisor.py").read_text(),
            admin_secret=self.admin_secret,
            replicas=self.replicas,
            max_replicas=self.max_replicas,
            termination_grace_s=int(ENSEMBLE_DRAIN_S) + EXIT_TIMEOUT_S + 10,  # the ensembles' drain, then Triton's
            s3=s3,
            s3_secret=self.s3_secret,
            volume_claim=self.repository.removeprefix("pvc:"),
            gpu=self.target == "gpu",
            cpu=self.cpu,
            memory=self.memory,
            hpa_metric=HPA_METRIC,
            queue_target_us=self.queue_target_us,
        )


def render_manifests(**settings: Any) -> list[dict[str, Any]]:
    """The rendered manifests as parsed documents."""
    return [doc for doc in yaml.safe_load_all(Manifests(**settings).render()) if doc]


def manifest_problems(documents: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Schema errors of each core-API document; custom resources (ServiceMonitor) are skipped,
    as a cluster without their CRD has no schema for them either."""
    problems = []
    for document in documents:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{document['kind']} {document['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return problems


def compose_problems(path: Path = ROOT / "docker-compose.yml") -> list[str]:
    """Where the compose file breaks the Compose Specification's schema, or where Compose could
    not interpolate it with no variable set (which stops `docker compose up` of every profile)."""
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    document = yaml.safe_load(path.read_text())
    validator = (
        jsonschema.Draft202012Validator(schema)
        if "2020-12" in schema.get("$schema", "")
        else jsonschema.Draft7Validator(schema)
    )
    schema_problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in _errors(validator, document)
    ]
    return schema_problems + interpolation_problems(document)


def _errors(validator: Any, document: Any) -> Iterator[Any]:
    yield from sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))

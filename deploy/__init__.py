"""Deployment beyond one host: Kubernetes manifests for the kit's repository, rendered from
`deploy/kubernetes/triton.yaml.j2` with the same server flags as docker-compose.yml and the
embedded server (`python -m deploy --help`, `make k8s-manifests`)."""

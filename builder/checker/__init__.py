"""The repository checker: the rules a model repository must follow to load in Triton 2.51, held
to any repository, generated or hand-written (`make check-repo REPO=path`, `python -m builder
check`); the build runs it on every staged repository before swapping it into place.

It models what the server does at load time: config.pbtxt parsed with Triton's own schema
(config), the load-time rules and the fields newer than the target server (config_rules,
server_schema), the Python backend's auto-complete (python_autocomplete), ensemble graphs
(ensemble), what each version directory holds (version_files: an ONNX file's tensors against
its config with signature, a TensorRT plan's profiles with profiles, read from the build records
with records); repository ties them together and reports each Problem (problem).
`tests/integration/test_checker_agrees_with_server.py` holds it to the server on Triton's own
QA fixtures.

Imports: the standard library, onnx, protobuf, tritonclient's config schema, and of the kit only
builder.dtypes, builder.errors, builder.targets, clients.limits and the compiled runtime's file
names. Nothing of the build steps (the import-linter contract in pyproject.toml holds it to that).
"""

from builder.checker.problem import PlanTarget, Problem
from builder.checker.repository import check_repository

__all__ = ["PlanTarget", "Problem", "check_repository"]

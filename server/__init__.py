"""The embedded Triton server: the same repository files the NGC container serves, without Docker.

    embedded           EmbeddedTriton: start, supervise, drain and stop the wheel's tritonserver
    installation       where the wheel put the server, the backends folder the kit assembles
    onnxruntime_backend  Triton's own C++ onnxruntime backend, built from its pinned sources
    supervisor         reloads a model whose stub died, drains ensembles first on a stop; one
                       standard-library file, also run as-is in NVIDIA's container
    admin_key          the library that keeps the admin key off tritonserver's command line
    python_models      what the kit's Python-backend models run inside Triton's stub: dynamic
                       batches in one call (triton_kit_batching), compiled PyTorch (triton_kit_compiled)

Imports: the standard library and the wheels it serves with; never builder,
loadtest or deploy (the import-linter contract in pyproject.toml).
"""

from server.embedded import EmbeddedTriton
from server.errors import BackendBuildError, ServerError
from server.installation import find_installation, prepare_backends

__all__ = ["BackendBuildError", "EmbeddedTriton", "ServerError", "find_installation", "prepare_backends"]

"""Turn PyTorch models declared in a spec file into a verified Triton model repository.

The build is a short pipeline of named steps, each its own module:

    spec (load + validate) -> source (instantiate) -> export (torch.onnx)
        -> verify (onnx checker, signature, PyTorch vs ONNX Runtime) -> render (config.pbtxt)
        -> check (parse back, repository rules) -> swap staging into place

`python -m builder --help` is the command line; `make build-repo` calls it.
"""

from __future__ import annotations

__all__ = ["__version__"]

# Part of every export fingerprint: bump when the builder's output for the same inputs changes.
__version__ = "0.1.0"

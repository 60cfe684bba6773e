"""Turn the models declared in a spec file into a verified Triton model repository.

The build is a short pipeline of named steps, each its own module:

    spec (load + validate, ensembles as graphs) -> per ONNX model: source -> export -> verify
        -> per variant of it: calibrate -> convert (INT8/FP16 ONNX, TensorRT plan) -> gate
        -> per Python model: assemble -> render (config.pbtxt for the target) -> check
        -> swap the staged repository into place

`python -m builder --help` is the command line; `make build-repo` and `make check-repo` call it.

Packages, importing one way down this list (import-linter's contracts in pyproject.toml):

    pipeline, render, python_model, cli   the build's orchestration (here)
    variants/   one module per reduced-precision or compiled format, calibration, accuracy gate
    export/     the user's module -> a verified ONNX file
    spec/       the spec file's models, validated
    checker/    the repository checker: Triton's load-time rules, for any repository

with what several of them use beside them: dtypes, errors, targets, progress, the build's
workspace and atomic swap (repository) and the input limits it writes (limits).
"""

from __future__ import annotations

__all__ = ["__version__"]

# Part of every export fingerprint: bump when the builder's output for the same inputs changes.
__version__ = "0.1.0"

"""Check step: the rules every model directory of a repository must follow to load in Triton.

Works on any repository, generated or hand-written (`make check-repo REPO=path`); the build runs
it on the staged repository before swapping it into place. Per model: the config parses with
Triton's schema and follows the server's rules (builder.checker.config_rules); every version has the
file its platform loads, and an ONNX file's inputs/outputs agree with the config. Across
models: every ensemble is a valid graph over the configs of the models it calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as pb

from builder.checker.config import parse_config
from builder.checker.config_rules import config_findings, target_findings
from builder.checker.ensemble import Ensemble, Member, Step, TensorType, ensemble_problems
from builder.checker.problem import PlanTarget, Problem
from builder.checker.python_autocomplete import auto_complete
from builder.checker.server_schema import DEFAULT_SERVER_VERSION, fields_newer_than
from builder.checker.version_files import model_files, versions
from builder.dtypes import by_onnx_elem_type
from builder.errors import RenderError
from builder.targets import Target
from clients.limits import FILENAME as LIMITS_FILENAME
from clients.limits import InputLimits

__all__ = ["PlanTarget", "Problem", "check_repository"]


def check_repository(
    root: Path,
    target: Target | None = None,
    plans: PlanTarget | None = None,
    *,
    strict_model_config: bool = False,
    server_version: str = DEFAULT_SERVER_VERSION,
) -> list[Problem]:
    """Every problem found in the model directories under `root`, plus the `target`'s rules and,
    for TensorRT plans, mismatches with the serving host stated in `plans`.

    `strict_model_config` is the server's flag of that name: false (Triton's default) lets the
    server complete a config from the model, which the check then does first. `server_version`
    is the Triton release serving the repository: fields newer than its schema are reported.
    Rules of the kit's own (build records, the target) are marked `kit_only`; the build-record
    rules apply only to configs the kit generated."""
    problems: list[Problem] = []
    configs: dict[str, tuple[Path, pb.ModelConfig]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = model_dir / "config.pbtxt"
        completes = not strict_model_config and _completable(model_dir)
        if not config_path.is_file() and completes:
            continue  # Triton writes the config from the model file; there is nothing to check it against
        if not config_path.is_file():
            problems.append(
                Problem(
                    model_dir,
                    "config.pbtxt",
                    "missing",
                    "model configuration is not provided"
                    + ("" if strict_model_config else ", and there is no model file Triton can write one from"),
                    "build the model or remove the directory",
                )
            )
            continue
        try:
            config = parse_config(config_path.read_text(), str(config_path))
        except RenderError as exc:
            problems.append(
                Problem(
                    config_path,
                    "(file)",
                    "unparsable",
                    str(exc).splitlines()[0],
                    "fix the syntax at the line:column given",
                )
            )
            continue
        _infer_backend(config, model_dir)
        if completes:
            problems.extend(
                Problem(config_path, "auto_complete_config", "", error, "fix the model's auto_complete_config")
                for error in _complete(config, model_dir)
            )
        configs[model_dir.name] = (config_path, config)
        unread = completes and config.platform in _READ_BY_SERVER_ONLY
        problems.extend(
            Problem(config_path, *finding)
            for finding in config_findings(config, model_dir.name, completed_by_server=unread)
        )
        problems.extend(Problem(config_path, *finding, kit_only=True) for finding in target_findings(config, target))
        problems.extend(
            Problem(
                config_path,
                path,
                "set",
                f"not in the model config schema of Triton {server_version}: that server cannot parse the config "
                f"(it says 'failed to read text proto'); the field arrived in Triton {added}",
                f"remove it, or serve with Triton {added} or later and check with --server-version {added}",
            )
            for path, added in fields_newer_than(config, server_version)
        )
        problems.extend(model_files(model_dir, config_path, config, plans or PlanTarget()))
    problems.extend(_ensembles(configs))
    problems.extend(_input_limits(root, configs))
    return problems


# What Triton infers a model's platform or backend from when its config names neither.
_BY_FILE = (
    ("model.onnx", "onnxruntime_onnx", ""),
    ("model.plan", "tensorrt_plan", ""),
    ("model.pt", "pytorch_libtorch", ""),
    ("model.savedmodel", "tensorflow_savedmodel", ""),
    ("model.graphdef", "tensorflow_graphdef", ""),
    ("model.py", "", "python"),
)


_READ_BY_SERVER_ONLY = {"tensorrt_plan", "tensorflow_savedmodel", "tensorflow_graphdef"}
"""Platforms whose model files auto-complete reads and the check cannot (no TensorRT, no TensorFlow here)."""


def _infer_backend(config: pb.ModelConfig, model_dir: Path) -> None:
    """Fill in the platform or backend Triton infers: from a `<name>.<backend>` directory, or
    from the model file in a version directory."""
    if config.platform or config.backend:
        return
    if "." in model_dir.name:
        config.backend = model_dir.name.rsplit(".", 1)[1]
        return
    for filename, platform, backend in _BY_FILE:
        if any((version / filename).exists() for version in versions(model_dir)):
            config.platform, config.backend = platform, backend
            return


def _completable(model_dir: Path) -> bool:
    """Whether Triton (auto-complete on) writes the config itself: the backend reads the model
    file (ONNX, TensorRT, TensorFlow), or the Python model's auto_complete_config does."""
    return any(
        (version / filename).exists()
        for version in versions(model_dir)
        for filename, platform, _ in _BY_FILE
        if platform != "pytorch_libtorch"
    )


def _complete(config: pb.ModelConfig, model_dir: Path) -> list[str]:
    """Fill in what auto-complete does before Triton validates the config; return the reasons it
    would stop instead. A Python model's auto_complete_config runs as the backend runs it; an
    ONNX model's tensors come from the graph."""
    if config.backend == "python":
        config.name = config.name or model_dir.name  # as the server hands it to the function
        scripts = [version / "model.py" for version in versions(model_dir) if (version / "model.py").is_file()]
        completed, error = auto_complete(config, scripts[-1], config.name) if scripts else (None, None)
        if error is not None:
            return [error]
        if completed is not None:
            config.CopyFrom(completed)
        return []
    onnx_files = [version / "model.onnx" for version in versions(model_dir) if (version / "model.onnx").is_file()]
    if config.platform != "onnxruntime_onnx" or not onnx_files:
        return []
    graph = onnx.load(str(onnx_files[0]), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    values = {v.name: v for v in [*graph.input, *graph.output] if v.name not in initializers}
    batched = config.max_batch_size > 0
    for tensors, graph_values in (
        (config.input, [v for v in graph.input if v.name not in initializers]),
        (config.output, list(graph.output)),
    ):
        if not tensors:
            for value in graph_values:
                tensors.add(name=value.name)
        for tensor in tensors:
            value = values.get(tensor.name)
            if value is None:
                continue
            if tensor.data_type == pb.TYPE_INVALID:
                dtype = by_onnx_elem_type(value.type.tensor_type.elem_type)
                if dtype is not None:
                    tensor.data_type = pb.DataType.Value(dtype.triton)
            if not tensor.dims and not tensor.HasField("reshape"):
                shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                tensor.dims.extend(shape[1:] if batched else shape)
    return []


def _ensembles(configs: dict[str, tuple[Path, pb.ModelConfig]]) -> Iterator[Problem]:
    members = {name: _member(name, config, config_path.parent) for name, (config_path, config) in configs.items()}
    for name, (config_path, config) in configs.items():
        if config.platform != "ensemble":
            continue
        ensemble = Ensemble(
            name=name,
            max_batch_size=config.max_batch_size,
            inputs=_tensor_types(config.input),
            outputs=_tensor_types(config.output),
            steps=[
                Step(s.model_name, dict(s.input_map), dict(s.output_map), s.model_version)
                for s in config.ensemble_scheduling.step
            ],
        )
        for line in ensemble_problems(ensemble, members):
            yield Problem(config_path, "ensemble_scheduling", "", line, "")


def _member(name: str, config: pb.ModelConfig, model_dir: Path) -> Member:
    return Member(
        name=name,
        max_batch_size=config.max_batch_size,
        inputs=_tensor_types(config.input),
        outputs=_tensor_types(config.output),
        optional_inputs=frozenset(t.name for t in config.input if t.optional),
        uses=tuple(s.model_name for s in config.ensemble_scheduling.step),
        versions=_loaded_versions(config, model_dir),
        decoupled=config.model_transaction_policy.decoupled,
    )


def _loaded_versions(config: pb.ModelConfig, model_dir: Path) -> frozenset[int]:
    """The versions Triton loads: its version policy (latest 1 by default) over the folders."""
    present = sorted(int(p.name) for p in versions(model_dir))
    policy = config.version_policy
    if policy.HasField("all"):
        return frozenset(present)
    if policy.HasField("specific"):
        return frozenset(v for v in policy.specific.versions if v in present)
    latest = policy.latest.num_versions if policy.HasField("latest") and policy.latest.num_versions else 1
    return frozenset(present[-latest:])


def _input_limits(root: Path, configs: dict[str, tuple[Path, pb.ModelConfig]]) -> Iterator[Problem]:
    """The clients' input limits (clients.limits) name models, inputs and ranks the configs have."""
    path = root / LIMITS_FILENAME
    if not path.is_file():
        return
    rebuild = "build the repository again (make build-repo), or delete the file"
    try:
        limits = InputLimits.load(path)
    except ValueError as exc:
        yield Problem(path, "(file)", "unreadable", str(exc), rebuild, kit_only=True)
        return
    for model, inputs in limits.models.items():
        if model not in configs:
            yield Problem(path, f"models.{model}", "present", "no model of the repository has this name", rebuild, True)
            continue
        declared = {t.name: list(t.dims) for t in configs[model][1].input}
        for name, limit in inputs.items():
            where = f"models.{model}.{name}"
            if name not in declared:
                rule = f"model {model!r} has no input {name!r}; its inputs are {sorted(declared)}"
                yield Problem(path, where, "present", rule, rebuild, True)
                continue
            for key, bound in (("min_dims", limit.min_dims), ("max_dims", limit.max_dims)):
                dims = declared[name]
                if bound is None:
                    continue
                if len(bound) != len(dims) or any(d != -1 and d != b for d, b in zip(dims, bound, strict=False)):
                    rule = f"does not fit the config's dims {dims} (a value per dim, equal to the fixed ones)"
                    yield Problem(path, f"{where}.{key}", str(list(bound)), rule, rebuild, True)


def _tensor_types(items: Sequence[pb.ModelInput] | Sequence[pb.ModelOutput]) -> dict[str, TensorType]:
    return {t.name: TensorType(pb.DataType.Name(t.data_type), tuple(t.dims)) for t in items}

"""Check step: the rules every model directory of a repository must follow to load in Triton.

Works on any repository, generated or hand-written (`make check-repo REPO=path`); the build runs
it on the staged repository before swapping it into place. Per model: the config parses with
Triton's schema and follows the server's rules (builder.config_rules); every version has the
file its platform loads, and an ONNX file's inputs/outputs agree with the config. Across
models: every ensemble is a valid graph over the configs of the models it calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as pb

from builder.config_rules import config_findings, target_findings
from builder.dtypes import by_onnx_elem_type
from builder.ensemble import Ensemble, Member, Step, TensorType, ensemble_problems
from builder.errors import RenderError
from builder.fingerprint import BUILD_RECORD, read_record
from builder.profiles import ShapeProfile, profile_problems
from builder.python_autocomplete import auto_complete
from builder.render import FORMATS, parse_config
from builder.server_schema import DEFAULT_SERVER_VERSION, fields_newer_than
from builder.signature import check_signature
from builder.targets import Target
from clients.limits import FILENAME as LIMITS_FILENAME
from clients.limits import InputLimits
from server.runtime.triton_kit_compiled import PACKAGE, PROGRAM

__all__ = ["PlanTarget", "Problem", "check_repository"]

_FILENAME_BY_PLATFORM = {info.platform: info.filename for info in FORMATS.values() if info.platform}
_FILENAME_BY_BACKEND = {"python": "model.py", "onnxruntime": "model.onnx"}


@dataclass(frozen=True)
class Problem:
    """One rule a repository breaks: where, which field and value, the rule, and the fix."""

    file: Path
    field: str
    value: str
    rule: str
    fix: str
    kit_only: bool = False
    """A rule of the kit's (a build record, a deployment target), not one the server applies."""

    def __str__(self) -> str:
        where = f"{self.field} = {self.value}" if self.value else self.field
        label = "[kit rule] " if self.kit_only else ""
        return f"{self.file}: {where}: {label}{self.rule}" + (f"; fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class PlanTarget:
    """The serving host compiled engines must fit: its TensorRT version (e.g. 10.5, as in the
    Triton 24.10 image) and GPU compute capability (e.g. 9.0), None checking nothing for that
    field; and the torch serving AOTInductor packages (None: the one installed here)."""

    tensorrt_version: str | None = None
    compute_capability: str | None = None
    torch_version: str | None = None


@dataclass(frozen=True)
class _ConfigTensor:
    name: str
    dtype: str
    dims: Sequence[int]


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
        problems.extend(_model_files(model_dir, config_path, config, plans or PlanTarget()))
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


def _versions(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def _infer_backend(config: pb.ModelConfig, model_dir: Path) -> None:
    """Fill in the platform or backend Triton infers: from a `<name>.<backend>` directory, or
    from the model file in a version directory."""
    if config.platform or config.backend:
        return
    if "." in model_dir.name:
        config.backend = model_dir.name.rsplit(".", 1)[1]
        return
    for filename, platform, backend in _BY_FILE:
        if any((version / filename).exists() for version in _versions(model_dir)):
            config.platform, config.backend = platform, backend
            return


def _completable(model_dir: Path) -> bool:
    """Whether Triton (auto-complete on) writes the config itself: the backend reads the model
    file (ONNX, TensorRT, TensorFlow), or the Python model's auto_complete_config does."""
    return any(
        (version / filename).exists()
        for version in _versions(model_dir)
        for filename, platform, _ in _BY_FILE
        if platform != "pytorch_libtorch"
    )


def _complete(config: pb.ModelConfig, model_dir: Path) -> list[str]:
    """Fill in what auto-complete does before Triton validates the config; return the reasons it
    would stop instead. A Python model's auto_complete_config runs as the backend runs it; an
    ONNX model's tensors come from the graph."""
    if config.backend == "python":
        config.name = config.name or model_dir.name  # as the server hands it to the function
        scripts = [version / "model.py" for version in _versions(model_dir) if (version / "model.py").is_file()]
        completed, error = auto_complete(config, scripts[-1], config.name) if scripts else (None, None)
        if error is not None:
            return [error]
        if completed is not None:
            config.CopyFrom(completed)
        return []
    onnx_files = [version / "model.onnx" for version in _versions(model_dir) if (version / "model.onnx").is_file()]
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


_KIT_HEADER = "# Generated by the kit's builder"


def _kit_built(config_path: Path) -> bool:
    """Whether the kit's builder wrote this config (and so a build record beside each plan)."""
    with config_path.open() as config:
        return any(line.startswith(_KIT_HEADER) for line, _ in zip(config, range(3), strict=False))


def _model_files(model_dir: Path, config_path: Path, config: pb.ModelConfig, plans: PlanTarget) -> Iterator[Problem]:
    versions = _versions(model_dir)
    if not versions:
        yield Problem(
            model_dir, "versions", "none", "Triton needs at least one numeric version directory", f"add {model_dir}/1/"
        )
    present = {int(p.name) for p in versions}
    for version in config.version_policy.specific.versions:
        if version not in present:
            yield Problem(
                config_path,
                "version_policy.specific",
                str(version),
                "names a version with no directory",
                f"add {model_dir}/{version}/ or drop it from the policy",
            )
    filename = (
        config.default_model_filename
        or _FILENAME_BY_PLATFORM.get(config.platform)
        or _FILENAME_BY_BACKEND.get(config.backend)
    )
    if filename is None:
        if not config.platform and not config.backend and not any((v / "model.onnx").exists() for v in versions):
            # Triton fills in the platform from a model.onnx file; here there is none to go by.
            yield Problem(
                config_path,
                "platform",
                "(none)",
                "must specify 'platform' or 'backend'",
                'set platform (e.g. "onnxruntime_onnx") or backend (e.g. "python")',
            )
        return  # ensembles, and backends whose files this check does not know
    for version in versions:
        model_file = version / filename
        if not model_file.exists():
            yield Problem(
                model_file,
                "model file",
                "missing",
                f"{config.platform or config.backend} loads {filename}",
                "build the version again",
            )
        elif filename.endswith(".onnx"):
            yield from _onnx_signature(config, config_path, model_file)
        elif filename.endswith(".plan"):
            yield from _plan_record(config, config_path, version, plans)
        if (version / PACKAGE).exists() or (version / PROGRAM).exists():
            yield from _package_record(version, plans)


def _package_record(version: Path, plans: PlanTarget) -> Iterator[Problem]:
    """An AOTInductor package loads only in the torch that compiled it, on its kind of device."""
    record_path = version / BUILD_RECORD
    compiled = read_record(version).get("compiled")
    if not isinstance(compiled, dict):
        yield Problem(
            record_path,
            "compiled",
            "missing",
            "a compiled package without a build record cannot be matched to a torch version or device",
            "build it with make build-repo, which records them",
            kit_only=True,
        )
        return
    serving = plans.torch_version or _installed_torch()
    if compiled.get("torch") != serving:
        yield Problem(
            record_path,
            "compiled.torch",
            str(compiled.get("torch")),
            f"the package was compiled by torch {compiled.get('torch')}; torch {serving} serves it and would refuse it",
            "rebuild it (make build-repo) with the serving torch",
        )
    capability = plans.compute_capability
    if compiled.get("device") == "cuda" and capability is not None and compiled.get("compute_capability") != capability:
        yield Problem(
            record_path,
            "compiled.compute_capability",
            str(compiled.get("compute_capability")),
            f"the package was compiled for a GPU of compute capability {compiled.get('compute_capability')} "
            f"({compiled.get('gpu')}); the serving GPU has {capability}",
            "rebuild it on a GPU of the serving host's kind",
        )


def _installed_torch() -> str:
    """torch.__version__ (with its local part, e.g. +cu130, which the runtime compares too); the
    package metadata leaves the local part out on some builds."""
    import torch  # only where a compiled package is checked: slow to import

    return str(torch.__version__)


def _plan_record(config: pb.ModelConfig, config_path: Path, version: Path, plans: PlanTarget) -> Iterator[Problem]:
    """A plan is only known through its build record: what built it, for which GPU, with which
    profiles (reading the plan itself would need TensorRT and that very GPU)."""
    record_path = version / BUILD_RECORD
    engine = read_record(version).get("tensorrt")
    if not isinstance(engine, dict) and not _kit_built(config_path):
        return  # a plan the kit did not build: nothing records what built it, and nothing has to
    if not isinstance(engine, dict):
        yield Problem(
            record_path,
            "tensorrt",
            "missing",
            "a plan without a build record cannot be matched to a TensorRT version, GPU or profile",
            "build it with make build-repo, which records them",
            kit_only=True,
        )
        return
    recorded_version = str(engine.get("version"))
    stated = plans.tensorrt_version
    if stated is not None and recorded_version.split(".")[: len(stated.split("."))] != stated.split("."):
        yield Problem(
            record_path,
            "tensorrt.version",
            recorded_version,
            f"the plan was built with TensorRT {recorded_version}; the serving host has {stated}, which refuses it",
            "rebuild the plan with the serving host's TensorRT version (inside its NGC container)",
        )
    capability = plans.compute_capability
    if capability is not None and str(engine.get("compute_capability")) != capability:
        yield Problem(
            record_path,
            "tensorrt.compute_capability",
            str(engine.get("compute_capability")),
            f"the plan was built for a GPU of compute capability {engine.get('compute_capability')} "
            f"({engine.get('gpu')}); the serving GPU has {capability}",
            "rebuild the plan on a GPU of the serving host's kind",
        )
    profiles = [ShapeProfile.from_record(p) for p in engine.get("profiles", [])]
    dims = {tensor.name: list(tensor.dims) for tensor in config.input}
    for rule in profile_problems(config.max_batch_size, dims, profiles):
        yield Problem(config_path, "max_batch_size / dims", "", rule, "make the config and the plan's profile agree")


def _onnx_signature(config: pb.ModelConfig, config_path: Path, model_file: Path) -> Iterator[Problem]:
    proto = onnx.load(str(model_file), load_external_data=False)
    # As Triton's onnxruntime backend reads the graph: ONNX Runtime merges what it infers, from the
    # annotations of intermediate values too, into the declared outputs (an exporter's traced size
    # can pin a dim the output leaves symbolic), and refuses a config that disagrees with that.
    with contextlib.suppress(onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        proto = onnx.shape_inference.infer_shapes(proto)
    model = config.name or config_path.parent.name
    for line in check_signature(proto, config.max_batch_size, _tensors(config.input), _tensors(config.output), model):
        subject, _, rule = line.partition(": ")
        yield Problem(config_path, subject, "", rule, f"make the config agree with {model_file}")


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
    present = sorted(int(p.name) for p in _versions(model_dir))
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


def _tensors(items: Sequence[pb.ModelInput] | Sequence[pb.ModelOutput]) -> list[_ConfigTensor]:
    return [_ConfigTensor(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in items]

"""Check step: rules every model directory of a repository must follow to load in Triton.

Works on any repository, generated or hand-written; the build runs it on the staged repository
before swapping it into place. Each problem names the file, the field, the value, the rule and
the fix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2

from builder.errors import RenderError
from builder.render import FORMATS, parse_config
from builder.signature import check_signature

__all__ = ["Problem", "check_repository"]

_FILENAME_BY_PLATFORM = {info.platform: info.filename for info in FORMATS.values()}


@dataclass(frozen=True)
class Problem:
    """One rule a repository breaks."""

    file: Path
    field: str
    value: str
    rule: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field} = {self.value}: {self.rule}; {self.fix}"


@dataclass(frozen=True)
class _ConfigTensor:
    name: str
    dtype: str
    dims: Sequence[int]


def check_repository(root: Path) -> list[Problem]:
    """Every problem found in the model directories under `root`."""
    problems: list[Problem] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problems.extend(_check_model(model_dir))
    return problems


def _check_model(model_dir: Path) -> Iterator[Problem]:
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        yield Problem(
            model_dir,
            "config.pbtxt",
            "missing",
            "every model directory needs a config",
            "build the model or remove the directory",
        )
        return
    try:
        config = parse_config(config_path.read_text(), str(config_path))
    except RenderError as exc:
        yield Problem(
            config_path, "(file)", "unparsable", str(exc).splitlines()[0], "fix the syntax at the line:column given"
        )
        return
    if config.name and config.name != model_dir.name:
        yield Problem(
            config_path,
            "name",
            repr(config.name),
            f"must equal the directory name {model_dir.name!r}",
            f"set name: {model_dir.name!r}",
        )
    filename = config.default_model_filename or _FILENAME_BY_PLATFORM.get(config.platform)
    if filename is None:
        return  # a platform this check does not know the files of (python, ensemble, ...)
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))
    if not versions:
        yield Problem(
            model_dir,
            "versions",
            "none",
            "Triton needs at least one numeric version directory",
            f"add {model_dir}/1/{filename}",
        )
    for version in versions:
        model_file = version / filename
        if not model_file.exists():
            yield Problem(
                model_file,
                "model file",
                "missing",
                f"platform {config.platform} loads {filename}",
                "build the version again",
            )
        elif config.platform == "onnxruntime_onnx":
            yield from _check_onnx(config, config_path, model_file)


def _check_onnx(config: model_config_pb2.ModelConfig, config_path: Path, model_file: Path) -> Iterator[Problem]:
    def tensors(
        items: Sequence[model_config_pb2.ModelInput] | Sequence[model_config_pb2.ModelOutput],
    ) -> list[_ConfigTensor]:
        return [_ConfigTensor(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in items]

    proto = onnx.load(str(model_file), load_external_data=False)
    for line in check_signature(proto, config.max_batch_size, tensors(config.input), tensors(config.output)):
        yield Problem(
            config_path,
            "input/output",
            line.split(":")[0],
            line.partition(": ")[2],
            f"make the config agree with {model_file}",
        )

"""The build: spec -> (export -> verify) per version -> render -> check -> swap into place.

Every model is attempted even after another failed, so one run reports every problem; the
repository is replaced only when all of them succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from builder.checker import check_repository
from builder.checker.config import FORMATS
from builder.checker.records import BUILD_RECORD, read_record
from builder.errors import BuildError, RepositoryError
from builder.export.fingerprint import Fingerprint, fingerprint, sha256_file
from builder.export.padding import has_convolutions, pad_batch
from builder.export.source import instantiate
from builder.export.to_onnx import export_onnx
from builder.export.verify import VerificationReport, verify_onnx
from builder.limits import input_limits
from builder.progress import heartbeat
from builder.python_model import assemble_python_model
from builder.render import label_filename, render_config
from builder.repository import Workspace, link_tree, swap_into_place
from builder.spec import (
    AnyModelSpec,
    EnsembleSpec,
    OnnxModelSpec,
    PythonModelSpec,
    Spec,
    VariantSpec,
    VersionSpec,
    load_spec,
    versions_of,
)
from builder.targets import Target, detect_target
from builder.variants.build import BaseVersion, Skipped, build_variant
from builder.variants.calibration import load_calibration
from clients.limits import FILENAME as LIMITS_FILENAME

__all__ = ["BUILD_RECORD", "BuildSummary", "VersionResult", "build_repository"]

Status = Literal["built", "cached", "failed", "skipped"]


@dataclass(frozen=True)
class VersionResult:
    """What happened to one version of one model."""

    model: str
    version: int
    kind: str
    status: Status
    seconds: float
    detail: str


@dataclass
class BuildSummary:
    """Per-version results of a build, and the model directories it dropped."""

    repository: Path
    target: Target = "cpu"
    results: list[VersionResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A fixed-width table of the results, for the terminal."""
        rows = [("model", "version", "kind", "status", "time", "detail")]
        rows += [(r.model, str(r.version), r.kind, r.status, f"{r.seconds:.1f}s", r.detail) for r in self.results]
        rows += [(name, "-", "-", "removed", "-", "no longer in the spec") for name in self.removed]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)) + "  " + row[5]
            for row in rows
        )


def build_repository(
    spec_path: Path,
    repository: Path,
    *,
    force: bool = False,
    target: Target | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> BuildSummary:
    """Build every model of the spec into `repository`.

    Args:
        spec_path: the spec file (models.yaml).
        repository: the Triton model repository to create or replace.
        force: export every version again even when its fingerprint is unchanged.
        target: render configs for `cpu` or `gpu` hosts; None picks the one that fits this machine.
        log: where progress lines go.

    Raises:
        BuildError: a subclass naming what failed; `repository` is then left exactly as it was.
    """
    spec = load_spec(spec_path)
    if target is None:
        target, reason = detect_target()
        log(f"target: {target} ({reason}; --target cpu|gpu to choose)")
    else:
        log(f"target: {target}")
    summary = BuildSummary(repository=repository, target=target)
    failures: list[str] = []
    try:
        with _importable(spec.path.parent), Workspace(repository) as workspace:
            for model in spec.models:
                failures.extend(_build_model(spec, model, workspace, force, target, summary, log))
            for ensemble in (m for m in spec.models if isinstance(m, EnsembleSpec)):
                # After every model, so each variant knows whether the models it runs were built or skipped.
                failures.extend(_build_ensemble_variants(spec, ensemble, workspace, target, summary, log))
            if failures:
                raise BuildError(f"{len(failures)} problem(s); {repository} was left as it was:", problems=failures)
            built = (entry.name for entry in workspace.staging.iterdir() if entry.is_dir())
            input_limits(spec.models, built).write(workspace.staging / LIMITS_FILENAME)
            problems = check_repository(workspace.staging, target)
            if problems:
                raise RepositoryError(
                    f"the staged repository breaks {len(problems)} rule(s); {repository} was left as it was:",
                    problems=[str(p) for p in problems],
                )
            summary.removed = _carry_over(workspace.repository, workspace.staging, spec.served_names())
            swap_into_place(workspace.staging, workspace.repository)
    finally:
        if summary.results:
            log(summary.table())
    return summary


def _build_model(
    spec: Spec,
    model: AnyModelSpec,
    workspace: Workspace,
    force: bool,
    target: Target,
    summary: BuildSummary,
    log: Callable[[str], None],
) -> Iterator[str]:
    ok = True
    for version in versions_of(model):
        started = time.perf_counter()
        try:
            status, detail = _build_version(spec, model, version, workspace, force, target, log)
        except BuildError as exc:
            ok = False
            elapsed = time.perf_counter() - started
            summary.results.append(
                VersionResult(model.name, version, model.kind, "failed", elapsed, type(exc).__name__)
            )
            log(f"{model.name} v{version}: failed")
            yield str(exc)
            continue
        elapsed = time.perf_counter() - started
        summary.results.append(VersionResult(model.name, version, model.kind, status, elapsed, detail))
    if not ok:
        return
    yield from _write_config(spec, model, workspace, target)
    if isinstance(model, OnnxModelSpec) and model.variants:
        yield from _build_variants(spec, model, workspace, force, target, summary, log)


def _build_variants(
    spec: Spec,
    model: OnnxModelSpec,
    workspace: Workspace,
    force: bool,
    target: Target,
    summary: BuildSummary,
    log: Callable[[str], None],
) -> Iterator[str]:
    started = time.perf_counter()
    try:
        data = load_calibration(spec, model)
    except BuildError as exc:
        for variant in model.variants:
            summary.results.append(
                VersionResult(variant.name, 0, "variant", "failed", time.perf_counter() - started, type(exc).__name__)
            )
        yield str(exc)
        return
    counts = data.record()
    log(f"{model.name}: calibration data {data.description}: {counts['samples']} samples, {counts['holdout']} held out")
    bases = [
        BaseVersion(model, version, workspace.staging / model.name / str(version.version), data)
        for version in model.versions
    ]
    for variant in model.variants:
        served = model.served_variant(variant)
        kind = f"{variant.format} {variant.precision}"
        if target not in variant.targets:
            for base in bases:
                summary.results.append(
                    VersionResult(
                        variant.name,
                        base.version.version,
                        kind,
                        "skipped",
                        0.0,
                        f"for the {' and '.join(variant.targets)} target only",
                    )
                )
            log(f"{variant.name}: not built for the {target} target (its targets: {', '.join(variant.targets)})")
            continue
        ok = True
        for base in bases:
            started = time.perf_counter()
            try:
                with heartbeat(log, f"{variant.name} v{base.version.version}"):
                    status, detail = build_variant(base, variant, workspace, force=force, target=target, log=log)
            except Skipped as skipped:
                ok = False
                summary.results.append(
                    VersionResult(
                        variant.name, base.version.version, kind, "skipped", 0.0, f"optional, skipped: {skipped}"
                    )
                )
                log(f"warning: {variant.name} v{base.version.version} skipped: {skipped}")
                continue
            except BuildError as exc:
                ok = False
                summary.results.append(
                    VersionResult(
                        variant.name,
                        base.version.version,
                        kind,
                        "failed",
                        time.perf_counter() - started,
                        type(exc).__name__,
                    )
                )
                log(f"{variant.name} v{base.version.version}: failed")
                yield str(exc)
                continue
            summary.results.append(
                VersionResult(variant.name, base.version.version, kind, status, time.perf_counter() - started, detail)
            )
        if ok:
            yield from _write_config(spec, served, workspace, target, variant)
        else:
            shutil.rmtree(workspace.staging / variant.name, ignore_errors=True)


def _build_ensemble_variants(
    spec: Spec,
    ensemble: EnsembleSpec,
    workspace: Workspace,
    target: Target,
    summary: BuildSummary,
    log: Callable[[str], None],
) -> Iterator[str]:
    for variant in ensemble.variants:
        served = ensemble.served_variant(variant)
        missing = sorted(name for name in variant.models.values() if not (workspace.staging / name).is_dir())
        if target not in variant.targets:
            why = f"for the {' and '.join(variant.targets)} target only"
        elif missing:
            why = f"runs {', '.join(missing)}, not built for this target"
        else:
            (workspace.staging / served.name / str(served.version)).mkdir(parents=True)
            summary.results.append(
                VersionResult(
                    served.name,
                    served.version,
                    "ensemble",
                    "built",
                    0.0,
                    f"{ensemble.name} with " + ", ".join(f"{a} -> {b}" for a, b in variant.models.items()),
                )
            )
            yield from _write_config(spec, served, workspace, target)
            continue
        summary.results.append(VersionResult(served.name, served.version, "ensemble", "skipped", 0.0, why))
        log(f"{served.name}: not built ({why})")


def _write_config(
    spec: Spec, model: AnyModelSpec, workspace: Workspace, target: Target, variant: VariantSpec | None = None
) -> Iterator[str]:
    model_dir = workspace.staging / model.name
    try:
        text = render_config(model, spec.path.name, target, variant)
    except BuildError as exc:
        yield str(exc)
        return
    (model_dir / "config.pbtxt").write_text(text)
    for output in model.outputs:
        if output.labels is not None:
            shutil.copy2(output.labels, model_dir / str(label_filename(output)))


def _build_version(
    spec: Spec,
    model: AnyModelSpec,
    version: int,
    workspace: Workspace,
    force: bool,
    target: Target,
    log: Callable[[str], None],
) -> tuple[Status, str]:
    staged = workspace.staging / model.name / str(version)
    if isinstance(model, EnsembleSpec):
        staged.mkdir(parents=True)  # Triton wants a version directory, even an empty one
        return "built", f"{len(model.steps)} steps: " + " -> ".join(s.model for s in model.steps)
    if isinstance(model, PythonModelSpec):
        detail = assemble_python_model(model, spec.path.name, staged, target)
        log(f"{model.name} v{version}: assembled")
        return "built", detail
    return _build_onnx_version(
        spec, model, next(v for v in model.versions if v.version == version), workspace, force, target, log
    )


def _build_onnx_version(
    spec: Spec,
    model: OnnxModelSpec,
    version: VersionSpec,
    workspace: Workspace,
    force: bool,
    target: Target,
    log: Callable[[str], None],
) -> tuple[Status, str]:
    filename = FORMATS["onnx"].filename
    staged = workspace.staging / model.name / str(version.version)
    previous = workspace.repository / model.name / str(version.version)
    pads = model.gpu.pad_batch if target == "gpu" and model.max_batch_size > 0 else False
    current = fingerprint(model, version, spec.path.parent, pads)
    if not force and read_record(previous).get("fingerprint") == current.digest and (previous / filename).is_file():
        link_tree(previous, staged)
        log(f"{model.name} v{version.version}: unchanged, reused")
        return "cached", "inputs unchanged since the last build"
    log(f"{model.name} v{version.version}: loading {model.source}")
    work = workspace.work_dir(model.name, version.version)
    module = instantiate(model, version)
    label = f"{model.name} v{version.version}"
    log(f"{label}: exporting")
    started = time.perf_counter()
    with heartbeat(log, f"{label}: export"):
        export_onnx(module, model, work / filename)
    exported = time.perf_counter()
    log(f"{label}: verifying")
    with heartbeat(log, f"{label}: verification"):
        report = verify_onnx(module, model, work / filename)
    if pads is True or (pads == "auto" and has_convolutions(work / filename)):
        pad_batch(work / filename, model.max_batch_size)
        with heartbeat(log, f"{label}: verification of the padded graph"):
            report = verify_onnx(module, model, work / filename)
        report.notes.append(f"every batch runs at {model.max_batch_size} inside the graph (gpu.pad_batch)")
    verified = time.perf_counter()
    for note in report.notes:
        log(f"{model.name} v{version.version}: {note}")
    _write_record(work / BUILD_RECORD, model, version, current, report, exported - started, verified - exported)
    staged.parent.mkdir(parents=True, exist_ok=True)
    work.rename(staged)
    with contextlib.suppress(OSError):  # the model's work directory, once its last version moved out
        work.parent.rmdir()
    worst = max((o.max_abs_error for o in report.outputs.values()), default=0.0)
    detail = f"export {exported - started:.1f}s, verify {verified - exported:.1f}s: {len(report.cases)} cases, max abs error {worst:.2g}"
    log(f"{model.name} v{version.version}: built ({detail})")
    return "built", detail


def _write_record(
    path: Path,
    model: OnnxModelSpec,
    version: VersionSpec,
    current: Fingerprint,
    report: VerificationReport,
    export_seconds: float,
    verify_seconds: float,
) -> None:
    """The build record next to the artifact: what it was built from and how well it verified."""
    record = {
        "model": model.name,
        "version": version.version,
        "format": "onnx",
        "artifact_sha256": sha256_file(path.parent / FORMATS["onnx"].filename),
        "spec_entry_sha256": hashlib.sha256(model.model_dump_json().encode()).hexdigest(),
        "fingerprint": current.digest,
        "built_from": current.inputs,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": {"export": round(export_seconds, 3), "verify": round(verify_seconds, 3)},
        "verification": {
            "cases": report.cases,
            "notes": report.notes,
            "outputs": {
                spec.name: {
                    "atol": spec.atol,
                    "rtol": spec.rtol,
                    "max_abs_error": report.outputs[spec.name].max_abs_error,
                    "max_rel_error": report.outputs[spec.name].max_rel_error,
                }
                for spec in model.outputs
            },
        },
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def _carry_over(repository: Path, staging: Path, models: set[str]) -> list[str]:
    """Keep the repository's own top-level files (its README) but those the build wrote anew;
    return model dirs being dropped."""
    if not repository.is_dir():
        return []
    removed = []
    for entry in sorted(repository.iterdir()):
        if entry.is_file() and not (staging / entry.name).exists():
            shutil.copy2(entry, staging / entry.name)
        elif entry.is_dir() and entry.name not in models:
            removed.append(entry.name)
    return removed


@contextmanager
def _importable(directory: Path) -> Iterator[None]:
    """Let `module:callable` sources resolve relative to the spec file's directory."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)

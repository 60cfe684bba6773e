"""`python -m loadtest tune` (`make tune`): the serving options under which one model sustains the
highest request rate within a p95 latency budget, what Model Analyzer searches for.

Each candidate is the spec's model with some serving options changed (instance count, dynamic
batching's queue delay and preferred sizes, ONNX Runtime's intra-op threads), rendered by the
builder and loaded over the repository API with Triton's config override: the repository's files
stay as built. After a short unmeasured warm-up, the open-loop generator measures it at rising
rates, x1.5 while the budget holds (coarse; the first rate twice before giving up on it), then by
bisection between the last rate held and the first missed (fine); its result is
the highest rate held. The search starts from the spec's own options (the baseline, measured in
the same run) and changes one option at a time (instances and threads together: `moves`),
keeping each improvement (coordinate descent),
until every option was tried or the time budget is spent. Each measured candidate is appended to
`<out>/tune.jsonl` at once: a search run again with the same folder resumes where it stopped.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from google.protobuf import json_format

from builder.checker.config import parse_config
from builder.render import render_config
from builder.spec import OnnxModelSpec, load_spec
from clients import ClientError, TritonClient
from loadtest.openloop import run_open_loop
from loadtest.payloads import spec_payload
from loadtest.report import HELD, build_summary
from loadtest.settings import Settings

__all__ = ["Candidate", "TuneError", "model_server", "spec_patch", "tune"]


def moves(cores: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """What the search tries, option by option, in order. Instances and ONNX Runtime's intra-op
    threads compete for the same cores, so they move together: the pairs that fill the cores
    exactly first, more instances before more threads (an instance that waits on its own
    batch leaves the cores to another)."""
    threads = [t for t in (1, 2, 4, 8, 16) if t <= cores]
    pairs = [(i, t) for i in (1, 2, 3, 4) for t in threads if cores / 2 <= i * t <= cores * 1.5]
    pairs.sort(key=lambda pair: (abs(pair[0] * pair[1] - cores), -pair[0]))
    return [
        ("instances x threads", [{"instances": i, "intra_op_threads": t} for i, t in pairs]),
        ("max_queue_delay_us", [{"max_queue_delay_us": us} for us in (0, 500, 2000, 5000)]),
        ("preferred_batch_size", [{"preferred_batch_size": sizes} for sizes in ((), (4, 8), (8, 16))]),
    ]


GROWTH = 1.5
BISECTIONS = 2
WARMUP_S = 2.0
CONFIRMATIONS = 2  # further measurements each of the baseline and the winner
CONFIRMED = 1.05  # the winner's median rate over the baseline's that counts as better


class TuneError(Exception):
    """The search cannot run: the model, the spec or the server is not what it needs."""


@dataclass(frozen=True)
class Candidate:
    """One set of serving options for the model."""

    instances: int
    max_queue_delay_us: int
    intra_op_threads: int | None
    preferred_batch_size: tuple[int, ...]

    @property
    def label(self) -> str:
        preferred = "x".join(map(str, self.preferred_batch_size)) or "-"
        return (
            f"instances={self.instances} delay={self.max_queue_delay_us}us "
            f"threads={self.intra_op_threads or 'default'} preferred={preferred}"
        )

    @classmethod
    def of(cls, model: OnnxModelSpec) -> Candidate:
        """The options the spec gives the model now."""
        batching = model.dynamic_batching
        return cls(
            instances=model.instance_group[0].count if model.instance_group else 1,
            max_queue_delay_us=batching.max_queue_delay_microseconds if batching else 0,
            intra_op_threads=model.cpu.intra_op_thread_count,
            preferred_batch_size=tuple(batching.preferred_batch_size) if batching else (),
        )

    def apply(self, model: OnnxModelSpec) -> OnnxModelSpec:
        """The model with these options (validated as the spec file would be)."""
        data = model.model_dump(mode="python")
        groups = list(data.get("instance_group") or [{}])
        groups[0] = {**groups[0], "count": self.instances}
        batching = {**(data.get("dynamic_batching") or {})}
        batching["max_queue_delay_microseconds"] = self.max_queue_delay_us
        batching["preferred_batch_size"] = tuple(s for s in self.preferred_batch_size if s <= model.max_batch_size)
        data.update(
            instance_group=groups,
            dynamic_batching=batching,
            cpu={**data["cpu"], "intra_op_thread_count": self.intra_op_threads},
        )
        return OnnxModelSpec.model_validate(data)


@dataclass
class Measured:
    """A candidate's result: the highest rate held within the budget, and every trial."""

    label: str
    candidate: dict[str, Any]
    sustained_rps: float
    p95_ms: float | None
    trials: list[dict[str, Any]]
    seconds: float


def tune(
    spec_path: Path,
    model_name: str,
    p95_ms: float,
    out: Path,
    *,
    url: str | None = None,
    repository: Path = Path("model_repository"),
    budget_s: float = 900.0,
    step_seconds: float = 3.0,
    start_rps: float = 50.0,
    log: Any = print,
    write: bool = False,
    confirmations: int = CONFIRMATIONS,
) -> dict[str, Any]:
    """Search `model_name`'s serving options; write the report to `out` (and with `write`, the
    winner's options into the spec file); return the report's summary.

    Raises:
        TuneError: the model is not an ONNX model of the spec, or no server could serve it.
    """
    spec = load_spec(spec_path)
    model = next((m for m in spec.models if m.name == model_name), None)
    if not isinstance(model, OnnxModelSpec) or not model.max_batch_size:
        raise TuneError(
            f"model {model_name!r}: the search needs an ONNX model of {spec_path} that batches "
            f"(max_batch_size > 0); it has {', '.join(m.name for m in spec.models if isinstance(m, OnnxModelSpec))}"
        )
    payload = spec_payload(spec_path, model_name, batch=1)
    assert payload is not None  # an ONNX model of the spec
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    deadline = time.monotonic() + budget_s
    with model_server(url, repository, model_name) as server_url, TritonClient(server_url, timeout_s=60) as client:

        def measure(candidate: Candidate, start: float, *, again: bool = False, bounded: bool = True) -> Measured:
            if candidate.label in done and not again:
                log(f"  {candidate.label}: measured before, {done[candidate.label].sustained_rps:g} req/s")
                return done[candidate.label]
            config = _config_json(candidate.apply(model), spec_path.name)
            try:
                client.load_model(model_name, config=config)
            except ClientError as exc:
                raise TuneError(f"{candidate.label}: the server did not load it: {exc}") from exc
            # A freshly loaded model starts its stubs and sessions on the first requests: warm it up
            # unmeasured, or the first rate offered is judged on that start.
            _one_step(server_url, model_name, payload, start, WARMUP_S)
            # The baseline and the confirmations are measured in full; candidates within the budget.
            until = deadline if bounded and not again else time.monotonic() + 120
            result = _sustained(server_url, model_name, payload, p95_ms, start, step_seconds, until, candidate, log)
            if not result.trials:  # the budget ran out in its warm-up: not measured, not recorded
                log(f"  {candidate.label}: the time budget ran out before its first rate; not recorded")
            elif not again:
                done[candidate.label] = result
                with (out / "tune.jsonl").open("a") as handle:
                    handle.write(json.dumps(asdict(result)) + "\n")
            return result

        baseline = Candidate.of(model)
        log(f"baseline (the spec's options): {baseline.label}")
        best, best_result = baseline, measure(baseline, start_rps, bounded=False)
        log(f"  -> {best_result.sustained_rps:g} req/s within p95 {p95_ms:g} ms")
        candidates = (change for _option, changes in moves(len(os.sched_getaffinity(0))) for change in changes)
        for change in candidates:
            candidate = Candidate(**{**asdict(best), **change})
            if candidate == best:
                continue
            # A candidate that cannot be warmed up and offered one rate in time is left for the next
            # run; one measured by an earlier run costs no time.
            if candidate.label not in done and time.monotonic() + WARMUP_S + step_seconds > deadline:
                log("time budget spent: the search stops here (run it again with the same --out to go on)")
                break
            log(f"trying {candidate.label}")
            result = measure(candidate, max(start_rps, best_result.sustained_rps / 2))
            log(f"  -> {result.sustained_rps:g} req/s")
            if result.sustained_rps > best_result.sustained_rps:
                best, best_result = candidate, result
        # One measurement per candidate picks a winner; a shared 2-core machine moves a rate by
        # a quarter from run to run. The baseline and the winner are measured again, in turns,
        # and the winner stands only if the medians say so beyond that noise.
        rates: dict[str, list[float]] = {
            "baseline": [done[baseline.label].sustained_rps],
            "winner": [best_result.sustained_rps],
        }
        if best != baseline:
            for round_ in range(confirmations):
                for name, candidate in (("baseline", baseline), ("winner", best)):
                    log(f"confirming {name} ({round_ + 1}/{confirmations}): {candidate.label}")
                    rates[name].append(measure(candidate, start_rps, again=True).sustained_rps)
                    log(f"  -> {rates[name][-1]:g} req/s")
            if median(rates["winner"]) < CONFIRMED * median(rates["baseline"]):
                log("the winner did not beat the spec's options beyond the noise: the spec's options stand")
                best, best_result = baseline, done[baseline.label]
    return _report(out, spec_path, model, baseline, best, best_result, p95_ms, list(done.values()), rates, write)


def spec_patch(spec_path: Path, model_name: str, candidate: Candidate) -> str:
    """The spec file with `candidate`'s options for the model, as text: comments kept, laid out as
    models.yaml is (a spec laid out otherwise comes back re-indented)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML()
    yaml.preserve_quotes = True
    # The layout the kit's spec files use (`  - name:` under `models:`), no line wrapping: the
    # patch then shows the options that changed and nothing else.
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    document = yaml.load(spec_path.read_text())
    entry = next(m for m in document["models"] if m.get("name") == model_name)
    groups = entry.setdefault("instance_group", CommentedSeq([CommentedMap()]))
    groups[0]["count"] = candidate.instances
    batching = entry.setdefault("dynamic_batching", CommentedMap())
    batching["max_queue_delay_microseconds"] = candidate.max_queue_delay_us
    if candidate.preferred_batch_size:
        sizes = CommentedSeq(candidate.preferred_batch_size)
        sizes.fa.set_flow_style()
        batching["preferred_batch_size"] = sizes
    else:
        batching.pop("preferred_batch_size", None)
    cpu = entry.setdefault("cpu", CommentedMap())
    if candidate.intra_op_threads is None:
        cpu.pop("intra_op_thread_count", None)
    else:
        cpu["intra_op_thread_count"] = candidate.intra_op_threads
    text = io.StringIO()
    yaml.dump(document, text)
    return text.getvalue()


def _sustained(
    url: str,
    model: str,
    payload: dict[str, Any],
    p95_ms: float,
    start: float,
    step_seconds: float,
    deadline: float,
    candidate: Candidate,
    log: Any,
) -> Measured:
    """The highest open-loop rate the loaded candidate holds within the budget."""
    began = time.monotonic()
    trials: list[dict[str, Any]] = []

    def trial(rate: float) -> bool:
        step = _one_step(url, model, payload, rate, step_seconds)
        held = bool(
            step["failures"] == step["rejected"] == step["dropped"] == 0
            and step["rps"] >= HELD * rate
            and step["p95_ms"] <= p95_ms
        )
        trials.append({"offered_rps": rate, "rps": step["rps"], "p95_ms": step["p95_ms"], "held": held})
        log(
            f"    {rate:8.1f} req/s offered: {step['rps']:8.1f} answered, p95 {step['p95_ms']:7.2f} ms {'held' if held else 'missed'}"
        )
        return held

    held_rate, missed_rate = 0.0, None
    rate = start
    low: float
    high: float | None
    while time.monotonic() < deadline:  # coarse: grow until the budget breaks
        # The first rate is tried twice before the search turns down: the old instances of a
        # reloaded model are still being unloaded (their stubs ended) in its first seconds.
        if not trial(rate) and (trials[1:] or not trial(rate)):
            missed_rate = rate
            break
        held_rate, rate = rate, rate * GROWTH
    if held_rate == 0.0 and missed_rate is not None:  # not even the start: look below it
        low, high = 0.0, missed_rate
    else:
        low, high = held_rate, missed_rate
    for _ in range(BISECTIONS):  # fine: between the last held and the first missed
        if high is None or time.monotonic() > deadline:
            break
        middle = (low + high) / 2 if low else high / GROWTH**2
        if trial(middle):
            low = middle
        else:
            high = middle
    held = [t for t in trials if t["held"]]
    best = max(held, key=lambda t: t["offered_rps"]) if held else None
    return Measured(
        label=candidate.label,
        candidate=asdict(candidate),
        sustained_rps=round(best["offered_rps"], 1) if best else 0.0,
        p95_ms=best["p95_ms"] if best else None,
        trials=trials,
        seconds=round(time.monotonic() - began, 1),
    )


def _one_step(url: str, model: str, payload: dict[str, Any], rate: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tune-") as scratch:
        settings = Settings(
            url=url, model=model, rates=(rate,), step_seconds=seconds, report_dir=Path(scratch), timeout_s=10
        )
        run_open_loop(settings, payload, progress=False)
        summary = build_summary(Path(scratch), {"rates": [rate], "step_users": 0})
    step: dict[str, Any] = summary["steps"][0]
    return step


def _config_json(model: OnnxModelSpec, spec_file: str) -> str:
    text = render_config(model, spec_file, "cpu")
    config: str = json_format.MessageToJson(
        parse_config(text, f"{model.name} (tune)"), preserving_proto_field_name=True
    )
    return config


def _done(out: Path) -> dict[str, Measured]:
    """What an earlier run of the search in `out` measured."""
    path = out / "tune.jsonl"
    if not path.exists():
        return {}
    results = [Measured(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return {result.label: result for result in results}


@contextmanager
def model_server(url: str | None, repository: Path, model: str, protocol: str = "grpc") -> Iterator[str]:
    """`url`, or the `protocol` address of the embedded server on the repository in explicit
    model-control mode, with no model loaded (the caller loads `model`, as it needs it).

    Raises:
        TuneError: the repository has no `model`, or the server did not start.
    """
    if url is not None:
        yield url
        return
    from server.embedded import EmbeddedTriton, ServerError, free_port

    if not (repository / model / "config.pbtxt").is_file():
        raise TuneError(f"{repository} has no model {model!r}: build it first (make build-repo)")
    workdir = Path(tempfile.mkdtemp(prefix="kit-tune-"))
    # Only the model tuned is loaded; the server gets cores to itself but the generator's.
    server = EmbeddedTriton(
        repository=repository,
        backend_dir=workdir / "backends",
        model_control_mode="explicit",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_file=workdir / "triton.log",
    )
    try:
        server.start(timeout_s=120)
    except ServerError as exc:
        raise TuneError(f"the embedded server did not start: {exc}") from exc
    try:
        yield server.grpc_url if protocol == "grpc" else server.http_url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _report(
    out: Path,
    spec_path: Path,
    model: OnnxModelSpec,
    baseline: Candidate,
    best: Candidate,
    best_result: Measured,
    p95_ms: float,
    results: list[Measured],
    rates: dict[str, list[float]],
    write: bool,
) -> dict[str, Any]:
    baseline_result = next(r for r in results if r.label == baseline.label)
    baseline_median = median(rates["baseline"])
    winner_median = median(rates["winner"] if best != baseline else rates["baseline"])
    summary = {
        "model": model.name,
        "p95_budget_ms": p95_ms,
        "baseline": asdict(baseline_result),
        "winner": asdict(best_result),
        "confirmation": {name: {"rps": values, "median": median(values)} for name, values in rates.items()},
        "ratio": round(winner_median / baseline_median, 3) if baseline_median else None,
        "candidates": len(results),
        "written": False,
    }
    with (out / "tune.csv").open("w") as table:
        table.write("candidate,sustained_rps,p95_ms,trials,seconds\n")
        for result in sorted(results, key=lambda r: -r.sustained_rps):
            table.write(
                f'"{result.label}",{result.sustained_rps},{result.p95_ms or ""},{len(result.trials)},{result.seconds}\n'
            )
    original = spec_path.read_text()
    patched = spec_patch(spec_path, model.name, best) if best != baseline else original
    (out / "spec.patch").write_text(
        "".join(
            difflib.unified_diff(original.splitlines(True), patched.splitlines(True), str(spec_path), str(spec_path))
        )
    )
    if write and patched != original:
        staged = spec_path.with_name(f".{spec_path.name}.tune")
        staged.write_text(patched)
        os.replace(staged, spec_path)  # whole, or not at all
        summary["written"] = True
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    _pareto_plot(results, best_result, baseline_result, p95_ms, out / "pareto.png", model.name)
    return summary


def _pareto_plot(
    results: list[Measured], best: Measured, baseline: Measured, p95_ms: float, path: Path, model: str
) -> None:
    """Each candidate at its sustained rate: throughput against p95, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r.p95_ms or 0.0, r.sustained_rps, r) for r in results if r.sustained_rps > 0]
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.scatter([p for p, _, _ in points], [t for _, t, _ in points], color="#9ecae1", label="candidates")
    frontier, highest = [], -1.0
    for p95, throughput, _ in sorted(points, key=lambda point: (point[0], -point[1])):
        if throughput > highest:
            frontier.append((p95, throughput))
            highest = throughput
    if frontier:
        axes.plot(*zip(*frontier, strict=True), "-", color="#3182bd", label="Pareto frontier")
    for result, name, marker in ((baseline, "baseline", "s"), (best, "winner", "*")):
        if result.sustained_rps:
            axes.scatter(
                [result.p95_ms or 0], [result.sustained_rps], marker=marker, s=140, label=f"{name}: {result.label}"
            )
    axes.axvline(p95_ms, linestyle=":", color="#777777", label=f"budget {p95_ms:g} ms")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("p95 latency at the sustained rate (ms)")
    axes.set_ylabel("sustained requests / s")
    axes.set_title(f"{model}: serving options within a p95 of {p95_ms:g} ms")
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

"""Ensembles checked as a data-flow graph, with the rules Triton applies when it loads one.

Works on a neutral description so the same rules run on a spec (before anything is built) and
on the config.pbtxt files of any repository (`make check-repo`). Every problem names the
ensemble, the step and the tensor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Ensemble", "Member", "Step", "TensorType", "ensemble_problems"]


@dataclass(frozen=True)
class TensorType:
    """A tensor's dtype and dims (without the batch dimension when its model batches)."""

    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Member:
    """A model an ensemble step may call: its tensors, batching, and (for an ensemble) its steps' models."""

    name: str
    max_batch_size: int
    inputs: Mapping[str, TensorType]
    outputs: Mapping[str, TensorType]
    optional_inputs: frozenset[str] = frozenset()
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One step: `input_map`/`output_map` go from the model's tensor names to the ensemble's."""

    model: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


@dataclass(frozen=True)
class Ensemble:
    """The ensemble itself: its own inputs and outputs, and its steps in declaration order."""

    name: str
    max_batch_size: int
    inputs: Mapping[str, TensorType]
    outputs: Mapping[str, TensorType]
    steps: Sequence[Step]


@dataclass
class _Edge:
    """Where an ensemble tensor comes from, as a full shape (batch dimension included)."""

    source: str
    dtype: str
    shape: tuple[int, ...]
    consumers: list[str] = field(default_factory=list)


def ensemble_problems(ensemble: Ensemble, members: Mapping[str, Member]) -> list[str]:
    """Every rule the ensemble breaks; empty when Triton would load it."""
    return list(_problems(ensemble, members))


def _problems(ensemble: Ensemble, members: Mapping[str, Member]) -> Iterator[str]:
    label = f"ensemble {ensemble.name!r}"
    if not ensemble.steps:
        yield f"{label}: has no steps; declare at least one"
        return
    tensors: dict[str, _Edge] = {
        name: _Edge(f"ensemble input {name!r}", t.dtype, _full(ensemble.max_batch_size, t.dims))
        for name, t in ensemble.inputs.items()
    }
    usable: list[tuple[str, Step, Member]] = []
    for index, step in enumerate(ensemble.steps):
        where = f"{label} step {index} ({step.model!r})"
        member = members.get(step.model)
        if member is None:
            yield f"{where}: no model {step.model!r} in the repository; steps can call: {', '.join(sorted(members))}"
            continue
        yield from _mapping_problems(where, step, member)
        if member.max_batch_size > 0 and ensemble.max_batch_size > member.max_batch_size:
            yield (
                f"{where}: the ensemble's max_batch_size {ensemble.max_batch_size} exceeds {step.model!r}'s "
                f"{member.max_batch_size}; lower the ensemble's max_batch_size to at most {member.max_batch_size}"
            )
        if ensemble.name == step.model or ensemble.name in _uses(step.model, members):
            yield f"{where}: {step.model!r} depends on {ensemble.name!r} itself: circular dependency between ensembles"
            continue
        for model_tensor, ensemble_tensor in step.output_map.items():
            produced = member.outputs.get(model_tensor)
            if produced is None:
                continue
            if ensemble_tensor in tensors:
                yield (
                    f"{where}: output {model_tensor!r} writes ensemble tensor {ensemble_tensor!r}, which "
                    f"{tensors[ensemble_tensor].source} already provides; each ensemble tensor has one producer"
                )
                continue
            tensors[ensemble_tensor] = _Edge(
                f"{step.model!r} output {model_tensor!r}", produced.dtype, _full(member.max_batch_size, produced.dims)
            )
        usable.append((where, step, member))
    for where, step, member in usable:
        for model_tensor, ensemble_tensor in step.input_map.items():
            wanted = member.inputs.get(model_tensor)
            if wanted is None:
                continue
            yield from _edge_problems(
                tensors,
                ensemble_tensor,
                f"{where} input {model_tensor!r}",
                wanted.dtype,
                _full(member.max_batch_size, wanted.dims),
            )
    for name, wanted in ensemble.outputs.items():
        yield from _edge_problems(
            tensors,
            name,
            f"{label} output {name!r}",
            wanted.dtype,
            _full(ensemble.max_batch_size, wanted.dims),
            output=True,
        )
    for name, edge in tensors.items():
        if not edge.consumers:
            yield f"{label}: ensemble tensor {name!r} ({edge.source}) is not used by any step or ensemble output; remove it or map it"
    yield from _cycle_problems(label, usable)


def _mapping_problems(where: str, step: Step, member: Member) -> Iterator[str]:
    for model_tensor in step.input_map:
        if model_tensor not in member.inputs:
            yield f"{where}: input_map key {model_tensor!r} is not an input of {step.model!r} (its inputs: {', '.join(member.inputs)})"
    for model_tensor in member.inputs:
        if model_tensor not in step.input_map and model_tensor not in member.optional_inputs:
            yield f"{where}: input {model_tensor!r} of {step.model!r} is not mapped to any ensemble tensor; add it to the step's inputs"
    for model_tensor in step.output_map:
        if model_tensor not in member.outputs:
            yield f"{where}: output_map key {model_tensor!r} is not an output of {step.model!r} (its outputs: {', '.join(member.outputs)})"
    targets = list(step.output_map.values())
    for tensor in sorted({t for t in targets if targets.count(t) > 1}):
        yield f"{where}: ensemble tensor {tensor!r} appears in the output map more than once"


def _edge_problems(
    tensors: dict[str, _Edge], name: str, consumer: str, dtype: str, shape: tuple[int, ...], *, output: bool = False
) -> Iterator[str]:
    edge = tensors.get(name)
    if edge is None:
        what = "is not written by any step" if output else "is neither an ensemble input nor an output of any step"
        yield f"{consumer}: ensemble tensor {name!r} {what}"
        return
    edge.consumers.append(consumer)
    if edge.dtype != dtype:
        yield f"{consumer}: ensemble tensor {name!r} is {edge.dtype} from {edge.source} but {dtype} here; make the two agree"
    if not _compatible(edge.shape, shape):
        yield (
            f"{consumer}: ensemble tensor {name!r} has shape {list(edge.shape)} from {edge.source} but {list(shape)} here "
            "(batch dimension included, -1 variable); make the two agree"
        )


def _cycle_problems(label: str, steps: list[tuple[str, Step, Member]]) -> Iterator[str]:
    producer = {tensor: index for index, (_, step, _) in enumerate(steps) for tensor in step.output_map.values()}
    needs = {
        index: {producer[t] for t in step.input_map.values() if t in producer}
        for index, (_, step, _) in enumerate(steps)
    }
    state: dict[int, str] = {}
    path: list[int] = []

    def visit(node: int) -> list[int] | None:
        state[node] = "open"
        path.append(node)
        for dependency in sorted(needs[node]):
            if state.get(dependency) == "open":
                return [*path[path.index(dependency) :], dependency]
            if dependency not in state and (cycle := visit(dependency)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in needs:
        if node not in state and (cycle := visit(node)):
            names = " -> ".join(repr(steps[i][1].model) for i in reversed(cycle))
            yield f"{label}: its steps form a cycle ({names}); an ensemble must be a directed acyclic graph"
            return


def _uses(model: str, members: Mapping[str, Member], seen: frozenset[str] = frozenset()) -> set[str]:
    """Every model `model` calls, through nested ensembles."""
    member = members.get(model)
    if member is None or model in seen:
        return set()
    found = set(member.uses)
    for used in member.uses:
        found |= _uses(used, members, seen | {model})
    return found


def _full(max_batch_size: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    return (-1, *dims) if max_batch_size > 0 else dims


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))

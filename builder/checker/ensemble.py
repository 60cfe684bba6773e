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
    versions: frozenset[int] | None = None
    """The versions Triton loads (its version policy over the version folders); None if unknown."""
    decoupled: bool = False


@dataclass(frozen=True)
class Step:
    """One step: `input_map`/`output_map` go from the model's tensor names to the ensemble's."""

    model: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]
    version: int = -1
    """The member's version the step calls; -1 for the one Triton serves."""


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
    model: str
    """The model writing it (the ensemble itself for its inputs), as Triton names it."""
    consumers: list[str] = field(default_factory=list)


def ensemble_problems(ensemble: Ensemble, members: Mapping[str, Member]) -> list[str]:
    """Every rule the ensemble breaks; empty when Triton would load it."""
    return list(_problems(ensemble, members))


def _problems(ensemble: Ensemble, members: Mapping[str, Member]) -> Iterator[str]:
    label = f"ensemble {ensemble.name!r}"
    if not ensemble.steps:
        yield f"{label}: has no steps; declare at least one"
        return
    if any(step.model not in members for step in ensemble.steps):
        # The graph is still checked, as Triton does before it looks for the models.
        yield from _graph_problems(ensemble)
    tensors: dict[str, _Edge] = {
        name: _Edge(f"ensemble input {name!r}", t.dtype, _full(ensemble.max_batch_size, t.dims), model=ensemble.name)
        for name, t in ensemble.inputs.items()
    }
    usable: list[tuple[str, Step, Member]] = []
    for index, step in enumerate(ensemble.steps):
        where = f"{label} step {index} ({step.model!r})"
        member = members.get(step.model)
        if member is None:
            yield (
                f"{where}: no model {step.model!r} in the repository; steps can call: {', '.join(sorted(members))} "
                f"[Triton: ensemble {ensemble.name} contains models that are not available or ambiguous: {step.model}]"
            )
            continue
        if step.version != -1 and member.versions is not None and step.version not in member.versions:
            loaded = ", ".join(map(str, sorted(member.versions))) or "none"
            yield (
                f"{where}: calls version {step.version}, which its version policy does not load (loaded: {loaded}) "
                f"[Triton: ensemble '{ensemble.name}' depends on '{step.model}' whose required version "
                f"{step.version} is not loaded]"
            )
        yield from _mapping_problems(ensemble.name, where, step, member)
        if member.max_batch_size > 0 and ensemble.max_batch_size > member.max_batch_size:
            yield (
                f"{where}: the ensemble's max_batch_size {ensemble.max_batch_size} exceeds {step.model!r}'s "
                f"{member.max_batch_size}; lower the ensemble's max_batch_size to at most {member.max_batch_size} "
                f"[Triton: ensemble {ensemble.name} allows maximum batch size {ensemble.max_batch_size}, but it "
                f"contains model {step.model} which only allows maximum batch size to be {member.max_batch_size}]"
            )
        if ensemble.name == step.model or ensemble.name in _uses(step.model, members):
            yield (
                f"{where}: {step.model!r} depends on {ensemble.name!r} itself: circular dependency between ensembles: "
                f"{ensemble.name} -> ... -> {step.model} -> {ensemble.name}"
            )
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
                f"{step.model!r} output {model_tensor!r}",
                produced.dtype,
                _full(member.max_batch_size, produced.dims),
                model=step.model,
            )
        usable.append((where, step, member))
    for where, step, member in usable:
        for model_tensor, ensemble_tensor in step.input_map.items():
            wanted = member.inputs.get(model_tensor)
            if wanted is None:
                continue
            yield from _edge_problems(
                ensemble.name,
                tensors,
                ensemble_tensor,
                (f"{where} input {model_tensor!r}", step.model),
                wanted.dtype,
                _full(member.max_batch_size, wanted.dims),
            )
    for name, wanted in ensemble.outputs.items():
        yield from _edge_problems(
            ensemble.name,
            tensors,
            name,
            (f"{label} output {name!r}", ensemble.name),
            wanted.dtype,
            _full(ensemble.max_batch_size, wanted.dims),
            output=True,
        )
    for name, edge in tensors.items():
        if not edge.consumers:
            triton = (
                f"ensemble input '{name}' for ensemble {ensemble.name}' is not used"
                if name in ensemble.inputs
                else f"ensemble tensor '{name}' is unused in ensemble '{ensemble.name}'"
            )
            yield (
                f"{label}: ensemble tensor {name!r} ({edge.source}) is not used by any step or ensemble output; "
                f"remove it or map it [Triton: {triton}]"
            )
    yield from _cycle_problems(label, usable)
    yield from _decoupled_problems(ensemble, usable)


def _mapping_problems(ensemble: str, where: str, step: Step, member: Member) -> Iterator[str]:
    for model_tensor, tensor in step.input_map.items():
        if model_tensor not in member.inputs:
            yield (
                f"{where}: input_map key {model_tensor!r} is not an input of {step.model!r} (its inputs: "
                f"{', '.join(member.inputs)}) [Triton: in ensemble {ensemble}, ensemble tensor {tensor} is mapping "
                f"to non-existing input {model_tensor} in model {step.model}]"
            )
    for model_tensor in member.inputs:
        if model_tensor not in step.input_map and model_tensor not in member.optional_inputs:
            yield f"{where}: input {model_tensor!r} of {step.model!r} is not mapped to any ensemble tensor; add it to the step's inputs"
    for model_tensor, tensor in step.output_map.items():
        if model_tensor not in member.outputs:
            yield (
                f"{where}: output_map key {model_tensor!r} is not an output of {step.model!r} (its outputs: "
                f"{', '.join(member.outputs)}) [Triton: in ensemble {ensemble}, ensemble tensor {tensor} is mapped "
                f"from non-existing output {model_tensor} in model {step.model}]"
            )
    targets = list(step.output_map.values())
    for tensor in sorted({t for t in targets if targets.count(t) > 1}):
        yield (
            f"{where}: ensemble tensor {tensor!r} appears in the output map more than once [Triton: ensemble "
            f"tensor '{tensor}' can appear in an output map only once for ensemble '{ensemble}']"
        )


def _edge_problems(
    ensemble: str,
    tensors: dict[str, _Edge],
    name: str,
    consumer: tuple[str, str],
    dtype: str,
    shape: tuple[int, ...],
    *,
    output: bool = False,
) -> Iterator[str]:
    """`consumer`: where the tensor is read, and the model reading it (the ensemble for its outputs)."""
    where, reader = consumer
    edge = tensors.get(name)
    if edge is None:
        if output:
            triton = f"output '{name}' for ensemble '{ensemble}' is not written"
            yield f"{where}: ensemble tensor {name!r} is not written by any step [Triton: {triton}]"
        else:
            yield f"{where}: ensemble tensor {name!r} is neither an ensemble input nor an output of any step"
        return
    edge.consumers.append(where)
    if edge.dtype != dtype:
        yield (
            f"{where}: ensemble tensor {name!r} is {edge.dtype} from {edge.source} but {dtype} here; make the two "
            f"agree [Triton: in ensemble {ensemble}, ensemble tensor {name}: inconsistent data type: {edge.dtype} "
            f"is inferred from model {edge.model} while {dtype} is inferred from model {reader}]"
        )
    if not _compatible(edge.shape, shape):
        yield (
            f"{where}: ensemble tensor {name!r} has shape {list(edge.shape)} from {edge.source} but {list(shape)} "
            f"here (batch dimension included, -1 variable); make the two agree [Triton: in ensemble {ensemble}, "
            f"ensemble tensor {name}: inconsistent shape: {_dims(edge.shape)} is inferred from model {edge.model} "
            f"while {_dims(shape)} is inferred from model {reader}]"
        )


def _dims(shape: tuple[int, ...]) -> str:
    return f"[{','.join(map(str, shape))}]"


def _graph_problems(ensemble: Ensemble) -> Iterator[str]:
    """The rules of the ensemble's own data flow, which need no member's config, in Triton's words:
    each tensor written once, every ensemble input read, every tensor written read, every output
    written by a step that the ensemble's inputs reach."""
    label = f"ensemble {ensemble.name!r}"
    writers: dict[str, list[int]] = {}
    for index, step in enumerate(ensemble.steps):
        for tensor in step.output_map.values():
            writers.setdefault(tensor, []).append(index)
    for tensor, indexes in writers.items():
        if len(indexes) > 1:
            yield (
                f"{label}: ensemble tensor {tensor!r} is written by more than one output "
                f"[Triton: ensemble tensor '{tensor}' can appear in an output map only once for ensemble '{ensemble.name}']"
            )
    read = {tensor for step in ensemble.steps for tensor in step.input_map.values()}
    for name in ensemble.inputs:
        if name not in read:
            yield f"{label}: ensemble input {name!r} is read by no step [Triton: ensemble input '{name}' for ensemble {ensemble.name}' is not used]"
    for tensor in writers:
        if tensor not in read and tensor not in ensemble.outputs:
            yield f"{label}: ensemble tensor {tensor!r} is written but never read [Triton: ensemble tensor '{tensor}' is unused in ensemble '{ensemble.name}']"
    reached = set(ensemble.inputs)
    progress = True
    while progress:
        progress = False
        for step in ensemble.steps:
            if set(step.input_map.values()) <= reached and not set(step.output_map.values()) <= reached:
                reached |= set(step.output_map.values())
                progress = True
    for name in ensemble.outputs:
        if name not in writers:
            yield f"{label} output {name!r}: written by no step [Triton: ensemble output '{name}' for ensemble {ensemble.name}' is not used]"
        elif name not in reached:
            cut = sorted(
                t
                for i in writers[name]
                for t in ensemble.steps[i].input_map.values()
                if t not in writers and t not in ensemble.inputs
            )
            detail = f": at least one of its depending tensors, '{cut[0]}', is not connected" if cut else ""
            yield (
                f"{label} output {name!r}: the ensemble's inputs never reach the step that writes it "
                f"[Triton: output '{name}' for ensemble '{ensemble.name}' is not written{detail}]"
            )


def _decoupled_problems(ensemble: Ensemble, steps: list[tuple[str, Step, Member]]) -> Iterator[str]:
    """No tensor may carry the responses of two decoupled steps: each sends any number of
    responses, and Triton cannot pair them up for whatever reads the tensor."""
    writer = _writers(steps)
    memo: dict[int, frozenset[int]] = {}

    def origins(tensor: str, seen: frozenset[int] = frozenset()) -> frozenset[int]:
        """The decoupled steps whose responses reach `tensor`."""
        index = writer.get(tensor)
        if index is None or index in seen:
            return frozenset()  # an ensemble input, or a cycle (reported as such)
        if index not in memo:
            _, step, member = steps[index]
            memo[index] = (
                frozenset({index})
                if member.decoupled
                else frozenset().union(*(origins(t, seen | {index}) for t in step.input_map.values()))
            )
        return memo[index]

    readers = [(where, step.model, list(step.input_map.values())) for where, step, _ in steps]
    readers.append((f"ensemble {ensemble.name!r} outputs", ensemble.name, list(ensemble.outputs)))
    for where, model, tensors in readers:
        mixed = sorted({t for t in tensors if len(origins(t)) > 1})
        if mixed:
            sources = ", ".join("step " + steps[i][0].split(" step ", 1)[1] for i in sorted(origins(mixed[0])))
            yield (
                f"{where}: ensemble tensor {mixed[0]!r} carries the responses of different decoupled steps "
                f"({sources}), which cannot be paired [Triton: in ensemble {ensemble.name}, step of model "
                f"'{model}' receives inputs originated from different decoupled models]"
            )


def _writers(steps: list[tuple[str, Step, Member]]) -> dict[str, int]:
    """Each ensemble tensor a step writes -> that step's index in `steps`."""
    return {tensor: index for index, (_, step, _) in enumerate(steps) for tensor in step.output_map.values()}


def _cycle_problems(label: str, steps: list[tuple[str, Step, Member]]) -> Iterator[str]:
    producer = _writers(steps)
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
    if abs(len(a) - len(b)) == 1:
        # One side batches and the other does not (a non-batching ensemble calling a batching
        # model): Triton compares the dims without the batch dimension.
        longer, shorter = (a, b) if len(a) > len(b) else (b, a)
        return longer[0] == -1 and _compatible(longer[1:], shorter)
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))

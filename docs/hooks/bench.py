"""Benchmark tables, declared once each and rendered from bench/results/*.json at build time.

A declaration is a function registered with `@table(file, ...)`: it gets the file's JSON and
returns the header and the rows. The rendered table is followed by the line that traces it: the
file, the command that wrote it, the machine and the date. The results files record `benchmark`,
`date` and `machine`, most of them no `command`: a declaration gives what its file lacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "TABLES", "Table", "figure", "index", "render", "table"]

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"

Rows = tuple[Sequence[str], Sequence[Sequence[str]]]
"""A table's header and its rows, every cell already text."""


@dataclass(frozen=True)
class Table:
    """One table: the results file it reads, the provenance the file lacks, and its rows."""

    name: str
    source: str
    rows: Callable[[dict[str, Any]], Rows]
    command: str | None = None
    machine: str | None = None
    date: str | None = None

    def results(self) -> dict[str, Any]:
        """The results file's JSON."""
        data: dict[str, Any] = json.loads((RESULTS / self.source).read_text())
        return data

    def provenance(self) -> tuple[str, str, str]:
        """The command, machine and date the figures come from: the file's, else the declaration's."""
        data = self.results()
        found = {"command": data.get("command"), "machine": machine_of(data), "date": data.get("date")}
        declared = {"command": self.command, "machine": self.machine, "date": self.date}
        missing = [key for key, value in found.items() if not value and not declared[key]]
        if missing:
            raise ValueError(
                f"bench table {self.name!r}: bench/results/{self.source} records no {', '.join(missing)}; "
                f"declare {' and '.join(f'{key}=' for key in missing)} in @table(...)"
            )
        command, machine, date = (str(found[key] or declared[key]) for key in ("command", "machine", "date"))
        return command, machine, date


TABLES: dict[str, Table] = {}


def table(
    source: str, *, command: str | None = None, machine: str | None = None, date: str | None = None
) -> Callable[[Callable[[dict[str, Any]], Rows]], Callable[[dict[str, Any]], Rows]]:
    """Register a table of `bench/results/<source>` under the function's name, the name pages
    call it by: `{{ bench("<name>") }}`."""

    def register(rows: Callable[[dict[str, Any]], Rows]) -> Callable[[dict[str, Any]], Rows]:
        if rows.__name__ in TABLES:
            raise ValueError(f"bench table {rows.__name__!r} is declared twice")
        TABLES[rows.__name__] = Table(rows.__name__, source, rows, command, machine, date)
        return rows

    return register


def machine_of(data: dict[str, Any]) -> str | None:
    """The machine as the results file records it: a line, or a dict of platform facts; the GPU
    and core count some files keep beside it."""
    machine = data.get("machine")
    if isinstance(machine, dict):
        machine = f"{machine.get('machine', '?')}, cores: {machine.get('cpu_count', '?')}"
    parts = [str(machine)] if machine else []
    if data.get("cpu_cores"):
        parts.append(f"cores: {data['cpu_cores']}")
    if data.get("gpu"):
        parts.append(f"GPU: {data['gpu']}")
    return "; ".join(parts) or None


def render(name: str) -> str:
    """The Markdown of table `name` with the line that traces it."""
    if name not in TABLES:
        raise KeyError(f"no bench table {name!r}; declared: {', '.join(sorted(TABLES))} (docs/hooks/bench_tables.py)")
    declared = TABLES[name]
    header, rows = declared.rows(declared.results())
    command, machine, date = declared.provenance()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    trace = f"*Generated from `bench/results/{declared.source}`: `{command}` on {machine}, {date}.*"
    return "\n".join([*lines, "", trace])


def figure(source: str, path: str, spec: str = "") -> str:
    """One value of a results file, for prose: `path` is dotted keys (list indices as numbers),
    `spec` a format spec."""
    value: Any = json.loads((RESULTS / source).read_text())
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return format(value, spec)


# Cell formats shared by the declarations.
def x(value: float) -> str:
    """A ratio."""
    return f"{value:.2f}x"


def n(value: float, digits: int = 0) -> str:
    """A rate or count, with thousands separators."""
    return f"{value:,.{digits}f}"


def ms(value: float, digits: int = 1) -> str:
    """Milliseconds."""
    return f"{value:.{digits}f} ms"


def pct(value: float, digits: int = 0) -> str:
    """A share, as a percentage."""
    return f"{value:.{digits}%}"


def index() -> str:
    """Markdown: every results file with its provenance and the tables that read it."""
    lines = ["| results file | benchmark | recorded | machine | tables |", "|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        tables = [t for t in TABLES.values() if t.source == path.name]
        data: dict[str, Any] = json.loads(path.read_text())
        names = ", ".join(f"`{t.name}`" for t in tables) or "none"
        date = tables[0].provenance()[2] if tables else data.get("date", "")
        machine = tables[0].provenance()[1] if tables else machine_of(data) or ""
        lines.append(f"| `{path.name}` | {data.get('benchmark', '')} | {date} | {machine} | {names} |")
    return "\n".join(lines)

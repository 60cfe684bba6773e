"""What the checker reports: a rule a repository breaks, and the serving host it checks for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PlanTarget", "Problem"]


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

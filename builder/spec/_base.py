"""Pieces every spec module shares: the strict base model and the dimension type."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["Dim", "Strict"]


class Strict(BaseModel):
    """Unknown keys are errors and specs are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _dim(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("a dimension is a size >= 1, or -1 for a variable size")
    return value


Dim = Annotated[int, AfterValidator(_dim)]

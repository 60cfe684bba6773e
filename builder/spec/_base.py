"""Pieces every spec module shares: the strict base model, the dimension type and names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["MODEL_NAME_PATTERN", "SOURCE_PATTERN", "Dim", "ModelName", "Source", "Strict", "is_source"]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$"
SOURCE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Source = Annotated[str, Field(pattern=SOURCE_PATTERN)]


def is_source(text: str) -> bool:
    """Whether `text` is a 'package.module:callable' reference (rather than a path)."""
    return re.fullmatch(SOURCE_PATTERN, text) is not None


class Strict(BaseModel):
    """Unknown keys are errors and specs are immutable once loaded. A field's docstring is its
    description, which the docs' field reference shows (docs/hooks/spec_fields.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _dim(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("a dimension is a size >= 1, or -1 for a variable size")
    return value


Dim = Annotated[int, AfterValidator(_dim)]

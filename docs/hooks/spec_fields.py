"""The spec file's field reference, generated from the pydantic models of builder.spec: every
field with its type, allowed values, constraints, default and description (a field's docstring),
so the page says what the loader accepts and cannot drift from it."""

from __future__ import annotations

import inspect
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from builder.spec import KINDS

__all__ = ["models", "reference"]

_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least", "max_length": "at most"}


def models() -> list[type[BaseModel]]:
    """Every model a spec entry can contain, the three kinds first, then in the order met."""
    found: list[type[BaseModel]] = []
    queue: list[type[BaseModel]] = list(KINDS.values())
    while queue:
        model = queue.pop(0)
        if model in found:
            continue
        found.append(model)
        for info in model.model_fields.values():
            queue.extend(_nested(info.annotation))
    return found


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _nested(arg)]


def _constraints(metadata: list[Any]) -> list[str]:
    found = []
    for item in metadata:
        for key, word in _BOUNDS.items():
            if getattr(item, key, None) is not None:
                found.append(f"{word} {getattr(item, key)}")
        if getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    return found


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        bounds = _constraints(list(args[1:]))
        return _type(args[0]) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is Literal:
        return " \\| ".join(f"`{json.dumps(value)}`" for value in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type(args[0])}"
        return "[" + ", ".join(_type(arg) for arg in args) + "]"
    if origin is dict:
        return f"{{{_type(args[0])}: {_type(args[1])}}}"
    if annotation is type(None):
        return "`null`"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is Path:
        return "path"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return ""
    value = info.get_default(call_default_factory=True)
    return f"`{json.dumps(_plain(value))}`"


def _row(name: str, info: FieldInfo) -> str:
    kind = _type(info.annotation)
    bounds = _constraints(info.metadata)
    if bounds:
        kind += f" ({', '.join(bounds)})"
    description = " ".join((info.description or "").split()).replace("|", "\\|")
    required = "yes" if info.is_required() else ""
    return f"| `{name}` | {kind} | {required} | {_default(info)} | {description} |"


def reference() -> str:
    """Markdown: a section per model with its docstring and a table of its fields."""
    sections = []
    for model in models():
        kind = model.model_fields.get("kind")
        title = model.__name__ + (f" (`kind: {get_args(kind.annotation)[0]}`)" if kind else "")
        doc = inspect.cleandoc(model.__doc__ or "")
        lines = [f"## {title} {{#{model.__name__.lower()}}}", "", doc, ""]
        lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
        lines += [_row(name, info) for name, info in model.model_fields.items()]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)

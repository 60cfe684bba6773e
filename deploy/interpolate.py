"""Compose's variable interpolation, to check a compose file the way `docker compose` reads it.

Compose substitutes variables in every string value of the file before it looks at profiles
(docker/compose#11977), so one `${VAR:?message}` stops `docker compose up` of every service, not
only of the service that holds it. The rules are the Compose Specification's, as compose-go and
docker-compose 1.29 apply them:

    $$             a literal $
    $VAR ${VAR}    the value, empty when unset
    ${VAR:-word}   word when VAR is unset or empty       ${VAR-word}   word when VAR is unset
    ${VAR:?error}  fails when VAR is unset or empty      ${VAR?error}  fails when VAR is unset
    ${VAR:+word}   word when VAR is set and not empty    ${VAR+word}   word when VAR is set

`word` and `error` may hold variables themselves (`${A:-${B}}`); like compose-go, they are
substituted whether or not they are used. Any other `$` is an invalid template.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["InterpolationError", "MissingVariableError", "interpolate", "interpolation_problems", "substitute"]

_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")  # two-character ones first: ":-" is not "-"


class InterpolationError(ValueError):
    """A template Compose refuses: a malformed `$...`, or a required variable without a value."""


class MissingVariableError(InterpolationError):
    """`${VAR:?error}` or `${VAR?error}` without the value it requires."""


def substitute(template: str, environ: Mapping[str, str]) -> str:
    """`template` with its variables substituted from `environ`, as Compose does."""
    out: list[str] = []
    i = 0
    while (dollar := template.find("$", i)) >= 0:
        out.append(template[i:dollar])
        if template.startswith("$", dollar + 1):
            out.append("$")
            i = dollar + 2
        elif template.startswith("{", dollar + 1):
            end = _closing_brace(template, dollar)
            out.append(_braced(template[dollar + 2 : end], template, environ))
            i = end + 1
        elif named := _NAME.match(template, dollar + 1):
            out.append(environ.get(named.group(), ""))
            i = named.end()
        else:
            raise InterpolationError(
                f"invalid interpolation format in {template!r}: a '$' must start $VAR or ${{VAR...}}; "
                "write $$ for a literal $"
            )
    out.append(template[i:])
    return "".join(out)


def interpolate(document: Any, environ: Mapping[str, str]) -> Any:
    """A parsed compose file with every string value substituted; raises at the first problem, as Compose does."""
    if isinstance(document, str):
        return substitute(document, environ)
    if isinstance(document, dict):
        return {key: interpolate(value, environ) for key, value in document.items()}
    if isinstance(document, list):
        return [interpolate(value, environ) for value in document]
    return document


def interpolation_problems(document: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every string value of a parsed compose file that Compose could not interpolate in `environ`
    (default: an empty environment), as 'path: reason'. Compose stops at the first; this lists all."""
    problems = []
    for path, value in _strings(document, ()):
        try:
            substitute(value, environ or {})
        except MissingVariableError as exc:
            problems.append(
                f"{'/'.join(path)}: {exc}. Compose interpolates the whole file before it applies profiles, "
                "so this stops `docker compose up` of every profile: check a variable that one service needs "
                "when that service starts (as grafana's entrypoint in docker-compose.yml does)"
            )
        except InterpolationError as exc:
            problems.append(f"{'/'.join(path)}: {exc}")
    return problems


def _braced(body: str, template: str, environ: Mapping[str, str]) -> str:
    name = _NAME.match(body)
    end = name.end() if name else 0
    operator = next((op for op in _OPERATORS if body.startswith(op, end)), None)
    if not name or (operator is None and end != len(body)):
        raise InterpolationError(
            f"invalid interpolation format in {template!r}: ${{{body}}} is not ${{VAR}}, "
            "${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt} or ${VAR+alt}"
        )
    variable = name.group()
    value = environ.get(variable, "")
    if operator is None:
        return value
    word = substitute(body[end + len(operator) :], environ)
    # With the colon, an empty value counts as missing.
    present = variable in environ and (value != "" or not operator.startswith(":"))
    if operator.endswith("-"):
        return value if present else word
    if operator.endswith("+"):
        return word if present else ""
    if not present:
        raise MissingVariableError(
            f"required variable {variable} is {'empty' if variable in environ else 'unset'}: {word or variable}"
        )
    return value


def _closing_brace(template: str, dollar: int) -> int:
    """The index of the `}` closing the `${` at `dollar`; nested `${...}` count, as in compose-go."""
    depth = 0
    i = dollar
    while i < len(template):
        if template.startswith("${", i):
            depth += 1
            i += 2
            continue
        if template[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"invalid interpolation format in {template!r}: '${{' without its closing '}}'")


def _strings(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    # Values only: Compose does not interpolate mapping keys.
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, (*path, str(index)))

"""The MkDocs hooks of the site (mkdocs.yml `hooks:`): a page calls a generator as
`{{ name("argument", ...) }}` and gets its Markdown; an unknown name or a failing generator stops
the build. A call in inline code (right after a backtick) is left as it is. The test attributes of
code fences are dropped (docs/hooks/fences.py)."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# MkDocs puts only this folder on sys.path while it imports the hook, and the `mkdocs` command
# not the working directory: the generators import the kit (builder.spec) and docs.hooks.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from docs.hooks import bench, bench_tables, cli_help, fences, spec_fields  # noqa: E402

__all__ = ["GENERATORS", "expand", "on_page_markdown"]

_ = bench_tables  # its declarations register the tables

GENERATORS: dict[str, Callable[..., str]] = {
    "bench": bench.render,
    "bench_index": bench.index,
    "figure": bench.figure,
    "spec_fields": spec_fields.reference,
    "cli_help": cli_help.reference,
}
# Not after a backtick: `{{ bench("name") }}` in inline code shows the call itself.
_CALL = re.compile(r"(?<!`)\{\{\s*(\w+)\((.*?)\)\s*\}\}")


def expand(markdown: str, page: str = "<page>") -> str:
    """`markdown` with every generator call replaced by its output."""

    def call(match: re.Match[str]) -> str:
        name, arguments = match[1], match[2]
        if name not in GENERATORS:
            raise ValueError(f"{page}: {{{{ {name}(...) }}}}: no such generator; known: {', '.join(GENERATORS)}")
        values = ast.literal_eval(f"({arguments},)") if arguments.strip() else ()
        return GENERATORS[name](*values)

    return _CALL.sub(call, markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """MkDocs: expand a page's generator calls and drop its fences' test attributes."""
    return fences.strip_attributes(expand(markdown, page.file.src_path))

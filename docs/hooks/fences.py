"""The code blocks of the docs' pages and their test attributes.

A block's opening fence may carry `key="value"` attributes after its language, as pytest-examples
reads them: `test="skip" reason="..."` marks a block the docs' tests do not run, and says why
(a GPU, Docker, a long build...). tests/integration/test_docs_examples.py runs every other Python and shell block;
the site drops the attributes, which Markdown's fences do not accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RUNNABLE", "Block", "blocks", "pages", "strip_attributes"]

RUNNABLE = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell", "console": "shell"}
"""The languages whose blocks must run or say why not, and how they run."""

_FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S
)
_ATTRIBUTE = re.compile(r"""\s+([\w-]+)=(["'])(.*?)\2""")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    path: Path
    line: int
    language: str
    source: str
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def runner(self) -> str | None:
        """`python` or `shell` where the block's language is one the tests run, else None."""
        return RUNNABLE.get(self.language)

    def __str__(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"


def pages() -> list[Path]:
    """Every page a user reads: the site's and the README."""
    root = Path(__file__).resolve().parents[2]
    return [*sorted((root / "docs").rglob("*.md")), root / "README.md"]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order."""
    text = path.read_text()
    found = []
    for match in _FENCE.finditer(text):
        info = match["info"].strip()
        language = info.split()[0].lower() if info else ""
        attributes = {key: value for key, _, value in _ATTRIBUTE.findall(info[len(language) :])}
        body = "\n".join(line[len(match["indent"]) :] for line in match["body"].splitlines())
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(path, line, language, body + "\n", attributes))
    return found


def strip_attributes(markdown: str) -> str:
    """The page with the test attributes dropped from its fences (not from fences shown inside
    another block)."""

    def opening(match: re.Match[str]) -> str:
        info = match["info"].strip()
        language = info.split()[0] if info else ""
        if not _ATTRIBUTE.search(info[len(language) :]):
            return match[0]
        head = f"{match['indent']}{match['fence']}{language}"
        return head + match[0][len(match["indent"]) + len(match["fence"]) + len(match["info"]) :]

    return _FENCE.sub(opening, markdown)

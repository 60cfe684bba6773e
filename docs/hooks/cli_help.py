"""The command-line reference: each kit command's `--help`, as the installed command prints it
when the site is built (the commands are pyproject.toml's [project.scripts], in `.venv/bin`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["SUBCOMMANDS", "commands", "reference"]

ROOT = Path(__file__).resolve().parents[2]

SUBCOMMANDS: dict[str, tuple[str, ...]] = {
    "triton-kit-builder": ("build", "check"),
    "triton-kit-server": (),
    "triton-kit-loadtest": ("tune", "payload"),
    "triton-kit-client": ("health", "models", "infer", "stats"),
    "triton-kit-deploy": ("k8s", "check", "image-context"),
}
"""The subcommands each command documents with a help of its own (not every parser lists them)."""


def commands() -> list[str]:
    """The kit's commands, as pyproject.toml declares them."""
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return list(scripts)


def _help(argv: tuple[str, ...]) -> str:
    executable = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    if executable is None:
        raise FileNotFoundError(f"{argv[0]} is not in {Path(sys.executable).parent}: run `make venv` first")
    # A fixed width, so that the page does not change with the terminal that builds it.
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [executable, *argv[1:], "--help"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)} --help` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.rstrip()


def reference() -> str:
    """Markdown: a section per command and per subcommand, with its help."""
    missing = set(commands()) ^ set(SUBCOMMANDS)
    if missing:
        raise ValueError(f"docs/hooks/cli_help.py SUBCOMMANDS and pyproject's [project.scripts] differ: {missing}")
    invocations = [(name, *sub) for name in commands() for sub in ((), *((s,) for s in SUBCOMMANDS[name]))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        helps = list(pool.map(_help, invocations))
    sections = []
    for argv, text in zip(invocations, helps, strict=True):
        heading = "##" if len(argv) == 1 else "###"
        sections.append(f"{heading} `{' '.join(argv)}`\n\n```text\n{text}\n```\n")
    return "\n".join(sections)

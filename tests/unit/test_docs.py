"""The docs site cannot rot silently: every code block runs or says why not, every results file
has its table and every table names where its figures come from, the generated references cover
what they document, and the README stays a front door."""

from __future__ import annotations

import inspect
import re
import subprocess

import pytest
from pydantic import BaseModel
from pytest_examples import find_examples

import builder.spec
from docs.hooks import bench_tables, cli_help, fences, spec_fields
from docs.hooks.bench import RESULTS, TABLES, Table, figure, render
from docs.hooks.mkdocs_hooks import expand
from tests.conftest import ROOT

_ = bench_tables  # registers the tables

PAGES = fences.pages()


def every_block() -> list[fences.Block]:
    return [block for page in PAGES for block in fences.blocks(page)]


def test_every_python_and_shell_block_runs_or_says_why_not() -> None:
    blocks = every_block()
    assert sum(block.runner is not None and "test" not in block.attributes for block in blocks) >= 5
    for block in blocks:
        assert block.language, f"{block}: a code block names its language (text for output)"
        if block.runner is None:
            assert not block.attributes, f"{block}: test attributes on a {block.language} block, which never runs"
            continue
        assert set(block.attributes) <= {"test", "reason"}, f"{block}: unknown attributes {block.attributes}"
        if "test" in block.attributes or "reason" in block.attributes:
            assert block.attributes.get("test") == "skip", f'{block}: test="skip" is the one marker'
            assert block.attributes.get("reason", "").strip(), f"{block}: a skipped block says why it cannot run"


def test_the_block_finder_sees_the_python_blocks_pytest_examples_sees() -> None:
    # Two readers of the same pages: the marker check above and the runner must agree on what a block is.
    ours = {(block.path, block.line) for block in every_block() if block.runner == "python"}
    theirs = {(example.path, example.start_line) for page in PAGES for example in find_examples(page)}
    assert ours == theirs


def test_the_site_drops_the_test_attributes_but_keeps_a_block_shown_in_a_block() -> None:
    page = '```bash test="skip" reason="needs Docker"\nmake image\n```\n\n````md\n```bash test="skip"\n```\n````\n'
    assert fences.strip_attributes(page).splitlines()[:2] == ["```bash", "make image"]
    assert '```bash test="skip"' in fences.strip_attributes(page)


def test_every_results_file_has_a_table_and_every_table_is_on_a_page() -> None:
    assert {path.name for path in RESULTS.glob("*.json")} == {table.source for table in TABLES.values()}
    called = set(re.findall(r'(?<!`)\{\{\s*bench\("(\w+)"\)', " ".join(page.read_text() for page in PAGES)))
    assert called == set(TABLES)


def test_a_table_names_the_file_command_machine_and_date_of_its_figures() -> None:
    text = render("precision_speedup")
    assert text.splitlines()[-1] == (
        "*Generated from `bench/results/precision.json`: `make build-repo && .venv/bin/python bench/precision.py`"
        " on x86_64, cpu, cores: 2, 2026-11-21 03:38.*"
    )
    speedup = figure("precision.json", "in_process_onnxruntime_2_threads.batch_16.speedup_int8_over_fp32", ".2f")
    assert f"| {speedup}x |" in text


def test_a_results_file_without_a_command_needs_one_declared() -> None:
    undeclared = Table("undeclared", "precision.json", TABLES["precision_speedup"].rows)
    with pytest.raises(ValueError, match=r"records no command; declare command="):
        undeclared.provenance()


def test_a_page_calls_only_known_generators_and_inline_code_shows_the_call() -> None:
    with pytest.raises(ValueError, match="no such generator"):
        expand('{{ benchmark("precision_speedup") }}')
    with pytest.raises(KeyError, match="no bench table 'nope'"):
        expand('{{ bench("nope") }}')
    assert expand('`{{ bench("nope") }}`') == '`{{ bench("nope") }}`'


def test_the_spec_reference_has_every_model_and_field_with_its_description() -> None:
    reference = spec_fields.reference()
    sections = dict(re.findall(r"^## (\w+).*?\n(.*?)(?=^## |\Z)", reference, re.M | re.S))
    exported = {obj for obj in vars(builder.spec).values() if inspect.isclass(obj) and issubclass(obj, BaseModel)}
    assert set(spec_fields.models()) == exported  # no model of the spec is left out of the page
    for model in exported:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no docstring: the reference would say nothing"
            assert f"| `{name}` |" in sections[model.__name__], (model.__name__, name)
            assert " ".join(info.description.split()) in sections[model.__name__].replace("\\|", "|")
    assert '| `kind` | `"onnx"` |  | `"onnx"` |' in sections["OnnxModelSpec"]
    assert "| `opset` | int (≥ 17, ≤ 23) |  | `18` |" in sections["OnnxModelSpec"]


def test_the_cli_reference_has_every_command_and_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    # The helps themselves run in `make docs` (seconds of imports each); here, what the page holds.
    assert set(cli_help.SUBCOMMANDS) == set(cli_help.commands())
    monkeypatch.setattr(cli_help, "_help", lambda argv: f"usage: {' '.join(argv)} [-h]")
    reference = cli_help.reference()
    for command, subcommands in cli_help.SUBCOMMANDS.items():
        assert f"## `{command}`" in reference
        for sub in subcommands:
            section = reference.split(f"### `{command} {sub}`", 1)[1]
            assert section.lstrip().startswith(f"```text\nusage: {command} {sub} [-h]\n```"), (command, sub)


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    (setup,) = [b for b in fences.blocks(ROOT / "README.md") if "make build-repo" in b.source]
    assert [line.split("#")[0].strip() for line in setup.source.splitlines()] == ["make build-repo", "make test"]
    targets = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    listed = set(re.findall(r"^\| `make ([a-z-]+)` \|", readme, re.M))
    assert listed == set(targets) - {"help"}
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_make_docs_serves_on_loopback_only() -> None:
    dry = subprocess.run(["make", "-n", "docs-serve"], cwd=ROOT, capture_output=True, text=True, check=True)
    (serve,) = [line for line in dry.stdout.splitlines() if "mkdocs serve" in line]
    assert "--dev-addr 127.0.0.1:" in serve

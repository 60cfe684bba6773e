"""The command lines as a user runs them: exit codes and messages, never a traceback for user errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, linear_model


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_build_with_a_bad_spec_lists_every_problem_and_exits_1(write_spec, tmp_path) -> None:
    bad = linear_model(max_batch=4)
    bad["inputs"][0]["dtype"] = "TYPE_FLOAT"
    spec = write_spec(bad, linear_model("other", source="tests.tiny_models"))
    result = run("-m", "builder", "build", "--spec", str(spec), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "3 problem(s) in the spec" in result.stderr
    assert "unknown key 'max_batch'" in result.stderr
    assert "inputs[0].dtype = 'TYPE_FLOAT'" in result.stderr
    assert "model 'other' (models[1]): source = 'tests.tiny_models'" in result.stderr
    assert not (tmp_path / "repo").exists()


def test_build_then_check_from_the_command_line(write_spec, tmp_path) -> None:
    spec = write_spec(linear_model())
    repo = tmp_path / "repo"
    built = run("-m", "builder", "build", "--spec", str(spec), "--repo", str(repo))
    assert built.returncode == 0, built.stderr
    assert re.search(r"linear\s+1\s+onnx\s+built", built.stderr)
    assert "target: cpu (no nvidia-smi on this machine" in built.stderr  # says which target it chose, and why
    checked = run("-m", "builder", "check", "--repo", str(repo))
    assert checked.returncode == 0 and "0 problem(s)" in checked.stderr
    config = repo / "linear" / "config.pbtxt"
    config.write_text(config.read_text().replace("TYPE_FP32", "TYPE_INT32", 1))
    broken = run("-m", "builder", "check", "--repo", str(repo))
    assert broken.returncode == 1
    assert "declared dtype TYPE_INT32 but the graph has TYPE_FP32" in broken.stdout


def test_a_source_that_raises_fails_the_build_without_a_traceback(write_spec, tmp_path) -> None:
    spec = write_spec(linear_model(source="tests.tiny_models:raises"))
    result = run("-m", "builder", "build", "--spec", str(spec), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "checkpoint server unreachable" in result.stderr
    assert re.search(r"linear\s+1\s+onnx\s+failed", result.stderr)


def test_make_help_is_the_default_goal_and_describes_every_target() -> None:
    result = subprocess.run(["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    targets = phony.split(":", 1)[1].split()
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    for target in targets:
        assert target in listed, f"make help does not list {target}"
        assert len(listed[target].split(None, 1)[1]) > 10, f"{target} has no description"
    assert {"build-repo", "test", "serve", "check-repo"} <= set(targets)

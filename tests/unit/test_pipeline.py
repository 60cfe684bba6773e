"""The whole build on tiny models: staging, reuse, atomic replacement and failure handling."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from builder.checker import check_repository
from builder.errors import BuildError, RepositoryError
from builder.pipeline import build_repository
from builder.repository import Workspace, swap_into_place
from clients.limits import InputLimits
from tests.conftest import linear_model, snapshot


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "model_repository"


def statuses(summary) -> dict[str, str]:
    return {f"{r.model}/{r.version}": r.status for r in summary.results}


def test_build_writes_config_model_and_build_record(write_spec, repo) -> None:
    summary = build_repository(write_spec(linear_model(versions=[1, 2])), repo, log=lambda _: None)
    assert statuses(summary) == {"linear/1": "built", "linear/2": "built"}
    assert sorted(p.name for p in (repo / "linear").iterdir()) == ["1", "2", "config.pbtxt"]
    record = json.loads((repo / "linear" / "1" / "build.json").read_text())
    assert record["model"] == "linear" and record["version"] == 1
    assert len(record["fingerprint"]) == 64
    assert record["built_from"]["tools"]["torch"] == version("torch")
    assert record["verification"]["outputs"]["y"]["max_abs_error"] < 1e-5
    assert not check_repository(repo)
    assert not (repo.parent / ".model_repository.build" / "staging").exists()


def test_unchanged_models_are_reused_and_force_exports_again(write_spec, repo) -> None:
    spec = write_spec(linear_model())
    build_repository(spec, repo, log=lambda _: None)
    model_file = repo / "linear" / "1" / "model.onnx"
    first = model_file.stat().st_ino
    assert statuses(build_repository(spec, repo, log=lambda _: None)) == {"linear/1": "cached"}
    assert model_file.stat().st_ino == first  # the same file, hard-linked, not a new export
    assert statuses(build_repository(spec, repo, force=True, log=lambda _: None)) == {"linear/1": "built"}
    assert model_file.stat().st_ino != first


def test_a_serving_option_change_renders_the_config_without_exporting(write_spec, repo) -> None:
    build_repository(write_spec(linear_model()), repo, log=lambda _: None)
    changed = write_spec(linear_model(dynamic_batching={"max_queue_delay_microseconds": 700}))
    assert statuses(build_repository(changed, repo, log=lambda _: None)) == {"linear/1": "cached"}
    assert "max_queue_delay_microseconds: 700" in (repo / "linear" / "config.pbtxt").read_text()


def test_changed_weights_export_again_with_a_new_fingerprint(write_spec, repo, tmp_path) -> None:
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "w.pt")
    spec = write_spec(linear_model(weights="w.pt"))
    build_repository(spec, repo, log=lambda _: None)
    before = json.loads((repo / "linear" / "1" / "build.json").read_text())
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "w.pt")
    assert statuses(build_repository(spec, repo, log=lambda _: None)) == {"linear/1": "built"}
    after = json.loads((repo / "linear" / "1" / "build.json").read_text())
    assert after["fingerprint"] != before["fingerprint"]
    assert after["built_from"]["weights"]["sha256"] != before["built_from"]["weights"]["sha256"]


def test_a_failed_build_leaves_the_repository_exactly_as_it_was(write_spec, repo) -> None:
    build_repository(write_spec(linear_model(), linear_model("other")), repo, log=lambda _: None)
    (repo / "README.md").write_text("kept\n")
    before = snapshot(repo)
    broken = write_spec(
        linear_model(dynamic_batching={"max_queue_delay_microseconds": 9}),
        linear_model("other", source="tests.tiny_models:raises"),
        linear_model(
            "third",
            source="tests.tiny_models:export_differs",
            outputs=[{"name": "y", "dtype": "TYPE_FP32", "dims": [4]}],
        ),
    )
    with pytest.raises(BuildError) as caught:
        build_repository(broken, repo, log=lambda _: None)
    message = str(caught.value)
    assert "2 problem(s)" in message and "was left as it was" in message
    assert "model 'other'" in message and "checkpoint server unreachable" in message
    assert "model 'third'" in message and "ONNX Runtime's outputs differ" in message
    assert snapshot(repo) == before
    artifact = caught.value.problems[1].split("The artifact was left for inspection at: ")[1].strip()
    assert Path(artifact).is_file()
    assert not (repo.parent / ".model_repository.build" / "staging").exists()


def test_models_dropped_from_the_spec_are_removed_and_top_level_files_kept(write_spec, repo) -> None:
    build_repository(write_spec(linear_model("a"), linear_model("b")), repo, log=lambda _: None)
    (repo / "README.md").write_text("generated, do not edit\n")
    (repo / "input_limits.json").write_text("stale")
    summary = build_repository(write_spec(linear_model("a")), repo, log=lambda _: None)
    assert summary.removed == ["b"]
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "a", "input_limits.json"]
    assert (repo / "README.md").read_text() == "generated, do not edit\n"
    assert InputLimits.load(repo).models == {}  # written by this build, not carried over


def test_a_second_build_of_the_same_repository_is_refused_while_one_runs(write_spec, repo) -> None:
    with Workspace(repo), pytest.raises(RepositoryError, match=r"another build of .* is running"):
        build_repository(write_spec(linear_model()), repo, log=lambda _: None)


def test_swap_exchanges_the_directories(tmp_path) -> None:
    old, new = tmp_path / "repo", tmp_path / "staging"
    old.mkdir()
    new.mkdir()
    (old / "old").write_text("1")
    (new / "new").write_text("2")
    swap_into_place(new, old)
    assert [p.name for p in old.iterdir()] == ["new"]
    assert [p.name for p in new.iterdir()] == ["old"]


def test_check_flags_a_hand_broken_copy(write_spec, repo, tmp_path) -> None:
    build_repository(write_spec(linear_model("a"), linear_model("b")), repo, log=lambda _: None)
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)
    config = broken / "a" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 3 ]", "dims: [ 7 ]").replace('name: "a"', 'name: "aa"'))
    (broken / "b" / "1" / "model.onnx").unlink()
    problems = [str(p) for p in check_repository(broken)]
    assert len(problems) == 3
    assert any("a/config.pbtxt: name = 'aa': must equal the model's directory name 'a'" in p for p in problems)
    assert any("output 'y'" in p and "dims[0] is 7 as declared but 3 in the graph" in p for p in problems)
    assert any("b/1/model.onnx: model file = missing" in p for p in problems)


def test_long_steps_report_progress_until_they_end(write_spec, repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builder.progress.HEARTBEAT_S", 0.05)
    lines: list[str] = []
    build_repository(write_spec(linear_model()), repo, target="cpu", log=lines.append)
    beats = [i for i, line in enumerate(lines) if line.startswith("linear v1: export: still running (")]
    assert beats, lines
    # Every beat comes between the step's start and its end, none after.
    assert lines.index("linear v1: exporting") < beats[0] and beats[-1] < lines.index("linear v1: verifying")

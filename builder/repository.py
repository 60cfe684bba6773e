"""Where a build happens: a locked workspace beside the repository, a staging copy built there,
and an atomic swap that replaces the repository only once everything in staging passed.

    <parent>/<name>/                 the repository Triton serves (only ever replaced whole)
    <parent>/.<name>.build/lock      held while a build runs
    <parent>/.<name>.build/staging/  the next repository, assembled by the build
    <parent>/.<name>.build/work/     per-version export/verify directories; kept on failure
    <parent>/.<name>.build/cache/    TensorRT timing and calibration caches, reused across builds
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO

from builder.errors import RepositoryError

__all__ = ["Workspace", "link_tree", "swap_into_place"]


class Workspace:
    """The build's private area next to `repository`, locked against concurrent builds."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository.resolve()
        self.root = self.repository.parent / f".{self.repository.name}.build"
        self.staging = self.root / "staging"
        # TensorRT's timing and calibration caches: kept across builds, keyed by what they depend on.
        self.cache = self.root / "cache"
        self._lock: IO[str] | None = None

    def work_dir(self, model: str, version: int) -> Path:
        """A fresh directory to export and verify one version in."""
        path = self.root / "work" / model / str(version)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def __enter__(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = (self.root / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RepositoryError(
                f"another build of {self.repository} is running (it holds {self.root / 'lock'}); "
                "wait for it to finish, then build again"
            ) from None
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a build that was killed
        self.staging.mkdir()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def link_tree(source: Path, destination: Path) -> None:
    """Copy a directory by hard-linking its files (instant, no extra disk); copy across devices.

    Safe because the build never writes into a file it did not just create.
    """

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link_or_copy)


def swap_into_place(staging: Path, repository: Path) -> None:
    """Make `staging` the repository in one step; the old repository ends up in `staging`.

    On Linux the two directories are exchanged atomically (renameat2 RENAME_EXCHANGE), so a
    server polling the repository never sees it missing or half-written.
    """
    if not repository.exists():
        staging.rename(repository)
        staging.mkdir()
        return
    if _exchange(staging, repository):
        return
    backup = staging.with_name("previous")
    shutil.rmtree(backup, ignore_errors=True)
    try:
        repository.rename(backup)
        staging.rename(repository)
    except OSError as exc:
        if backup.exists() and not repository.exists():
            backup.rename(repository)
        raise RepositoryError(f"could not move the new repository into {repository}: {exc}") from exc
    backup.rename(staging)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths; False where the system cannot (not Linux, old kernel)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise RepositoryError(f"could not exchange {a} and {b}: {os.strerror(error)}")

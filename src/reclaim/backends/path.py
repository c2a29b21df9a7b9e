"""Temporary directories: ``TempDir(prefix=None, parent=None)`` gives a fresh ``pathlib.Path``.

The full path is decided and journaled before the directory is made (I1), so a process killed
between ``mkdir`` and the record being written leaves nothing the sweeper cannot find. Release
removes the whole tree; a directory that is already gone is fine (I3). A ``mkdir`` that fails
made nothing: acquire raises :class:`~reclaim.NotCreatedError`, and an entry already there (not
ours) is left alone.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reclaim.backends import (
    Backend,
    ForeignNameError,
    Leftover,
    NotCreatedError,
    ReclaimName,
    Record,
    backend_error,
    check_record,
    parse_name,
)

__all__ = ["TempDir"]


class TempDir(Backend[Path]):
    """A directory of its own, mode 0700, removed with everything in it at release.

    Args:
        prefix: put before reclaim's name, for people reading directory listings.
        parent: where to make it; the system's temporary directory by default.
    """

    kind = "path.tempdir"
    url_schemes = ("file",)

    def __init__(
        self, prefix: str | None = None, parent: str | os.PathLike[str] | None = None
    ) -> None:
        if prefix is not None and ("/" in prefix or "\0" in prefix):
            raise ValueError(f"TempDir prefix {prefix!r} must not contain '/' or NUL")
        self.prefix = prefix or ""
        self._parent = os.fspath(parent) if parent is not None else tempfile.gettempdir()
        self._planned: tuple[str, str] | None = None  # (name, path): plan runs twice per name

    @property
    def parent(self) -> Path:
        return Path(self._parent)

    def plan(self, name: str) -> Record:
        # os.path, not pathlib, and once per name: this runs twice per directory (the journal's
        # plan, then acquire), on the path of every test. A relative parent is resolved once,
        # so both see the same path.
        planned = self._planned
        if planned is None or planned[0] != name:
            parent = self._parent if os.path.isabs(self._parent) else os.path.abspath(self._parent)
            planned = self._planned = (name, os.path.normpath(f"{parent}/{self.prefix}{name}"))
        return {"name": name, "path": planned[1], "prefix": self.prefix}

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """The path must be absolute and normal, and end in exactly the prefix and the name:
        a record can never point release at ``/home/user`` or ``rc_..._1_backup`` (I8)."""
        path = record.get("path")
        prefix = record.get("prefix", "")
        if not isinstance(prefix, str) or "/" in prefix or "\0" in prefix:
            return (("prefix", prefix, "a prefix without '/' or NUL"),)
        if not isinstance(path, str) or not os.path.isabs(path):
            return (("path", path, f"an absolute path ending in /{prefix}{name.text}"),)
        expected = os.path.join(os.path.dirname(os.path.normpath(path)), prefix + name.text)
        return (("path", path, expected),)

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        try:
            # Fails if something is there already: never adopt a stranger.
            os.mkdir(record["path"], 0o700)
        except OSError as exc:
            # mkdir is one system call: when it fails, nothing was made (a name too long, no
            # parent, no permission), and what is there already is not ours to remove.
            raise backend_error(
                NotCreatedError,
                self.kind,
                record,
                "make the directory",
                exc,
                where=_shorten(record["path"]),
                reason=_os_reason,
            ) from exc
        return Path(record["path"]), record

    #: The watchdog and the sweeper release a dead run's directories 256 at a time: one
    #: registry transaction for the claims and one for the outcomes (rmtree each stays its own).
    batch_size = 256

    @classmethod
    def release_many(cls, records: Sequence[Record]) -> Sequence[Exception | None]:
        """A dead run's directories: each is tried with one ``rmdir`` first, which removes an
        empty directory at exactly that path and nothing else (never a file, never what a
        symlink points at; a directory that holds anything is refused with ENOTEMPTY), and
        goes the whole way of :meth:`release` otherwise. An empty directory, as a crash often
        leaves, costs one system call instead of seven."""
        outcomes: list[Exception | None] = [None] * len(records)
        rest: list[int] = []
        for i, record in enumerate(records):
            try:
                check_record(cls, record)  # as every release is (I8), also when called directly
            except ForeignNameError as exc:
                outcomes[i] = exc  # refused: nothing was touched
                continue
            try:
                os.rmdir(record["path"])
            except FileNotFoundError:
                pass  # gone already (I3)
            except OSError:
                rest.append(i)  # not empty, not a directory, not ours to remove alone
        whole_way = super().release_many([records[i] for i in rest])
        for i, outcome in zip(rest, whole_way, strict=True):
            outcomes[i] = outcome
        return outcomes

    @classmethod
    def release(cls, record: Record) -> None:
        path = record["path"]
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            _rmtree(path)
        else:
            # Somebody replaced the directory with a file or a symlink: remove that entry,
            # never what a symlink points at.
            os.unlink(path)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.lexists(record["path"])

    @classmethod
    def describe(cls, record: Record) -> str:
        return str(record.get("path", record.get("name", "?")))

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Directories in ``target`` (a path, or ``file://`` URL) whose whole name is a reclaim
        name. Directories made with a ``prefix`` are not listed (the prefix could be anything);
        nor are symlinks, files, or anything whose name merely contains a reclaim name."""
        directory = os.path.abspath(target.removeprefix("file://") or tempfile.gettempdir())
        with os.scandir(directory) as entries:
            for entry in entries:
                parsed = parse_name(entry.name)
                if parsed is not None and entry.is_dir(follow_symlinks=False):
                    record = {"name": entry.name, "path": entry.path, "prefix": ""}
                    yield Leftover.of(record, parsed)


def _shorten(path: str, keep: int = 80) -> str:
    """A path for a message: a very long one (the cause of its error) cut in the middle."""
    return path if len(path) <= 2 * keep + 3 else f"{path[:keep]}...{path[-keep:]}"


def _os_reason(exc: BaseException) -> str:
    """``FileExistsError: [Errno 17] File exists``: the path is named once, by ``where``."""
    if isinstance(exc, OSError) and exc.strerror:
        code = f"[Errno {exc.errno}] " if exc.errno is not None else ""
        return f"{type(exc).__name__}: {code}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _rmtree(path: str) -> None:
    # `onexc` is 3.12+; `onerror` is deprecated there (a warning our tests turn into an error).
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=lambda f, p, info: _make_writable_and_retry(f, p, info[1]))


def _make_writable_and_retry(func: Any, path: str, exc: BaseException) -> None:
    # A test may leave read-only directories behind (a chmod 0500 fixture): make the parent
    # writable and try once more. Anything else is a real failure and propagates.
    if isinstance(exc, FileNotFoundError):
        return
    if not isinstance(exc, PermissionError):
        raise exc
    parent = os.path.dirname(path)
    os.chmod(parent, stat.S_IRWXU)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
    func(path)

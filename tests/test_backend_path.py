"""TempDir when its ``mkdir`` fails (issue 11): a name too long, a parent that is missing, not a
directory or not writable, a directory that is there already. ``mkdir`` is one system call, so
nothing was made: acquire raises NotCreatedError, the Fixture's error names the cause, the
planned entry is closed (none is left to fail at every sweep), and what was there already is not
ours and is left alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import reclaim
from conftest import registry_is_empty
from reclaim import AcquireError, NotCreatedError, ReleaseError
from reclaim.backends import make_name
from reclaim.backends.path import TempDir

RUN = "0a1b2c3d"


def name(seq: int) -> str:
    return make_name(RUN, seq, now=1_800_000_000)


def acquire_in_a_fixture(backend: TempDir) -> AcquireError:
    with reclaim.Fixture("mkdir") as fixture, pytest.raises(AcquireError) as caught:
        fixture.acquire(backend)
    assert not isinstance(caught.value, ReleaseError)
    assert "could not be created" in str(caught.value)
    assert "nothing was created" in str(caught.value)
    return caught.value


def test_a_name_too_long(scratch: Path, registry_path: str) -> None:
    backend = TempDir(prefix="x" * 5000, parent=scratch)
    with pytest.raises(NotCreatedError, match=r"File name too long") as direct:
        backend.acquire(name(1))
    assert len(str(direct.value)) < 600, "the long path is shown once, shortened"
    error = acquire_in_a_fixture(backend)
    assert "File name too long" in str(error)
    assert registry_is_empty(registry_path)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("parent", ["missing", "a-file"])
def test_a_parent_that_is_not_a_directory(parent: str, scratch: Path, registry_path: str) -> None:
    (scratch / "a-file").write_text("not a directory")
    backend = TempDir(parent=scratch / parent)
    with pytest.raises(NotCreatedError):
        backend.acquire(name(2))
    error = acquire_in_a_fixture(backend)
    cause = "FileNotFoundError" if parent == "missing" else "NotADirectoryError"
    assert cause in str(error), "the cause is named"
    assert str(scratch / parent) in str(error), "where it was to be made"
    assert registry_is_empty(registry_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_parent_that_is_not_writable(scratch: Path, registry_path: str) -> None:
    locked = scratch / "locked"
    locked.mkdir(mode=0o500)
    try:
        error = acquire_in_a_fixture(TempDir(parent=locked))
        assert "PermissionError" in str(error)
        assert registry_is_empty(registry_path)
    finally:
        locked.chmod(0o700)


def test_a_directory_there_already_is_left_alone(
    scratch: Path, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name collides with a directory that is not ours: before, the compensating release
    removed it with everything in it."""
    taken = name(3)
    theirs = scratch / taken
    theirs.mkdir()
    (theirs / "keep.txt").write_text("somebody's")
    monkeypatch.setattr(TempDir, "adapt_name", lambda _self, _proposed: taken)
    error = acquire_in_a_fixture(TempDir(parent=scratch))
    assert "FileExistsError" in str(error)
    assert (theirs / "keep.txt").read_text() == "somebody's"
    assert registry_is_empty(registry_path)


def test_a_file_there_already_is_left_alone(
    scratch: Path, registry_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = name(4)
    (scratch / taken).write_text("a file of somebody's")
    monkeypatch.setattr(TempDir, "adapt_name", lambda _self, _proposed: taken)
    acquire_in_a_fixture(TempDir(parent=scratch))
    assert (scratch / taken).read_text() == "a file of somebody's"
    assert registry_is_empty(registry_path)

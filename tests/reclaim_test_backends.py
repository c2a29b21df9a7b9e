"""Backends for reclaim's own tests, found by the reaper through RECLAIM_BACKENDS.

``Flaky`` makes a file; its release fails while ``<path>.fail`` exists, with an error message
that quotes its secret token, so tests can prove the token never reaches the registry or output.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from reclaim.backends import Backend, Record

SECRET = "tok-9f8e7d6c5b4a"


class Flaky(Backend[Path]):
    kind = "test.flaky"
    secret_fields = frozenset({"token"})

    def __init__(self, directory: Path, token: str = SECRET) -> None:
        self.directory = directory
        self.token = token

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name), "token": self.token}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        path = Path(record["path"])
        path.write_text("x")
        return path, record

    @classmethod
    def release(cls, record: Record) -> None:
        path = record["path"]
        if os.path.exists(path + ".fail"):
            raise PermissionError(f"cannot delete {path} (auth {record['token']})")
        if os.path.exists(path):
            os.unlink(path)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.exists(record["path"])


class Forgetful(Backend[Path]):
    """Breaks I1 on purpose: its planned record cannot find what acquire makes."""

    kind = "test.forgetful"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / "elsewhere")}

    def acquire(self, name: str) -> tuple[Path, Record]:
        path = self.directory / name
        path.mkdir()
        return path, {"name": name, "path": str(path)}

    @classmethod
    def release(cls, record: Record) -> None:
        if os.path.isdir(record["path"]):
            os.rmdir(record["path"])

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.exists(record["path"])


class SlowDir(Backend[Path]):
    """A directory whose acquire pauses after mkdir (created, not yet recorded) and whose release
    pauses half-way (one file deleted, the directory not yet): the windows a chaos test kills in.
    Each pause is announced on stdout first, so a test can kill right inside it."""

    kind = "test.slowdir"

    def __init__(self, directory: Path, pause: float = 0.2) -> None:
        self.directory = directory
        self.pause = pause

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name), "pause": self.pause}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        path = Path(record["path"])
        path.mkdir()
        (path / "a").write_text("a")
        print("in-acquire", flush=True)
        time.sleep(self.pause)
        return path, record

    @classmethod
    def release(cls, record: Record) -> None:
        path = Path(record["path"])
        if not path.exists():
            return
        (path / "a").unlink(missing_ok=True)
        if os.environ.get("RECLAIM_TEST_ANNOUNCE") == "1":
            print("in-release", flush=True)
            time.sleep(record["pause"])
        path.rmdir()

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.exists(record["path"])


class Sticky(Backend[Path]):
    """A directory whose release "succeeds" without deleting it: the bug strict mode catches."""

    kind = "test.sticky"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name)}

    def acquire(self, name: str) -> tuple[Path, Record]:
        path = self.directory / name
        path.mkdir()
        return path, self.plan(name)

    @classmethod
    def release(cls, record: Record) -> None:
        """Forgets to delete."""

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.exists(record["path"])

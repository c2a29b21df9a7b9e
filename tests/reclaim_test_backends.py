"""Backends for reclaim's own tests, found by the reaper through RECLAIM_BACKENDS.

``Flaky`` makes a file; its release fails while ``<path>.fail`` exists, with an error message
that quotes its secret token, so tests can prove the token never reaches the registry or output.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from reclaim.backends import (
    Backend,
    Leftover,
    NotCreatedError,
    Record,
    backend_error,
    parse_name,
)

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


class Greedy(Backend[Path]):
    """A careless third-party kind: its listing takes any directory whose name *contains* a
    reclaim name (the search-anywhere bug of issue 10). The conformance kit must catch it."""

    kind = "test.greedy"
    url_schemes = ("greedy",)

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name)}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        Path(record["path"]).mkdir()
        return Path(record["path"]), record

    @classmethod
    def release(cls, record: Record) -> None:
        path = Path(record["path"])
        if path.is_dir():
            path.rmdir()

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.lexists(record["path"])

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        directory = target.removeprefix("greedy://")
        for entry in os.scandir(directory):
            found = re.search(r"rc_[0-9a-f]{8}_[0-9a-z]{1,8}_[0-9]+", entry.name)
            parsed = parse_name(found.group(0)) if found else None
            if parsed is not None:
                yield Leftover({"name": entry.name, "path": entry.path}, *parsed[1:3])


class Unreachable(Backend[str]):
    """A server kind whose server is down: acquire proves nothing was created (the connection
    never opened); release fails the same way, as it would against a real server that is down."""

    kind = "test.unreachable"
    secret_fields = frozenset({"password"})

    def __init__(self, password: str = SECRET) -> None:
        self.password = password

    def plan(self, name: str) -> Record:
        return {"name": name, "password": self.password}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        try:
            raise ConnectionRefusedError(f"connect to 127.0.0.1:1 refused (password {SECRET})")
        except ConnectionRefusedError as exc:
            raise backend_error(
                NotCreatedError, self.kind, record, "connect", exc, secret_fields={"password"}
            ) from exc

    @classmethod
    def release(cls, record: Record) -> None:
        raise ConnectionRefusedError("connect to 127.0.0.1:1 refused")

    @classmethod
    def exists(cls, record: Record) -> bool:
        raise ConnectionRefusedError("connect to 127.0.0.1:1 refused")


class Halfway(Unreachable):
    """A server that went away after the create request was sent: nobody knows whether it was
    made, so the entry must stay for the sweeper (I1)."""

    kind = "test.halfway"

    def acquire(self, name: str) -> tuple[str, Record]:
        raise TimeoutError(f"no answer to CREATE {name} within 5 s")


class Leaky(Backend[Path]):
    """A careless kind whose release says it is done and deletes nothing: the crash kit must
    catch it."""

    kind = "test.leaky"

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name)}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        Path(record["path"]).mkdir()
        return Path(record["path"]), record

    @classmethod
    def release(cls, record: Record) -> None:
        """Nothing: the bug."""

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.lexists(record["path"])


class Tally(Backend[Path]):
    """A file per resource; every release that deletes one appends its name to ``releases.log``
    beside it (one ``O_APPEND`` write, atomic), so a test counts the releases of each name."""

    kind = "test.tally"

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def plan(self, name: str) -> Record:
        return {"name": name, "path": str(self.directory / name)}

    def acquire(self, name: str) -> tuple[Path, Record]:
        record = self.plan(name)
        Path(record["path"]).touch(exist_ok=False)
        return Path(record["path"]), record

    @classmethod
    def release(cls, record: Record) -> None:
        path = Path(record["path"])
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fd = os.open(path.parent / "releases.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{record['name']}\n".encode())
        finally:
            os.close(fd)

    @classmethod
    def exists(cls, record: Record) -> bool:
        return os.path.lexists(record["path"])

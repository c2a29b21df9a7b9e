"""The lean bookkeeping of the SQLite registry (issue 15): acquired marks that add nothing to
the planned record wait for the next write, and so do the owner's released marks (it releases
without a claim's transaction): one write transaction per resource, and the schema has no
index a write pays for. Each rule is checked where it could lose
something: a real SIGKILL in the window, a rolled-back write, a fork, a migration."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import reclaim
from conftest import CHILD_TIMEOUT
from reclaim._identity import current_identity
from reclaim._registry import ResourceState
from reclaim._registry._sqlite import (
    _MAX_DEFERRED_RELEASES,
    _SCHEMA_V1,
    SCHEMA_VERSION,
    SQLiteRegistry,
)
from reclaim._run import current_run, end_run
from reclaim.backends import Backend, Record
from reclaim.backends.path import TempDir


def _states(path: str | Path) -> dict[int, tuple[str, float | None]]:
    """What another process reads: each entry's state and acquired_at."""
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute("SELECT id, state, acquired_at FROM resources").fetchall()
    finally:
        raw.close()
    return {r[0]: (r[1], r[2]) for r in rows}


def _events(path: str | Path) -> list[tuple[str, int | None]]:
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute("SELECT event, resource_id FROM events ORDER BY id").fetchall()
    finally:
        raw.close()
    return [(r[0], r[1]) for r in rows if r[0].startswith("resource.")]


class WithToken(Backend[str]):
    """Its acquire adds to the planned record (as a server-chosen id would)."""

    kind: ClassVar[str] = "test.with_token"

    def acquire(self, name: str) -> tuple[str, Record]:
        return name, {"name": name, "token_id": f"id-{name}"}

    @classmethod
    def release(cls, record: Record) -> None:
        return

    @classmethod
    def exists(cls, record: Record) -> bool:
        return False


def test_an_unchanged_record_is_journaled_with_the_next_write(
    registry_path: str, scratch: Path
) -> None:
    with reclaim.Fixture("deferred") as f:
        f.acquire(TempDir(parent=str(scratch)))
        (first,) = _states(registry_path)
        assert _states(registry_path)[first] == ("planned", None), "not written yet"
        f.acquire(TempDir(parent=str(scratch)))  # the next write carries the first mark
        states = _states(registry_path)
        assert states[first][0] == "acquired"
        assert states[first][1] is not None
        raw = sqlite3.connect(registry_path)
        (record,) = raw.execute("SELECT record FROM resources WHERE id = ?", (first,)).fetchone()
        raw.close()
        assert json.loads(record)["path"].startswith(str(scratch)), "the planned record stays"
        second = max(states)
        assert states[second] == ("planned", None)
    assert list(scratch.iterdir()) == []
    # The owner's released marks wait too: another process still sees both entries.
    assert set(_states(registry_path)) == {first, second}
    current_run(registry_path).registry.flush()
    assert _states(registry_path) == {}
    assert _events(registry_path) == [
        ("resource.planned", first),
        ("resource.acquired", first),
        ("resource.planned", second),
        ("resource.acquired", second),  # written with the releases, before them
        ("resource.released", second),
        ("resource.released", first),
    ]


def test_the_owners_own_reads_see_its_deferred_releases(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("deferred") as f:
        f.acquire(TempDir(parent=str(scratch)))
    registry = current_run(registry_path).registry
    assert _states(registry_path) != {}, "not written yet"
    assert registry.resources() == []  # a read of the object that deferred writes them first
    assert _states(registry_path) == {}


def test_a_next_plan_carries_the_release_of_the_last_one(registry_path: str, scratch: Path) -> None:
    """One write transaction per resource: the plan of the next takes the marks of the last."""
    with reclaim.Fixture("one") as f:
        f.acquire(TempDir(parent=str(scratch)))
    (first,) = _states(registry_path)
    with reclaim.Fixture("two") as f:
        f.acquire(TempDir(parent=str(scratch)))
        (second,) = _states(registry_path)
        assert second != first
    assert _events(registry_path)[-3:] == [
        ("resource.acquired", first),
        ("resource.released", first),
        ("resource.planned", second),
    ]


def test_a_record_that_adds_is_journaled_before_the_test_sees_it(registry_path: str) -> None:
    with reclaim.Fixture("eager") as f:
        f.acquire(WithToken())
        ((rid, (state, acquired_at)),) = _states(registry_path).items()
        assert state == "acquired"
        assert acquired_at is not None
        raw = sqlite3.connect(registry_path)
        (record,) = raw.execute("SELECT record FROM resources WHERE id = ?", (rid,)).fetchone()
        raw.close()
        assert json.loads(record)["token_id"].startswith("id-")


OWNER = """
import sys, time
import reclaim
from reclaim.backends.path import TempDir

f = reclaim.Fixture("killed")
f.__enter__()
value = f.acquire(TempDir(parent=sys.argv[1]))
print(value, flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def _owner(script: str, scratch: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A child owner that runs ``script`` with nothing flushing its deferred marks (no write
    delay, no renewal in time), and the path it prints; SIGKILLed at the end whatever happens."""
    env = {**os.environ, "RECLAIM_WRITE_DELAY": "600s", "RECLAIM_LEASE": "600"}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(scratch)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        yield child, Path(child.stdout.readline().strip())
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=CHILD_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()


def _kill(child: subprocess.Popen[str]) -> None:
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=CHILD_TIMEOUT)


def test_an_owner_killed_before_its_mark_is_written_is_reclaimed_from_the_plan(
    registry_path: str, scratch: Path
) -> None:
    """SIGKILL inside the window: the entry is still planned, and the watchdog releases the
    directory from the planned record (I1), as it would a crash in the middle of the acquire."""
    with _owner(OWNER, scratch) as (child, made):
        assert made.is_dir()
        assert [s for s, _ in _states(registry_path).values()] == ["planned"]
        _kill(child)
        _wait_for(lambda: not made.exists() and not _states(registry_path), CHILD_TIMEOUT)
        assert not made.exists(), "the watchdog left the directory behind"
        assert _states(registry_path) == {}, "the entry was not settled"
        assert ("resource.acquired", None) not in _events(registry_path)


RELEASED_THEN_KILLED = """
import sys, time
import reclaim
from reclaim.backends.path import TempDir

with reclaim.Fixture("released") as f:
    value = f.acquire(TempDir(parent=sys.argv[1]))
print(value, flush=True)  # released by the owner; its mark waits for a next write
time.sleep(600)
"""


def test_an_owner_killed_before_its_released_mark_is_written_leaves_nothing(
    registry_path: str, scratch: Path
) -> None:
    """SIGKILL after the owner released a directory, before the mark is written: the entry is
    still there, the watchdog releases it again (a no-op, I3) and settles it. What sits beside
    it under a look-alike name is never touched (I8)."""
    with _owner(RELEASED_THEN_KILLED, scratch) as (child, released):
        assert not released.exists(), "the owner did not release it"
        assert len(_states(registry_path)) == 1, "the mark was written at once"
        backup = released.with_name(released.name + "_backup")
        backup.mkdir()
        (backup / "keep").write_text("the user's")
        _kill(child)
        _wait_for(lambda: not _states(registry_path), CHILD_TIMEOUT)
        assert _states(registry_path) == {}, "the entry was not settled"
        assert not released.exists()
        assert (backup / "keep").read_text() == "the user's"
        raw = sqlite3.connect(registry_path)
        (by,) = raw.execute(
            "SELECT json_extract(detail, '$.by') FROM events WHERE event = 'resource.released'"
        ).fetchone()
        raw.close()
        assert by == "watchdog"


def _wait_for(check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def test_the_write_delay_bounds_how_long_a_mark_waits(
    registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No write follows, and the lease is long: the marks are written within the write delay
    all the same (by the run's renewal thread), the acquired one and then the released one."""
    monkeypatch.setenv("RECLAIM_LEASE", "600")
    monkeypatch.setenv("RECLAIM_WRITE_DELAY", "0.2s")
    end_run(registry_path)
    with reclaim.Fixture("delayed") as f:
        f.acquire(TempDir(parent=str(scratch)))
        assert [s for s, _ in _states(registry_path).values()] == ["planned"]
        assert _wait_for(lambda: [s for s, _ in _states(registry_path).values()] == ["acquired"])
    assert _wait_for(lambda: _states(registry_path) == {}), "the released mark still waits"
    end_run(registry_path)


def test_no_write_delay_writes_every_mark_at_once(
    registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECLAIM_WRITE_DELAY", "0")
    end_run(registry_path)
    with reclaim.Fixture("at once") as f:
        f.acquire(TempDir(parent=str(scratch)))
        assert [s for s, _ in _states(registry_path).values()] == ["acquired"]
    assert _states(registry_path) == {}
    end_run(registry_path)


@pytest.mark.parametrize("value", ["-1s", "soon"])
def test_a_bad_write_delay_is_refused_with_its_name(
    registry_path: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RECLAIM_WRITE_DELAY", value)
    end_run(registry_path)
    with (
        pytest.raises(ValueError, match=r"RECLAIM_WRITE_DELAY: .* is not a duration"),
        reclaim.Fixture("bad") as f,
    ):
        f.acquire(WithToken())


def _registry_with_entry(tmp_path: Path) -> tuple[SQLiteRegistry, int]:
    reg = SQLiteRegistry(tmp_path / "r.sqlite3")
    reg.open_run("0000feed", current_identity(), label="t")
    rid = reg.plan("0000feed", "f", "test.noop", "rc_0000feed_1_a", {"name": "rc_0000feed_1_a"})
    return reg, rid


def test_a_write_that_rolls_back_keeps_the_mark_pending(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    reg.mark_acquired(rid, {"name": "rc_0000feed_1_a"}, defer=True)
    with pytest.raises(sqlite3.IntegrityError):
        reg.plan("no-such-run", "f", "test.noop", "rc_x", {"name": "rc_x"})  # rolled back
    assert _states(reg.path)[rid] == ("planned", None)
    reg.flush()
    assert _states(reg.path)[rid][0] == "acquired"
    reg.close()


def test_a_write_that_rolls_back_keeps_a_released_mark_pending(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    reg.mark_released(rid, actor="fixture", defer=True)
    with pytest.raises(sqlite3.IntegrityError):
        reg.plan("no-such-run", "f", "test.noop", "rc_x", {"name": "rc_x"})  # rolled back
    assert rid in _states(reg.path)
    reg.flush()
    assert _states(reg.path) == {}
    reg.close()


def test_a_reapers_released_mark_is_written_at_once(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    assert reg.begin_release(rid, states=(ResourceState.PLANNED,)) is not None
    reg.mark_released(rid, actor="sweeper")
    assert _states(reg.path) == {}
    reg.close()


def test_deferred_released_marks_are_written_before_too_many_wait(tmp_path: Path) -> None:
    """However long the owner goes without another write, what a crash would leave for a
    reaper to release again stays bounded."""
    reg = SQLiteRegistry(tmp_path / "r.sqlite3")
    reg.open_run("0000feed", current_identity(), label="t")
    ids = [
        reg.plan("0000feed", "f", "test.noop", f"rc_0000feed_1_{n}", {"name": f"rc_0000feed_1_{n}"})
        for n in range(1, _MAX_DEFERRED_RELEASES + 1)
    ]
    for rid in ids[:-1]:
        reg.mark_released(rid, actor="fixture", defer=True)
    assert len(_states(reg.path)) == len(ids), "written before the bound"
    reg.mark_released(ids[-1], actor="fixture", defer=True)
    assert _states(reg.path) == {}
    reg.close()


def test_a_forked_child_never_writes_its_parents_marks(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    other = reg.plan("0000feed", "f", "test.noop", "rc_0000feed_1_b", {"name": "rc_0000feed_1_b"})
    reg.mark_acquired(rid, {"name": "rc_0000feed_1_a"}, defer=True)
    reg.mark_released(other, actor="fixture", defer=True)
    pid = os.fork()
    if pid == 0:  # the child: a write of its own, then gone
        code = 0
        try:
            reg.add_event("child.wrote")
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _states(reg.path)[rid] == ("planned", None), "the child wrote the parent's mark"
    assert other in _states(reg.path), "the child wrote the parent's release"
    reg.close()  # the parent's close writes them
    assert _states(reg.path) == {rid: ("acquired", _states(reg.path)[rid][1])}


def test_a_reaper_that_took_the_entry_is_not_overwritten_by_a_late_mark(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    reg.mark_acquired(rid, {"name": "rc_0000feed_1_a"}, defer=True)
    other = SQLiteRegistry(reg.path)
    assert other.begin_release(rid, states=(ResourceState.PLANNED,)) is not None
    reg.flush()
    assert _states(reg.path)[rid] == ("releasing", None), "a late mark undid a reaper's claim"
    other.close()
    reg.close()


def test_prune_keeps_the_newest_event_so_ids_never_come_back(tmp_path: Path) -> None:
    reg = SQLiteRegistry(tmp_path / "r.sqlite3")
    for n in range(5):
        reg.add_event(f"test.{n}")
    newest = reg.last_event_id()
    assert reg.prune_events(time.time() + 3600) == 4
    assert [e.id for e in reg.events()] == [newest]
    reg.add_event("test.after")
    assert reg.last_event_id() == newest + 1
    # Old events before new ones: only the old go.
    raw = sqlite3.connect(reg.path)
    raw.execute("UPDATE events SET at = 1.0")
    raw.commit()
    raw.close()
    for n in range(3):
        reg.add_event(f"test.new.{n}")
    assert reg.prune_events(time.time() - 3600) == 2
    assert [e.event for e in reg.events()] == ["test.new.0", "test.new.1", "test.new.2"]
    reg.close()


def test_a_version_1_registry_keeps_its_events_and_loses_its_indexes(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(_SCHEMA_V1)
    raw.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("application", "reclaim"), ("schema_version", "1")],
    )
    raw.executemany(
        "INSERT INTO events (id, at, event, detail) VALUES (?, ?, ?, '{\"n\":1}')",
        [(7, 1.0, "old.a"), (9, 2.0, "old.b")],
    )
    raw.commit()
    raw.close()
    reg = SQLiteRegistry(path)
    old: list[Any] = [(e.id, e.event, e.detail) for e in reg.events()]
    assert old == [(7, "old.a", {"n": 1}), (9, "old.b", {"n": 1})]
    reg.add_event("new")
    assert reg.last_event_id() == 10
    reg.close()
    raw = sqlite3.connect(path)
    indexes = raw.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall()
    version = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    raw.close()
    assert indexes == []
    assert version == (str(SCHEMA_VERSION),)


def test_postponed_checkpoints_wait_for_the_close(tmp_path: Path) -> None:
    """The watchdog's connection never stops for a checkpoint (two fsyncs) between a death and
    the last release: its commits leave the WAL to grow, and its close checkpoints it."""
    reg = SQLiteRegistry(tmp_path / "r.sqlite3")
    wal = Path(f"{reg.path}-wal")
    reg.postpone_checkpoints()
    for n in range(600):  # each its own transaction: far more than SQLite's 1000-page interval
        reg.add_event("test.big", detail={"n": n, "pad": "x" * 6000})
    other = sqlite3.connect(reg.path)
    _busy, frames, _done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    other.close()
    assert frames > 1000, f"the WAL held {frames} frames: a checkpoint restarted it meanwhile"
    reg.close()
    assert not wal.exists() or wal.stat().st_size == 0, "the close did not checkpoint it"

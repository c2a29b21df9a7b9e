"""The lean bookkeeping of the SQLite registry (issue 15): acquired marks that add nothing to
the planned record wait for the next write, the owner releases without a claim's transaction,
and the schema has no index a write pays for. Each rule is checked where it could lose
something: a real SIGKILL in the window, a rolled-back write, a fork, a migration."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import reclaim
from conftest import CHILD_TIMEOUT
from reclaim._identity import current_identity
from reclaim._registry import ResourceState
from reclaim._registry._sqlite import _SCHEMA_V1, SCHEMA_VERSION, SQLiteRegistry
from reclaim._run import end_run
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
        second = max(states)
        assert states[second] == ("planned", None)
    assert _states(registry_path) == {}
    assert _events(registry_path) == [
        ("resource.planned", first),
        ("resource.acquired", first),
        ("resource.planned", second),
        ("resource.acquired", second),  # written by the release's transaction, before it
        ("resource.released", second),
        ("resource.released", first),
    ]
    assert list(scratch.iterdir()) == []


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


def test_an_owner_killed_before_its_mark_is_written_is_reclaimed_from_the_plan(
    registry_path: str, scratch: Path
) -> None:
    """SIGKILL inside the window: the entry is still planned, and the watchdog releases the
    directory from the planned record (I1), as it would a crash in the middle of the acquire."""
    env = {**os.environ, "RECLAIM_LEASE": "600"}  # no renewal flushes the mark meanwhile
    child = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(scratch)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        made = Path(child.stdout.readline().strip())
        assert made.is_dir()
        assert [s for s, _ in _states(registry_path).values()] == ["planned"]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=CHILD_TIMEOUT)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while (made.exists() or _states(registry_path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not made.exists(), "the watchdog left the directory behind"
        assert _states(registry_path) == {}, "the entry was not settled"
        assert ("resource.acquired", None) not in _events(registry_path)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=CHILD_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()


def test_a_renewal_writes_a_mark_that_no_write_followed(
    registry_path: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECLAIM_LEASE", "1.5")  # a renewal every half second
    end_run(registry_path)
    with reclaim.Fixture("renewed") as f:
        f.acquire(TempDir(parent=str(scratch)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if [s for s, _ in _states(registry_path).values()] == ["acquired"]:
                break
            time.sleep(0.05)
        assert [s for s, _ in _states(registry_path).values()] == ["acquired"]
    end_run(registry_path)


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


def test_a_forked_child_never_writes_its_parents_marks(tmp_path: Path) -> None:
    reg, rid = _registry_with_entry(tmp_path)
    reg.mark_acquired(rid, {"name": "rc_0000feed_1_a"}, defer=True)
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
    reg.close()  # the parent's close writes it
    assert _states(reg.path)[rid][0] == "acquired"


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

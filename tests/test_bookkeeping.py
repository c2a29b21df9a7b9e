"""The lean bookkeeping of the SQLite registry (issue 15): a Fixture's plans and its own
releases are lines appended to its run's journal file, merged into the tables by its next
write, its renewal thread (within the write delay), any listing and the run's reaper; acquired
marks that add nothing to the planned record wait in memory. No write transaction per
resource, and the schema has no index a write pays for. Each rule is checked where it could
lose something: a real SIGKILL in the window, a damaged or half-written line, a rolled-back
write, a fork, a migration."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
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
    _MAX_WAITING,
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


def _journal(path: str | Path) -> list[list[Any]]:
    """The lines of every run's journal file beside the registry at ``path``."""
    folder = Path(f"{path}-plans")
    return [
        json.loads(line) for f in sorted(folder.iterdir()) for line in f.read_text().splitlines()
    ]


def _seen(path: str | Path) -> dict[int, str]:
    """What another process's listing sees (it merges the journals first)."""
    reg = SQLiteRegistry(path, create=False)
    try:
        return {r.id: r.state.value for r in reg.resources()}
    finally:
        reg.close()


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


def test_a_fixtures_entries_wait_in_its_journal_until_a_merge(
    registry_path: str, scratch: Path
) -> None:
    with reclaim.Fixture("deferred") as f:
        f.acquire(TempDir(parent=str(scratch)))
        ((tag, first, *_),) = _journal(registry_path)
        assert tag == "p"
        assert _states(registry_path) == {}, "a plan is no write transaction"
        assert _seen(registry_path) == {first: "planned"}, "a listing merges it"
        assert _states(registry_path) == {first: ("planned", None)}
        f.acquire(TempDir(parent=str(scratch)))
        second = _journal(registry_path)[-1][1]
        assert second != first
        assert set(_states(registry_path)) == {first}, "the second waits in the journal"
    assert list(scratch.iterdir()) == []
    # The releases are journal lines too, each after the acquired mark that waited in memory.
    assert [line[:2] for line in _journal(registry_path)[2:]] == [
        ["a", second], ["r", second], ["a", first], ["r", first],
    ]  # fmt: skip
    assert set(_states(registry_path)) == {first}, "not merged yet"
    current_run(registry_path).registry.flush()
    assert _states(registry_path) == {}
    assert _events(registry_path) == [
        ("resource.planned", first),  # merged by the listing
        ("resource.acquired", first),  # the rest in the order of their times, not the file's
        ("resource.planned", second),
        ("resource.acquired", second),
        ("resource.released", second),
        ("resource.released", first),
    ]


def test_a_plan_line_is_the_json_of_its_fields(tmp_path: Path) -> None:
    """The plan line is put together by hand: it must be what json writes for the same fields
    (times to the microsecond), and merge back to the same strings, whatever they hold."""
    reg = SQLiteRegistry(tmp_path / "registry.sqlite3")
    run = reg.open_run("0000b00a", current_identity(), label="line")
    odd = 'fx "quoted" \\ back\nline \u00e9t\u00e9 \U0001d11e \x00'
    record = {"name": "rc_odd", "path": "/tmp/é", "n": 1.5, "list": [1, None, True]}
    rid = reg.plan(run.id, odd, "path.tempdir", "rc_odd", record, defer=True)
    (raw,) = (tmp_path / "registry.sqlite3-plans" / run.id).read_bytes().splitlines()
    fields = json.loads(raw)
    at = fields[6]
    assert raw.decode() == json.dumps(
        ["p", rid, odd, "path.tempdir", "rc_odd", record, 0.0], separators=(",", ":")
    ).replace(",0.0]", f",{at:.6f}]")
    assert abs(at - time.time()) < 60
    (row,) = reg.resources(run.id)
    assert (row.fixture, row.record) == (odd, record)
    reg.close()


def test_the_owners_own_reads_see_its_journal(registry_path: str, scratch: Path) -> None:
    with reclaim.Fixture("deferred") as f:
        f.acquire(TempDir(parent=str(scratch)))
    registry = current_run(registry_path).registry
    assert _events(registry_path) == [], "not merged yet"
    assert registry.resources() == []  # a read of the object that deferred merges first
    assert [e for e, _ in _events(registry_path)] == [
        "resource.planned", "resource.acquired", "resource.released",
    ]  # fmt: skip


def test_a_fixtures_resources_take_no_write_transaction(registry_path: str, scratch: Path) -> None:
    """Proved by SQLite's own counter of other connections' commits: many resources acquired
    and released, and the registry file does not change until the merge."""
    with reclaim.Fixture("warm") as f:
        f.acquire(TempDir(parent=str(scratch)))  # opens the run, reserves a block of ids
    raw = sqlite3.connect(registry_path)
    try:
        before = raw.execute("PRAGMA data_version").fetchone()
        for _ in range(20):
            with reclaim.Fixture("many") as f:
                f.acquire(TempDir(parent=str(scratch)))
        assert raw.execute("PRAGMA data_version").fetchone() == before
        current_run(registry_path).registry.flush()
        assert raw.execute("PRAGMA data_version").fetchone() != before
    finally:
        raw.close()
    released = [rid for e, rid in _events(registry_path) if e == "resource.released"]
    assert len(set(released)) == 21


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
        assert _states(registry_path) == {}, "journaled, not merged"
        assert [line[0] for line in _journal(registry_path)] == ["p"]
        _kill(child)
        _wait_for(lambda: not made.exists() and not _states(registry_path), CHILD_TIMEOUT)
        assert not made.exists(), "the watchdog left the directory behind"
        assert _states(registry_path) == {}, "the entry was not settled"
        events = _events(registry_path)
        assert [e for e, _ in events] == ["resource.planned", "resource.released"]
        folder = Path(f"{registry_path}-plans")
        assert _wait_for(lambda: not any(folder.iterdir())), "the journal outlived its run"


RELEASED_THEN_KILLED = """
import sys, time
import reclaim
from reclaim.backends.path import TempDir

with reclaim.Fixture("released") as f:
    value = f.acquire(TempDir(parent=sys.argv[1]))
print(value, flush=True)  # released by the owner; its mark waits for a next write
time.sleep(600)
"""


def test_an_owner_killed_after_its_release_loses_no_mark(registry_path: str, scratch: Path) -> None:
    """SIGKILL after the owner released a directory, before anything is merged: its journal
    holds the plan, the acquired mark and the release, and the watchdog merges them all, so
    the release is the fixture's and nothing is released twice. What sits beside it under a
    look-alike name is never touched (I8)."""
    with _owner(RELEASED_THEN_KILLED, scratch) as (child, released):
        assert not released.exists(), "the owner did not release it"
        assert _events(registry_path) == [], "merged at once"
        assert [line[0] for line in _journal(registry_path)] == ["p", "a", "r"]
        backup = released.with_name(released.name + "_backup")
        backup.mkdir()
        (backup / "keep").write_text("the user's")
        _kill(child)
        folder = Path(f"{registry_path}-plans")
        assert _wait_for(lambda: not any(folder.iterdir()), CHILD_TIMEOUT), "never reaped"
        assert _states(registry_path) == {}
        assert not released.exists()
        assert (backup / "keep").read_text() == "the user's"
        raw = sqlite3.connect(registry_path)
        by = raw.execute(
            "SELECT json_extract(detail, '$.by') FROM events WHERE event = 'resource.released'"
        ).fetchall()
        raw.close()
        assert by == [("fixture",)]


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
        assert _states(registry_path) == {}, "merged at once"
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
        for n in range(1, _MAX_WAITING + 1)
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


# --- the journal's failure modes --------------------------------------------------------------


def _journaling(tmp_path: Path) -> tuple[SQLiteRegistry, str]:
    reg = SQLiteRegistry(tmp_path / "r.sqlite3")
    reg.open_run("0000feed", current_identity(), label="t")
    return reg, "0000feed"


def _plan(reg: SQLiteRegistry, run_id: str, n: int, **extra: Any) -> int:
    name = f"rc_{run_id}_{n}_a"
    return reg.plan(run_id, "f", "test.noop", name, {"name": name, **extra}, defer=True)


def test_a_half_written_last_line_is_never_merged_and_nothing_else_is_lost(
    tmp_path: Path,
) -> None:
    """The owner died inside its write(2): the line has no newline, so its backend never ran.
    Every whole line before it is merged; the rest of the file is left as it is."""
    reg, run_id = _journaling(tmp_path)
    ids = [_plan(reg, run_id, n) for n in (1, 2)]
    journal = Path(f"{reg.path}-plans") / run_id
    whole = journal.read_bytes()
    with journal.open("ab") as f:
        f.write(b'["p",999,"f","test.noop","rc_0000feed_3_a",{"na')  # cut off by the kill
    assert set(_seen(reg.path)) == set(ids)
    raw = sqlite3.connect(reg.path)
    (merged,) = raw.execute("SELECT plans_merged FROM runs").fetchone()
    raw.close()
    assert merged == len(whole)
    assert _seen(reg.path) == dict.fromkeys(ids, "planned"), "merged twice, or the tail taken"
    reg.close()


@pytest.mark.parametrize(
    "damage",
    [
        b'["p","not an id"]\n',
        b'["p",7,"f","test.noop","rc_0000feed_2_\xff",{},1.0]\n',  # not UTF-8
        b'["r",7,1.0,"by the fixture"]\n',
        b'["x",7,1.0]\n',
        b"\n",
        b'["a",7,1.0]["a",7,1.0]\n',  # two values on one line
        b'["a",7,\n1.0]\n',  # one value over two lines
    ],
)
def test_a_damaged_line_is_refused_naming_the_file_and_loses_nothing(
    tmp_path: Path, damage: bytes
) -> None:
    reg, run_id = _journaling(tmp_path)
    first = _plan(reg, run_id, 1)
    journal = Path(f"{reg.path}-plans") / run_id
    with journal.open("ab") as f:
        f.write(damage)
    _plan_line_after = journal.read_bytes()
    other = SQLiteRegistry(reg.path)
    with pytest.raises(reclaim.RegistryCorruptError, match=r"damaged line at byte \d+") as info:
        other.resources()
    assert str(journal) in str(info.value)
    assert journal.read_bytes() == _plan_line_after, "the file was changed"
    assert _states(reg.path) == {}, "a part of a damaged stretch was merged"
    # Moved away by the user, as the error says: what was before it is in the file they keep.
    assert any(line.startswith(f'["p",{first},'.encode()) for line in _plan_line_after.split(b"\n"))
    other.close()
    reg.close()


def test_lines_the_one_pass_reader_declines_are_judged_one_by_one(tmp_path: Path) -> None:
    """A merge reads a stretch in one pass of json's scanner; a line that it declines but that
    is a journal line (spaces around its value) is still merged, as the line-by-line reader,
    the only judge, takes it."""
    reg, run_id = _journaling(tmp_path)
    kept, gone = _plan(reg, run_id, 1), _plan(reg, run_id, 2)
    journal = Path(f"{reg.path}-plans") / run_id
    with journal.open("ab") as f:
        f.write(f' ["r",{gone},2.0,{{"by":"fixture"}}] \n'.encode())
    assert _seen(reg.path) == {kept: "planned"}
    reg.close()


FILLED = """
import os, resource, signal, sys
import reclaim
from reclaim.backends.path import TempDir

folder = sys.argv[1]
with reclaim.Fixture("full") as f:
    f.acquire(TempDir(parent=folder))  # opens the run and its journal
    journal = next(p for p in os.scandir(os.environ["RECLAIM_REGISTRY"] + "-plans"))
    size = os.stat(journal.path).st_size
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
    try:
        f.acquire(TempDir(parent=folder))  # its line is longer than 40 bytes: written in part
    except reclaim.NotCreatedError as exc:
        print("refused:", exc, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("sizes", size, os.stat(journal.path).st_size, len(os.listdir(folder)), flush=True)
    f.acquire(TempDir(parent=folder))
print("done", flush=True)
"""


def test_a_write_that_fails_half_way_is_cut_off_and_nothing_is_created(
    registry_path: str, scratch: Path
) -> None:
    """A real short write (the file-size limit, as a full disk would do it): the acquisition
    is refused before anything is made, the part written is cut off again, and the next line
    is whole."""
    out = subprocess.run(
        [sys.executable, "-c", FILLED, str(scratch)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused: path.tempdir"), lines
    assert "cannot journal the plan" in lines[0]
    _, before, after, made = lines[1].split()
    assert before == after, "the part written was not cut off"
    assert made == "1", "a directory was made for a plan that was never journaled"
    assert lines[2] == "done"
    assert list(scratch.iterdir()) == []
    assert _seen(registry_path) == {}
    events = _events(registry_path)
    assert [e for e, _ in events].count("resource.released") == 2


def test_the_journal_is_private_and_goes_with_its_run(registry_path: str, scratch: Path) -> None:
    """Records may hold credentials (I7): 0700 folder, 0600 file. The run's close deletes it."""
    with reclaim.Fixture("private") as f:
        f.acquire(TempDir(parent=str(scratch)))
        folder = Path(f"{registry_path}-plans")
        (journal,) = folder.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    end_run(registry_path)
    assert list(folder.iterdir()) == []


def test_an_orphaned_journal_goes_only_when_old_and_without_its_run(tmp_path: Path) -> None:
    """A crash between the close that deleted a run's row and the file's deletion leaves the
    file (merged whole by that close); a listing deletes it once it is a minute old. A live
    run's file is never taken for one, however old."""
    reg, run_id = _journaling(tmp_path)
    _plan(reg, run_id, 1)
    folder = Path(f"{reg.path}-plans")
    orphan, young = folder / "0000dead", folder / "0000beef"
    orphan.write_text('["p",5,"f","test.noop","rc_0000dead_1_a",{},1.0]\n')
    young.write_text(orphan.read_text())
    old = time.time() - 3600
    for path in (orphan, folder / run_id):
        os.utime(path, (old, old))
    assert len(reg.resources()) == 1
    assert not orphan.exists()
    assert young.exists(), "an orphan younger than a minute"
    assert (folder / run_id).exists(), "a live run's journal"
    reg.close()


def test_files_in_the_journal_folder_that_are_no_journal_are_never_deleted(
    tmp_path: Path,
) -> None:
    """I8 for the folder reclaim keeps its journals in: an old file without a run row is
    deleted only once it is proved a journal. A user's notes, an empty file, a journal's
    look-alike with one line that is not ours, a link and a folder all stay, untouched."""
    reg, run_id = _journaling(tmp_path)
    _plan(reg, run_id, 1)
    folder = Path(f"{reg.path}-plans")
    outside = tmp_path / "precious"
    outside.write_text('["p",5,"f","test.noop","rc_0000dead_1_a",{},1.0]\n')
    kept = {
        "0000cafe": b"my notes\n",
        "notes.txt": b"my notes, no newline",
        "0000f00d": b"",
        "0000babe": b'["p",5,"f","test.noop","rc_0000babe_1_a",{},1.0]\nnot ours\n',
    }
    for name, content in kept.items():
        (folder / name).write_bytes(content)
    (folder / "0000beef").symlink_to(outside)
    (folder / "0000face").mkdir()
    orphan = folder / "0000dead"
    orphan.write_text('["p",5,"f","test.noop","rc_0000dead_1_a",{},1.0]\n["r",5,2.0,{"by":"x"}]\n')
    old = time.time() - 3600
    for path in [orphan, outside, folder / "0000face", *(folder / n for n in kept)]:
        os.utime(path, (old, old))
    os.utime(folder / "0000beef", (old, old), follow_symlinks=False)
    reg.resources()
    assert not orphan.exists(), "a proved orphan stayed"
    for name, content in kept.items():
        assert (folder / name).read_bytes() == content, name
    assert (folder / "0000beef").is_symlink()
    assert outside.read_text().startswith('["p",5,')
    assert (folder / "0000face").is_dir()
    reg.close()


def test_a_forked_child_draws_no_id_of_its_parents_block(tmp_path: Path) -> None:
    """The reserved block and the open file are the parent's: a child that plans (here, for
    the same run, as no real child would) reserves its own ids and opens the file anew."""
    reg, run_id = _journaling(tmp_path)
    first = _plan(reg, run_id, 1)
    journal = Path(f"{reg.path}-plans") / run_id
    before = journal.read_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a deferred plan of its own, then gone
        code = 0
        try:
            os.write(write_end, str(_plan(reg, run_id, 2)).encode())
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.close(write_end)
    child_id = int(os.read(read_end, 64))
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id != first, "the child drew an id from the parent's block"
    after = journal.read_bytes()
    assert after.startswith(before)
    assert after.count(b"\n") == 2, "the child's line was not whole, or it wrote the parent's"
    second = _plan(reg, run_id, 3)
    assert second not in {first, child_id}
    assert set(_seen(reg.path)) == {first, child_id, second}
    reg.close()

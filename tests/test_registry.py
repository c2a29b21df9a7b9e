"""The SQLite registry: many writers at once, file modes, and files that are not registries."""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from _services import TcpProxy, closed_port, with_port
from conftest import drop_postgres_registry, postgres_registry_url, reclaim_cli
from reclaim import RegistryCorruptError, RegistryError, RegistryVersionError
from reclaim._identity import Identity, current_identity
from reclaim._registry import ResourceState, _postgres, _rows, default_location, open_registry
from reclaim._registry._postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from reclaim._registry._postgres import PostgresRegistry
from reclaim._registry._sqlite import _SCHEMA_V1, SCHEMA_VERSION

WORKER = """
import sys
import reclaim
from reclaim.backends.path import TempDir

parent, count = sys.argv[1], int(sys.argv[2])
with reclaim.Fixture("worker") as f:
    for _ in range(count):
        with reclaim.Fixture("one") as one:
            one.acquire(TempDir(parent=parent))
print("done", flush=True)
"""


@pytest.mark.slow
def test_eight_processes_share_one_registry(registry_path: str, scratch: Path) -> None:
    """8 processes acquire and release 500 resources each at once: no lost write, no
    'database is locked', every entry accounted for in the tables and the event log."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(scratch), "500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err
        assert out.strip() == "done"
        assert "locked" not in err
    reg = open_registry(registry_path)
    events = reg.events(limit=100_000)
    counts = collections.Counter(e.event for e in events)
    assert counts["resource.planned"] == 4000
    assert counts["resource.acquired"] == 4000
    assert counts["resource.released"] == 4000
    assert counts["run.opened"] == counts["run.closed"] == 8
    per_resource = collections.Counter(e.resource_id for e in events if e.resource_id)
    assert set(per_resource.values()) == {3}, "each resource: planned, acquired, released"
    assert reg.resources() == []
    assert reg.list_runs() == []
    assert list(scratch.iterdir()) == []
    reg.close()


def test_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "registry.sqlite3"
    old = os.umask(0o022)
    try:
        open_registry(str(path)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A registry somebody loosened is tightened again: it may hold credentials (I7).
    path.chmod(0o644)
    open_registry(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RECLAIM_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_location() == str(tmp_path / "reclaim" / "registry.sqlite3")
    monkeypatch.setenv("RECLAIM_REGISTRY", "/somewhere/r.db")
    assert default_location() == "/somewhere/r.db"


def test_schema_records_runs_resources_events(registry_path: str) -> None:
    reg = open_registry(registry_path)
    run = reg.open_run("0000e001", current_identity(), label="schema")
    rid = reg.plan(run.id, "fx", "path.tempdir", "rc_x", {"name": "rc_x"})
    reg.mark_acquired(rid, {"name": "rc_x", "path": "/nowhere"})
    (resource,) = reg.resources(run.id)
    assert (resource.kind, resource.name, resource.state, resource.fixture) == (
        "path.tempdir",
        "rc_x",
        "acquired",
        "fx",
    )
    assert resource.record == {"name": "rc_x", "path": "/nowhere"}
    stored = reg.get_run(run.id)
    assert stored is not None
    assert stored.owner == current_identity()
    reg.close()
    if "://" in registry_path:
        assert _pg_meta(registry_path)["schema_version"] == str(PG_SCHEMA_VERSION)
        return
    raw = sqlite3.connect(registry_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        raw.close()


def test_events_with_the_same_detail_each_get_their_own(registry_path: str) -> None:
    """A page of events decodes each distinct detail once; every event still has a dict of
    its own, so that changing one changes no other."""
    reg = open_registry(registry_path)
    after = reg.last_event_id()
    for n in range(3):
        reg.add_event("test.same", detail={"by": "fixture", "n": 0})
        reg.add_event("test.other", detail={"by": "sweeper", "n": n})
    events = reg.events(after_id=after)
    reg.close()
    same = [e for e in events if e.event == "test.same"]
    assert [e.detail for e in same] == [{"by": "fixture", "n": 0}] * 3
    assert [e.detail["n"] for e in events if e.event == "test.other"] == [0, 1, 2]
    same[0].detail["n"] = 99
    assert [e.detail["n"] for e in same] == [99, 0, 0]
    assert all(type(e.id) is int and e.id > after for e in events)


def _histories_from_events(reg: Any, after: int) -> list[tuple[Any, ...]]:
    """What ``resource_histories`` must say, walked from the events one by one (the oracle)."""
    planned: dict[int, list[Any]] = {}
    for _id, _at, event, run_id, rid, kind, name, detail in reg.event_rows(after, 100_000):
        if rid is None:
            continue
        if event == "resource.planned":
            planned[rid] = [rid, run_id, kind, name, 0, None, None]
        elif rid in planned and event == "resource.acquired":
            planned[rid][4] = 1
        elif rid in planned and event in _rows.OUTCOME_EVENTS:
            planned[rid][5:] = [event, detail]
    return [tuple(h) for h in planned.values()]


def test_resource_histories_say_what_the_events_say(registry_path: str) -> None:
    """The pytest summary reads each resource's life grouped by the database; it must say what
    the events say one by one: every way a life ends, journaled plans merged first, a resource
    planned before the cursor left out, and the last outcome winning."""
    reg = open_registry(registry_path)
    one = reg.open_run("00001001", current_identity(), label="one")
    two = reg.open_run("00001002", current_identity(), label="two")
    before = reg.plan(one.id, "fx", "path.tempdir", "rc_before", {"name": "rc_before"})
    after = reg.last_event_id()
    reg.mark_acquired(before, {"name": "rc_before"})  # planned before the cursor: left out

    def planned(run: str, name: str, *, defer: bool = False) -> int:
        return reg.plan(run, "fx", "path.tempdir", name, {"name": name}, defer=defer)

    held = planned(one.id, "rc_held")
    reg.mark_acquired(held, {"name": "rc_held"})
    released = planned(two.id, "rc_released")
    reg.mark_acquired(released, {"name": "rc_released", "path": "/x"})
    reg.mark_released(released, actor="fixture")
    retried = planned(one.id, "rc_retried")
    reg.mark_acquired(retried, {"name": "rc_retried"})
    reg.mark_failed(retried, "boom", attempts=3, actor="watchdog")
    reg.mark_released(retried, actor="sweeper")  # the last outcome wins
    failed = planned(two.id, "rc_failed")
    reg.mark_failed(failed, "no such server", attempts=1, actor="fixture")
    never = planned(one.id, "rc_never")
    assert reg.close_planned(never, "the server said no", actor="fixture")
    forgotten = planned(two.id, "rc_forgotten")
    assert reg.forget(forgotten, actor="cli") is not None
    journaled = planned(one.id, "rc_journaled", defer=True)  # a line of the run's journal
    reg.mark_acquired(journaled, {"name": "rc_journaled"}, defer=True)
    reg.mark_released(journaled, actor="fixture", defer=True)
    only_planned = planned(one.id, "rc_only_planned", defer=True)

    histories = reg.resource_histories(after)
    expected = _histories_from_events(reg, after)
    openings = reg.run_openings(0)
    reg.close()
    assert histories == expected
    by_id = {h[0]: h for h in histories}
    assert [h[0] for h in histories] == [
        held, released, retried, failed, never, forgotten, journaled, only_planned
    ]  # fmt: skip
    assert before not in by_id
    assert by_id[held][4:6] == (1, None)
    assert by_id[released][1:6] == (two.id, "path.tempdir", "rc_released", 1, "resource.released")
    assert by_id[retried][5] == "resource.released"
    assert json.loads(by_id[retried][6] or "")["by"] == "sweeper"
    assert by_id[failed][4:6] == (0, "resource.failed")
    assert json.loads(by_id[failed][6] or "")["error"] == "no such server"
    assert by_id[never][5] == "resource.not_created"
    assert by_id[forgotten][5] == "resource.forgotten"
    assert by_id[journaled][4:6] == (1, "resource.released")
    assert by_id[only_planned][4:6] == (0, None)
    assert [run_id for run_id, _ in openings] == [one.id, two.id]
    assert json.loads(openings[0][1])["label"] == "one"


def test_a_version_1_registry_is_migrated_and_keeps_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(_SCHEMA_V1)
    raw.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("application", "reclaim"), ("schema_version", "1")],
    )
    owner = json.dumps(current_identity().to_json())
    raw.execute(
        "INSERT INTO runs (id, label, owner, state, started_at, heartbeat_at, lease_seconds)"
        " VALUES ('0000abcd', 'old', ?, 'open', 1, 1, 60)",
        (owner,),
    )
    for rid, state in ((1, "planned"), (2, "failed"), (3, "acquired")):
        raw.execute(
            "INSERT INTO resources (id, run_id, fixture, kind, name, record, state, created_at,"
            " updated_at) VALUES (?, '0000abcd', 'f', 'path.tempdir', ?, '{}', ?, 1, 5)",
            (rid, f"rc_0000abcd_1_{rid}", state),
        )
    raw.commit()
    raw.close()
    reg = open_registry(str(path))
    got = {r.id: r.acquired_at for r in reg.resources()}
    assert got == {1: None, 2: 5, 3: 5}, "planned rows never existed for sure; others may have"
    reg.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    raw.close()


def _unchanged(path: Path, content: bytes) -> None:
    assert path.read_bytes() == content, "a bad registry must never be replaced"


def test_a_text_file_is_not_a_registry(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my shopping list\n")
    with pytest.raises(RegistryCorruptError) as info:
        open_registry(str(path))
    assert str(path) in str(info.value)
    assert "move it away" in str(info.value)
    _unchanged(path, b"my shopping list\n")


def test_a_foreign_sqlite_database_is_not_a_registry(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    content = path.read_bytes()
    with pytest.raises(RegistryCorruptError, match="not a reclaim registry"):
        open_registry(str(path))
    _unchanged(path, content)


def test_a_damaged_registry_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    open_registry(str(path)).close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # keep the header, destroy the pages
    path.write_bytes(bytes(data))
    for wal in (tmp_path / "registry.sqlite3-wal", tmp_path / "registry.sqlite3-shm"):
        wal.unlink(missing_ok=True)
    with pytest.raises(RegistryCorruptError) as info:
        open_registry(str(path))
    assert str(path) in str(info.value)
    _unchanged(path, bytes(data))


def test_a_newer_schema_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    open_registry(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryVersionError, match="upgrade reclaim"):
        open_registry(str(path))


def test_cli_reports_a_corrupt_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.sqlite3"
    path.write_bytes(b"not sqlite at all")
    monkeypatch.setenv("RECLAIM_REGISTRY", str(path))
    result = reclaim_cli("status", check=False)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    _unchanged(path, b"not sqlite at all")


def test_status_does_not_create_a_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "none" / "registry.sqlite3"
    monkeypatch.setenv("RECLAIM_REGISTRY", str(path))
    assert reclaim_cli("status", "--json").stdout.strip() == '{"runs": []}'
    assert reclaim_cli("sweep", "--json").stdout.startswith('{"released": 0')
    assert not path.exists()
    assert not path.parent.exists()


# --- both registries: the compare-and-set claims ---------------------------------------------

DEAD = Identity(host="elsewhere", boot_id="b", pidns="", pid=1, start_time=1)


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads released at the same instant; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_claims_and_outcomes_in_batches_skip_what_another_holds(registry_path: str) -> None:
    """``begin_release_many`` claims only what nobody else holds, in the order asked, and
    racing it against a second registry object leaves each entry with one claimer (I6);
    ``mark_released_many`` writes an event per entry (I5)."""
    one, two = open_registry(registry_path), open_registry(registry_path)
    try:
        run = one.open_run("0000ba7c", DEAD, label="batch")
        ids = [one.plan(run.id, "fx", "test.thing", f"rc_{run.id}_{n}", {}) for n in range(6)]
        held = two.begin_release(ids[2], states=(ResourceState.PLANNED,))
        assert held is not None
        claimed = one.begin_release_many(ids, states=(ResourceState.PLANNED,))
        assert [r.id for r in claimed] == [i for i in ids if i != ids[2]]
        assert all(r.state == ResourceState.RELEASING for r in claimed)
        assert one.begin_release_many(ids, states=(ResourceState.PLANNED,)) == []
        after = one.last_event_id()
        one.mark_released_many([ids[5], ids[0]], actor="batch")
        released = [e for e in one.events(after) if e.event == "resource.released"]
        assert [e.resource_id for e in released] == [ids[5], ids[0]]
        assert {r.id for r in one.resources(run.id)} == set(ids[1:5])
        one.mark_released_many([], actor="batch")  # nothing: no transaction, no error

        rounds = []
        for n in range(20):
            more = [
                one.plan(run.id, "fx", "test.thing", f"rc_{run.id}_{n}_{k}", {}) for k in range(8)
            ]
            won = _race(
                [
                    functools.partial(reg.begin_release_many, more, states=(ResourceState.PLANNED,))
                    for reg in (one, two)
                ]
            )
            ids_won = [r.id for claims in won for r in claims]
            assert sorted(ids_won) == sorted(more), f"round {n}: {won}"
            rounds.append(len(won[0]))
        assert rounds
    finally:
        one.close()
        two.close()


def test_racing_claims_have_exactly_one_winner(registry_path: str) -> None:
    """Two registry objects (two connections), two threads, the same claim at the same instant,
    50 rounds: ``claim_run`` and ``begin_release`` have one winner each time (I6)."""
    one, two = open_registry(registry_path), open_registry(registry_path)
    try:
        for n in range(50):
            run = one.open_run(f"{n:08x}", DEAD, label="race")
            won = _race(
                [
                    functools.partial(
                        reg.claim_run, run.id, who, expect_state="open", expect_claimer=None
                    )
                    for reg, who in ((one, "sweeper-1"), (two, "sweeper-2"))
                ]
            )
            assert sorted(won) == [False, True], f"round {n}: {won}"
            stored = one.get_run(run.id)
            assert stored is not None
            assert stored.claimed_by == ("sweeper-1" if won[0] else "sweeper-2")
            rid = one.plan(run.id, "fx", "test.thing", f"rc_{run.id}_1", {})
            one.mark_acquired(rid, {"name": f"rc_{run.id}_1"})
            states = (ResourceState.ACQUIRED, ResourceState.FAILED)
            claims = _race(
                [functools.partial(reg.begin_release, rid, states=states) for reg in (one, two)]
            )
            assert sum(c is not None for c in claims) == 1, f"round {n}: {claims}"
            one.mark_released(rid, actor="race")
            one.finish_reap(run.id, stored.claimed_by or "", actor="race")
        assert one.list_runs() == []
        claimed = [e for e in two.events(limit=10_000) if e.event == "run.claimed"]
        assert len(claimed) == 50
    finally:
        one.close()
        two.close()


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL registry URL with a fresh schema of its own, dropped at the end."""
    url = postgres_registry_url()
    yield url
    drop_postgres_registry(url)


def _schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


def _admin(url: str) -> psycopg.Connection[Any]:
    """A plain connection to the registry's database (not through the registry)."""
    return psycopg.connect(url.rpartition("?")[0], autocommit=True)


def _pg_meta(url: str) -> dict[str, str]:
    with _admin(url) as conn:
        query = sql.SQL("SELECT key, value FROM {}.meta").format(sql.Identifier(_schema_of(url)))
        return dict(conn.execute(query).fetchall())


def _pg_count(url: str, table: str) -> int:
    with _admin(url) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(_schema_of(url)), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def _with_password(url: str, password: str) -> str:
    """``url`` with a password (trust authentication accepts any)."""
    scheme, _, rest = url.partition("://")
    userinfo, _, hostpart = rest.partition("@")
    return f"{scheme}://{userinfo.partition(':')[0]}:{password}@{hostpart}"


def _terminate(reg: PostgresRegistry, url: str) -> int:
    """End the registry's server session from another connection, as an administrator (or a
    server restart) would; returns the pid it had."""
    assert reg._conn is not None
    pid = reg._conn.info.backend_pid
    with _admin(url) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.01)
    return pid


def test_pg_tables_live_in_the_named_schema(pg_url: str) -> None:
    reg = open_registry(pg_url)
    try:
        assert reg.location == pg_url
        assert isinstance(reg, PostgresRegistry)
        assert reg.schema == _schema_of(pg_url)
    finally:
        reg.close()
    with _admin(pg_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (_schema_of(pg_url),),
            )
        }
    assert tables == {"meta", "runs", "resources", "events"}
    assert _pg_meta(pg_url) == {
        "application": "reclaim",
        "schema_version": str(PG_SCHEMA_VERSION),
        "created_at": _pg_meta(pg_url)["created_at"],
    }


def test_pg_default_schema_and_bad_schema_names() -> None:
    base = postgres_registry_url().rpartition("?")[0]
    assert _postgres._parse(base).location == f"{base}?schema=reclaim"
    for bad in ("Upper", "pg_catalog", "a;drop", "1st", "x" * 64, "", "a-b"):
        with pytest.raises(RegistryError, match="schema name is 1 to 63") as info:
            open_registry(f"{base}?schema={bad}")
        assert "?schema=" in str(info.value)


def test_pg_without_a_registry_and_create_false(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        open_registry(pg_url, create=False)
    assert pg_url.rpartition("?")[0] in str(info.value)
    assert _schema_of(pg_url) in str(info.value)
    # The read-only commands cost nothing and create nothing, as with SQLite.
    monkeypatch.setenv("RECLAIM_REGISTRY", pg_url)
    assert reclaim_cli("status", "--json").stdout.strip() == '{"runs": []}'
    assert reclaim_cli("sweep", "--json").stdout.startswith('{"released": 0')
    with _admin(pg_url) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (_schema_of(pg_url),)
        ).fetchone()
    assert found is None, "no schema is created by a read-only command"


def test_pg_a_schema_made_beforehand_gets_the_tables(pg_url: str) -> None:
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(_schema_of(pg_url))))
    with pytest.raises(FileNotFoundError):
        open_registry(pg_url, create=False)  # empty: no registry yet
    open_registry(pg_url).close()
    assert _pg_meta(pg_url)["application"] == "reclaim"


def test_pg_a_foreign_schema_is_not_a_registry(pg_url: str) -> None:
    schema = sql.Identifier(_schema_of(pg_url))
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("CREATE TABLE {}.users (id int)").format(schema))
    with pytest.raises(RegistryCorruptError, match="not a reclaim registry") as info:
        open_registry(pg_url)
    assert "?schema=" in str(info.value)
    assert _pg_count(pg_url, "users") == 0
    with _admin(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (_schema_of(pg_url),),
        ).fetchall()
    assert tables == [("users",)], "nothing was added to a schema that is not ours"


def test_pg_a_newer_schema_version_asks_for_an_upgrade(pg_url: str) -> None:
    open_registry(pg_url).close()
    with _admin(pg_url) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.meta SET value = '99' WHERE key = 'schema_version'").format(
                sql.Identifier(_schema_of(pg_url))
            )
        )
    for create in (True, False):
        with pytest.raises(RegistryVersionError, match="upgrade reclaim") as info:
            open_registry(pg_url, create=create)
        message = str(info.value)
        assert "schema version 99" in message
        assert f"({PG_SCHEMA_VERSION})" in message
        assert _schema_of(pg_url) in message
    assert _pg_meta(pg_url)["schema_version"] == "99", "never downgraded"


def test_pg_an_older_schema_is_migrated_by_version(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = open_registry(pg_url)
    run = reg.open_run("0000abcd", DEAD, label="old")
    reg.plan(run.id, "fx", "test.thing", "rc_0000abcd_1", {"name": "rc_0000abcd_1"})
    reg.close()
    # The next version of reclaim, with one migration from this version.
    version = PG_SCHEMA_VERSION
    monkeypatch.setattr(_postgres, "SCHEMA_VERSION", version + 1)
    monkeypatch.setitem(
        _postgres._MIGRATIONS,
        version,
        "ALTER TABLE resources ADD COLUMN note text; UPDATE resources SET note = 'migrated'",
    )
    # Many processes start at once: one migrates, under the lock; the others find it done.
    regs = _race([lambda: open_registry(pg_url) for _ in range(6)])
    for r in regs:
        r.close()
    assert _pg_meta(pg_url)["schema_version"] == str(version + 1)
    with _admin(pg_url) as conn:
        notes = conn.execute(
            sql.SQL("SELECT name, note FROM {}.resources").format(
                sql.Identifier(_schema_of(pg_url))
            )
        ).fetchall()
    assert notes == [("rc_0000abcd_1", "migrated")], "kept, and migrated once"


def test_pg_many_processes_create_one_registry_at_once(pg_url: str) -> None:
    code = "import sys; from reclaim._registry import open_registry; open_registry(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert _pg_meta(pg_url)["schema_version"] == str(PG_SCHEMA_VERSION)


def test_pg_retries_after_the_connection_is_killed(pg_url: str) -> None:
    reg = open_registry(pg_url)
    assert isinstance(reg, PostgresRegistry)
    try:
        run = reg.open_run("0000beef", DEAD, label="retry")
        first = _terminate(reg, pg_url)
        rid = reg.plan(run.id, "fx", "test.thing", "rc_0000beef_1", {"name": "rc_0000beef_1"})
        assert reg._conn is not None
        assert reg._conn.info.backend_pid != first, "it reconnected"
        _terminate(reg, pg_url)
        assert [r.id for r in reg.resources()] == [rid]
        _terminate(reg, pg_url)
        assert reg.claim_run(run.id, "me", expect_state="open", expect_claimer=None)
        _terminate(reg, pg_url)
        reg.mark_released(rid, actor="me")
        _terminate(reg, pg_url)
        reg.finish_reap(run.id, "me", actor="me")
        events = [e.event for e in reg.events()]
        assert events == [
            "run.opened",
            "resource.planned",
            "run.claimed",
            "resource.released",
            "run.reaped",
        ]
    finally:
        reg.close()


class _LostCommit:
    """Make the next ``count`` COMMITs land on the server but their answers get lost."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int = 1) -> None:
        self.left = count
        real = PostgresRegistry._commit

        def commit(registry: PostgresRegistry, conn: psycopg.Connection[Any]) -> None:
            real(registry, conn)
            if self.left > 0:
                self.left -= 1
                conn.close()  # the answer never arrives
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(PostgresRegistry, "_commit", commit)


def test_pg_a_retry_after_a_lost_commit_writes_nothing_twice(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = open_registry(pg_url)
    try:
        lost = _LostCommit(monkeypatch)
        run = reg.open_run("0000cafe", DEAD, label="lost")
        assert lost.left == 0, "the COMMIT was lost once"
        _LostCommit(monkeypatch)
        rid = reg.plan(run.id, "fx", "test.thing", "rc_0000cafe_1", {"name": "rc_0000cafe_1"})
        _LostCommit(monkeypatch)
        reg.mark_acquired(rid, {"name": "rc_0000cafe_1", "path": "/x"})
        _LostCommit(monkeypatch)
        assert reg.claim_run(run.id, "me", expect_state="open", expect_claimer=None)
        _LostCommit(monkeypatch)
        claimed = reg.begin_release(rid, states=(ResourceState.ACQUIRED,))
        assert claimed is not None, "its own claim, found again by the retry"
        _LostCommit(monkeypatch)
        reg.mark_failed(rid, "boom", attempts=3, actor="me")
        failed = reg.get_resource(rid)
        assert failed is not None
        assert failed.attempts == 3, "not counted twice"
        _LostCommit(monkeypatch)
        forgotten = reg.forget(rid, actor="me")
        assert forgotten is not None, "the retry returns what the landed attempt returned"
        assert forgotten.id == rid
        _LostCommit(monkeypatch)
        reg.finish_reap(run.id, "me", actor="me")
        assert _pg_count(pg_url, "resources") == 0
        assert [e.event for e in reg.events()] == [
            "run.opened",
            "resource.planned",
            "resource.acquired",
            "run.claimed",
            "resource.failed",
            "resource.forgotten",
            "run.reaped",
        ]
    finally:
        reg.close()


def test_pg_plan_with_a_token_already_used_finds_its_entry(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence of ``plan``: an insert that carries a token already in the
    table adds nothing and answers the id of the entry that has it."""
    reg = open_registry(pg_url)
    try:
        run = reg.open_run("0000f00d", DEAD, label="token")
        token = uuid.uuid4()
        monkeypatch.setattr(_postgres, "uuid", types.SimpleNamespace(uuid4=lambda: token))
        first = reg.plan(run.id, "fx", "test.thing", "rc_0000f00d_1", {})
        again = reg.plan(run.id, "fx", "test.thing", "rc_0000f00d_1", {})
        assert again == first
        assert _pg_count(pg_url, "resources") == 1
    finally:
        reg.close()


def test_pg_a_server_that_stays_away_is_a_clear_error(pg_url: str) -> None:
    url = _with_password(pg_url, "Sw0rdfish-Secret")
    host, port = "127.0.0.1", int(url.rpartition(":")[2].partition("/")[0])
    with TcpProxy(host, port) as proxy:
        reg = PostgresRegistry(with_port(url, proxy.port), retry_seconds=1.5)
        try:
            run = reg.open_run("0000dead", DEAD, label="away")
            # Away for a moment, back within the deadline: the call does not notice.
            proxy.stop()
            threading.Timer(0.5, proxy.start).start()
            reg.add_event("test.back")
            proxy.stop()
            started = time.monotonic()
            with pytest.raises(RegistryError) as info:
                reg.plan(run.id, "fx", "test.thing", "rc_0000dead_1", {})
            assert time.monotonic() - started < 10
        finally:
            reg.close()
    message = str(info.value)
    assert "Sw0rdfish-Secret" not in message
    assert f"127.0.0.1:{proxy.port}/postgres (schema {_schema_of(pg_url)})" in message
    assert "1.5 s" in message
    assert "RECLAIM_REGISTRY" in message
    assert info.value.__cause__ is None


def test_pg_the_password_never_shows(pg_url: str) -> None:
    password = "Pa55-W0rd-Sentinel"
    url = _with_password(pg_url, password)
    reg = open_registry(url)
    assert isinstance(reg, PostgresRegistry)
    try:
        assert password not in reg.location
        assert reg.location == pg_url
        assert password not in repr(reg)
        assert password not in repr(vars(reg))
        assert password in reg.reopen_location(), "what another process opens it with"
        assert reg.reopen_location() == url
    finally:
        reg.close()
    # The location is enough to open it again where RECLAIM_REGISTRY holds the password.
    os.environ["RECLAIM_REGISTRY"] = url
    try:
        open_registry(pg_url).close()
    finally:
        del os.environ["RECLAIM_REGISTRY"]
    errors: list[BaseException] = []
    port = closed_port()
    for bad in (
        with_port(url, port),  # nobody listens
        url.replace("/postgres?", "/no_such_database_here?"),
        url.replace("?schema=", "?sslmode=bogus&schema="),
        url.replace("?schema=", "?password=" + password + "&schema=Bad"),
    ):
        with pytest.raises(RegistryError) as info:
            open_registry(bad)
        errors.append(info.value)
    with _admin(pg_url) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.meta SET value = '99' WHERE key = 'schema_version'").format(
                sql.Identifier(_schema_of(pg_url))
            )
        )
    with pytest.raises(RegistryVersionError) as version_error:
        open_registry(url)
    errors.append(version_error.value)
    for error in errors:
        assert password not in str(error), error
        assert password not in repr(error), error
        assert password not in getattr(error, "path", ""), error
    assert "cannot reach the reclaim registry at postgresql://postgres@127.0.0.1:" in str(errors[0])
    assert "is the server up and RECLAIM_REGISTRY right?" in str(errors[0])


def test_pg_wait_for_events_wakes_on_another_writer(pg_url: str) -> None:
    follower, writer = open_registry(pg_url), open_registry(pg_url)
    assert follower.notifies, "a follower may wait long: it is woken"
    try:
        assert follower.wait_for_events(0) is True, "just listening: poll once"
        started = time.monotonic()
        assert follower.wait_for_events(0.3) is False, "nothing written: it times out"
        assert time.monotonic() - started >= 0.25
        woke: list[float] = []

        def wait() -> None:
            t0 = time.monotonic()
            assert follower.wait_for_events(30) is True
            woke.append(time.monotonic() - t0)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        writer.add_event("test.ping")
        waiter.join(timeout=30)
        assert woke, "it woke"
        assert woke[0] < 5, woke
        assert [e.event for e in follower.events()] == ["test.ping"]
        # A change that writes no event wakes nobody.
        writer.heartbeat("nobody")
        assert follower.wait_for_events(0.3) is False
    finally:
        follower.close()
        writer.close()


def test_pg_timestamps_come_from_the_database_clock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = open_registry(pg_url)
    try:
        # This host's clock is a year behind: nothing written may use it.
        fake = types.SimpleNamespace(
            time=lambda: time.time() - 365 * 86400, monotonic=time.monotonic, sleep=time.sleep
        )
        monkeypatch.setattr(_postgres, "time", fake)
        with _admin(pg_url) as conn:
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        before = reg.now()
        assert abs(before - row[0]) < 5
        run = reg.open_run("0000c10c", DEAD, label="clock")
        reg.heartbeat(run.id)
        rid = reg.plan(run.id, "fx", "test.thing", "rc_0000c10c_1", {})
        after = reg.now()
        stored = reg.get_run(run.id)
        resource = reg.get_resource(rid)
        assert stored is not None
        assert resource is not None
        for stamp in (
            run.started_at,
            stored.heartbeat_at,
            resource.created_at,
            *(e.at for e in reg.events()),
        ):
            assert before <= stamp <= after
        assert stored.heartbeat_at > stored.started_at, "the heartbeat renewed the lease"
    finally:
        reg.close()


def test_pg_a_forked_child_leaves_the_parents_connection_alone(pg_url: str) -> None:
    reg = open_registry(pg_url)
    assert isinstance(reg, PostgresRegistry)
    try:
        reg.add_event("test.parent")
        assert reg._conn is not None
        session = reg._conn.info.backend_pid
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                reg.add_event("test.child")  # on a connection of its own
                # Even closing what it inherited (as a finaliser at exit would) must not end
                # the parent's session.
                for conn in _postgres._inherited:
                    conn.close()
                reg.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert reg._conn.info.backend_pid == session
        assert [e.event for e in reg.events()] == ["test.parent", "test.child"]
        assert reg._conn.info.backend_pid == session, "the parent's session lives on"
    finally:
        reg.close()


def test_pg_without_psycopg_names_the_extra(pg_url: str) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from reclaim._registry import open_registry\n"
        "try:\n"
        "    open_registry(sys.argv[1])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, pg_url], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("MissingExtraError")
    assert "reclaim[postgres]" in out
    assert "psycopg" in out


def test_pg_an_interrupt_waits_for_the_transaction(pg_url: str) -> None:
    """A SIGINT that lands inside a registry call is raised when the call has ended (I9): the
    write is whole and no transaction is left open on the server."""
    reg = open_registry(pg_url)
    assert isinstance(reg, PostgresRegistry)
    try:
        run = reg.open_run("0000a1a1", DEAD, label="interrupt")
        real = PostgresRegistry._now

        def now_then_interrupt(cur: psycopg.Cursor[Any]) -> float:
            os.kill(os.getpid(), signal.SIGINT)
            return real(cur)

        from reclaim import _signals  # noqa: PLC0415

        _signals.install()
        try:
            PostgresRegistry._now = staticmethod(now_then_interrupt)  # type: ignore[method-assign]
            with pytest.raises(KeyboardInterrupt):
                reg.plan(run.id, "fx", "test.thing", "rc_0000a1a1_1", {})
        finally:
            PostgresRegistry._now = staticmethod(real)  # type: ignore[method-assign]
            _signals.restore()
        assert [r.name for r in reg.resources()] == ["rc_0000a1a1_1"], "written whole"
        assert reg._conn is not None
        assert reg._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        reg.close()


@pytest.fixture
def pg_role(pg_url: str) -> Iterator[str]:
    """A login role of its own (trust authentication), dropped with what it owns."""
    role = f"reclaim_t_role_{uuid.uuid4().hex[:10]}"
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    drop_postgres_registry(pg_url)
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _as_role(url: str, role: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}@{rest.partition('@')[2]}"


def _full_cycle(url: str) -> None:
    reg = open_registry(url)
    try:
        run = reg.open_run(uuid.uuid4().hex[:8], DEAD, label="grants")
        reg.heartbeat(run.id)
        rid = reg.plan(run.id, "fx", "test.thing", f"rc_{run.id}_1", {})
        reg.mark_acquired(rid, {"name": f"rc_{run.id}_1"})
        assert reg.claim_run(run.id, "me", expect_state="open", expect_claimer=None)
        assert reg.begin_release(rid, states=(ResourceState.ACQUIRED,)) is not None
        reg.mark_released(rid, actor="me")
        reg.finish_reap(run.id, "me", actor="me")
        assert reg.wait_for_events(0) is True
        assert [e.event for e in reg.events()][-1] == "run.reaped"
        assert reg.prune_events(reg.now() - 3600) == 0
    finally:
        reg.close()


def test_pg_the_documented_least_privileges_are_enough(pg_url: str, pg_role: str) -> None:
    """docs/registry-postgres.md: a schema an administrator made, with USAGE and CREATE granted,
    is enough for the first use; SELECT/INSERT/UPDATE/DELETE on the tables and USAGE on the
    sequences are enough after; less is a clear error."""
    schema, role = sql.Identifier(_schema_of(pg_url)), sql.Identifier(pg_role)
    as_role = _as_role(pg_url, pg_role)
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    with pytest.raises(RegistryError, match=r"privileges listed in docs/registry-postgres\.md"):
        open_registry(as_role)  # no USAGE, no CREATE: refused, and it says what to grant
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, role))
    _full_cycle(as_role)  # first use: it creates the tables (and owns them)
    # Made by another role (the owner); this one only uses them.
    drop_postgres_registry(pg_url)
    open_registry(pg_url).close()
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
    with pytest.raises(RegistryError, match=r"privileges listed in docs/registry-postgres\.md"):
        _full_cycle(as_role)
    with _admin(pg_url) as conn:
        for grant in (
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}",
        ):
            conn.execute(sql.SQL(grant).format(schema, role))
    _full_cycle(as_role)


def test_pg_a_client_stopped_inside_a_transaction_blocks_nobody_for_long(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops between its event and its COMMIT (Ctrl-Z, a debugger) holds the
    event log's lock: the server ends its session after the idle timeout, the others go on, and
    the stopped client's call, retried when it runs again, is written once."""
    monkeypatch.setattr(_postgres, "IDLE_TIMEOUT_S", 1)
    stopped, other = open_registry(pg_url), open_registry(pg_url)
    real = PostgresRegistry._commit
    stalls = [3.0]

    def commit(registry: PostgresRegistry, conn: psycopg.Connection[Any]) -> None:
        if registry is stopped and stalls:
            time.sleep(stalls.pop())  # idle inside the transaction, its lock held
        real(registry, conn)

    monkeypatch.setattr(PostgresRegistry, "_commit", commit)
    try:
        writer = threading.Thread(target=stopped.add_event, args=("test.stopped",))
        writer.start()
        time.sleep(0.5)
        started = time.monotonic()
        other.add_event("test.other")
        assert other.events() is not None
        assert time.monotonic() - started < 2.5, "waited for the server to end the session"
        writer.join(timeout=30)
        assert not writer.is_alive()
        assert sorted(e.event for e in other.events()) == ["test.other", "test.stopped"]
    finally:
        stopped.close()
        other.close()

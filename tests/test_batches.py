"""Batch release (issue 15): the watchdog and the sweeper hand a dead run's entries of one kind
to ``release_many`` at once, and every rule of a single release still holds. Each test asks the
real server (``SCAN``, ``INFO commandstats``, ``pg_namespace``) or the real filesystem:

- what a batch releases is gone, and each entry's outcome is an event of its own (I5);
- look-alikes beside it (``..._backup``, a namespace of the same run the batch does not hold)
  are spared, and a hostile record in a batch is refused on its own (I8);
- a batch that fails (a lock held on one schema) fails nobody for good: each entry is released
  on its own, and only the one that really cannot be stays ``failed`` with its reason;
- one SCAN of the database serves a thousand namespaces.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from _services import require
from reclaim._reaper import RetryPolicy
from reclaim._registry._sqlite import SQLiteRegistry
from reclaim._sweep import sweep
from reclaim.backends import ForeignNameError, Record, make_name, release_batch
from reclaim.backends.path import TempDir
from reclaim.backends.postgres import PostgresSchema
from reclaim.backends.redis import MARKER, RedisNamespace, glob_escape
from reclaim.testing import dead_identity

ONCE = RetryPolicy(attempts=1)


def _dead_run(path: Path, records: list[tuple[str, Record]]) -> tuple[SQLiteRegistry, str]:
    """A registry with one dead run holding ``records`` (kind, record) as acquired."""
    reg = SQLiteRegistry(path)
    run_id = secrets.token_hex(4)
    reg.open_run(run_id, dead_identity(), label="batch")
    for kind, record in records:
        rid = reg.plan(run_id, "f", kind, str(record["name"]), record)
        reg.mark_acquired(rid, record)
    return reg, run_id


def _events(path: Path, event: str) -> list[int]:
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute("SELECT resource_id FROM events WHERE event = ?", (event,)).fetchall()
    finally:
        raw.close()
    return [r[0] for r in rows]


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    return require("redis")


@pytest.fixture
def token(redis_url: str) -> Iterator[str]:
    """A run id of this test's own; every key that starts with its names is deleted at the end."""
    run_id = secrets.token_hex(4)
    yield run_id
    client = redis.Redis.from_url(redis_url)
    for pattern in (f"rc_{run_id}_*", f"user:{run_id}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def _namespaces(
    url: str, run_id: str, count: int, keys: int = 2, *, first: int = 1
) -> list[Record]:
    client = redis.Redis.from_url(url)
    backend = RedisNamespace(url)
    records = []
    pipe = client.pipeline(transaction=False)
    for seq in range(first, first + count):
        record = backend.plan(make_name(run_id, seq))
        pipe.set(record["prefix"] + MARKER, record["name"])
        for k in range(keys):
            pipe.set(f"{record['prefix']}k{k}", k)
        records.append(record)
    pipe.execute()
    return records


def _scan_calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def test_one_scan_serves_a_whole_batch_and_spares_the_look_alikes(
    redis_url: str, token: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    records = _namespaces(redis_url, token, 200)
    (held_back,) = _namespaces(redis_url, token, 1, first=201)  # same run, not in the batch
    first = records[0]["name"]
    look_alikes = [f"{first}_backup:x", f"{first}x:k", first, f"user:{token}:k"]
    client.mset(dict.fromkeys(look_alikes, "precious"))
    before = _scan_calls(client)
    outcomes = release_batch(RedisNamespace, records)
    scans = _scan_calls(client) - before
    assert outcomes == [None] * 200
    assert scans < 20, f"{scans} SCAN calls for one batch: a scan per namespace?"
    left = list(client.scan_iter(match=glob_escape(f"rc_{token}_".encode()) + b"*", count=1000))
    kept = {k.decode() for k in left}
    assert kept == {
        f"{first}_backup:x",
        f"{first}x:k",
        first,
        held_back["prefix"] + MARKER,
        held_back["prefix"] + "k0",
        held_back["prefix"] + "k1",
    }
    assert client.get(f"user:{token}:k") == b"precious"


def test_a_hostile_record_in_a_batch_is_refused_alone(redis_url: str, token: str) -> None:
    client = redis.Redis.from_url(redis_url)
    records = _namespaces(redis_url, token, 3)
    victim = f"user:{token}:precious"
    client.set(victim, 1)
    hostile = {**records[1], "prefix": f"user:{token}:"}
    outcomes = release_batch(RedisNamespace, [records[0], hostile, records[2]])
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], ForeignNameError)
    assert client.exists(victim) == 1
    assert client.exists(records[1]["prefix"] + MARKER) == 1, "refused means untouched"
    assert client.exists(records[0]["prefix"] + MARKER) == 0


def test_a_sweep_releases_a_dead_runs_namespaces_with_an_event_each(
    tmp_path: Path, redis_url: str, token: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    records = _namespaces(redis_url, token, 50)
    path = tmp_path / "r.sqlite3"
    reg, run_id = _dead_run(path, [(RedisNamespace.kind, r) for r in records])
    ids = [r.id for r in reg.resources(run_id)]
    report = sweep(reg, grace=0, policy=ONCE)
    assert (report.released, report.failed) == (50, 0)
    assert sorted(_events(path, "resource.released")) == sorted(ids)
    assert list(client.scan_iter(match=f"rc_{token}_*", count=1000)) == []
    assert reg.resources() == []
    reg.close()


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_dsn() -> str:
    return require("postgres")


@pytest.fixture
def pg_run(pg_dsn: str) -> Iterator[str]:
    """A run id of this test's own; every schema whose name starts with it is dropped after."""
    run_id = secrets.token_hex(4)
    yield run_id
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (f"rc_{run_id}_",)
        ).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _schemas(dsn: str, run_id: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (f"rc_{run_id}_",)
        ).fetchall()
    return {r[0] for r in rows}


def _make_schemas(dsn: str, run_id: str, count: int) -> list[Record]:
    backend = PostgresSchema(dsn)
    return [backend.acquire(make_name(run_id, seq))[1] for seq in range(1, count + 1)]


def test_a_sweep_drops_a_dead_runs_schemas_and_spares_the_look_alikes(
    tmp_path: Path, pg_dsn: str, pg_run: str
) -> None:
    records = _make_schemas(pg_dsn, pg_run, 30)
    backup = f"{records[0]['name']}_backup"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(backup)))
    path = tmp_path / "r.sqlite3"
    reg, _ = _dead_run(path, [(PostgresSchema.kind, r) for r in records])
    report = sweep(reg, grace=0, policy=ONCE)
    assert (report.released, report.failed) == (30, 0)
    assert _schemas(pg_dsn, pg_run) == {backup}
    assert len(_events(path, "resource.released")) == 30
    reg.close()


def test_a_failed_batch_releases_each_schema_on_its_own(
    tmp_path: Path, pg_dsn: str, pg_run: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction left open on one schema makes the batch's DROP fail (lock timeout): the
    other four are dropped one by one, and only the locked one is kept failed, with why."""
    from reclaim.backends import postgres  # noqa: PLC0415  (the module, to patch a constant)

    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 300)
    dsn = f"{pg_dsn}?application_name=batch{pg_run}"  # connections of this test's own
    records = _make_schemas(dsn, pg_run, 5)
    locked = records[2]["name"]
    path = tmp_path / "r.sqlite3"
    reg, run_id = _dead_run(path, [(PostgresSchema.kind, r) for r in records])
    blocker = psycopg.connect(pg_dsn)
    try:
        blocker.execute(sql.SQL("CREATE TABLE {}.t (id int)").format(sql.Identifier(locked)))
        report = sweep(reg, grace=0, policy=ONCE)
        assert (report.released, report.failed) == (4, 1)
        assert _schemas(pg_dsn, pg_run) == {locked}
        (kept,) = reg.resources(run_id)
        assert kept.name == locked
        assert kept.state == "failed"
        assert kept.last_error is not None
        assert "lock" in kept.last_error
    finally:
        blocker.rollback()
        blocker.close()
    report = sweep(reg, grace=0, policy=ONCE)
    assert report.released == 1
    assert _schemas(pg_dsn, pg_run) == set()
    reg.close()


# --- temp directories: the batch is the registry's ---------------------------------------------


def test_a_dead_runs_directories_go_with_two_registry_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    backend = TempDir(parent=str(scratch))
    run_id = secrets.token_hex(4)
    records = [backend.acquire(make_name(run_id, seq))[1] for seq in range(1, 301)]
    path = tmp_path / "r.sqlite3"
    reg, _ = _dead_run(path, [(TempDir.kind, r) for r in records])
    writes: list[str] = []
    for method in ("begin_release", "mark_released", "begin_release_many", "mark_released_many"):
        original = getattr(reg, method)

        def counted(*args: Any, _name: str = method, _original: Any = original, **kw: Any) -> Any:
            writes.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(reg, method, counted)
    report = sweep(reg, grace=0, policy=ONCE)
    assert report.released == 300
    assert list(scratch.iterdir()) == []
    # 300 = 256 + 44: two batches, a claim and an outcome transaction each.
    assert writes == ["begin_release_many", "mark_released_many"] * 2
    assert len(_events(path, "resource.released")) == 300
    reg.close()


def test_a_batch_of_directories_removes_each_whole_and_nothing_beside_it(tmp_path: Path) -> None:
    """``TempDir.release_many`` tries one ``rmdir`` first: an empty directory goes in one call,
    one that holds files goes the whole way, a symlink at the path goes and its target stays, a
    file at the path goes; a record that points at a look-alike is refused, and the look-alike,
    empty as it is, stays (I8)."""
    scratch, elsewhere = tmp_path / "scratch", tmp_path / "elsewhere"
    scratch.mkdir()
    elsewhere.mkdir()
    backend = TempDir(parent=str(scratch))
    run_id = secrets.token_hex(4)
    empty, full, linked, filed, gone = (
        backend.acquire(make_name(run_id, seq))[1] for seq in range(1, 6)
    )
    (Path(full["path"]) / "sub").mkdir()
    (Path(full["path"]) / "sub" / "f").write_text("x")
    target = elsewhere / "kept"
    target.mkdir()
    Path(linked["path"]).rmdir()
    Path(linked["path"]).symlink_to(target)
    Path(filed["path"]).rmdir()
    Path(filed["path"]).write_text("a file where the directory was")
    Path(gone["path"]).rmdir()
    look_alike = scratch / f"{make_name(run_id, 9)}_backup"
    look_alike.mkdir()
    hostile = {"name": make_name(run_id, 9), "path": str(look_alike), "prefix": ""}
    outcomes = TempDir.release_many([empty, full, linked, hostile, filed, gone])
    assert [o is None for o in outcomes] == [True, True, True, False, True, True]
    assert isinstance(outcomes[3], ForeignNameError)
    assert sorted(p.name for p in scratch.iterdir()) == [look_alike.name]
    assert target.is_dir(), "what the symlink pointed at stays"

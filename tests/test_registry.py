"""The SQLite registry: many writers at once, file modes, and files that are not registries."""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import reclaim_cli
from reclaim import RegistryCorruptError, RegistryVersionError
from reclaim._identity import current_identity
from reclaim._registry import default_location, open_registry
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
    raw = sqlite3.connect(registry_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        raw.close()


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

"""The embedded registry: one SQLite file in WAL mode, shared by every process of a user.

Concurrency: every write is a ``BEGIN IMMEDIATE`` transaction. A deferred transaction that
upgrades from reading to writing gets SQLITE_BUSY at once in WAL mode, without waiting for the
busy timeout ("database is locked" under load); taking the write lock up front makes every
writer wait its turn instead. Readers never block writers in WAL mode.

Durability: ``synchronous=NORMAL``. A committed write survives the death of any process (the
crash model of reclaim); only a power cut can lose the last commits, and after a power cut every
process and temp directory of the earlier boot is gone anyway.

Journaled plans: the owner of a live run may plan an entry without a transaction
(``plan(defer=True)``, what a :class:`reclaim.Fixture` does): the entry is one line appended,
with one ``write(2)``, to the run's file ``<registry>-plans/<run id>`` (mode 0600 in a 0700
folder, like the registry: records may hold credentials), and the write has returned before the
backend creates anything (I1). The line is in the page cache from then on, as durable against
the death of a process as a commit with ``synchronous=NORMAL``. The lines are merged into the
tables (the entry and its ``resource.planned`` event, with the entry's id reserved beforehand
from AUTOINCREMENT's sequence, so that no other writer can take it) by the owner's next write
(at most the write delay later), by any listing of resources (``status``, a reaper's, a
watchdog's), and by the close or reap that deletes the run. How far a run's file is merged is
its row's ``plans_merged`` (bytes), moved in the merging transaction, so a merge is never lost
and never done twice. Only whole lines are merged: a line without its newline is one whose
``write`` never returned (the owner died in it, or it failed and could not be cut off again),
so nothing was created for it. A line that cannot be read is refused with an error naming the
file, and the file is kept. The file is deleted once its run's row is: everything in it was
merged by the transaction that deleted the row, and no owner writes to a closed or dead run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import operator
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from reclaim._errors import RegistryCorruptError, RegistryError, RegistryVersionError
from reclaim._identity import Identity
from reclaim._registry._base import Registry
from reclaim._registry._model import (
    EventRow,
    HistoryRow,
    ResourceRecord,
    ResourceState,
    RunRecord,
    RunState,
)
from reclaim._registry._rows import (
    HISTORIES_SQL,
    OPENINGS_SQL,
    RESOURCE_COLUMNS,
    RUN_COLUMNS,
    opened_detail,
    opened_run,
    resource_from_row,
    run_from_row,
)
from reclaim._signals import critical

__all__ = ["SCHEMA_VERSION", "SQLiteRegistry"]

#: The schema this reclaim writes. Bump it with a migration in ``_MIGRATIONS``.
SCHEMA_VERSION: Final = 4

_APPLICATION: Final = "reclaim"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_BUSY_TIMEOUT_S: Final = 60.0
#: Deferred released marks are written once this many wait, and journaled plans are merged
#: once this many wait, whatever comes first: it bounds what a crash leaves for a reaper to merge
#: and to release again (a no-op each, I3), to a few ms of its time.
_MAX_WAITING: Final = 4096
#: Ids per ``IN (...)`` list: far below SQLite's limit on host parameters.
_IDS_PER_STATEMENT: Final = 500
#: The folder of the runs' journaled plans: the registry's path and this (see the module's doc).
_PLANS_SUFFIX: Final = "-plans"
#: Entry ids reserved at once for journaled plans (one write transaction per this many plans).
_ID_BLOCK: Final = 256
#: An orphaned plans file (its run's row is gone, so it was merged whole) is deleted by a listing
#: once it is this old: the close that deleted the row deletes its file itself, right after.
_ORPHAN_AFTER_S: Final = 60.0
#: ``json.dumps(..., separators=(",", ":"))`` without building an encoder per call.
_compact: Final = json.JSONEncoder(separators=(",", ":")).encode
#: A str as a JSON string, as ``json.dumps`` writes it (ASCII, escapes and all).
_quoted: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii
#: json's C scanner: one value from a position of a str, and where it ends.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by __init__; no stub

_SCHEMA_V1: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    parent_id     TEXT,
    label         TEXT NOT NULL,
    owner         TEXT NOT NULL,
    state         TEXT NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    lease_seconds REAL NOT NULL,
    closed_at     REAL,
    claimed_by    TEXT,
    claimed_at    REAL
);
CREATE TABLE resources (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs(id),
    fixture    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    record     TEXT NOT NULL,
    state      TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX resources_by_run ON resources(run_id, id);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    event       TEXT NOT NULL,
    run_id      TEXT,
    resource_id INTEGER,
    kind        TEXT,
    name        TEXT,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_time ON events(at);
"""

# Migrations from version N to N+1, applied in one transaction each (a new file is made at
# version 1 and migrated like an old one, so both end the same).
_MIGRATIONS: Final[dict[int, str]] = {
    # 1 -> 2: when an entry was journaled as acquired. NULL: never, so it may never have existed
    # (an acquire that failed, a crash before the journal). Older rows past `planned` count as
    # acquired: the conservative reading, which keeps them retried.
    1: """
    ALTER TABLE resources ADD COLUMN acquired_at REAL;
    UPDATE resources SET acquired_at = updated_at WHERE state != 'planned'
    """,
    # 2 -> 3: leaner writes (issue 15). Every index is a page more in each write transaction,
    # and AUTOINCREMENT one more (sqlite_sequence). `resources` holds live entries only, so a
    # scan by run is cheap; events are pruned by a sweep only. Event ids stay increasing without
    # AUTOINCREMENT because the newest event is never pruned (a follower's cursor needs that).
    2: """
    DROP INDEX IF EXISTS resources_by_run;
    DROP INDEX IF EXISTS events_by_time;
    CREATE TABLE events_v3 (
        id          INTEGER PRIMARY KEY,
        at          REAL NOT NULL,
        event       TEXT NOT NULL,
        run_id      TEXT,
        resource_id INTEGER,
        kind        TEXT,
        name        TEXT,
        detail      TEXT NOT NULL DEFAULT '{}'
    );
    INSERT INTO events_v3 SELECT id, at, event, run_id, resource_id, kind, name, detail FROM events;
    DROP TABLE events;
    ALTER TABLE events_v3 RENAME TO events;
    DELETE FROM sqlite_sequence WHERE name = 'events'
    """,
    # 3 -> 4: journaled plans (issue 15): how many bytes of the run's plans file are merged. An
    # older reclaim, which would not know to merge them, refuses a registry of version 4.
    3: """
    ALTER TABLE runs ADD COLUMN plans_merged INTEGER NOT NULL DEFAULT 0
    """,
}

# Connections inherited through fork are kept, never closed: closing one in the child could
# release locks the parent holds (SQLite: "do not carry a connection across fork").
_inherited: list[sqlite3.Connection] = []


class SQLiteRegistry(Registry):
    """The registry in one SQLite file (mode 0600, in a 0700 directory)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).expanduser().absolute()
        self.location = str(self.path)
        self._lock = threading.RLock()
        self._conn_obj: sqlite3.Connection | None = None
        self._pid = -1
        #: Marks not written yet, written by the next write transaction of this object:
        #: acquired (``mark_acquired(defer=True)``), resource id -> (None: the planned record
        #: stays, when), and released (``mark_released(defer=True)``), resource id -> (event
        #: detail, when).
        self._pending: dict[int, tuple[str | None, float]] = {}
        self._released: dict[int, tuple[str, float]] = {}
        #: The journal files this object appends to (``plan(defer=True)``), by run id; the
        #: file of each entry planned there and not released yet; and the block of reserved
        #: entry ids it draws from (next, last).
        self._plans: dict[str, _PlansFile] = {}
        self._journaled: dict[int, _PlansFile] = {}
        self._ids = (1, 0)
        self.plans_dir = Path(str(self.path) + _PLANS_SUFFIX)
        self._create = create
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"no reclaim registry at {self.path}")
            self._create_file()
        else:
            self._check_file()
        self._connection()  # opens, validates and migrates
        self._tighten()  # only once the file is known to be a registry

    # --- file creation and validation ------------------------------------------------------

    def _create_file(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            try:
                _private_folder(parent)
            except OSError as exc:
                raise RegistryError(
                    f"cannot create the folder of the reclaim registry {self.path}:"
                    f" {exc.strerror} ({exc.filename}); set RECLAIM_REGISTRY (or --registry)"
                    " to a file in a folder you can write",
                    path=str(self.path),
                ) from None
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return  # another process created it first; it validates it as we would
        except OSError as exc:
            raise RegistryError(
                f"cannot create the reclaim registry {self.path}: {exc.strerror};"
                " set RECLAIM_REGISTRY to a writable path",
                path=str(self.path),
            ) from exc
        os.fchmod(fd, 0o600)
        os.close(fd)

    def _check_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
            info = os.stat(self.path)
        except OSError as exc:
            raise RegistryError(
                f"cannot read the reclaim registry {self.path}: {exc.strerror}", path=str(self.path)
            ) from exc
        if head and head != _SQLITE_MAGIC:
            raise self._corrupt("is not an SQLite database")
        if not head and not self._create:
            # An empty file is not a registry yet, and a read-only command never makes one.
            raise FileNotFoundError(f"{self.path} is empty: no reclaim registry there yet")
        if not stat.S_ISREG(info.st_mode):
            raise self._corrupt("is not a regular file")

    def _tighten(self) -> None:
        # It may hold credentials (I7): tighten a registry that somebody loosened. Never done
        # before the file is known to be ours: a foreign file is refused untouched.
        try:
            info = os.stat(self.path)
            if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
                os.chmod(self.path, 0o600)
        except OSError:
            pass  # a read-only file system: reading still works, and nothing was loosened by us

    def _unusable(self, exc: sqlite3.Error) -> RegistryError:
        """reclaim's error for an SQLite failure: read-only and unopenable files are not
        damaged (their fix is another path or the file's mode), anything else may be."""
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            return RegistryError(
                f"the reclaim registry {self.path} cannot be written ({text}): make it (and its"
                " folder, where SQLite keeps its -wal and -shm files) writable for this user, or"
                " set RECLAIM_REGISTRY (or --registry) to a writable path",
                path=str(self.path),
            )
        if "unable to open" in text or "disk I/O" in text or "locked" in text:
            return RegistryError(
                f"the reclaim registry {self.path} cannot be used now ({text}); check its folder"
                " and file permissions and free disk, or set RECLAIM_REGISTRY to another path",
                path=str(self.path),
            )
        return self._corrupt(f"cannot be used ({text})")

    def _corrupt(self, what: str) -> RegistryCorruptError:
        return RegistryCorruptError(
            f"the reclaim registry {self.path} {what}. reclaim never replaces it: move it away"
            " (if it is a damaged registry, `sqlite3 FILE .recover` may save its entries) or set"
            " RECLAIM_REGISTRY to another path",
            path=str(self.path),
        )

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn_obj is not None and self._pid == pid:
            return self._conn_obj
        if self._conn_obj is not None:
            _inherited.append(self._conn_obj)
        # A forked child does not journal its parent's acquisitions or releases: the parent does.
        # Nor does it draw from the parent's reserved ids, or append to its plans files.
        self._pending.clear()
        self._released.clear()
        self._drop_plans_files()
        self._ids = (1, 0)
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._refuse_foreign(conn)  # before anything is written to the file
            _set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if sqlite3.sqlite_version_info < (3, 35, 0):
                raise RegistryError(
                    f"reclaim needs SQLite 3.35 or newer; this Python has {sqlite3.sqlite_version}",
                    path=str(self.path),
                )
            self._conn_obj, self._pid = conn, pid
            self._ensure_schema(conn)
        except sqlite3.DatabaseError as exc:
            self._conn_obj = None
            conn.close()
            raise self._unusable(exc) from None
        except BaseException:
            self._conn_obj = None
            conn.close()
            raise
        return conn

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return
        meta = {}
        if "meta" in tables:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != _APPLICATION:
            raise self._corrupt("is an SQLite database but not a reclaim registry")

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables and not self._create:
                raise FileNotFoundError(f"{self.path} holds no reclaim registry yet")
            if not tables:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("application", _APPLICATION),
                        ("schema_version", "1"),
                        ("created_at", str(time.time())),
                    ],
                )
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("application") != _APPLICATION:
                raise self._corrupt("is an SQLite database but not a reclaim registry")
            version = int(meta.get("schema_version", "0"))
            if version > SCHEMA_VERSION:
                raise RegistryVersionError(
                    f"the reclaim registry {self.path} has schema version {version}, newer"
                    f" than this reclaim knows ({SCHEMA_VERSION}): upgrade reclaim",
                    path=str(self.path),
                )
            # A registry of an older reclaim is migrated by any command, read-only ones too:
            # it is known to be ours by now, and the columns it lacks are read below.
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version += 1
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),)
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # A critical section (I9): a signal's exception between BEGIN IMMEDIATE and COMMIT would
        # leave the transaction open and the write lock held by this process, so it is raised
        # when the transaction has ended.
        with critical(), self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._unusable(exc) from None
            marks, releases = dict(self._pending), dict(self._released)
            waiting = [f for f in self._plans.values() if f.waiting]
            try:
                for plans in waiting:  # first: the marks below may be of these entries
                    if not self._merge(conn, plans.run_id):
                        raise RegistryError(
                            f"run {plans.run_id} is not in the reclaim registry {self.path} any"
                            f" more, yet this process journaled plans for it in {plans.path};"
                            " they are kept there, and what they name is released when its"
                            " fixture exits",
                            path=str(self.path),
                        )
                if marks or releases:
                    self._write_pending(conn, marks, releases)
                yield conn
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                raise  # a caller's mistake (a run that does not exist): not the file's
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise self._unusable(exc) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._unusable(exc) from None
            for resource_id in marks:  # only once committed: a rollback keeps them pending
                self._pending.pop(resource_id, None)
            for resource_id in releases:
                self._released.pop(resource_id, None)
            for plans in waiting:
                plans.waiting = 0

    def _write_pending(
        self,
        conn: sqlite3.Connection,
        marks: dict[int, tuple[str | None, float]],
        releases: dict[int, tuple[str, float]],
    ) -> None:
        for resource_id, (text, at) in marks.items():
            if resource_id not in releases:
                self._acquired(conn, resource_id, text, at)
        ids = list(releases)
        for start in range(0, len(ids), _IDS_PER_STATEMENT):
            chunk = ids[start : start + _IDS_PER_STATEMENT]
            rows = conn.execute(
                f"DELETE FROM resources WHERE id IN ({', '.join('?' for _ in chunk)})"
                " RETURNING id, run_id, kind, name",
                chunk,
            ).fetchall()
            found = {row[0]: row for row in rows}
            events = []
            for rid in chunk:
                row = found.get(rid)
                if row is None:
                    continue
                if rid in marks:  # a mark of an entry released meanwhile is only its event
                    events.append((marks[rid][1], "resource.acquired", *row[1:], rid, "{}"))
                detail, at = releases[rid]
                events.append((at, "resource.released", *row[1:], rid, detail))
            conn.executemany(
                "INSERT INTO events (at, event, run_id, kind, name, resource_id, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )

    def _acquired(
        self, conn: sqlite3.Connection, resource_id: int, text: str | None, at: float
    ) -> None:
        row = conn.execute(
            "UPDATE resources SET record = COALESCE(?, record), state = ?, updated_at = ?,"
            " acquired_at = ?"
            " WHERE id = ? AND state = ? RETURNING run_id, kind, name",
            (text, ResourceState.ACQUIRED, at, at, resource_id, ResourceState.PLANNED),
        ).fetchone()
        if row is not None:
            self._resource_event(conn, "resource.acquired", resource_id, row, at=at)

    def postpone_checkpoints(self) -> None:
        with self._lock:
            try:
                self._connection().execute("PRAGMA wal_autocheckpoint = 0")
            except sqlite3.Error as exc:
                raise self._unusable(exc) from None

    def flush(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                return
            if not (
                self._pending or self._released or any(f.waiting for f in self._plans.values())
            ):
                return
        with self._write():
            pass  # the transaction writes what is pending

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self.flush()  # what this object reads includes what it deferred
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._unusable(exc) from None

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        event: str,
        *,
        run_id: str | None = None,
        resource_id: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (at, event, run_id, resource_id, kind, name, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                time.time() if at is None else at,
                event,
                run_id,
                resource_id,
                kind,
                name,
                _compact(detail) if detail else "{}",
            ),
        )

    @classmethod
    def _resource_event(
        cls,
        conn: sqlite3.Connection,
        event: str,
        resource_id: int,
        row: tuple[Any, ...],
        *,
        detail: dict[str, Any] | None = None,
        at: float,
    ) -> None:
        """An event of one resource, from a ``RETURNING run_id, kind, name`` row."""
        cls._event(
            conn, event, run_id=row[0], resource_id=resource_id, kind=row[1], name=row[2],
            detail=detail, at=at,
        )  # fmt: skip

    # --- runs ------------------------------------------------------------------------------

    def open_run(
        self,
        run_id: str,
        owner: Identity,
        *,
        label: str,
        parent_id: str | None = None,
        lease_seconds: float = 60.0,
    ) -> RunRecord:
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, parent_id, label, owner, state, started_at, heartbeat_at,"
                " lease_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    parent_id,
                    label,
                    json.dumps(owner.to_json()),
                    RunState.OPEN,
                    now,
                    now,
                    lease_seconds,
                ),
            )
            self._event(
                conn,
                "run.opened",
                run_id=run_id,
                detail=opened_detail(owner, label, parent_id),
                at=now,
            )
        return opened_run(
            run_id, owner, label=label, parent_id=parent_id, lease_seconds=lease_seconds, now=now
        )

    def close_run(self, run_id: str) -> None:
        now = time.time()
        with self._write() as conn:
            self._merge(conn, run_id)
            left = self._count(conn, run_id)
            if left:
                conn.execute(
                    "UPDATE runs SET state = ?, closed_at = ? WHERE id = ? AND state = ?",
                    (RunState.CLOSED, now, run_id, RunState.OPEN),
                )
            else:
                conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self._event(conn, "run.closed", run_id=run_id, detail={"left": left}, at=now)
        if not left:
            self._delete_plans_file(run_id)

    def heartbeat(self, run_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    def list_runs(self) -> list[RunRecord]:
        return [
            run_from_row(r)
            for r in self._read(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at, id")
        ]

    def claim_run(
        self,
        run_id: str,
        claimer: str,
        *,
        expect_state: str,
        expect_claimer: str | None,
        expect_heartbeat: float | None = None,
    ) -> bool:
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET state = ?, claimed_by = ?, claimed_at = ?"
                " WHERE id = ? AND state = ? AND claimed_by IS ?"
                " AND (? IS NULL OR heartbeat_at = ?)",
                (RunState.REAPING, claimer, now, run_id, expect_state, expect_claimer,
                 expect_heartbeat, expect_heartbeat),
            )  # fmt: skip
            won = cur.rowcount == 1
            if won:
                self._event(conn, "run.claimed", run_id=run_id, detail={"by": claimer}, at=now)
        return won

    def finish_reap(self, run_id: str, claimer: str, *, actor: str) -> None:
        now = time.time()
        with self._write() as conn:
            self._merge(conn, run_id)
            left = self._count(conn, run_id)
            if left:
                conn.execute(
                    "UPDATE runs SET state = ?, claimed_by = NULL, claimed_at = NULL"
                    " WHERE id = ? AND claimed_by = ?",
                    (RunState.REAPED, run_id, claimer),
                )
                deleted = False
            else:
                deleted = (
                    conn.execute(
                        "DELETE FROM runs WHERE id = ? AND claimed_by = ?", (run_id, claimer)
                    ).rowcount
                    == 1
                )
            self._event(
                conn, "run.reaped", run_id=run_id, detail={"by": actor, "left": left}, at=now
            )
        if deleted:
            self._delete_plans_file(run_id)

    @staticmethod
    def _count(conn: sqlite3.Connection, run_id: str) -> int:
        row = conn.execute("SELECT count(*) FROM resources WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0])

    # --- resources -------------------------------------------------------------------------

    def plan(
        self,
        run_id: str,
        fixture: str,
        kind: str,
        name: str,
        record: dict[str, Any],
        *,
        defer: bool = False,
    ) -> int:
        now = time.time()
        if defer:
            with self._lock:
                plans = self._plans_file(run_id)
                if plans is not None:
                    return self._journal_plan(plans, fixture, kind, name, record=record, now=now)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO resources (run_id, fixture, kind, name, record, state, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, fixture, kind, name, json.dumps(record), ResourceState.PLANNED, now, now),
            )
            resource_id = cur.lastrowid
            assert resource_id is not None
            self._event(
                conn,
                "resource.planned",
                run_id=run_id,
                resource_id=resource_id,
                kind=kind,
                name=name,
                at=now,
            )
        return resource_id

    def mark_acquired(
        self, resource_id: int, record: dict[str, Any], *, defer: bool = False
    ) -> None:
        now = time.time()
        if defer:  # the record is the planned one, which the row holds already
            with self._lock:
                self._connection()  # drops a parent's marks in a forked child first
                self._pending[resource_id] = (None, now)
            return
        text = json.dumps(record)
        with self._write() as conn:
            self._pending.pop(resource_id, None)
            self._acquired(conn, resource_id, text, now)

    def begin_release_many(
        self, resource_ids: Sequence[int], *, states: tuple[ResourceState, ...]
    ) -> list[ResourceRecord]:
        if not resource_ids:
            return []
        marks = ", ".join("?" for _ in states)
        ids = ", ".join("?" for _ in resource_ids)  # a batch is far below SQLite's 32766
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE resources SET state = ?, updated_at = ?"
                f" WHERE id IN ({ids}) AND state IN ({marks}) RETURNING {RESOURCE_COLUMNS}",
                (ResourceState.RELEASING, time.time(), *resource_ids, *states),
            ).fetchall()
        claimed = {r.id: r for r in map(resource_from_row, rows)}
        return [claimed[rid] for rid in resource_ids if rid in claimed]

    def mark_released_many(
        self, resource_ids: Sequence[int], *, actor: str, defer: bool = False
    ) -> None:
        if not resource_ids:
            return
        mark = (_by(actor), time.time())
        with self._lock:
            self._connection()  # drops a parent's marks in a forked child first
            if defer:
                resource_ids = self._journal_releases(resource_ids, mark)
                if not resource_ids:
                    return
            added = [rid for rid in resource_ids if rid not in self._released]
            for rid in added:
                self._released[rid] = mark
            if defer and len(self._released) < _MAX_WAITING:
                return
            try:
                with self._write():
                    pass  # the transaction writes what is pending, these with the rest
            except BaseException:
                if not defer:  # the caller learns that these were not journaled
                    for rid in added:
                        self._released.pop(rid, None)
                raise

    def mark_failed(self, resource_id: int, error: str, *, attempts: int, actor: str) -> None:
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE resources SET state = ?, attempts = attempts + ?, last_error = ?,"
                " updated_at = ? WHERE id = ? RETURNING run_id, kind, name, attempts",
                (ResourceState.FAILED, attempts, error, now, resource_id),
            ).fetchone()
            if row is not None:
                self._resource_event(
                    conn,
                    "resource.failed",
                    resource_id,
                    row,
                    detail={"by": actor, "error": error, "attempts": row[3]},
                    at=now,
                )

    def close_planned(self, resource_id: int, reason: str, *, actor: str) -> bool:
        now = time.time()
        self._journaled.pop(resource_id, None)
        with self._write() as conn:
            row = conn.execute(
                "DELETE FROM resources WHERE id = ? AND state = ? RETURNING run_id, kind, name",
                (resource_id, ResourceState.PLANNED),
            ).fetchone()
            if row is not None:
                self._resource_event(
                    conn,
                    "resource.not_created",
                    resource_id,
                    row,
                    detail={"by": actor, "reason": reason},
                    at=now,
                )
        return row is not None

    def resources(self, run_id: str | None = None) -> list[ResourceRecord]:
        self._merge_waiting(run_id)
        if run_id is None:
            rows = self._read(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY id")
        else:
            rows = self._read(
                f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE run_id = ? ORDER BY id",
                (run_id,),
            )
        return [resource_from_row(r) for r in rows]

    def get_resource(self, resource_id: int) -> ResourceRecord | None:
        rows = self._read(f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = ?", (resource_id,))
        return resource_from_row(rows[0]) if rows else None

    def forget(self, resource_id: int, *, actor: str) -> ResourceRecord | None:
        self._journaled.pop(resource_id, None)
        with self._write() as conn:
            row = conn.execute(
                f"DELETE FROM resources WHERE id = ? RETURNING {RESOURCE_COLUMNS}", (resource_id,)
            ).fetchone()
            if row is None:
                return None
            found = resource_from_row(row)
            self._event(
                conn,
                "resource.forgotten",
                run_id=found.run_id,
                resource_id=resource_id,
                kind=found.kind,
                name=found.name,
                detail={"by": actor},
            )
        return found

    # --- events ----------------------------------------------------------------------------

    def add_event(
        self,
        event: str,
        *,
        run_id: str | None = None,
        resource_id: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._write() as conn:
            self._event(
                conn,
                event,
                run_id=run_id,
                resource_id=resource_id,
                kind=kind,
                name=name,
                detail=detail,
            )

    def event_rows(self, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        return self._read(
            "SELECT id, at, event, run_id, resource_id, kind, name, detail FROM events"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )

    def run_openings(self, after_id: int) -> list[tuple[str | None, str]]:
        return self._read(OPENINGS_SQL.format(p="?"), (after_id,))

    def resource_histories(self, after_id: int) -> list[HistoryRow]:
        return self._read(HISTORIES_SQL.format(p="?"), (after_id,))

    def last_event_id(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(id), 0) FROM events", ())
        return int(rows[0][0])

    def prune_events(self, older_than: float) -> int:
        with self._write() as conn:
            # Events are appended in time order, so everything before the first one that is new
            # enough is old: found by walking the ids from the oldest (no index on `at` to pay
            # for in every write), and the walk stops there. Never the newest: ids are max + 1,
            # and a follower's cursor must never see one again.
            return conn.execute(
                "DELETE FROM events WHERE id < COALESCE("
                " (SELECT id FROM events WHERE at >= ? ORDER BY id LIMIT 1),"
                " (SELECT max(id) FROM events))",
                (older_than,),
            ).rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn_obj is not None and self._pid == os.getpid():
                # Best effort: an acquired mark that is not written leaves a planned entry, a
                # released mark an entry released already; every reaper releases either all
                # the same, and releasing what is gone is a no-op (I1, I3).
                with contextlib.suppress(RegistryError):
                    self.flush()
            if self._conn_obj is not None and self._pid == os.getpid():
                self._conn_obj.close()
            self._conn_obj = None
            self._pending.clear()
            self._released.clear()
            self._drop_plans_files()

    # --- journaled plans (see the module's doc) --------------------------------------------

    def _plans_file(self, run_id: str) -> _PlansFile | None:
        """This object's plans file of ``run_id``, opened on first use; None when plans cannot
        be journaled there (they go to the tables instead)."""
        self._connection()  # a forked child drops its parent's files first
        plans = self._plans.get(run_id)
        if plans is None:
            try:
                plans = _PlansFile(self.plans_dir, run_id)
            except OSError:
                return None  # a folder that cannot be made or a foreign file: the tables
            self._plans[run_id] = plans
        return None if plans.broken else plans

    def _journal_plan(
        self,
        plans: _PlansFile,
        fixture: str,
        kind: str,
        name: str,
        *,
        record: dict[str, Any],
        now: float,
    ) -> int:
        """Append the plan of an entry to ``plans``; its new id."""
        resource_id = self._reserve_id()
        # The JSON line of ["p", id, fixture, kind, name, record, time], put together by hand:
        # json's encoder spends a third of its time on the list and the float (issue 15).
        line = (
            f'["p",{resource_id},{_quoted(fixture)},{_quoted(kind)},{_quoted(name)},'
            f"{_compact(record)},{_time(now)}]"
        )
        try:
            plans.append(line.encode() + b"\n")
            self._journaled[resource_id] = plans
        except OSError as exc:
            raise RegistryError(
                f"cannot journal the plan of {kind} {name!r} in {plans.path}:"
                f" {exc.strerror or exc}; check the folder's free space and mode, or set"
                " RECLAIM_WRITE_DELAY=0 to journal plans in the registry's tables",
                path=str(self.path),
            ) from None
        self._merge_if_full(plans)
        return resource_id

    def _merge_if_full(self, *files: _PlansFile) -> None:
        """Merge now when too many lines wait (``_MAX_WAITING``). What waits is journaled
        already, so a merge that fails here is retried by the next write."""
        for plans in files:
            if plans.waiting >= _MAX_WAITING:
                with contextlib.suppress(RegistryError):
                    self.flush()
                return

    def _reserve_id(self) -> int:
        """An entry id no other writer takes: drawn from a block that moved AUTOINCREMENT's
        sequence past it (the sequence is never lowered, by an insert of a smaller id either)."""
        low, high = self._ids
        if low > high:
            with self._write() as conn:
                row = conn.execute(
                    "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence"
                    " WHERE name = 'resources'), 0), COALESCE((SELECT max(id) FROM resources), 0))"
                ).fetchone()
                low, high = int(row[0]) + 1, int(row[0]) + _ID_BLOCK
                if (
                    conn.execute(
                        "UPDATE sqlite_sequence SET seq = ? WHERE name = 'resources'", (high,)
                    ).rowcount
                    == 0
                ):
                    conn.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES ('resources', ?)", (high,)
                    )
        self._ids = (low + 1, high)
        return low

    def _merge(self, conn: sqlite3.Connection, run_id: str) -> bool:
        """Merge the whole lines of ``run_id``'s plans file not merged yet (in the caller's
        write transaction, which also moves the run's ``plans_merged``). False: no such run."""
        path = self.plans_dir / run_id
        row = conn.execute("SELECT plans_merged FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return False
        start = int(row[0])
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise RegistryError(
                f"cannot read the journaled plans of run {run_id} in {path}: {exc.strerror};"
                " make the file readable for this user",
                path=str(self.path),
            ) from None
        end = data.rfind(b"\n") + 1  # after it: a line whose write never returned
        if not end:
            return True
        lines = _journal_lines(data[:end])
        if lines is None:
            lines = []
            at_byte = start
            for raw in data[: end - 1].split(b"\n"):
                parsed = _journal_line(raw)
                if parsed is None:
                    raise RegistryCorruptError(
                        f"the journal of run {run_id} in {path} has a damaged line at byte"
                        f" {at_byte}; reclaim keeps the file and merges nothing of it: check"
                        " it, and move it away to go on without its entries (`reclaim sweep"
                        " --leftovers` finds what they named by reclaim's prefix)",
                        path=str(self.path),
                    )
                lines.append(parsed)
                at_byte += len(raw) + 1
        try:
            self._apply(conn, run_id, lines)
        except sqlite3.IntegrityError as exc:
            raise RegistryCorruptError(
                f"the journal of run {run_id} in {path} names an entry the registry holds"
                f" already ({exc}); reclaim keeps the file and merges nothing of it",
                path=str(self.path),
            ) from None
        conn.execute("UPDATE runs SET plans_merged = ? WHERE id = ?", (start + end, run_id))
        return True

    @staticmethod
    def _apply(conn: sqlite3.Connection, run_id: str, lines: list[tuple[Any, ...]]) -> None:
        """Write a stretch of a run's journal: what is still held at its end goes into
        ``resources`` (an entry planned and released within it never does), and every line's
        event into ``events``, in the order of their times (an acquired mark that waited in
        memory is journaled with its release, later than the next plan)."""
        planned: dict[int, tuple[Any, ...]] = {}
        acquired: dict[int, float] = {}
        released: set[int] = set()
        order: list[tuple[float, str, int, str]] = []
        for line in lines:
            tag, resource_id = line[0], line[1]
            if tag == "p":
                planned[resource_id] = line
                order.append((line[6], "resource.planned", resource_id, "{}"))
            elif tag == "a":
                acquired[resource_id] = line[2]
                order.append((line[2], "resource.acquired", resource_id, "{}"))
            else:
                released.add(resource_id)
                order.append((line[2], "resource.released", resource_id, line[3]))
        names = {rid: (line[3], line[4]) for rid, line in planned.items()}
        earlier = [rid for rid in {*acquired, *released} if rid not in planned]
        for at in range(0, len(earlier), _IDS_PER_STATEMENT):
            chunk = earlier[at : at + _IDS_PER_STATEMENT]
            for rid, kind, name in conn.execute(
                f"SELECT id, kind, name FROM resources WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ):
                names[rid] = (kind, name)
        held = [
            (rid, run_id, fixture, kind, name, json.dumps(record),
             ResourceState.ACQUIRED if rid in acquired else ResourceState.PLANNED,
             at, acquired.get(rid, at), acquired.get(rid))
            for rid, (_, _, fixture, kind, name, record, at) in planned.items()
            if rid not in released
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO resources (id, run_id, fixture, kind, name, record, state, created_at,"
            " updated_at, acquired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            held,
        )
        conn.executemany(
            "UPDATE resources SET state = ?, updated_at = ?, acquired_at = ?"
            " WHERE id = ? AND state = ?",
            [
                (ResourceState.ACQUIRED, at, at, rid, ResourceState.PLANNED)
                for rid, at in acquired.items()
                if rid not in planned and rid not in released
            ],
        )
        conn.executemany(
            "DELETE FROM resources WHERE id = ?",
            [(rid,) for rid in released if rid not in planned],
        )
        conn.executemany(
            "INSERT INTO events (at, event, run_id, resource_id, kind, name, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (at, event, run_id, rid, *names[rid], detail)
                for at, event, rid, detail in sorted(order, key=operator.itemgetter(0))
                if rid in names
            ],
        )

    def _merge_waiting(self, run_id: str | None) -> None:
        """Before a listing: merge what waits in the plans files (of ``run_id``, or of every
        run), whoever wrote them; delete the files of runs whose row is gone, once each is
        proved to be a journal (I8: the folder may hold a file reclaim never wrote)."""
        with self._lock:
            self.flush()  # this object's own first
            if run_id is not None:
                names = [run_id]
            else:
                try:
                    names = os.listdir(self.plans_dir)
                except OSError:
                    return  # none yet (or unreadable: then nothing of it can be merged anyway)
            sizes: dict[str, tuple[int, float]] = {}
            for name in names:
                try:
                    info = os.lstat(self.plans_dir / name)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):  # a link or a folder is none of ours
                    sizes[name] = (info.st_size, info.st_mtime)
            if not sizes:
                return
            marks = ", ".join("?" * len(sizes))
            sql = f"SELECT id, plans_merged FROM runs WHERE id IN ({marks})"
            merged = dict(self._read(sql, (*sizes,)))
            waiting = [n for n, (size, _) in sizes.items() if n in merged and size > merged[n]]
            if waiting:
                with self._write() as conn:
                    for name in waiting:
                        self._merge(conn, name)
            if run_id is None:
                now = time.time()
                for name, (_, mtime) in sizes.items():
                    old = now - mtime > _ORPHAN_AFTER_S
                    if name not in merged and old and _is_journal(self.plans_dir / name):
                        self._delete_plans_file(name)

    def _delete_plans_file(self, run_id: str) -> None:
        """The run's row is gone, and with it everything its plans file held (merged by the
        transaction that deleted it): the file goes too."""
        with self._lock:
            plans = self._plans.pop(run_id, None)
            if plans is not None:
                plans.close()
        with contextlib.suppress(OSError):  # gone already, or left for the next listing
            os.unlink(self.plans_dir / run_id)

    def _drop_plans_files(self) -> None:
        for plans in self._plans.values():
            plans.close()
        self._plans.clear()
        self._journaled.clear()

    def _journal_releases(self, resource_ids: Sequence[int], mark: tuple[str, float]) -> list[int]:
        """Append the owner's releases of entries it journaled to their files (with a deferred
        acquired mark before each, so that a death loses neither); the ids that are not."""
        rest: list[int] = []
        by_file: dict[_PlansFile, list[int]] = {}
        for rid in resource_ids:
            plans = self._journaled.get(rid)
            if plans is None or plans.broken or plans.fd < 0:
                rest.append(rid)
            else:
                by_file.setdefault(plans, []).append(rid)
        detail, at = mark
        released = f",{_time(at)},{detail}]\n"
        for plans, rids in by_file.items():
            parts = []
            for rid in rids:
                acquired = self._pending.get(rid)
                if acquired is not None:
                    parts.append(f'["a",{rid},{_time(acquired[1])}]\n')
                parts.append(f'["r",{rid}{released}')
            try:
                plans.append("".join(parts).encode())
            except OSError:
                rest.extend(rids)  # as before the journal: kept to be written with the tables
                continue
            for rid in rids:
                self._pending.pop(rid, None)
                del self._journaled[rid]
        self._merge_if_full(*by_file)
        return rest


class _PlansFile:
    """The owner's append-only file of one run's journaled plans (see the module's doc)."""

    def __init__(self, directory: Path, run_id: str) -> None:
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            _private_folder(directory)
            info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(errno.EPERM, "not a folder of this user", str(directory))
        self.path = directory / run_id
        self.run_id = run_id
        self.fd = os.open(
            self.path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            info = os.fstat(self.fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise OSError(errno.EPERM, "not a regular file of this user", str(self.path))
            if stat.S_IMODE(info.st_mode) & 0o077:
                os.fchmod(self.fd, 0o600)  # it may hold credentials (I7)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = info.st_size
        #: Lines appended since the last merge by this object.
        self.waiting = 0
        #: A write failed and its part could not be cut off: no line may follow it.
        self.broken = False

    def append(self, line: bytes) -> None:
        """One ``write(2)`` of one whole line; on a failure the file is as it was, or broken."""
        try:
            written = os.write(self.fd, line)
        except OSError:
            self._cut()
            raise
        if written != len(line):
            self._cut()
            raise OSError(errno.ENOSPC, "the line was written in part")
        self.size += written
        self.waiting += 1

    def _cut(self) -> None:
        # What a failed write left is cut off, so that the next line starts a line of its own.
        # If that fails too, the file ends in a line without its newline, which no merge takes
        # (nothing was created for it), and nothing more is appended here.
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            self.broken = True

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _journal_lines(data: bytes) -> list[tuple[Any, ...]] | None:
    """Whole journal lines (``data`` ends in a newline), each checked as :func:`_journal_line`
    checks one, read with json's scanner in one pass; None if any line is not one, and the
    caller reads them one by one to say which (and where), as the only judge."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    lines = []
    pos, size = 0, len(text)
    while pos < size:
        newline = text.index("\n", pos)  # there is one: data ends with it
        try:
            fields, after = _scan(text, pos)
        except (StopIteration, ValueError):
            return None
        if after != newline:  # one value per line, the whole line (JSON lets it span lines)
            return None
        parsed = _checked(fields)
        if parsed is None:
            return None
        lines.append(parsed)
        pos = after + 1
    return lines


def _journal_line(line: bytes) -> tuple[Any, ...] | None:
    """A journal line, checked: ``("p", id, fixture, kind, name, record, time)``,
    ``("a", id, time)`` or ``("r", id, time, detail as JSON)``; None: damaged. A record stays
    a dict: only an entry still held when its stretch ends is written as a row."""
    try:
        fields = json.loads(line.decode())  # a str: json does not guess its encoding then
    except ValueError:  # UnicodeDecodeError too
        return None
    return _checked(fields)


def _checked(fields: Any) -> tuple[Any, ...] | None:
    """A journal line's value as :func:`_journal_line` gives it; None: not one."""
    # Plain comparisons, no helper: a merge runs this for every line (issue 15).
    if type(fields) is not list or len(fields) < 3:
        return None
    tag, resource_id, shape = fields[0], fields[1], len(fields)
    line: tuple[Any, ...] | None = None
    if tag == "p" and shape == 7:
        if (
            type(fields[2]) is str
            and type(fields[3]) is str
            and type(fields[4]) is str
            and type(fields[5]) is dict
            and type(fields[6]) in (int, float)
        ):
            line = ("p", resource_id, fields[2], fields[3], fields[4], fields[5], float(fields[6]))
    elif tag == "a" and shape == 3:
        if type(fields[2]) in (int, float):
            line = ("a", resource_id, float(fields[2]))
    elif tag == "r" and shape == 4 and type(fields[2]) in (int, float) and type(fields[3]) is dict:
        detail = fields[3]
        by = detail.get("by")
        text = _by(by) if len(detail) == 1 and type(by) is str else json.dumps(detail)
        line = ("r", resource_id, float(fields[2]), text)
    return line if type(resource_id) is int and resource_id > 0 else None


def _is_journal(path: Path) -> bool:
    """Whether ``path`` holds journal lines, each one whole but perhaps the last (a write cut
    off): only such a file is deleted as an orphan. An empty file proves nothing, and stays."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    end = data.rfind(b"\n") + 1
    return end > 0 and all(_journal_line(raw) is not None for raw in data[: end - 1].split(b"\n"))


def _private_folder(path: Path) -> None:
    """Make ``path`` (and its parents) a folder only this user can enter (I7)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; say it once more


def _time(at: float) -> str:
    """A time of a journal line: a JSON number, to the microsecond (``time.time()``'s own
    precision here; ``repr`` writes 17 digits, at twice the cost: three times a resource)."""
    return f"{at:.6f}"


@functools.lru_cache(maxsize=16)
def _by(actor: str) -> str:
    """The detail of a released event: who released it (a handful of actors, so cached)."""
    return _compact({"by": actor})


def _set_wal(conn: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite does not call the busy
    # handler for it: when several processes create the registry at once, wait our turn here.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

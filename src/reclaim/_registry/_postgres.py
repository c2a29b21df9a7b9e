"""The shared registry: tables in one schema of a PostgreSQL database (psycopg 3).

It keeps the semantics of the SQLite registry, method for method (``_sqlite.py`` is the
reference): every method is one transaction, and the event a change appends is written in that
transaction. Where it differs, it is for being shared by many machines:

- **Clock.** Every timestamp comes from the database's clock (``clock_timestamp()``), never from
  the client's, so a host whose clock is off cannot make a live run look dead. :meth:`now` reads
  it.
- **Compare-and-set.** ``claim_run`` and ``begin_release`` are one ``UPDATE ... WHERE state = ...
  RETURNING``: the database decides, so two sweepers on two machines never both win (I6).
- **Event order.** Ids come from a sequence, which hands them out in the order transactions
  insert, not the order they commit: a follower that read up to id 11 could miss an id 10
  committed a moment later. So an event is inserted under a transaction-level advisory lock
  taken in *shared* mode (held to the commit: writers do not wait for each other, their commits
  group), and :meth:`events` reads under the same lock in *exclusive* mode: it waits for the
  writers whose ids are handed out but not committed, so every id below what it returns is
  visible by then, and a follower that reads ``id > last`` misses nothing.
- **Waking followers.** The same transaction sends ``NOTIFY`` on the schema's channel (delivered
  at commit); :meth:`wait_for_events` LISTENs on a second connection.
- **Losing the server.** A method whose connection breaks (a restart, the network, an
  administrator's ``pg_terminate_backend``) reconnects and runs again, with back-off, until
  ``retry_seconds`` have passed, then raises :class:`RegistryError`. A retry is safe when the
  lost COMMIT had landed: each call carries a token of its own, stored with its event (and with
  the row ``plan`` inserts), and a retry that finds it returns what the first attempt returned
  instead of writing twice.
- **Fork.** A child never uses, nor closes, a connection it inherited: closing it would end the
  parent's session. Its socket is pointed at ``/dev/null`` in the child, so not even the
  interpreter's exit can speak on it, and the child opens its own connection.

Secrets (I7): records hold credentials needed for release, as in SQLite; whoever may SELECT on the
schema can read them. The password of the URL never appears in :attr:`location`, a ``repr`` or an
error message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import select
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import unquote

from reclaim._errors import (
    MissingExtraError,
    RegistryCorruptError,
    RegistryError,
    RegistryVersionError,
)
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

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    _HAVE_PSYCOPG = True
except ImportError:  # pragma: no cover - exercised only without the extra
    _HAVE_PSYCOPG = False

if TYPE_CHECKING:
    from psycopg import Connection, Cursor

__all__ = [
    "DEFAULT_SCHEMA",
    "RETRY_SECONDS",
    "SCHEMA_VERSION",
    "PostgresRegistry",
    "is_postgres_url",
    "with_configured_password",
]

#: The schema this reclaim writes. Bump it with a migration in ``_MIGRATIONS``.
SCHEMA_VERSION: Final = 1

#: The schema that holds the tables when the URL names none (``?schema=NAME``).
DEFAULT_SCHEMA: Final = "reclaim"

#: How long a method keeps reconnecting and retrying after the server went away.
RETRY_SECONDS: Final = 30.0

#: How long a statement waits for a lock another session holds (like SQLite's busy timeout).
LOCK_TIMEOUT_S: Final = 60

#: How long a session may sit inside a transaction doing nothing before the server ends it.
IDLE_TIMEOUT_S: Final = 30

_APPLICATION: Final = "reclaim"
_SCHEMES: Final = ("postgresql://", "postgres://")
#: Lower case, so that the name means the same quoted (as reclaim uses it) and unquoted (as an
#: administrator types it in psql). PostgreSQL reserves ``pg_``; identifiers have 63 bytes.
_SCHEMA_NAME: Final = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")
#: libpq's query parameters that hold a secret (left out of ``location``).
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})
#: Connection settings reclaim adds unless the URL sets them: a dead peer is noticed in about
#: 30 s even when no statement runs (keepalives) or while one waits for its answer (user timeout).
_CONNECT_DEFAULTS: Final[dict[str, str]] = {
    "application_name": "reclaim",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
_CONNECT_TIMEOUT_S: Final = 10
#: How long wait_for_events sleeps when it cannot listen (the server is away).
_UNHEARD_POLL_S: Final = 1.0

_SCHEMA_V1: Final = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE runs (
    id            text PRIMARY KEY,
    parent_id     text,
    label         text NOT NULL,
    owner         text NOT NULL,
    state         text NOT NULL,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    lease_seconds double precision NOT NULL,
    closed_at     double precision,
    claimed_by    text,
    claimed_at    double precision
);
CREATE TABLE resources (
    id            bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    token         uuid UNIQUE,
    run_id        text NOT NULL REFERENCES runs(id),
    fixture       text NOT NULL,
    kind          text NOT NULL,
    name          text NOT NULL,
    record        text NOT NULL,
    state         text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    acquired_at   double precision,
    release_token uuid
);
CREATE INDEX resources_by_run ON resources(run_id, id);
CREATE TABLE events (
    id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    token       uuid UNIQUE,
    at          double precision NOT NULL,
    event       text NOT NULL,
    run_id      text,
    resource_id bigint,
    kind        text,
    name        text,
    detail      text NOT NULL DEFAULT '{}'
);
CREATE INDEX events_by_time ON events(at);
"""

# Migrations from version N to N+1, each applied in the transaction that holds the migration
# lock (a new schema is made at version 1 and migrated like an old one, so both end the same).
_MIGRATIONS: Final[dict[int, str]] = {}

_NOW: Final = "SELECT extract(epoch FROM clock_timestamp())::float8"

T = TypeVar("T")


def is_postgres_url(location: str) -> bool:
    return location.startswith(_SCHEMES)


# --- the URL -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Target:
    """A registry URL taken apart: what to connect with, and what may be shown."""

    #: What psycopg connects with: the URL without ``schema=`` (it may hold the password).
    conninfo: str = dataclasses.field(repr=False)
    #: The URL without its password, secret parameters and schema: fit to show.
    public: str
    schema: str
    #: The password as it may appear in a driver's message (raw and decoded): scrubbed.
    secrets: tuple[str, ...] = dataclasses.field(repr=False)
    has_password: bool

    @property
    def location(self) -> str:
        """The URL without its password, with the schema: fit to show, and to open again."""
        return f"{self.public}{'&' if '?' in self.public else '?'}schema={self.schema}"

    @property
    def display(self) -> str:
        return f"{self.public} (schema {self.schema})"

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _parse(url: str) -> _Target:
    scheme, _, rest = url.partition("://")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo, at, hostport = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    secrets: list[str] = []
    if colon and password:
        secrets += [password, unquote(password)]
    schema = DEFAULT_SCHEMA
    kept: list[str] = []
    shown: list[str] = []
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        if unquote(key) == "schema":
            schema = unquote(value)
            continue
        kept.append(item)
        if unquote(key).lower() in _SECRET_PARAMS:
            if value:
                secrets += [value, unquote(value)]
            continue
        shown.append(item)
    public = f"{scheme}://{user + '@' if at else ''}{hostport}{path}"
    if shown:
        public += "?" + "&".join(shown)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise RegistryError(
            f"the reclaim registry URL {public} names the schema {schema!r}, which reclaim does"
            " not use: a schema name is 1 to 63 lower-case letters, digits and _, not starting"
            " with a digit or pg_; fix ?schema= in RECLAIM_REGISTRY (or --registry)",
            path=public,
        )
    conninfo = f"{scheme}://{authority}{path}"
    if kept:
        conninfo += "?" + "&".join(kept)
    return _Target(
        conninfo=conninfo,
        public=public,
        schema=schema,
        secrets=tuple(s for s in dict.fromkeys(secrets) if s),
        has_password=bool(secrets),
    )


def with_configured_password(location: str, configured: str | None) -> str:
    """``location`` as the configured registry URL when that is the same registry with its
    password: a ``location`` (passed to a watchdog, shown by a command) never carries the
    password, and the process opening it finds it in ``RECLAIM_REGISTRY``."""
    if not configured or configured == location or not is_postgres_url(configured):
        return location
    try:
        given, known = _parse(location), _parse(configured)
    except RegistryError:
        return location
    if not given.has_password and known.has_password and given.location == known.location:
        return configured
    return location


def _key(purpose: str, schema: str) -> int:
    """A 64-bit advisory lock key of its own for ``purpose`` in ``schema``."""
    digest = hashlib.sha256(f"reclaim:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _channel(schema: str) -> str:
    name = f"reclaim.{schema}"
    if len(name) > 63:
        name = f"reclaim.{hashlib.sha256(schema.encode()).hexdigest()[:40]}"
    return name


def _oneline(text: str) -> str:
    return " ".join(text.split())


# --- fork ----------------------------------------------------------------------------------

# Connections inherited through fork are kept, never closed: closing one in the child would end
# the parent's session (libpq says goodbye to the server on the socket they share).
_inherited: list[Any] = []
_live: weakref.WeakSet[PostgresRegistry] = weakref.WeakSet()


def _disown(conn: Any) -> None:
    """Make ``conn``, inherited by this child, harmless and keep it: its socket is replaced by
    ``/dev/null`` (the parent's copy of the socket is untouched), so nothing the child does,
    not even the finalisation of the object at exit, can reach the parent's session."""
    _inherited.append(conn)
    with contextlib.suppress(Exception):
        fd = conn.fileno()
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)


def _after_fork_in_child() -> None:
    for registry in list(_live):
        registry._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Lost(Exception):
    """A connection was lost (its psycopg error, scrubbed, as text)."""


# --- the registry --------------------------------------------------------------------------


class PostgresRegistry(Registry):
    """The registry in one schema of a PostgreSQL database, shared by many machines."""

    notifies = True  # wait_for_events wakes at a commit that appended an event (LISTEN)

    def __init__(
        self, url: str, *, create: bool = True, retry_seconds: float = RETRY_SECONDS
    ) -> None:
        if not _HAVE_PSYCOPG:
            raise MissingExtraError("PostgreSQL registry", "postgres", "psycopg 3")
        self._target = _parse(url)
        self.location = self._target.location
        self.schema = self._target.schema
        self.retry_seconds = retry_seconds
        self._create = create
        self._channel = _channel(self.schema)
        self._event_key = _key("events", self.schema)
        self._migrate_key = _key("migrate", self.schema)
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        self._conn: Connection[Any] | None = None
        self._pid = -1
        self._listener: Connection[Any] | None = None
        self._listener_pid = -1
        self._checked = False
        _live.add(self)
        with critical(), self._lock:
            try:
                self._connection()  # connects, validates and migrates
            except _Lost as exc:
                raise RegistryError(
                    f"cannot reach the reclaim registry at {self._target.display}: {exc}; is the"
                    " server up and RECLAIM_REGISTRY right?",
                    path=self.location,
                ) from None

    def __repr__(self) -> str:
        return f"<PostgresRegistry {self.location}>"

    def reopen_location(self) -> str:
        """The URL another process opens this registry with: with its password, if it has one
        (never to be shown, nor put on a command line)."""
        target = self._target
        return f"{target.conninfo}{'&' if '?' in target.conninfo else '?'}schema={target.schema}"

    # --- connections -----------------------------------------------------------------------

    def _connection(self) -> Connection[Any]:
        """This process's connection, opened (and the schema checked) on first use. Raises
        :class:`_Lost` when the server cannot be reached."""
        pid = os.getpid()
        if self._conn is not None and self._pid != pid:
            self._after_fork()
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._drop()
        if self._conn is not None:
            return self._conn
        conn = self._connect(autocommit=False)
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                cur.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
                # Whatever the server's default: each statement sees what committed before it
                # (the event log's reads rely on it, and the claims need no retry loop).
                cur.execute("SET default_transaction_isolation TO 'read committed'")
                # A client stopped inside a transaction (Ctrl-Z, a debugger) must not hold the
                # registry's locks for everyone: the server ends its session, and the client
                # retries its call when it runs again (safe, see _transact).
                cur.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_TIMEOUT_S}s'")
            conn.commit()
            if not self._checked:
                self._ensure_schema(conn)
                self._checked = True
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                raise _Lost(self._text(exc)) from None
            if isinstance(exc, psycopg.Error):
                raise self._failed(exc) from None
            raise
        self._conn, self._pid = conn, pid
        return conn

    def _connect(self, *, autocommit: bool) -> Connection[Any]:
        try:
            given = conninfo_to_dict(self._target.conninfo)
        except psycopg.Error as exc:
            raise RegistryError(
                f"the reclaim registry URL {self._target.public} is not a valid PostgreSQL URL"
                f" ({self._text(exc)}); fix RECLAIM_REGISTRY (or --registry)",
                path=self.location,
            ) from None
        extra: dict[str, Any] = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = _CONNECT_TIMEOUT_S
        try:
            return psycopg.connect(self._target.conninfo, autocommit=autocommit, **extra)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _Lost(self._text(exc)) from None
        except psycopg.Error as exc:
            raise RegistryError(
                f"cannot open the reclaim registry at {self._target.display}: {self._text(exc)};"
                " is RECLAIM_REGISTRY right?",
                path=self.location,
            ) from None

    def _drop(self) -> None:
        """Forget this process's connection (it broke): closed, quietly."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    def _after_fork(self) -> None:
        # In a forked child: whatever this object held belongs to the parent.
        self._lock = threading.RLock()
        self._listen_lock = threading.Lock()
        for conn in (self._conn, self._listener):
            if conn is not None:
                _disown(conn)
        self._conn = self._listener = None
        self._pid = self._listener_pid = -1

    def _text(self, exc: BaseException) -> str:
        return self._target.scrub(_oneline(str(exc))) or type(exc).__name__

    def _not_allowed(self, privilege: str) -> RegistryError:
        return RegistryError(
            f"the reclaim registry at {self._target.display} cannot be used: its role lacks"
            f" {privilege}; grant its role the privileges listed in docs/registry-postgres.md,"
            " or set RECLAIM_REGISTRY to a registry it may use",
            path=self.location,
        )

    def _failed(self, exc: psycopg.Error) -> RegistryError:
        """reclaim's error for a statement the server refused (not a lost connection)."""
        text = self._text(exc)
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            advice = (
                "grant its role the privileges listed in docs/registry-postgres.md, or set"
                " RECLAIM_REGISTRY to a registry it may use"
            )
        elif isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            advice = "its tables are gone (was the schema dropped?); open it again to recreate them"
        else:
            advice = "check the server's log; reclaim changed nothing in this call"
        return RegistryError(
            f"the reclaim registry at {self._target.display} refused a statement: {text}; {advice}",
            path=self.location,
        )

    # --- schema ----------------------------------------------------------------------------

    def _state(self, cur: Cursor[Any]) -> int | None:
        """The schema version of the registry, None when the schema holds no registry yet."""
        cur.execute(
            "SELECT c.relname, has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n"
            " LEFT JOIN pg_class c"
            " ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
            " WHERE n.nspname = %s",
            (self.schema,),
        )
        rows = cur.fetchall()
        tables = {r[0] for r in rows if r[0] is not None}
        if rows and not rows[0][1]:
            # Without USAGE, PostgreSQL hides the schema's tables (as if there were none).
            raise self._not_allowed("USAGE on the schema")
        if not tables:
            return None
        meta: dict[str, str] = {}
        if "meta" in tables:
            cur.execute("SELECT key, value FROM meta")
            meta = dict(cur.fetchall())
        if meta.get("application") != _APPLICATION:
            raise RegistryCorruptError(
                f"the schema {self.schema} at {self._target.public} holds tables that are not a"
                " reclaim registry. reclaim never touches them: name another schema with"
                " ?schema=NAME in RECLAIM_REGISTRY",
                path=self.location,
            )
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise RegistryVersionError(
                f"the reclaim registry at {self._target.display} has schema version {version},"
                f" newer than this reclaim knows ({SCHEMA_VERSION}): upgrade reclaim (every"
                " machine that shares this registry needs a reclaim that knows its version)",
                path=self.location,
            )
        return version

    def _ensure_schema(self, conn: Connection[Any]) -> None:
        try:
            with conn.cursor() as cur:
                version = self._state(cur)
                if version == SCHEMA_VERSION:
                    conn.commit()
                    return
                if version is None and not self._create:
                    raise FileNotFoundError(
                        f"no reclaim registry at {self._target.display} yet (its schema holds"
                        " no reclaim tables)"
                    )
                # Creating or migrating: one process at a time (the others wait, then find it
                # done). The lock ends with the transaction.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._migrate_key,))
                version = self._state(cur)
                if version is None:
                    if not self._create:
                        raise FileNotFoundError(f"no reclaim registry at {self._target.display}")
                    self._create_tables(cur)
                    version = 1
                while version < SCHEMA_VERSION:
                    for statement in _MIGRATIONS[version].split(";"):
                        if statement.strip():
                            cur.execute(statement)
                    version += 1
                    cur.execute(
                        "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),)
                    )
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise

    def _create_tables(self, cur: Cursor[Any]) -> None:
        cur.execute(
            "SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = %s",
            (self.schema,),
        )
        row = cur.fetchone()
        if row is None:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
            # when an administrator made the schema beforehand.
            cur.execute("SELECT has_database_privilege(current_database(), 'CREATE')")
            allowed = cur.fetchone()
            if allowed is None or not allowed[0]:
                raise self._not_allowed("CREATE on the database (to make the schema)")
            cur.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
        elif not row[0]:
            raise self._not_allowed("CREATE on the schema (to make the registry's tables)")
        for statement in _SCHEMA_V1.split(";"):
            if statement.strip():
                cur.execute(statement)
        cur.execute(
            "INSERT INTO meta (key, value) VALUES ('application', %s), ('schema_version', '1'),"  # noqa: S608
            f" ('created_at', ({_NOW})::text)",
            (_APPLICATION,),
        )

    # --- transactions ----------------------------------------------------------------------

    def _transact(self, body: Callable[[Cursor[Any]], T], *, token: uuid.UUID | None = None) -> T:
        """Run ``body`` in one transaction and commit; on a lost connection reconnect and run
        it again, until ``retry_seconds`` have passed.

        When a COMMIT was sent but its answer lost, the transaction may have landed: a retry
        first looks for the event carrying ``token`` and, when it is there, returns what the
        first attempt returned (writing nothing twice)."""
        deadline: float | None = None
        delay = 0.05
        pending: list[T] = []  # the result of an attempt whose COMMIT is in doubt
        while True:
            # One attempt is a critical section (I9): a signal cannot leave a transaction open.
            # The back-off sleeps outside it, so Ctrl-C ends a wait for a server that is away.
            with critical(), self._lock:
                try:
                    conn = self._connection()
                    return self._attempt(conn, body, token, pending)
                except psycopg.errors.LockNotAvailable as exc:
                    self._rollback()
                    raise RegistryError(
                        f"the reclaim registry at {self._target.display} stayed locked by another"
                        f" session for {LOCK_TIMEOUT_S} s ({self._text(exc)}); look for a stuck"
                        " session in pg_stat_activity",
                        path=self.location,
                    ) from None
                except _Lost as exc:
                    error = str(exc)
                except psycopg.Error as exc:
                    # Lost: the driver says so, or the server ended the session (an
                    # administrator, the idle-in-transaction timeout: not always an
                    # OperationalError), which leaves the connection broken.
                    lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                    lost = lost or self._conn is None or self._conn.closed or self._conn.broken
                    self._rollback()
                    if not lost and isinstance(exc, psycopg.IntegrityError):
                        raise  # a caller's mistake (a run that does not exist): not the server's
                    if not lost:
                        raise self._failed(exc) from None
                    error = self._text(exc)
                except BaseException:
                    self._rollback()
                    raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.retry_seconds
            if now >= deadline:
                doubt = (
                    " Its last change may or may not have been saved."
                    if pending
                    else " Nothing of this call was saved."
                )
                raise RegistryError(
                    f"lost the reclaim registry at {self._target.display} and could not get it"
                    f" back in {self.retry_seconds:g} s: {error}.{doubt} Check that the server is"
                    " up and reachable and RECLAIM_REGISTRY is right; `reclaim sweep` later"
                    " releases what a run could not record",
                    path=self.location,
                )
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 1.0)

    def _attempt(
        self,
        conn: Connection[Any],
        body: Callable[[Cursor[Any]], T],
        token: uuid.UUID | None,
        pending: list[T],
    ) -> T:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()  # left over by an interrupted call
        with conn.cursor() as cur:
            if pending and token is not None:
                cur.execute("SELECT EXISTS (SELECT 1 FROM events WHERE token = %s)", (token,))
                row = cur.fetchone()
                if row is not None and row[0]:
                    conn.rollback()
                    return pending[-1]  # the lost COMMIT had landed
            result = body(cur)
        pending.append(result)
        self._commit(conn)
        return result

    def _commit(self, conn: Connection[Any]) -> None:
        conn.commit()

    def _rollback(self) -> None:
        """End the failed transaction; a connection that cannot even do that is dropped."""
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            return
        if conn.closed or conn.broken:
            self._drop()
            return
        try:
            conn.rollback()
        except Exception:
            self._drop()

    def _read(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def body(cur: Cursor[Any]) -> list[tuple[Any, ...]]:
            cur.execute(query, args)
            return cur.fetchall()

        return self._transact(body)

    @staticmethod
    def _now(cur: Cursor[Any]) -> float:
        cur.execute(_NOW)
        row = cur.fetchone()
        assert row is not None
        return float(row[0])

    def _event(
        self,
        cur: Cursor[Any],
        token: uuid.UUID,
        event: str,
        *,
        run_id: str | None = None,
        resource_id: int | None = None,
        kind: str | None = None,
        name: str | None = None,
        detail: dict[str, Any] | None = None,
        at: float,
    ) -> None:
        # The shared lock that readers of the log wait for (see the module's docstring); taken
        # last, so it is held only for the insert and the commit. The NOTIFY goes at commit.
        cur.execute(
            "SELECT pg_advisory_xact_lock_shared(%s), pg_notify(%s, '')",
            (self._event_key, self._channel),
        )
        cur.execute(
            "INSERT INTO events (token, at, event, run_id, resource_id, kind, name, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (token) DO NOTHING",
            (
                token,
                at,
                event,
                run_id,
                resource_id,
                kind,
                name,
                json.dumps(detail or {}, separators=(",", ":")),
            ),
        )

    def _resource_event(
        self,
        cur: Cursor[Any],
        token: uuid.UUID,
        event: str,
        resource_id: int,
        row: tuple[Any, ...],
        *,
        detail: dict[str, Any] | None = None,
        at: float,
    ) -> None:
        """An event of one resource, from a ``RETURNING run_id, kind, name`` row."""
        self._event(
            cur, token, event, run_id=row[0], resource_id=resource_id, kind=row[1], name=row[2],
            detail=detail, at=at,
        )  # fmt: skip

    # --- clock and followers -----------------------------------------------------------------

    def now(self) -> float:
        """The database's clock (epoch seconds): what every timestamp here is written with."""
        return self._transact(self._now)

    def wait_for_events(self, timeout: float) -> bool:
        """Wait until another transaction appends an event (True) or ``timeout`` seconds pass
        (False). True also when the listening connection was just (re)opened: whatever came
        before it may not have been heard, so poll now."""
        with self._listen_lock:
            conn = self._listener if self._listener_pid == os.getpid() else None
            if conn is None or conn.closed or conn.broken:
                self._close_listener()
                conn = None
                try:
                    conn = self._connect(autocommit=True)
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                except (_Lost, RegistryError, psycopg.Error):
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    # Nobody to hear: poll (often, since a follower waits long when notified).
                    time.sleep(min(max(0.0, timeout), _UNHEARD_POLL_S))
                    return True
                self._listener, self._listener_pid = conn, os.getpid()
                return True
            deadline = time.monotonic() + max(0.0, timeout)
            try:
                while True:
                    if self._heard(conn):
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    select.select([conn.fileno()], [], [], remaining)
            except (psycopg.Error, OSError, ValueError):
                self._close_listener()
                return True  # lost: the next call listens again

    @staticmethod
    def _heard(conn: Connection[Any]) -> bool:
        conn.pgconn.consume_input()
        heard = False
        while conn.pgconn.notifies() is not None:
            heard = True
        return heard

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and self._listener_pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

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
        token = uuid.uuid4()
        owner_json = json.dumps(owner.to_json())

        def body(cur: Cursor[Any]) -> float:
            now = self._now(cur)
            cur.execute(
                "INSERT INTO runs (id, parent_id, label, owner, state, started_at, heartbeat_at,"
                " lease_seconds) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (run_id, parent_id, label, owner_json, RunState.OPEN.value, now, now,
                 lease_seconds),
            )  # fmt: skip
            if cur.rowcount != 1:
                # The words _run.py looks for when it draws another id, as with SQLite.
                raise RegistryError(
                    f"UNIQUE constraint failed: runs.id ({run_id} is taken)", path=self.location
                )
            self._event(
                cur,
                token,
                "run.opened",
                run_id=run_id,
                detail=opened_detail(owner, label, parent_id),
                at=now,
            )
            return now

        now = self._transact(body, token=token)
        return opened_run(
            run_id, owner, label=label, parent_id=parent_id, lease_seconds=lease_seconds, now=now
        )

    def close_run(self, run_id: str) -> None:
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> None:
            now = self._now(cur)
            left = self._count(cur, run_id)
            if left:
                cur.execute(
                    "UPDATE runs SET state = %s, closed_at = %s WHERE id = %s AND state = %s",
                    (RunState.CLOSED.value, now, run_id, RunState.OPEN.value),
                )
            else:
                cur.execute("DELETE FROM runs WHERE id = %s", (run_id,))
            self._event(cur, token, "run.closed", run_id=run_id, detail={"left": left}, at=now)

        self._transact(body, token=token)

    def heartbeat(self, run_id: str) -> None:
        def body(cur: Cursor[Any]) -> None:
            cur.execute(
                "UPDATE runs SET heartbeat_at = extract(epoch FROM clock_timestamp())::float8"
                " WHERE id = %s",
                (run_id,),
            )

        self._transact(body)

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = %s", (run_id,))  # noqa: S608
        return run_from_row(rows[0]) if rows else None

    def list_runs(self) -> list[RunRecord]:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at, id")  # noqa: S608
        return [run_from_row(r) for r in rows]

    def claim_run(
        self,
        run_id: str,
        claimer: str,
        *,
        expect_state: str,
        expect_claimer: str | None,
        expect_heartbeat: float | None = None,
    ) -> bool:
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> bool:
            now = self._now(cur)
            cur.execute(
                "UPDATE runs SET state = %s, claimed_by = %s, claimed_at = %s"
                " WHERE id = %s AND state = %s AND claimed_by IS NOT DISTINCT FROM %s::text"
                " AND (%s::float8 IS NULL OR heartbeat_at = %s::float8) RETURNING id",
                (RunState.REAPING.value, claimer, now, run_id, str(expect_state), expect_claimer,
                 expect_heartbeat, expect_heartbeat),
            )  # fmt: skip
            won = cur.fetchone() is not None
            if won:
                self._event(
                    cur, token, "run.claimed", run_id=run_id, detail={"by": claimer}, at=now
                )
            return won

        return self._transact(body, token=token)

    def finish_reap(self, run_id: str, claimer: str, *, actor: str) -> None:
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> None:
            now = self._now(cur)
            left = self._count(cur, run_id)
            if left:
                cur.execute(
                    "UPDATE runs SET state = %s, claimed_by = NULL, claimed_at = NULL"
                    " WHERE id = %s AND claimed_by = %s",
                    (RunState.REAPED.value, run_id, claimer),
                )
            else:
                cur.execute("DELETE FROM runs WHERE id = %s AND claimed_by = %s", (run_id, claimer))
            self._event(
                cur, token, "run.reaped", run_id=run_id, detail={"by": actor, "left": left},
                at=now,
            )  # fmt: skip

        self._transact(body, token=token)

    @staticmethod
    def _count(cur: Cursor[Any], run_id: str) -> int:
        cur.execute("SELECT count(*) FROM resources WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
        assert row is not None
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
        defer: bool = False,  # written at once: one round trip either way
    ) -> int:
        token = uuid.uuid4()
        text = json.dumps(record)

        def body(cur: Cursor[Any]) -> int:
            now = self._now(cur)
            # The token makes a retry after a lost COMMIT find the entry instead of adding one.
            cur.execute(
                "INSERT INTO resources (token, run_id, fixture, kind, name, record, state,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (token) DO NOTHING RETURNING id",
                (token, run_id, fixture, kind, name, text, ResourceState.PLANNED.value, now, now),
            )
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT id FROM resources WHERE token = %s", (token,))
                found = cur.fetchone()
                if found is None:  # pragma: no cover - planned, then gone within one call
                    raise RegistryError(
                        f"the entry planned for {name} vanished from the registry",
                        path=self.location,
                    )
                return int(found[0])
            resource_id = int(row[0])
            self._event(
                cur, token, "resource.planned", run_id=run_id, resource_id=resource_id,
                kind=kind, name=name, at=now,
            )  # fmt: skip
            return resource_id

        return self._transact(body, token=token)

    def mark_acquired(
        self, resource_id: int, record: dict[str, Any], *, defer: bool = False
    ) -> None:
        token = uuid.uuid4()
        text = json.dumps(record)

        def body(cur: Cursor[Any]) -> None:
            now = self._now(cur)
            cur.execute(
                "UPDATE resources SET record = %s, state = %s, updated_at = %s, acquired_at = %s"
                " WHERE id = %s AND state = %s RETURNING run_id, kind, name",
                (text, ResourceState.ACQUIRED.value, now, now, resource_id,
                 ResourceState.PLANNED.value),
            )  # fmt: skip
            row = cur.fetchone()
            if row is not None:
                self._resource_event(cur, token, "resource.acquired", resource_id, row, at=now)

        self._transact(body, token=token)

    def begin_release_many(
        self, resource_ids: Sequence[int], *, states: tuple[ResourceState, ...]
    ) -> list[ResourceRecord]:
        if not resource_ids:
            return []
        # No event: the outcome writes one. A retry after a lost COMMIT finds its own claims by
        # the token it left in the rows.
        token = uuid.uuid4()
        ids = list(resource_ids)

        def body(cur: Cursor[Any]) -> list[ResourceRecord]:
            now = self._now(cur)
            cur.execute(
                "UPDATE resources SET state = %s, updated_at = %s, release_token = %s"  # noqa: S608
                " WHERE id = ANY(%s) AND (state = ANY(%s)"
                " OR (state = %s AND release_token = %s))"
                f" RETURNING {RESOURCE_COLUMNS}",
                (ResourceState.RELEASING.value, now, token, ids, [str(s) for s in states],
                 ResourceState.RELEASING.value, token),
            )  # fmt: skip
            claimed = {r.id: r for r in map(resource_from_row, cur.fetchall())}
            return [claimed[i] for i in ids if i in claimed]

        return self._transact(body)

    def mark_released_many(
        self, resource_ids: Sequence[int], *, actor: str, defer: bool = False
    ) -> None:
        # Written at once, deferred or not: each write is a round trip of its own here.
        if not resource_ids:
            return
        # An event token each; the first tells a retry whether a lost COMMIT landed.
        tokens = {rid: uuid.uuid4() for rid in resource_ids}
        position = {rid: i for i, rid in enumerate(tokens)}
        detail = {"by": actor}

        def body(cur: Cursor[Any]) -> None:
            now = self._now(cur)
            cur.execute(
                "DELETE FROM resources WHERE id = ANY(%s) RETURNING id, run_id, kind, name",
                (list(tokens),),
            )
            for row in sorted(cur.fetchall(), key=lambda r: position[r[0]]):
                self._resource_event(
                    cur, tokens[row[0]], "resource.released", row[0], row[1:], detail=detail,
                    at=now,
                )  # fmt: skip

        self._transact(body, token=tokens[resource_ids[0]])

    def mark_failed(self, resource_id: int, error: str, *, attempts: int, actor: str) -> None:
        token = uuid.uuid4()
        error = error.replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL

        def body(cur: Cursor[Any]) -> None:
            now = self._now(cur)
            cur.execute(
                "UPDATE resources SET state = %s, attempts = attempts + %s, last_error = %s,"
                " updated_at = %s WHERE id = %s RETURNING run_id, kind, name, attempts",
                (ResourceState.FAILED.value, attempts, error, now, resource_id),
            )
            row = cur.fetchone()
            if row is not None:
                self._resource_event(
                    cur, token, "resource.failed", resource_id, row,
                    detail={"by": actor, "error": error, "attempts": row[3]}, at=now,
                )  # fmt: skip

        self._transact(body, token=token)

    def close_planned(self, resource_id: int, reason: str, *, actor: str) -> bool:
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> bool:
            now = self._now(cur)
            cur.execute(
                "DELETE FROM resources WHERE id = %s AND state = %s RETURNING run_id, kind, name",
                (resource_id, ResourceState.PLANNED.value),
            )
            row = cur.fetchone()
            if row is not None:
                self._resource_event(
                    cur, token, "resource.not_created", resource_id, row,
                    detail={"by": actor, "reason": reason}, at=now,
                )  # fmt: skip
            return row is not None

        return self._transact(body, token=token)

    def resources(self, run_id: str | None = None) -> list[ResourceRecord]:
        if run_id is None:
            rows = self._read(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY id")  # noqa: S608
        else:
            rows = self._read(
                f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE run_id = %s ORDER BY id",  # noqa: S608
                (run_id,),
            )
        return [resource_from_row(r) for r in rows]

    def get_resource(self, resource_id: int) -> ResourceRecord | None:
        rows = self._read(
            f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = %s",  # noqa: S608
            (resource_id,),
        )
        return resource_from_row(rows[0]) if rows else None

    def forget(self, resource_id: int, *, actor: str) -> ResourceRecord | None:
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> ResourceRecord | None:
            now = self._now(cur)
            cur.execute(
                f"DELETE FROM resources WHERE id = %s RETURNING {RESOURCE_COLUMNS}",  # noqa: S608
                (resource_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            found = resource_from_row(row)
            self._event(
                cur, token, "resource.forgotten", run_id=found.run_id, resource_id=resource_id,
                kind=found.kind, name=found.name, detail={"by": actor}, at=now,
            )  # fmt: skip
            return found

        return self._transact(body, token=token)

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
        token = uuid.uuid4()

        def body(cur: Cursor[Any]) -> None:
            self._event(
                cur, token, event, run_id=run_id, resource_id=resource_id, kind=kind, name=name,
                detail=detail, at=self._now(cur),
            )  # fmt: skip

        self._transact(body, token=token)

    def _read_log(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the event log once no id below what it holds can still appear (see the
        module's docstring): the exclusive lock waits for the writers in flight."""

        def body(cur: Cursor[Any]) -> list[tuple[Any, ...]]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._event_key,))
            cur.execute(query, args)  # a snapshot of its own, taken under the lock
            return cur.fetchall()

        return self._transact(body)

    def event_rows(self, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        return self._read_log(
            "SELECT id, at, event, run_id, resource_id, kind, name, detail FROM events"
            " WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit),
        )

    def run_openings(self, after_id: int) -> list[tuple[str | None, str]]:
        return self._read_log(OPENINGS_SQL.format(p="%s"), (after_id,))

    def resource_histories(self, after_id: int) -> list[HistoryRow]:
        return self._read_log(HISTORIES_SQL.format(p="%s"), (after_id,))

    def last_event_id(self) -> int:
        rows = self._read_log("SELECT COALESCE(MAX(id), 0) FROM events")
        return int(rows[0][0])

    def prune_events(self, older_than: float) -> int:
        counts: list[int] = []

        def body(cur: Cursor[Any]) -> int:
            cur.execute("DELETE FROM events WHERE at < %s", (older_than,))
            counts.append(cur.rowcount)
            # A retry after a lost COMMIT that had landed deletes nothing: report the first.
            return max(counts)

        return self._transact(body)

    # --- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._drop()
        with self._listen_lock:
            self._close_listener()

    def __del__(self) -> None:
        # A registry nobody closed: close its connections (never an inherited one) quietly.
        with contextlib.suppress(Exception):
            self.close()

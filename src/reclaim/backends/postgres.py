"""PostgreSQL: a schema, a database, prefixed tables or a login role per test.

Four kinds, each given the DSN of a server (a ``postgresql://`` URL or a libpq ``key=value``
string) and released from its JSON record alone (I2):

- :class:`PostgresSchema` (``postgres.schema``): a fresh schema in an existing database; the
  fast one, one round trip to create and one to drop.
- :class:`PostgresDatabase` (``postgres.database``): a fresh database, optionally cloned from a
  template that is itself a reclaim resource, so a killed run never leaves a fixed name behind
  that blocks the next run.
- :class:`PostgresTables` (``postgres.tables``): clean-up inside a shared database for suites that
  cannot change their schema: tables a test creates under a prefix are dropped, listed tables are
  truncated.
- :class:`PostgresRole` (``postgres.role``): a login role with a generated password, for
  permission tests; release drops what it owns and the role.

Secrets (I7): the password of the DSN is taken out of it and kept in the record's ``password``
field, which is secret: ``reclaim status`` and error messages never show it. A password that
comes from ``PGPASSWORD`` is captured the same way, so a sweeper run from cron (without that
environment) can still release. Every identifier reaching SQL goes through
``psycopg.sql.Identifier``; every value is bound or quoted by psycopg.

Speed: statements run on a small per-process cache of autocommit connections, one per server and
database, so a sweep of thousands of schemas, or a test suite acquiring one per test, connects
once. A cached connection that broke (the server restarted, a proxy cut it) is replaced on the
next use; connections are never shared with a forked child.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import quote, urlsplit

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NameStyle,
    NotCreatedError,
    ReclaimName,
    Record,
    ReleaseError,
    backend_error,
    refuse,
    require_extra,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = [
    "PostgresDatabase",
    "PostgresRole",
    "PostgresSchema",
    "PostgresTables",
    "RoleLogin",
]

T = TypeVar("T")
ValueT = TypeVar("ValueT")

#: How long a DROP or TRUNCATE waits for a lock held by another session before it fails with an
#: error that says so (instead of hanging a test suite's teardown forever).
LOCK_TIMEOUT_MS: Final = 10_000

#: Seconds to wait for a server that does not answer, when the DSN sets no ``connect_timeout``.
CONNECT_TIMEOUT: Final = 10

#: PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
MAX_IDENTIFIER_BYTES: Final = 63

#: Bytes of a prefixed object's name left for the test's own part (``<prefix>orders``).
TABLE_NAME_ROOM: Final = 16

#: How schemas, databases and roles spell reclaim's names: the default, within the limit.
_STYLE: Final = NameStyle(max_length=MAX_IDENTIFIER_BYTES)
#: Table prefixes: the name, ``_``, then the table's own name, all within the limit.
_TABLES_STYLE: Final = NameStyle(max_length=MAX_IDENTIFIER_BYTES - 1 - TABLE_NAME_ROOM)

#: The libpq environment variables whose values are captured into records at plan time.
_ENV_PARAMS: Final = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "password": "PGPASSWORD",
}
_URL_SCHEMES: Final = ("postgresql", "postgres")
_SECRETS: Final = frozenset({"password"})


#: The extra and driver named when psycopg is missing (``require_extra``).
_EXTRA: Final = ("postgres", "psycopg (version 3)")


# --- DSNs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Server:
    """Where to connect: a libpq conninfo without the password, and the password apart (left
    out of ``repr``: tracebacks print arguments, I7)."""

    conninfo: str
    password: str | None = dataclasses.field(repr=False)

    @classmethod
    def parse(cls, dsn: str, kind: str) -> _Server:
        params = _params(dsn, kind)
        for key, env in _ENV_PARAMS.items():
            if key not in params and os.environ.get(env):
                params[key] = os.environ[env]
        password = params.pop("password", None)
        return cls(make_conninfo("", **params), password or None)

    @classmethod
    def of(cls, record: Record) -> _Server:
        return cls(str(record["dsn"]), record.get("password") or None)

    def with_dbname(self, dbname: str) -> _Server:
        return _Server(make_conninfo(self.conninfo, dbname=dbname), self.password)

    @property
    def dbname(self) -> str | None:
        value = conninfo_to_dict(self.conninfo).get("dbname")
        return None if value is None else str(value)

    def describe(self) -> str:
        """``user@host:port/dbname`` for messages: never the password."""
        p = conninfo_to_dict(self.conninfo)
        host = p.get("host") or p.get("hostaddr") or "local socket"
        user = f"{p['user']}@" if p.get("user") else ""
        port = f":{p['port']}" if p.get("port") else ""
        dbname = f"/{p['dbname']}" if p.get("dbname") else ""
        return f"{user}{host}{port}{dbname}"


def _params(dsn: str, kind: str) -> dict[str, Any]:
    if not isinstance(dsn, str):
        raise TypeError(f"{kind}: the DSN must be a string, not {type(dsn).__name__}")
    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.ProgrammingError:
        # psycopg's message may quote a piece of the DSN, perhaps of its password: not shown.
        raise ValueError(
            f"{kind}: the DSN is not a valid PostgreSQL connection string; give a URL such as"
            " postgresql://user:password@host:5432/dbname or 'host=... dbname=... user=...'"
        ) from None


def _dsn_with(dsn: str, **overrides: str) -> str:
    """``dsn`` with some parameters replaced, in the form the user gave it (URL or key=value).

    A URL stays a URL (SQLAlchemy and asyncpg want one); a key=value string, or a URL whose
    query string sets one of the parameters, becomes a key=value string.
    """
    parts = urlsplit(dsn)
    if parts.scheme in _URL_SCHEMES and not any(f"{k}=" in parts.query for k in overrides):
        user_info, _, hosts = parts.netloc.rpartition("@")
        user, colon, password = user_info.partition(":")
        if "user" in overrides:
            user, password, colon = quote(overrides["user"], safe=""), "", ""
        if "password" in overrides:
            password, colon = quote(overrides["password"], safe=""), ":"
        user_info = f"{user}{colon}{password}" if user or password else ""
        netloc = f"{user_info}@{hosts}" if user_info else hosts
        path = parts.path
        if "dbname" in overrides:
            path = "/" + quote(overrides["dbname"], safe="")
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{netloc}{path}{query}"
    return make_conninfo(dsn, **overrides)


# --- connections ---------------------------------------------------------------------------


def _connect(server: _Server, *, autocommit: bool) -> Connection[Any]:
    params = conninfo_to_dict(server.conninfo)
    options = str(params.get("options") or "")
    # A lock wait ends in an error that says what blocks, instead of a teardown that hangs.
    options = f"{options} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()
    extra: dict[str, Any] = {"options": options}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    if server.password is not None:
        extra["password"] = server.password
    return psycopg.connect(server.conninfo, autocommit=autocommit, **extra)


class _Pool:
    """At most one idle autocommit connection per (conninfo, password), for this process.

    A connection is taken out while in use, so threads never share one (a second thread opens
    its own, closed again when the slot is taken). After ``fork`` the child forgets the parent's
    connections without closing them (closing would end the parent's sessions); after the
    interpreter's exit hooks ran, connections are opened per use and closed at once.
    """

    def __init__(self) -> None:
        self._idle: dict[_Server, Connection[Any]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._abandoned: list[Connection[Any]] = []  # a forked child's copies, never touched

    def take(self, server: _Server) -> tuple[Connection[Any], bool]:
        """A connection and whether it was reused from the cache."""
        with self._lock:
            conn = self._idle.pop(server, None)
        if conn is not None and not conn.closed:
            return conn, True
        return _connect(server, autocommit=True), False

    def give_back(self, server: _Server, conn: Connection[Any]) -> None:
        if conn.closed:
            return
        healthy = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed and server not in self._idle:
                self._idle[server] = conn
                return
        conn.close()

    def close_database(self, host_conninfo: str, dbname: str) -> None:
        """Close idle connections to ``dbname`` on the server of ``host_conninfo`` (a template
        cannot be cloned while anyone, us included, is connected to it)."""
        target = _server_key(host_conninfo)
        with self._lock:
            doomed = [
                s for s in self._idle if s.dbname == dbname and _server_key(s.conninfo) == target
            ]
            conns = [self._idle.pop(s) for s in doomed]
        for conn in conns:
            conn.close()

    def close_all(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._idle.values())
            self._idle.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._abandoned.extend(self._idle.values())
        self._idle = {}


def _server_key(conninfo: str) -> tuple[str, str, str]:
    p = conninfo_to_dict(conninfo)
    return (str(p.get("host", "")), str(p.get("hostaddr", "")), str(p.get("port", "")))


_pool = _Pool()
atexit.register(_pool.close_all)
os.register_at_fork(after_in_child=_pool.forget_after_fork)


@dataclasses.dataclass
class _Progress:
    """How far :func:`_using` got, for an acquire to tell a failure that made nothing from one
    that may have made something."""

    #: The failure came while opening a connection: no statement had been sent on it.
    connecting: bool = False
    #: A statement began on a connection that then broke: it may have run on the server.
    doubtful: bool = False


def _using(
    server: _Server, work: Callable[[Connection[Any]], T], progress: _Progress | None = None
) -> T:
    """Run ``work`` on a cached autocommit connection to ``server``.

    A cached connection the server dropped in the meantime (restart, idle timeout, a proxy that
    went away) is replaced once by a fresh one; a fresh connection's failure is final.
    ``progress``, when given, is kept up to date (see :class:`_Progress`).
    """
    progress = _Progress() if progress is None else progress
    for _attempt in range(2):
        progress.connecting = True
        conn, reused = _pool.take(server)
        progress.connecting = False
        try:
            result = work(conn)
        except psycopg.OperationalError:
            if reused and conn.closed:
                conn.close()
                progress.doubtful = True  # what was sent may have run before the cut
                continue  # stale cache entry: try once more on a fresh connection
            _pool.give_back(server, conn)
            raise
        except Exception:
            _pool.give_back(server, conn)
            raise
        except BaseException:
            conn.close()  # interrupted mid-statement: its state is unknown
            raise
        _pool.give_back(server, conn)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch(
    server: _Server, query: Any, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    def work(conn: Connection[Any]) -> list[tuple[Any, ...]]:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description is not None else []

    return _using(server, work)


def _execute(
    server: _Server,
    query: Any,
    params: Sequence[Any] | None = None,
    progress: _Progress | None = None,
) -> None:
    _using(server, lambda conn: conn.execute(query, params), progress)


# --- errors --------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """One line on what the server said, and what to do about it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    diag = getattr(exc, "diag", None)
    for extra in (getattr(diag, "message_detail", None), getattr(diag, "message_hint", None)):
        if extra:
            first += f" ({extra.strip().rstrip('.')})"
    if isinstance(exc, pg_errors.LockNotAvailable):
        return (
            f"another session holds a lock on it ({first}); a connection of the test may still"
            " be inside a transaction: commit or close it"
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return f"permission denied ({first}); connect as a user who owns it or is a superuser"
    if (
        isinstance(exc, psycopg.OperationalError)
        and getattr(exc, "sqlstate", None) is None
        and "FATAL:" in first
    ):
        return (
            f"the server refused the connection ({first}); check the DSN's user, password and"
            " database"
        )
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) in (
        None,
        "08000",
        "08001",
        "08006",
        "57P01",
    ):
        return f"the server cannot be reached ({first}); check that it runs and the DSN is right"
    return f"{type(exc).__name__}: {first}"


def _refused(exc: BaseException) -> bool:
    """Whether the server answered an autocommit statement with an ERROR: its transaction was
    rolled back, so the statement made nothing ("already exists", "permission denied", a
    template that is missing or busy, a read-only server...). A FATAL or PANIC (the session
    ended, perhaps after the commit) and a connection lost without an answer are not refusals.
    """
    if not isinstance(exc, psycopg.DatabaseError):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    severity = getattr(getattr(exc, "diag", None), "severity_nonlocalized", None)
    return bool(sqlstate) and not str(sqlstate).startswith("08") and severity == "ERROR"


def _create_error(exc: BaseException, progress: _Progress) -> type[AcquireError]:
    """:class:`NotCreatedError` when the create statement (run with ``progress``) surely made
    nothing: no connection could be opened before anything was sent (refused, unknown host,
    credentials refused, TLS, timeout), or the server refused the statement itself. Anything
    else (a connection lost after the statement was sent) is :class:`AcquireError`."""
    if progress.doubtful:
        return AcquireError
    if progress.connecting or _refused(exc):
        return NotCreatedError
    return AcquireError


def _options(cls: type[Backend[Any]], record: Record) -> dict[str, Any]:
    """The options of :func:`~reclaim.backends.backend_error` for ``cls`` and ``record``."""
    try:
        where = _Server.of(record).describe()
    except Exception:
        where = ""
    return {
        "where": where,
        "reason": _reason,
        "secret_fields": cls.secret_fields,
        "style": cls.name_style,
    }


def _error(
    error_type: type[BackendError],
    cls: type[Backend[Any]],
    record: Record,
    doing: str,
    exc: BaseException,
    *,
    reason: Callable[[BaseException], str] = _reason,
) -> BackendError:
    """The toolkit's :func:`~reclaim.backends.backend_error` for ``cls``: "KIND 'NAME': could
    not DOING at user@host:port/dbname: REASON", redacted of the password."""
    options = _options(cls, record)
    options["reason"] = reason
    return backend_error(error_type, cls.kind, record, doing, exc, **options)


# --- the backends --------------------------------------------------------------------------


class _PostgresBackend(Backend[ValueT]):
    """What the four kinds share: the DSN, its secret password, describing, finding names."""

    secret_fields: ClassVar[frozenset[str]] = _SECRETS
    url_schemes: ClassVar[tuple[str, ...]] = _URL_SCHEMES
    name_style: ClassVar[NameStyle] = _STYLE
    #: What the kind's objects are called in messages ("schema", "database", ...).
    noun: ClassVar[str] = ""

    def __init__(self, dsn: str) -> None:
        require_extra(psycopg is not None, self.kind, *_EXTRA)
        self.dsn = dsn
        self._server = _Server.parse(dsn, self.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._server.describe()!r})"

    def adapt_name(self, proposed: str) -> str:
        """reclaim's name as it is, once :attr:`name_style` accepts it (whole, within
        PostgreSQL's identifier length)."""
        try:
            return self.name_style.spell(proposed)
        except ValueError as exc:
            raise ValueError(f"{self.kind}: {exc}") from None

    def plan(self, name: str) -> Record:
        return {"name": name, "dsn": self._server.conninfo, "password": self._server.password}

    @classmethod
    def describe(cls, record: Record) -> str:
        try:
            where = _Server.of(record).describe()
        except Exception:
            where = "?"
        return f"{cls.noun} {record.get('name', '?')} on {where}"

    @classmethod
    def _leftovers(cls, target: str, names: Iterable[str]) -> Iterator[Leftover]:
        server = _Server.parse(target, cls.kind)
        for name in names:
            parsed = cls.name_style.parse(name)
            if parsed is None:
                continue  # rc_-like, but not, whole, a name reclaim makes: never touched
            record = {"name": name, "dsn": server.conninfo, "password": server.password}
            yield Leftover.of(record, parsed)

    @classmethod
    def _list_names(cls, target: str, query: str) -> list[str]:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.parse(target, cls.kind)
        record = {"name": "", "dsn": server.conninfo, "password": server.password}
        try:
            rows = _fetch(server, query)
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, f"list {cls.noun}s", exc) from exc
        return [str(r[0]) for r in rows]


class PostgresSchema(_PostgresBackend[str]):
    """A schema of its own in an existing database; the value is its name.

    Release runs ``DROP SCHEMA IF EXISTS ... CASCADE``: everything created in it goes too.
    Creating and dropping each take one round trip on a cached connection, which makes a schema
    per test an order of magnitude cheaper than a database per test.

    Args:
        dsn: the database to create the schema in (URL or key=value; a password in it is kept
            in the record's secret ``password`` field).
        setup: called once with a fresh psycopg connection whose ``search_path`` is the new
            schema (only it), to run migrations or load seed data. The schema's creation and
            the set-up are one transaction, committed when ``setup`` returns; if it raises,
            neither happened.

    Use the name with ``SET search_path TO`` (quote it with ``psycopg.sql.Identifier``), or in
    ``options="-c search_path=<name>"`` of a connection of the test's own.
    """

    kind = "postgres.schema"
    noun = "schema"

    def __init__(self, dsn: str, setup: Callable[[Connection[Any]], object] | None = None) -> None:
        super().__init__(dsn)
        self.setup = setup

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        schema = sql.Identifier(name)
        create = sql.SQL("CREATE SCHEMA {}").format(schema)
        if self.setup is None:
            progress = _Progress()
            try:
                _execute(self._server, create, progress=progress)
            except psycopg.Error as exc:
                raise self._acquire_error(_create_error(exc, progress), record, exc) from exc
            return name, record
        try:
            conn = _connect(self._server, autocommit=False)
        except psycopg.Error as exc:  # no connection: nothing was sent
            raise self._acquire_error(NotCreatedError, record, exc) from exc
        with conn:  # commits when the block ends without an error, rolls back otherwise
            try:
                conn.execute(create)
                conn.execute(sql.SQL("SET search_path TO {}").format(schema))
            except psycopg.Error as exc:
                # Inside a transaction that is never committed (the block ends in this error
                # and rolls back; a lost connection aborts it on the server): nothing was made.
                raise self._acquire_error(NotCreatedError, record, exc) from exc
            self.setup(conn)  # may commit on its own: its failure stays an AcquireError
        return name, record

    def _acquire_error(
        self, error_type: type[AcquireError], record: Record, exc: BaseException
    ) -> BackendError:
        return _error(error_type, type(self), record, "create the schema", exc)

    @classmethod
    def release(cls, record: Record) -> None:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(record["name"]))
        try:
            _execute(_Server.of(record), drop)
        except psycopg.Error as exc:
            doing = "drop the schema"
            raise _error(ReleaseError, cls, record, doing, exc) from exc

    #: A dead run's schemas are dropped 100 at a time, in one statement per database (a round
    #: trip and a commit for all). Many objects in them can run out of the server's lock table:
    #: the batch then fails as a whole, and each schema is dropped on its own.
    batch_size = 100

    @classmethod
    def release_many(cls, records: Sequence[Record]) -> Sequence[Exception | None]:
        """``DROP SCHEMA IF EXISTS a, b, c CASCADE``, one per database: all go, or none."""
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        groups: dict[_Server, list[int]] = {}
        for i, record in enumerate(records):
            groups.setdefault(_Server.of(record), []).append(i)
        outcomes: list[Exception | None] = [None] * len(records)
        for server, members in groups.items():
            names = sql.SQL(", ").join(sql.Identifier(records[i]["name"]) for i in members)
            try:
                _execute(server, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(names))
            except psycopg.Error as exc:
                error = _error(ReleaseError, cls, records[members[0]], "drop the schemas", exc)
                for i in members:
                    outcomes[i] = error
        return outcomes

    @classmethod
    def exists(cls, record: Record) -> bool:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        query = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
        try:
            return bool(_fetch(_Server.of(record), query, (record["name"],)))
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, "look for the schema", exc) from exc

    @classmethod
    def describe(cls, record: Record) -> str:
        try:
            where = _Server.of(record).describe()
        except Exception:
            where = "?"
        return f"schema {record.get('name', '?')} in {where}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Schemas with a reclaim name in the database ``target`` (a DSN) names."""
        names = cls._list_names(
            target, r"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rc\_%' ORDER BY 1"
        )
        return cls._leftovers(target, names)


class PostgresDatabase(_PostgresBackend[str]):
    """A database of its own; the value is a DSN that connects to it (in the form given).

    Release runs ``DROP DATABASE IF EXISTS ... WITH (FORCE)``, which ends the sessions still
    connected to it (PostgreSQL 13+).

    Templates. A migrated template cloned per test is the classic way to make a database per
    test affordable. Make the template a reclaim resource too, typically session-scoped::

        template = fx.acquire(PostgresDatabase(ADMIN_DSN, setup=migrate))
        ...
        db = fx_test.acquire(PostgresDatabase(ADMIN_DSN, template=template))

    Its name is reclaim's, new for every run, so a killed run's template never blocks the next
    run (pytest-postgresql's fixed ``tests_tmpl`` does, with ``DuplicateDatabase``), and the
    sweeper removes it like anything else.

    Args:
        dsn: a database to connect to for ``CREATE DATABASE`` (``postgres``, usually); its user
            needs CREATEDB.
        template: the database to clone: a name, or a DSN (such as the value of another
            ``PostgresDatabase``), whose database name is used. PostgreSQL cannot clone a
            database anyone is connected to: reclaim closes its own idle connections to it,
            then retries for ``template_wait`` seconds, then fails naming the sessions in the
            way (an SQLAlchemy engine of the set-up that was not disposed, often).
        setup: called once with a fresh connection to the new database (migrations, seed
            data), committed when it returns; the connection is closed afterwards, so the
            database can serve as a template at once.
        strategy: ``"wal_log"`` or ``"file_copy"`` (PostgreSQL 15+); the server's default when
            None.
        template_wait: seconds to keep retrying while other sessions use the template.
    """

    kind = "postgres.database"
    noun = "database"

    _STRATEGIES: ClassVar[frozenset[str]] = frozenset({"wal_log", "file_copy"})

    def __init__(
        self,
        dsn: str,
        template: str | None = None,
        *,
        setup: Callable[[Connection[Any]], object] | None = None,
        strategy: str | None = None,
        template_wait: float = 10.0,
    ) -> None:
        super().__init__(dsn)
        self.template = None if template is None else _template_name(template, self.kind)
        if strategy is not None and strategy.lower() not in self._STRATEGIES:
            raise ValueError(
                f"{self.kind}: strategy must be one of {sorted(self._STRATEGIES)}, not {strategy!r}"
            )
        self.strategy = None if strategy is None else strategy.lower()
        self.setup = setup
        self.template_wait = float(template_wait)

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if self.template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(self.template))
        if self.strategy is not None:
            query += sql.SQL(" STRATEGY {}").format(sql.SQL(self.strategy))  # one of two words
        progress = _Progress()
        try:
            self._create(query, progress)
        except psycopg.Error as exc:
            raise self._acquire_error(_create_error(exc, progress), record, exc) from exc
        if self.setup is not None:
            try:
                conn = _connect(self._server.with_dbname(name), autocommit=False)
            except psycopg.Error as exc:  # the database exists: it is released
                raise self._acquire_error(AcquireError, record, exc) from exc
            with conn:
                self.setup(conn)
        return _dsn_with(self.dsn, dbname=name), record

    def _create(self, query: sql.Composed, progress: _Progress) -> None:
        if self.template is None:
            _execute(self._server, query, progress=progress)
            return
        deadline = time.monotonic() + self.template_wait
        delay = 0.05
        while True:
            _pool.close_database(self._server.conninfo, self.template)
            try:
                _execute(self._server, query, progress=progress)
                return
            except pg_errors.ObjectInUse:  # refused, nothing made: it may be tried again
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _acquire_error(
        self, error_type: type[AcquireError], record: Record, exc: BaseException
    ) -> BackendError:
        doing = "create the database"
        if self.template is None:
            return _error(error_type, type(self), record, doing, exc)
        doing += f" from template {self.template!r}"
        template = self.template
        reason: Callable[[BaseException], str] = _reason
        if isinstance(exc, pg_errors.ObjectInUse):
            sessions = self._sessions_on(template)
            busy = (
                "other sessions are connected to the template and PostgreSQL cannot clone it"
                f" while they are: {sessions}; close them (dispose of SQLAlchemy engines used"
                " in its set-up, for example) or raise template_wait"
            )
            reason = lambda _exc: busy  # noqa: E731
        elif isinstance(exc, pg_errors.InvalidCatalogName):
            missing = (
                f"there is no database {template!r} there; pass the name (or the DSN) of a"
                " database of the same server as template"
            )
            reason = lambda _exc: missing  # noqa: E731
        return _error(error_type, type(self), record, doing, exc, reason=reason)

    def _sessions_on(self, dbname: str) -> str:
        query = (
            "SELECT pid, usename, application_name, state FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY pid"
        )
        try:
            rows = _fetch(self._server, query, (dbname,))
        except psycopg.Error:
            return "(they could not be listed)"
        if not rows:
            return "(they have gone since)"
        return ", ".join(
            f"pid {pid} (user {user}, application {app or '-'}, {state or 'unknown'})"
            for pid, user, app, state in rows
        )

    @classmethod
    def owned_identities(
        cls, record: Mapping[str, Any], name: ReclaimName
    ) -> Iterable[tuple[str, object, str]]:
        """Release and ``exists`` act on ``name`` alone: the template a database was cloned
        from is never touched. A record that names one anyway (written by hand, or by a later
        version) names a reclaim resource there too, or it is refused: a template is one of
        reclaim's databases, never ``template1`` or a user's."""
        template = record.get("template")
        if template is not None and cls.name_style.parse(template) is None:
            raise refuse(
                cls.kind,
                "template",
                template,
                "a whole reclaim name (a template is a reclaim resource too)",
                name=name,
            )
        return ()

    @classmethod
    def release(cls, record: Record) -> None:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.of(record)
        name = record["name"]
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        _pool.close_database(server.conninfo, name)
        try:
            try:
                _execute(server, drop)
            except pg_errors.WrongObjectType:
                # "cannot drop a template database": somebody marked it IS_TEMPLATE.
                unmark = sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name))
                _execute(server, unmark)
                _execute(server, drop)
        except psycopg.Error as exc:
            doing = "drop the database"
            raise _error(ReleaseError, cls, record, doing, exc) from exc

    @classmethod
    def exists(cls, record: Record) -> bool:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        try:
            return bool(_fetch(_Server.of(record), query, (record["name"],)))
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, "look for the database", exc) from exc

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Databases with a reclaim name on the server ``target`` (a DSN) names."""
        names = cls._list_names(
            target, r"SELECT datname FROM pg_database WHERE datname LIKE 'rc\_%' ORDER BY 1"
        )
        return cls._leftovers(target, names)


def _template_name(template: str, kind: str) -> str:
    if not isinstance(template, str) or not template:
        raise ValueError(f"{kind}: template must be a database name or a DSN")
    if "=" in template or urlsplit(template).scheme in _URL_SCHEMES:
        dbname = _params(template, kind).get("dbname")
        if not dbname:
            raise ValueError(f"{kind}: the template's DSN names no database")
        return str(dbname)
    return template


#: Relation kinds dropped by prefix, and the DROP command of each, in the order they run.
_RELATION_DROPS: Final = (
    ("v", "VIEW"),
    ("m", "MATERIALIZED VIEW"),
    ("f", "FOREIGN TABLE"),
    ("p", "TABLE"),
    ("r", "TABLE"),
    ("S", "SEQUENCE"),
    ("c", "TYPE"),  # a composite type made with CREATE TYPE ... AS (...)
    ("t", "TYPE"),  # enums, domains and ranges (from pg_type)
)

_TABLES_QUERY: Final = """
SELECT c.relkind::text, n.nspname::text, c.relname::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s AND starts_with(c.relname, %(prefix)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
UNION ALL
SELECT 't', n.nspname::text, t.typname::text FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = %(schema)s AND starts_with(t.typname, %(prefix)s)
   AND t.typtype IN ('e', 'd', 'r')
UNION ALL
SELECT 'truncate', n.nspname::text, c.relname::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN unnest(%(schemas)s::text[], %(tables)s::text[]) AS want(s, t)
    ON want.s = n.nspname AND want.t = c.relname
 WHERE c.relkind IN ('r', 'p')
"""


class PostgresTables(_PostgresBackend[str]):
    """Clean-up inside a shared database, for suites that cannot change their schema.

    The value is a prefix (``rc_<run>_<time>_<n>_``) that belongs to this test: name the tables
    (views, sequences, types) the test creates with it, e.g. ``f"{prefix}orders"``. Release
    drops every relation and type in ``schema`` whose name starts with the prefix, then
    truncates the tables listed in ``truncate``; a table that is not there is skipped. Both in
    one transaction.

    Args:
        dsn: the shared database.
        schema: where prefixed objects are looked for, and the schema of unqualified names in
            ``truncate``.
        truncate: tables whose rows go at release: ``"orders"``, ``"app.orders"`` or
            ``("app", "orders")``. Only for suites that do not run tests on the same tables
            in parallel: the truncation empties the table for everybody.
        restart_identity: truncate with ``RESTART IDENTITY`` (ids start at 1 again).
        cascade: truncate with ``CASCADE``, which also empties tables that are not listed but
            reference listed ones by a foreign key. Off: such a table makes the release fail
            with an error that names it.
        setup: called once with a fresh connection and the prefix (create the test's tables,
            insert rows), committed when it returns.

    ``exists`` is true while a prefixed object exists or a listed table holds a row.
    ``list_leftovers`` finds prefixed objects (never truncations: they leave no name behind).
    """

    kind = "postgres.tables"
    noun = "tables"
    name_style: ClassVar[NameStyle] = _TABLES_STYLE
    #: The record's ``prefix`` is the name and this, exactly: what release drops starts with it.
    prefix_separator: ClassVar[str | None] = "_"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        truncate: Iterable[str | tuple[str, str]] = (),
        restart_identity: bool = True,
        cascade: bool = False,
        setup: Callable[[Connection[Any], str], object] | None = None,
    ) -> None:
        super().__init__(dsn)
        if not isinstance(schema, str) or not schema:
            raise ValueError(f"{self.kind}: schema must be a non-empty string")
        self.schema = schema
        self.truncate = [_table(t, schema, self.kind) for t in _listed(truncate, self.kind)]
        self.restart_identity = bool(restart_identity)
        self.cascade = bool(cascade)
        self.setup = setup

    def plan(self, name: str) -> Record:
        return {
            **super().plan(name),
            "prefix": f"{name}{self.prefix_separator}",
            "schema": self.schema,
            "truncate": [list(t) for t in self.truncate],
            "restart_identity": self.restart_identity,
            "cascade": self.cascade,
        }

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        prefix = str(record["prefix"])
        if self.setup is not None:
            doing = f"connect for the set-up of tables {prefix}*"
            try:
                conn = _connect(self._server, autocommit=False)
            except psycopg.Error as exc:  # before the set-up ran: nothing was made
                raise _error(NotCreatedError, type(self), record, doing, exc) from exc
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            except psycopg.Error as exc:  # before the set-up ran: nothing was made
                conn.close()
                raise _error(NotCreatedError, type(self), record, doing, exc) from exc
            with conn:
                self.setup(conn, prefix)
        return prefix, record

    @classmethod
    def _found(cls, server: _Server, record: Record) -> list[tuple[str, str, str]]:
        """(kind, schema, name) of the prefixed objects and of the listed tables that exist;
        kind is a relkind, "t" for a type, "truncate" for a listed table."""
        pairs = [(str(s), str(t)) for s, t in record.get("truncate", [])]
        params = {
            "schema": record["schema"],
            "prefix": cls.owned_prefix(record),
            "schemas": [s for s, _ in pairs],
            "tables": [t for _, t in pairs],
        }
        rows = _fetch(server, _TABLES_QUERY, params)
        return [(str(k), str(s), str(n)) for k, s, n in rows]

    @classmethod
    def release(cls, record: Record) -> None:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.of(record)
        schema = str(record["schema"])
        try:
            found = cls._found(server, record)
            statements: list[sql.Composable] = []
            for relkind, command in _RELATION_DROPS:
                names = [sql.Identifier(s, n) for k, s, n in found if k == relkind]
                if names:
                    statements.append(
                        sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                            sql.SQL(command), sql.SQL(", ").join(names)
                        )
                    )
            present = {(s, n) for k, s, n in found if k == "truncate"}
            targets = [
                sql.Identifier(str(s), str(t))
                for s, t in record.get("truncate", [])
                if (str(s), str(t)) in present
            ]
            if targets:
                truncate = sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(targets))
                if record.get("restart_identity", True):
                    truncate += sql.SQL(" RESTART IDENTITY")
                if record.get("cascade", False):
                    truncate += sql.SQL(" CASCADE")
                statements.append(truncate)
            if statements:
                # Several statements in one simple query run as one transaction.
                _execute(server, sql.SQL("; ").join(statements))
        except psycopg.Error as exc:
            doing = f"clean up tables {cls.owned_prefix(record)}* in schema {schema!r}"
            raise _error(ReleaseError, cls, record, doing, exc) from exc

    @classmethod
    def exists(cls, record: Record) -> bool:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.of(record)
        try:
            found = cls._found(server, record)
            if any(kind != "truncate" for kind, _, _ in found):
                return True
            for kind, schema, table in found:
                if kind == "truncate":
                    query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                        sql.Identifier(schema, table)
                    )
                    if _fetch(server, query):
                        return True
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, "look for the tables", exc) from exc
        return False

    @classmethod
    def describe(cls, record: Record) -> str:
        try:
            where = _Server.of(record).describe()
        except Exception:
            where = "?"
        prefix = record.get("prefix") or f"{record.get('name', '?')}_"
        text = f"tables {prefix}* in schema {record.get('schema', '?')}"
        listed = [".".join(map(str, t)) for t in record.get("truncate", [])]
        if listed:
            text += f", truncate {', '.join(listed)}"
        return f"{text} on {where}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Prefixed relations and types in the database ``target`` names, one leftover per
        (schema, prefix)."""
        query = r"""
            SELECT n.nspname, c.relname FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname LIKE 'rc\_%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
               AND n.nspname NOT LIKE 'pg\_%'
            UNION
            SELECT n.nspname, t.typname FROM pg_type t
              JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typname LIKE 'rc\_%' AND t.typtype IN ('e', 'd', 'r')
               AND n.nspname NOT LIKE 'pg\_%'
        """
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.parse(target, cls.kind)
        record = {"name": "", "dsn": server.conninfo, "password": server.password}
        try:
            rows = _fetch(server, query)
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, "list tables", exc) from exc
        seen: set[tuple[str, str]] = set()
        for schema, relname in sorted(rows):
            parsed = cls._prefix_of(str(relname))
            if parsed is None or (schema, parsed.text) in seen:
                continue  # not under a whole reclaim name and its separator: never touched
            seen.add((schema, parsed.text))
            leftover = {
                "name": parsed.text,
                "prefix": f"{parsed.text}{cls.prefix_separator}",
                "dsn": server.conninfo,
                "password": server.password,
                "schema": schema,
                "truncate": [],
                "restart_identity": True,
                "cascade": False,
            }
            yield Leftover.of(leftover, parsed)

    @classmethod
    def _prefix_of(cls, relname: str) -> ReclaimName | None:
        """The reclaim name whose prefix (the name and ``_``) starts ``relname``, if any.

        A reclaim name has four ``_``-separated parts (``rc``, run, time, sequence), so the
        prefix ends at the fourth ``_``; ``rc_..._1_`` never claims ``rc_..._10_orders``.
        """
        sep = str(cls.prefix_separator)
        parts = relname.split(sep, 4)
        if len(parts) != 5:
            return None
        return cls.name_style.parse(sep.join(parts[:4]))


def _listed(truncate: Iterable[str | tuple[str, str]], kind: str) -> list[str | tuple[str, str]]:
    if isinstance(truncate, str):
        raise TypeError(f"{kind}: truncate must be a list of table names, not one string")
    return list(truncate)


def _table(table: str | Sequence[str], schema: str, kind: str) -> tuple[str, str]:
    if isinstance(table, str):
        owner, dot, name = table.partition(".")
        pair = (owner, name) if dot else (schema, table)
    else:
        parts = [str(p) for p in table]
        pair = (parts[0], parts[1]) if len(parts) == 2 else ("", "")
    if not all(pair):
        raise ValueError(f"{kind}: {table!r} is not a table name, 'schema.table' or a pair")
    return pair


@dataclasses.dataclass(frozen=True)
class RoleLogin:
    """How to log in as a :class:`PostgresRole`: its name, password, and a DSN using both.

    ``str(login)`` is the DSN (what ``reclaim acquire postgres.role`` prints); the ``repr``
    hides the password.
    """

    role: str
    password: str = dataclasses.field(repr=False)
    dsn: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return self.dsn


class PostgresRole(_PostgresBackend[RoleLogin]):
    """A login role with a generated password, for permission tests; the value is a
    :class:`RoleLogin`.

    The password (32 random URL-safe characters) is sent to the server as a SCRAM-SHA-256
    verifier computed here, so the clear text never reaches the server's logs; it is not kept
    in the record either (release does not need it). Release ends the role's sessions, drops
    what it owns in every database of the server (``DROP OWNED BY``, databases it owns with
    ``DROP DATABASE ... WITH (FORCE)``), then the role.

    Args:
        dsn: a superuser's (or a CREATEROLE user's) DSN; the role's DSN names the same database.
        member_of: roles to grant it (``GRANT readers TO <role>``), for the privileges to test.
        createdb: give it CREATEDB.
    """

    kind = "postgres.role"
    noun = "role"

    def __init__(self, dsn: str, *, member_of: Iterable[str] = (), createdb: bool = False) -> None:
        super().__init__(dsn)
        if isinstance(member_of, str):
            raise TypeError(f"{self.kind}: member_of must be a list of role names")
        self.member_of = [str(r) for r in member_of]
        self.createdb = bool(createdb)

    def acquire(self, name: str) -> tuple[RoleLogin, Record]:
        record = self.plan(name)
        password = secrets.token_urlsafe(24)
        role = sql.Identifier(name)
        statements = [
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                role,
                sql.SQL("CREATEDB" if self.createdb else "NOCREATEDB"),
                sql.Literal(_scram_sha256(password)),
            )
        ]
        if self.member_of:
            grants = sql.SQL(", ").join(sql.Identifier(r) for r in self.member_of)
            statements.append(sql.SQL("GRANT {} TO {}").format(grants, role))
        progress = _Progress()
        try:
            # One simple query: one transaction, so a GRANT refused undoes the CREATE ROLE.
            _execute(self._server, sql.SQL("; ").join(statements), progress=progress)
        except psycopg.Error as exc:
            doing = "create the role"
            raise _error(_create_error(exc, progress), type(self), record, doing, exc) from exc
        dsn = _dsn_with(self.dsn, user=name, password=password)
        return RoleLogin(name, password, dsn), record

    @classmethod
    def release(cls, record: Record) -> None:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        server = _Server.of(record)
        name = str(record["name"])
        try:
            for _attempt in range(3):
                if cls._drop(server, name):
                    return
                time.sleep(0.1)  # a terminated session created something meanwhile: again
            cls._drop(server, name, last=True)
        except psycopg.Error as exc:
            raise _error(ReleaseError, cls, record, "drop the role", exc) from exc

    @classmethod
    def _drop(cls, server: _Server, name: str, *, last: bool = False) -> bool:
        rows = _fetch(server, "SELECT oid FROM pg_roles WHERE rolname = %s", (name,))
        if not rows:
            return True
        oid = int(rows[0][0])
        role = sql.Identifier(name)
        # No new sessions, and the current ones end: nothing new gets created while we drop.
        _execute(server, sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        _fetch(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = %s",
            (oid,),
        )
        elsewhere = _fetch(
            server,
            """
            SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s
               AND d.datname <> current_database() AND d.datallowconn
            """,
            (oid,),
        )
        owned = _fetch(server, "SELECT datname FROM pg_database WHERE datdba = %s", (oid,))
        for (dbname,) in owned:
            _pool.close_database(server.conninfo, str(dbname))
            drop_db = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            _execute(server, drop_db.format(sql.Identifier(str(dbname))))
        drop_owned = sql.SQL("DROP OWNED BY {} CASCADE").format(role)
        owned_names = {str(d) for (d,) in owned}
        for (dbname,) in elsewhere:
            if str(dbname) not in owned_names:
                # A connection of its own, closed at once: a cached idle one would keep that
                # database from being dropped or cloned by somebody else.
                with _connect(server.with_dbname(str(dbname)), autocommit=True) as conn:
                    conn.execute(drop_owned)
        try:
            _execute(
                server, drop_owned + sql.SQL("; ") + sql.SQL("DROP ROLE IF EXISTS {}").format(role)
            )
        except pg_errors.DependentObjectsStillExist:
            if last:
                raise
            return False
        return True

    @classmethod
    def exists(cls, record: Record) -> bool:
        require_extra(psycopg is not None, cls.kind, *_EXTRA)
        query = "SELECT 1 FROM pg_roles WHERE rolname = %s"
        try:
            return bool(_fetch(_Server.of(record), query, (record["name"],)))
        except psycopg.Error as exc:
            raise _error(BackendError, cls, record, "look for the role", exc) from exc

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Roles with a reclaim name on the server ``target`` (a DSN) names."""
        names = cls._list_names(
            target, r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'rc\_%' ORDER BY 1"
        )
        return cls._leftovers(target, names)


def _scram_sha256(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677).

    PostgreSQL stores a password given in this form as it is, so the clear text never crosses
    the wire nor lands in a statement log. ``password`` must be ASCII (no SASLprep is done).
    """
    if not password.isascii():
        raise ValueError("scram_sha256 takes ASCII passwords only")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"

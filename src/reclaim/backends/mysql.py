"""MariaDB and MySQL databases: ``MysqlDatabase(dsn)`` gives the DSN of a fresh, empty database.

The database is called by reclaim's name (``rc_<run>_<time>_<seq>``), which is journaled before
``CREATE DATABASE`` runs (I1); the record holds the server's address and the credentials that
dropped it, so release needs nothing else (I2). Release is ``DROP DATABASE IF EXISTS`` (I3),
after ending the sessions whose default database it is (a test's forgotten connection pool would
otherwise hold metadata locks the drop waits for).

Names reach SQL twice guarded: a record whose name is not, whole, a reclaim name of this kind's
:class:`~reclaim.backends.NameStyle` (at most 64 characters, MariaDB's limit) is refused by the
one guard in front of every release and ``exists`` (I8), so no record can drop ``mysql``; and
names are quoted with backticks.

Needs the ``mysql`` extra (PyMySQL): ``pip install 'reclaim[mysql]'``.
"""

from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from reclaim.backends import (
    AcquireError,
    Backend,
    BackendError,
    Leftover,
    NameStyle,
    NotCreatedError,
    Record,
    ReleaseError,
    backend_error,
    require_extra,
    split_url,
)

try:
    import pymysql
    import pymysql.err
except ImportError:  # the extra is not installed: MissingExtraError when the backend is used
    _HAVE_DRIVER = False
else:
    _HAVE_DRIVER = True

if TYPE_CHECKING:
    from pymysql.connections import Connection

__all__ = ["MysqlDatabase"]

_KIND: Final = "mysql.database"

#: MariaDB and MySQL refuse longer database names.
_MAX_NAME: Final = 64

#: reclaim's names as database names: the default style, within MariaDB's limit.
_STYLE: Final = NameStyle(max_length=_MAX_NAME)

#: The extra and driver named when PyMySQL is missing (``require_extra``).
_EXTRA: Final = ("mysql", "PyMySQL")

#: Character set and collation names are words; anything else is refused, never pasted.
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")

_SCHEMES: Final = ("mysql", "mariadb")

#: ``LIKE`` pattern of reclaim's prefix (``_`` escaped: it is a wildcard in LIKE).
_LIKE_PREFIX: Final = "rc\\_%"

_DEFAULT_PORT: Final = 3306

#: Seconds: to connect; to wait for an answer; to wait for a lock before DROP gives up.
_CONNECT_TIMEOUT: Final = 10
_READ_TIMEOUT: Final = 60
_LOCK_WAIT: Final = 10

#: MariaDB error codes a KILL may meet: the session ended already; it is another user's.
_NO_SUCH_THREAD: Final = 1094
_KILL_DENIED: Final = 1095

#: Client error codes that mean "the server could not be reached or went away".
_UNREACHABLE: Final = frozenset({2002, 2003, 2005, 2006, 2013})

#: Server errors that answer ``CREATE DATABASE`` with a refusal that made nothing: it exists
#: already (not ours: never released), access denied (1044, 1045, 1227, 1142), a syntax
#: error, a bad name, an unknown character set or collation or a mismatch of the two, a
#: read-only server (1290, 1792, 1836). A lost connection, a timeout or "can't create database"
#: (1006, the disk) stay doubtful.
_CREATE_REFUSED: Final = frozenset(
    {1007, 1044, 1045, 1064, 1102, 1115, 1142, 1227, 1253, 1273, 1290, 1792, 1836}
)


class MysqlDatabase(Backend[str]):
    """A database of its own on a MariaDB or MySQL server, dropped with everything in it.

    The value is the new database's DSN, ``mysql://user:password@host:port/<name>``, with the
    credentials (and query string) of ``dsn``.

    Args:
        dsn: the server and an account that may ``CREATE`` and ``DROP`` databases, e.g.
            ``mysql://root@127.0.0.1:3306`` (``mariadb://`` works too; a database in the path
            is ignored).
        charset: the new database's character set (``CHARACTER SET``), the server's default
            when None.
        collation: its collation (``COLLATE``), the server's default when None.

    Raises:
        ValueError: the DSN cannot be used, or a charset or collation is not a plain word.
        MissingExtraError: PyMySQL is not installed.
    """

    kind = _KIND
    secret_fields = frozenset({"password"})
    url_schemes = _SCHEMES
    name_style = _STYLE

    def __init__(
        self, dsn: str, *, charset: str | None = None, collation: str | None = None
    ) -> None:
        require_extra(_HAVE_DRIVER, _KIND, *_EXTRA)
        self._server, query = _parse_dsn(dsn)
        self._query = urlencode(query)
        for what, value in (("charset", charset), ("collation", collation)):
            if value is not None and not _WORD_RE.fullmatch(value):
                raise ValueError(
                    f"MysqlDatabase {what} {value!r} must be letters, digits and underscores"
                )
        self.charset = charset
        self.collation = collation

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one (it would reach SQL)."""
        try:
            return self.name_style.spell(proposed)
        except ValueError as exc:
            raise ValueError(f"{_KIND}: {exc}; refusing to use it in SQL") from None

    def plan(self, name: str) -> Record:
        return {"name": self.adapt_name(name), **self._server}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        sql = f"CREATE DATABASE {_quote(name)}"  # no IF NOT EXISTS: never adopt a stranger
        if self.charset is not None:
            sql += f" CHARACTER SET {self.charset}"
        if self.collation is not None:
            sql += f" COLLATE {self.collation}"
        doing = "create the database"
        with _session(record, NotCreatedError, doing, error_in_block=AcquireError) as cur:
            try:
                cur.execute(sql)
            except pymysql.err.MySQLError as exc:
                if _code(exc) not in _CREATE_REFUSED:
                    raise  # sent, and no clear answer: AcquireError, the entry is released
                raise _error(NotCreatedError, record, doing, exc) from exc
        return _dsn(record, name, self._query), record

    @classmethod
    def release(cls, record: Record) -> None:
        """End the sessions using the database, then ``DROP DATABASE IF EXISTS``."""
        name = str(record["name"])  # the guard accepted it: a whole reclaim name
        with _session(record, ReleaseError, "drop the database") as cur:
            cur.execute(f"SET SESSION lock_wait_timeout = {_LOCK_WAIT}")
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE DB = %s AND ID <> CONNECTION_ID()",
                (name,),
            )
            for (session,) in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(session)}")
                except pymysql.err.MySQLError as exc:
                    # Gone already, or another account's session (no privilege): the drop
                    # still runs, and waits at most lock_wait_timeout if that session holds a
                    # lock.
                    if _code(exc) not in (_NO_SUCH_THREAD, _KILL_DENIED):
                        raise
            cur.execute(f"DROP DATABASE IF EXISTS {_quote(name)}")

    @classmethod
    def exists(cls, record: Record) -> bool:
        with _session(record, BackendError, "look the database up") as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (str(record["name"]),),
            )
            row = cur.fetchone()
        return bool(row and row[0])

    @classmethod
    def describe(cls, record: Record) -> str:
        return f"{record.get('user')}@{record.get('host')}:{record.get('port')}/{record['name']}"

    @classmethod
    def list_leftovers(cls, target: str) -> Iterator[Leftover]:
        """Databases on the server at ``target`` (a DSN) whose whole name is a reclaim name.

        Only what the DSN's account can see is listed (``SHOW DATABASES`` rules).
        """
        require_extra(_HAVE_DRIVER, _KIND, *_EXTRA)
        server, _query = _parse_dsn(target)
        with _session({"name": "", **server}, BackendError, "list the databases") as cur:
            cur.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
                (_LIKE_PREFIX,),
            )
            names = [str(row[0]) for row in cur.fetchall()]
        for name in sorted(names):
            parsed = cls.name_style.parse(name)
            if parsed is None:
                continue  # rc_-like, but not, whole, a name reclaim made: never touched
            yield Leftover.of({"name": name, **server}, parsed)


# --- helpers -----------------------------------------------------------------------------------


def _quote(name: str) -> str:
    """A backtick-quoted identifier (the name is checked already: this is the second guard)."""
    return "`" + name.replace("`", "``") + "`"


def _parse_dsn(dsn: str) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """The server and account of a DSN, as record fields, and the rest of its query string.
    Messages never quote the password."""
    url = split_url(dsn, kind=_KIND, schemes=_SCHEMES)
    server = {
        "host": url.host,
        "port": url.port or _DEFAULT_PORT,
        "user": url.username or getpass.getuser(),
        "password": url.password,
    }
    return server, url.query


def _dsn(record: Record, name: str, query: str) -> str:
    auth = quote(record["user"], safe="")
    if record["password"]:
        auth += ":" + quote(record["password"], safe="")
    host = record["host"]
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"mysql://{auth}@{host}:{record['port']}/{name}" + (f"?{query}" if query else "")


def _code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _reason(exc: BaseException) -> str:
    """What the server (or the driver) said, and whether it could be reached at all."""
    reason = f"{type(exc).__name__}: {exc}"
    if _code(exc) in _UNREACHABLE:
        return f"the MariaDB/MySQL server is unreachable ({reason})"
    return reason


def _error(
    error_type: type[BackendError], record: Record, doing: str, exc: BaseException
) -> BackendError:
    """The toolkit's error for PyMySQL's ``exc``: what, where (never the password), why."""
    where = f"{record.get('user')}@{record.get('host')}:{record.get('port')}"
    return backend_error(
        error_type,
        _KIND,
        record,
        doing,
        exc,
        where=where,
        reason=_reason,
        secret_fields=MysqlDatabase.secret_fields,
        style=_STYLE,
    )


@contextlib.contextmanager
def _session(
    record: Record,
    error_type: type[BackendError],
    doing: str,
    *,
    error_in_block: type[BackendError] | None = None,
) -> Iterator[Any]:
    """A cursor on a fresh autocommit connection; PyMySQL's errors become ``error_type``
    through the toolkit's translation, redacted (I7): those of connecting (the handshake and
    login included: nothing was sent yet), and those in the block, which become
    ``error_in_block`` instead when it is given."""
    require_extra(_HAVE_DRIVER, _KIND, *_EXTRA)
    try:
        conn: Connection = pymysql.connect(
            host=record["host"],
            port=int(record["port"]),
            user=record["user"],
            password=record["password"],
            connect_timeout=_CONNECT_TIMEOUT,
            read_timeout=_READ_TIMEOUT,
            write_timeout=_READ_TIMEOUT,
            autocommit=True,
            charset="utf8mb4",
        )
    except pymysql.err.MySQLError as exc:
        raise _error(error_type, record, doing, exc) from exc
    try:
        with conn.cursor() as cur:
            yield cur
    except pymysql.err.MySQLError as exc:
        raise _error(error_in_block or error_type, record, doing, exc) from exc
    finally:
        with contextlib.suppress(Exception):
            conn.close()

"""MariaDB and MySQL databases: ``MysqlDatabase(dsn)`` gives the DSN of a fresh, empty database.

The database is called by reclaim's name (``rc_<run>_<time>_<seq>``), which is journaled before
``CREATE DATABASE`` runs (I1); the record holds the server's address and the credentials that
dropped it, so release needs nothing else (I2). Release is ``DROP DATABASE IF EXISTS`` (I3),
after ending the sessions whose default database it is (a test's forgotten connection pool would
otherwise hold metadata locks the drop waits for).

Names reach SQL twice guarded: they must have the exact shape reclaim makes (lower case letters,
digits and underscores, at most 64 characters, MariaDB's limit), and they are quoted with
backticks. A record whose name is not a reclaim name is refused, so no record can drop ``mysql``.

Needs the ``mysql`` extra (PyMySQL): ``pip install 'reclaim[mysql]'``.
"""

from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, unquote, urlsplit

from reclaim._errors import MissingExtraError
from reclaim.backends import Backend, Leftover, Record, parse_name, redact_text

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

#: The names reclaim makes (see reclaim.backends.make_name), whole: nothing before or after.
_NAME_RE: Final = re.compile(r"rc_[0-9a-f]{8}_[0-9a-z]{1,8}_[0-9]{1,20}")

#: MariaDB and MySQL refuse longer database names.
_MAX_NAME: Final = 64

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

    def __init__(
        self, dsn: str, *, charset: str | None = None, collation: str | None = None
    ) -> None:
        _require_driver()
        self._server = _parse_dsn(dsn)
        self._query = urlsplit(dsn).query
        for what, value in (("charset", charset), ("collation", collation)):
            if value is not None and not _WORD_RE.fullmatch(value):
                raise ValueError(
                    f"MysqlDatabase {what} {value!r} must be letters, digits and underscores"
                )
        self.charset = charset
        self.collation = collation

    def adapt_name(self, proposed: str) -> str:
        """Keep reclaim's name; refuse anything that is not one (it would reach SQL)."""
        _check_name(proposed)
        return proposed

    def plan(self, name: str) -> Record:
        _check_name(name)
        return {"name": name, **self._server}

    def acquire(self, name: str) -> tuple[str, Record]:
        record = self.plan(name)
        sql = f"CREATE DATABASE {_quote(name)}"  # no IF NOT EXISTS: never adopt a stranger
        if self.charset is not None:
            sql += f" CHARACTER SET {self.charset}"
        if self.collation is not None:
            sql += f" COLLATE {self.collation}"
        with _connect(record, f"create database {name!r}") as conn, conn.cursor() as cur:
            _execute(cur, sql, record, f"create database {name!r}")
        return _dsn(record, name, self._query), record

    @classmethod
    def release(cls, record: Record) -> None:
        """End the sessions using the database, then ``DROP DATABASE IF EXISTS``."""
        name = _check_name(record["name"])
        what = f"drop database {name!r}"
        with _connect(record, what) as conn, conn.cursor() as cur:
            _execute(cur, f"SET SESSION lock_wait_timeout = {_LOCK_WAIT}", record, what)
            _execute(
                cur,
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE DB = %s AND ID <> CONNECTION_ID()",
                record,
                what,
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
                        raise _translate(exc, record, what) from exc
            _execute(cur, f"DROP DATABASE IF EXISTS {_quote(name)}", record, what)

    @classmethod
    def exists(cls, record: Record) -> bool:
        name = _check_name(record["name"])
        what = f"look up database {name!r}"
        with _connect(record, what) as conn, conn.cursor() as cur:
            _execute(
                cur,
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                record,
                what,
                (name,),
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
        _require_driver()
        server = _parse_dsn(target)
        what = "list databases"
        with _connect(server, what) as conn, conn.cursor() as cur:
            _execute(
                cur,
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
                server,
                what,
                (_LIKE_PREFIX,),
            )
            names = [str(row[0]) for row in cur.fetchall()]
        for name in sorted(names):
            parsed = parse_name(name)
            if parsed is None or not _NAME_RE.fullmatch(name):
                continue  # rc_-like, but not a name reclaim made: never touched
            run_id, created = parsed.run_id, parsed.created_at
            yield Leftover({"name": name, **server}, run_id, created)


# --- helpers -----------------------------------------------------------------------------------


def _require_driver() -> None:
    if not _HAVE_DRIVER:
        raise MissingExtraError(_KIND, "mysql", "PyMySQL")


def _check_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or len(name) > _MAX_NAME
        or not _NAME_RE.fullmatch(name)
        or parse_name(name) is None
    ):
        raise ValueError(
            f"{_KIND}: {name!r} is not a database name reclaim makes"
            " (rc_<run>_<time>_<seq>, lower case, at most 64 characters); refusing to use it in SQL"
        )
    return name


def _quote(name: str) -> str:
    """A backtick-quoted identifier (the name is checked already: this is the second guard)."""
    return "`" + name.replace("`", "``") + "`"


def _parse_dsn(dsn: str) -> dict[str, Any]:
    """The server and account of a DSN, as record fields. Messages never quote the password."""
    try:
        parts = urlsplit(dsn)
        port = parts.port or _DEFAULT_PORT
    except ValueError as exc:  # urllib's messages quote the port at most, never the password
        raise ValueError(f"{_KIND}: the DSN {_redact_dsn(dsn)!r} is not valid: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{_KIND}: the DSN {_redact_dsn(dsn)!r} must start with mysql:// or mariadb://"
        )
    if not parts.hostname:
        raise ValueError(f"{_KIND}: the DSN {_redact_dsn(dsn)!r} names no host")
    return {
        "host": parts.hostname,
        "port": port,
        "user": unquote(parts.username) if parts.username else getpass.getuser(),
        "password": unquote(parts.password) if parts.password else "",
    }


def _redact_dsn(dsn: str) -> str:
    head, at, tail = dsn.rpartition("@")
    if not at:
        return dsn
    scheme, sep, userinfo = head.partition("://")
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in userinfo else dsn


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


def _translate(exc: Exception, record: Record, what: str) -> Exception:
    """A driver error as an error that says where and what, without the password (I7)."""
    where = f"{record.get('user')}@{record.get('host')}:{record.get('port')}"
    reason = redact_text(f"{type(exc).__name__}: {exc}", record, ("password",))
    if _code(exc) in _UNREACHABLE:
        return ConnectionError(
            f"cannot {what}: the MariaDB/MySQL server {where} is unreachable ({reason})"
        )
    return RuntimeError(f"cannot {what} on the MariaDB/MySQL server {where}: {reason}")


@contextlib.contextmanager
def _connect(record: Record, what: str) -> Iterator[Connection]:
    _require_driver()
    try:
        conn = pymysql.connect(
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
        raise _translate(exc, record, what) from exc
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _execute(
    cur: Any, sql: str, record: Record, what: str, args: tuple[Any, ...] | None = None
) -> None:
    try:
        cur.execute(sql, args)
    except pymysql.err.MySQLError as exc:
        raise _translate(exc, record, what) from exc

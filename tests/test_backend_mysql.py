"""The MariaDB backend against the real server: it keeps the backend contract (conformance kit),
gives a usable database, refuses hostile names, drops a database a forgotten connection still
holds, leaves nothing after its owner is SIGKILLed (watchdog; sweeper when the watchdog dies too),
keeps a release that met an unreachable server as failed until a sweep succeeds, lists only
reclaim's own databases as leftovers, and never shows a password.

Every check of "gone" or "there" asks the server itself (information_schema), as root. Every
database a test creates is dropped at teardown, also when the test fails.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pymysql
import pymysql.cursors
import pytest

import reclaim
from _services import closed_port, require
from conftest import CHILD_TIMEOUT, registry_is_empty
from reclaim import AcquireError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim.backends import check_leftover, load_backend, make_name
from reclaim.backends.mysql import MysqlDatabase


@pytest.fixture
def mysql_url() -> str:
    """The server's admin DSN (root), or a skip when MariaDB is not running."""
    return require("mysql")


def admin(url: str, **extra: Any) -> pymysql.connections.Connection:
    """A root connection for the test's own checks, independent of the backend."""
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
        connect_timeout=10,
        **extra,
    )


def db_exists(url: str, name: str) -> bool:
    with admin(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        )
        row = cur.fetchone()
    return bool(row and row[0])


def drop(url: str, name: str) -> None:
    with admin(url) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = 30")  # a lock a test leaked: fail, not hang
        cur.execute("DROP DATABASE IF EXISTS `{}`".format(name.replace("`", "``")))


@pytest.fixture
def created(mysql_url: str) -> Iterator[set[str]]:
    """Names of databases this test may have made; all dropped at teardown, pass or fail."""
    names: set[str] = set()
    yield names
    for name in names:
        drop(mysql_url, name)


@pytest.fixture
def mysql_user(mysql_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway account with a password full of URL delimiters, allowed everything on
    reclaim's databases only; dropped at teardown."""
    user = f"reclaim_t_{secrets.token_hex(4)}"
    password = f"p@ss:w/rd%{secrets.token_hex(6)}"
    hosts = ("localhost", "127.0.0.1")
    with admin(mysql_url) as conn, conn.cursor() as cur:
        for host in hosts:
            cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
            cur.execute("GRANT ALL PRIVILEGES ON `rc\\_%%`.* TO %s@%s", (user, host))
    try:
        yield user, password
    finally:
        with admin(mysql_url) as conn, conn.cursor() as cur:
            for host in hosts:
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))


def as_user(url: str, user: str, password: str, port: int | None = None) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{port or parts.port}"
    return f"mysql://{quote(user, safe='')}:{quote(password, safe='')}@{host}/"


# --- the contract ----------------------------------------------------------------------------


def test_loads_through_its_entry_point() -> None:
    assert load_backend("mysql.database") is MysqlDatabase


def test_database_is_usable_and_dropped_with_its_tables(
    mysql_url: str, registry_path: str, created: set[str]
) -> None:
    with reclaim.Fixture("mysql") as f:
        dsn = f.acquire(MysqlDatabase(mysql_url, charset="latin1", collation="latin1_bin"))
        name = urlsplit(dsn).path.lstrip("/")
        created.add(name)
        assert name.startswith("rc_")
        with admin(mysql_url, database=name) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, word VARCHAR(10))")
            cur.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
            cur.execute("SELECT word FROM t ORDER BY id")
            assert [row[0] for row in cur.fetchall()] == ["one", "two"]
            cur.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
                " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (name,),
            )
            assert cur.fetchone() == ("latin1", "latin1_bin")
    assert not db_exists(mysql_url, name)


def test_release_is_idempotent_and_planned_release_is_a_no_op(
    mysql_url: str, created: set[str]
) -> None:
    backend = MysqlDatabase(mysql_url)
    name = make_name(secrets.token_hex(4), 1)
    created.add(name)
    planned = backend.plan(name)
    MysqlDatabase.release(planned)  # never created: nothing to do
    assert not db_exists(mysql_url, name)
    _dsn, record = backend.acquire(name)
    assert db_exists(mysql_url, name)
    MysqlDatabase.release(record)
    MysqlDatabase.release(record)
    assert not db_exists(mysql_url, name)


def test_acquire_never_adopts_an_existing_database(mysql_url: str, created: set[str]) -> None:
    name = make_name(secrets.token_hex(4), 1)
    created.add(name)
    with admin(mysql_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        cur.execute(f"CREATE TABLE `{name}`.precious (id INT)")
    with pytest.raises(AcquireError, match="database exists") as info:
        MysqlDatabase(mysql_url).acquire(name)
    assert info.value.kind == "mysql.database"
    assert info.value.resource == name
    assert f"mysql.database {name!r}: could not create the database at root@" in str(info.value)


def test_a_forgotten_open_transaction_does_not_block_the_drop(
    mysql_url: str, registry_path: str, created: set[str]
) -> None:
    """A test that leaves a connection with an open transaction (a metadata lock on its table)
    behind: release ends that session, then drops."""
    leak: pymysql.connections.Connection | None = None
    try:
        with reclaim.Fixture("mysql") as f:
            dsn = f.acquire(MysqlDatabase(mysql_url))
            name = urlsplit(dsn).path.lstrip("/")
            created.add(name)
            leak = admin(mysql_url, database=name)
            leak.autocommit(False)
            with leak.cursor() as cur:
                cur.execute("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
                cur.execute("INSERT INTO t VALUES (1)")  # the transaction stays open
        assert not db_exists(mysql_url, name)
        with pytest.raises(pymysql.err.OperationalError), leak.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        if leak is not None and leak.open:
            leak.close()  # before the teardown's own DROP, which the lock would block


# --- hostile input ---------------------------------------------------------------------------

HOSTILE = [
    "mysql",
    "x`; DROP DATABASE mysql; --",
    "rc_0a1b2c3d_abc_1`; DROP DATABASE mysql; --",
    "rc_0a1b2c3d_abc_1 ",
    "RC_0A1B2C3D_ABC_1",
    "rc_0a1b2c3d_abc_1/../mysql",
    "",
    "prefix_rc_0a1b2c3d_abc_1",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_never_reach_sql(mysql_url: str, name: str) -> None:
    backend = MysqlDatabase(mysql_url)
    record = {**backend.plan("rc_0a1b2c3d_abc_1"), "name": name}
    for call in (lambda: backend.adapt_name(name), lambda: backend.acquire(name)):
        with pytest.raises(ValueError, match="not a name reclaim makes"):
            call()
    # A record naming it (damaged or hostile): the guard refuses it before any connection.
    for guarded in (MysqlDatabase.release, MysqlDatabase.exists):
        with pytest.raises(ForeignNameError, match="refused"):
            guarded(dict(record))
    assert db_exists(mysql_url, "mysql")


def test_names_fit_mariadb() -> None:
    assert MysqlDatabase.name_style.max_length == 64
    assert MysqlDatabase.prefix_separator is None


@pytest.mark.parametrize("option", ["charset", "collation"])
def test_hostile_charset_and_collation_are_refused(mysql_url: str, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        MysqlDatabase(mysql_url, **{option: "utf8mb4; DROP DATABASE mysql"})


def test_bad_dsns_are_clear_and_keep_the_password_out(mysql_url: str) -> None:
    for dsn, message in [
        ("postgresql://root@127.0.0.1/x", "must start with mysql://"),
        ("mysql://root:hunter2secret@127.0.0.1:notaport/", "is not valid"),
        ("mysql://root:hunter2secret@/x", "names no host"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            MysqlDatabase(dsn)
        assert "hunter2secret" not in str(info.value)


def test_credentials_with_url_delimiters_round_trip(
    mysql_url: str, mysql_user: tuple[str, str], registry_path: str, created: set[str]
) -> None:
    user, password = mysql_user
    with reclaim.Fixture("mysql") as f:
        dsn = f.acquire(MysqlDatabase(as_user(mysql_url, user, password)))
        parts = urlsplit(dsn)
        created.add(parts.path.lstrip("/"))
        conn = pymysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=user,
            password=password,
            database=parts.path.lstrip("/"),
        )
        with conn, conn.cursor() as cur:
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            row = cur.fetchone()
        assert row is not None
        assert row[0] == parts.path.lstrip("/")
        assert row[1].startswith(user + "@")
    assert not db_exists(mysql_url, parts.path.lstrip("/"))


def test_without_pymysql_the_module_imports_and_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['pymysql'] = None\n"
        "import reclaim.backends.mysql as m\n"
        "try:\n"
        "    m.MysqlDatabase('mysql://root@127.0.0.1')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=CHILD_TIMEOUT,
    ).stdout
    assert "MissingExtraError" in out
    assert "pip install 'reclaim[mysql]'" in out


# --- leftovers without a registry ------------------------------------------------------------


def test_list_leftovers_yields_only_reclaim_names(mysql_url: str, created: set[str]) -> None:
    run_id = secrets.token_hex(4)
    then = time.time() - 7200
    ours = [make_name(run_id, seq, now=then) for seq in (1, 2)]
    foreign = [
        f"rc_{run_id}",  # the prefix and run, but no time or sequence
        f"rc_{run_id}_zz",
        f"{ours[0]}_extra",  # a reclaim name inside a longer one is not reclaim's
        f"app_{ours[1]}",
        f"rc_{run_id}_ABC_1",  # upper case: not a name reclaim makes
    ]
    created.update(ours + foreign)
    with admin(mysql_url) as conn, conn.cursor() as cur:
        for name in ours + foreign:
            cur.execute(f"CREATE DATABASE `{name}`")
    found = [lo for lo in MysqlDatabase.list_leftovers(mysql_url) if run_id in lo.record["name"]]
    assert sorted(lo.record["name"] for lo in found) == sorted(ours)
    for leftover in found:
        assert leftover.run_id == run_id
        check_leftover(MysqlDatabase, leftover)
        assert leftover.created_at == float(int(then))
        MysqlDatabase.release(leftover.record)  # the record is all release needs
    assert not any(db_exists(mysql_url, name) for name in ours)
    assert all(db_exists(mysql_url, name) for name in foreign)


# --- an acquire that fails: what it leaves ----------------------------------------------------


def _assert_not_created(dsn: str, password: str, registry_path: str, cause: str) -> None:
    """Through a Fixture: an AcquireError naming ``cause``, no password, no entry left; the
    backend's own acquire says NotCreatedError."""
    with pytest.raises(AcquireError) as info, reclaim.Fixture("mysql-down") as f:
        f.acquire(MysqlDatabase(dsn))
    assert not isinstance(info.value, ReleaseError)
    assert cause in str(info.value)
    for text in (str(info.value), str(info.value.__cause__), repr(info.value.__cause__)):
        assert password not in text
        assert quote(password, safe="") not in text
    assert registry_is_empty(registry_path), "the planned entry is closed as never created"
    with pytest.raises(NotCreatedError) as own:
        MysqlDatabase(dsn).acquire(make_name(secrets.token_hex(4), 1))
    assert cause in str(own.value)
    assert password not in str(own.value)


def test_acquire_against_a_closed_port_leaves_no_entry(
    mysql_url: str, mysql_user: tuple[str, str], registry_path: str
) -> None:
    user, password = mysql_user
    dsn = as_user(mysql_url, user, password, port=closed_port())
    _assert_not_created(dsn, password, registry_path, "unreachable")


def test_acquire_with_a_wrong_password_leaves_no_entry(
    mysql_url: str, mysql_user: tuple[str, str], registry_path: str
) -> None:
    user, password = mysql_user
    wrong = password + "-wrong"
    _assert_not_created(as_user(mysql_url, user, wrong), wrong, registry_path, "Access denied")


def test_acquire_without_the_privilege_leaves_no_entry(
    mysql_url: str, registry_path: str, created: set[str]
) -> None:
    """An account without CREATE: MariaDB refuses the statement itself (1044)."""
    user, password = f"reclaim_t_{secrets.token_hex(4)}", f"pw:{secrets.token_hex(6)}"
    hosts = ("localhost", "127.0.0.1")
    with admin(mysql_url) as conn, conn.cursor() as cur:
        for host in hosts:
            cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
    try:
        dsn = as_user(mysql_url, user, password)
        denied = pytest.raises(AcquireError, match="Access denied")
        with denied as info, reclaim.Fixture("mysql-denied") as f:
            f.acquire(MysqlDatabase(dsn))
        assert "1044" in str(info.value)
        assert password not in str(info.value)
        assert registry_is_empty(registry_path)
        name = make_name(secrets.token_hex(4), 1)
        created.add(name)
        with pytest.raises(NotCreatedError):
            MysqlDatabase(dsn).acquire(name)
        assert not db_exists(mysql_url, name)
    finally:
        with admin(mysql_url) as conn, conn.cursor() as cur:
            for host in hosts:
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))


def test_acquire_of_a_name_that_exists_leaves_the_stranger_alone(
    mysql_url: str, registry_path: str, created: set[str]
) -> None:
    """CREATE DATABASE fails with "database exists": it is not ours, so the Fixture must not
    release it (that would drop it and its tables)."""
    name = make_name(secrets.token_hex(4), 1)
    created.add(name)
    with admin(mysql_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        cur.execute(f"CREATE TABLE `{name}`.precious (id INT)")
    backend = MysqlDatabase(mysql_url)
    backend.adapt_name = lambda proposed: name  # type: ignore[method-assign]  # a collision
    with pytest.raises(AcquireError, match="database exists"), reclaim.Fixture("mysql-dup") as f:
        f.acquire(backend)
    assert db_exists(mysql_url, name), "the stranger's database was left alone"
    assert registry_is_empty(registry_path)
    with pytest.raises(NotCreatedError):
        MysqlDatabase(mysql_url).acquire(name)
    with admin(mysql_url) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW TABLES FROM `{name}`")
        assert [row[0] for row in cur.fetchall()] == ["precious"]


def test_a_create_without_an_answer_stays_an_acquire_error(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch, created: set[str]
) -> None:
    """The connection is lost once CREATE DATABASE was sent: it may have run, so the error is a
    plain AcquireError (the Fixture then releases the planned entry)."""
    execute = pymysql.cursors.Cursor.execute

    def lost(self: Any, query: str, args: Any = None) -> Any:
        if query.startswith("CREATE DATABASE"):
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
        return execute(self, query, args)

    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", lost)
    name = make_name(secrets.token_hex(4), 1)
    created.add(name)
    with pytest.raises(AcquireError, match="unreachable") as info:
        MysqlDatabase(mysql_url).acquire(name)
    assert not isinstance(info.value, NotCreatedError)

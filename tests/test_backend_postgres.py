"""The PostgreSQL backends against the real server: each keeps the backend contract
(``check_backend``); what is special to each works (set-up with the schema's search_path,
template cloning that a killed run cannot block, tables dropped by prefix and truncated, a role
that logs in and is gone after); hostile names inject nothing; a SIGKILLed owner leaves nothing
on the server (through its watchdog, or through ``reclaim sweep`` when the watchdog dies too);
a release that meets a server that is down is kept as failed and done by the next sweep; and no
password ever shows in ``reclaim status`` or in an error.

Every test cleans up on the server even when it fails: the ``pg`` fixture records the run id of
every name acquired in this process (and the tests add their children's), and drops everything
named with those run ids at teardown, with plain SQL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import reclaim
from _services import TcpProxy, closed_port, require, with_port
from conftest import Spawner, kill, reclaim_cli, registry_is_empty
from reclaim import AcquireError, ForeignNameError, NotCreatedError, ReleaseError
from reclaim.backends import Backend, Record, check_leftover, load_backend, make_name, parse_name
from reclaim.backends.postgres import (
    PostgresDatabase,
    PostgresRole,
    PostgresSchema,
    PostgresTables,
    RoleLogin,
)

#: A password the server never checks (the test server trusts 127.0.0.1) but reclaim must keep
#: secret: every test that looks for leaks puts it in the DSN.
SECRET = "Sup3r-Secret-pw-4711"

KINDS = (PostgresSchema, PostgresDatabase, PostgresTables, PostgresRole)


# --- the server, and cleaning it up whatever happens ---------------------------------------


@dataclasses.dataclass
class Server:
    """The test server, and the run ids whose objects are dropped at teardown."""

    dsn: str
    run_ids: set[str] = dataclasses.field(default_factory=set)
    #: Statements run at teardown for objects without a run's name (look-alikes, strangers).
    finally_run: list[sql.Composable] = dataclasses.field(default_factory=list)

    @property
    def secret_dsn(self) -> str:
        """The DSN with a password in it (ignored by the server, to be kept secret by us)."""
        parts = self.dsn.split("://", 1)
        user, _, rest = parts[1].partition("@")
        return f"{parts[0]}://{user}:{SECRET}@{rest}"

    def connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        dsn = (
            self.dsn if dbname is None else psycopg.conninfo.make_conninfo(self.dsn, dbname=dbname)
        )
        return psycopg.connect(dsn, autocommit=True)

    def proxy(self) -> TcpProxy:
        """A proxy in front of the server (stopped: call ``start``)."""
        target = psycopg.conninfo.conninfo_to_dict(self.dsn)
        return TcpProxy(str(target.get("host", "127.0.0.1")), int(str(target.get("port", 5432))))

    def query(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def execute(self, query: Any, params: Any = None) -> None:
        self.query(query, params)

    def track(self, name: str) -> None:
        parsed = parse_name(name)
        if parsed is not None:
            self.run_ids.add(parsed[0])

    # What exists on the server, by catalog.
    def schemas(self) -> set[str]:
        query = "SELECT nspname FROM pg_namespace"
        return {r[0] for r in self.query(query)}

    def databases(self) -> set[str]:
        query = "SELECT datname FROM pg_database"
        return {r[0] for r in self.query(query)}

    def roles(self) -> set[str]:
        query = "SELECT rolname FROM pg_roles"
        return {r[0] for r in self.query(query)}

    def relations(self, schema: str = "public") -> set[str]:
        query = (
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s"
        )
        return {r[0] for r in self.query(query, (schema,))}

    def everything_of(self, run_id: str) -> set[str]:
        mine = f"rc_{run_id}_"
        names = self.schemas() | self.databases() | self.roles() | self.relations()
        return {n for n in names if n.startswith(mine)}

    def drop_runs(self) -> None:
        """Drop every object named with a tracked run id, with plain SQL (not the backend)."""
        for statement in self.finally_run:
            with contextlib.suppress(psycopg.Error):
                self.execute(statement)
        for run_id in sorted(self.run_ids):
            mine = f"rc_{run_id}_"
            with self.connect() as conn:
                for (db,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (mine,)
                ).fetchall():
                    ident = sql.Identifier(db)
                    conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                for (schema,) in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (mine,)
                ).fetchall():
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )
                for schema, rel in conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE starts_with(c.relname, %s) AND c.relkind IN ('r', 'v', 'S')",
                    (mine,),
                ).fetchall():
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(
                            sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                                sql.Identifier(schema, rel)
                            )
                        )
                for schema, typ in conn.execute(
                    "SELECT n.nspname, t.typname FROM pg_type t"
                    " JOIN pg_namespace n ON n.oid = t.typnamespace"
                    " WHERE starts_with(t.typname, %s) AND t.typtype IN ('e', 'd')",
                    (mine,),
                ).fetchall():
                    conn.execute(
                        sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(
                            sql.Identifier(schema, typ)
                        )
                    )
                roles = conn.execute(
                    "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (mine,)
                ).fetchall()
                query = "SELECT datname FROM pg_database WHERE datallowconn"
                dbs = [d for (d,) in conn.execute(query)]
            for (role,) in roles:
                for db in dbs:
                    with contextlib.suppress(psycopg.Error), self.connect(db) as other:
                        other.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                self.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch, registry_path: str) -> Iterator[Server]:
    """The server; whatever this test's runs create on it is dropped at teardown."""
    server = Server(require("postgres"))
    for cls in KINDS:
        original = cls.acquire

        def tracked(self: Any, name: str, _original: Any = original) -> Any:
            server.track(name)
            return _original(self, name)

        monkeypatch.setattr(cls, "acquire", tracked)
    try:
        yield server
    finally:
        server.drop_runs()


def fresh_name(seq: int = 1) -> str:
    """A reclaim name of a run of its own (for backends used without a Fixture)."""
    return make_name(uuid.uuid4().hex[:8], seq)


# --- the conformance kit over every kind ---------------------------------------------------


def _make_prefixed_table(conn: psycopg.Connection[Any], prefix: str) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(f"{prefix}items")))


@pytest.fixture
def shared_table(pg: Server) -> Iterator[str]:
    """A table of the shared database that is not reclaim's (for truncation)."""
    name = f"shared_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, v text)")
    pg.execute(create.format(sql.Identifier(name)))
    try:
        yield name
    finally:
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_kinds_load_through_entry_points() -> None:
    for cls in KINDS:
        assert load_backend(cls.kind) is cls
        assert cls.url_schemes == ("postgresql", "postgres")
        assert cls.secret_fields == frozenset({"password"})


# --- PostgresSchema ------------------------------------------------------------------------


def test_schema_setup_runs_inside_it_and_is_committed(pg: Server) -> None:
    seen: list[str] = []

    def migrate(conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SHOW search_path").fetchone()
        assert row is not None
        seen.append(row[0])
        conn.execute("CREATE TABLE accounts (id serial PRIMARY KEY, owner text)")
        conn.execute("INSERT INTO accounts (owner) VALUES ('sarah')")

    with reclaim.Fixture("schema-setup") as fx:
        schema = fx.acquire(PostgresSchema(pg.dsn, setup=migrate))
        assert seen == [schema]
        tables = pg.query("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        assert tables == [("accounts",)]
        with pg.connect() as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            assert conn.execute("SELECT owner FROM accounts").fetchall() == [("sarah",)]
        assert schema in pg.schemas()
    assert schema not in pg.schemas()


def test_schema_setup_that_fails_leaves_nothing(pg: Server) -> None:
    def broken(conn: psycopg.Connection[Any]) -> None:
        conn.execute("CREATE TABLE half (id int)")
        raise RuntimeError("migration 7 failed")

    before = pg.schemas()
    with pytest.raises(AcquireError, match="migration 7") as info, reclaim.Fixture("f") as fx:
        fx.acquire(PostgresSchema(pg.dsn, setup=broken))
    assert info.value.kind == "postgres.schema"
    assert pg.schemas() == before


def test_schema_drop_blocked_by_a_lock_fails_clearly(
    pg: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection left inside a transaction holds a lock: release fails with a message that
    says so (after lock_timeout), instead of hanging the teardown forever."""
    from reclaim.backends import postgres  # noqa: PLC0415  (the module itself, to patch a constant)

    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 300)
    dsn = f"{pg.dsn}?application_name=locktest{uuid.uuid4().hex[:6]}"  # its own cached conn
    schema, record = PostgresSchema(dsn).acquire(fresh_name())
    pg.track(schema)
    blocker = pg.connect()
    try:
        blocker.autocommit = False
        blocker.execute(sql.SQL("CREATE TABLE {}.t (id int)").format(sql.Identifier(schema)))
        with pytest.raises(ReleaseError, match="holds a lock") as info:
            PostgresSchema.release(record)
        assert "commit or close it" in str(info.value)
        assert PostgresSchema.exists(record)
        blocker.commit()
    finally:
        blocker.close()
    PostgresSchema.release(record)
    assert not PostgresSchema.exists(record)


def test_schema_async_fixture_acquires_concurrently(pg: Server) -> None:
    """Four acquisitions at once run in worker threads, each on a connection of its own."""

    async def main() -> list[str]:
        async with reclaim.Fixture("async") as fx:
            backend = PostgresSchema(pg.dsn)
            schemas = await asyncio.gather(*(fx.aacquire(backend) for _ in range(4)))
            assert set(schemas) <= pg.schemas()
        return list(schemas)

    schemas = asyncio.run(main())
    assert len(set(schemas)) == 4
    assert not set(schemas) & pg.schemas()


def test_a_broken_cached_connection_is_replaced(pg: Server) -> None:
    """The proxy cuts the cached connection (as a server restart would); the next use opens a
    fresh one instead of failing."""
    with pg.proxy() as proxy:
        backend = PostgresSchema(with_port(pg.dsn, proxy.port))
        first, record = backend.acquire(fresh_name(1))
        pg.track(first)
        proxy.stop()
        proxy.start()
        second, record2 = backend.acquire(fresh_name(2))
        pg.track(second)
        PostgresSchema.release(record)
        PostgresSchema.release(record2)
    assert not {first, second} & pg.schemas()


# --- PostgresDatabase ----------------------------------------------------------------------


def _migrate(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE plans (id serial PRIMARY KEY, name text NOT NULL)")
    conn.execute("INSERT INTO plans (name) VALUES ('free'), ('pro')")


def test_database_value_is_a_dsn_in_the_form_given(pg: Server) -> None:
    kv = " ".join(f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(pg.dsn).items())
    with reclaim.Fixture("forms") as fx:
        as_url = fx.acquire(PostgresDatabase(pg.dsn))
        as_kv = fx.acquire(PostgresDatabase(kv))
        assert as_url.startswith(("postgresql://", "postgres://"))
        assert "=" in as_kv
        assert "://" not in as_kv
        for dsn in (as_url, as_kv):
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT current_database()").fetchone()
                assert row is not None
                assert row[0] in pg.databases()
    assert not {psycopg.conninfo.conninfo_to_dict(d)["dbname"] for d in (as_url, as_kv)} & (
        pg.databases()
    )


def test_database_cloned_from_a_template_that_is_a_resource(pg: Server) -> None:
    with reclaim.Fixture("session") as session:
        template = session.acquire(PostgresDatabase(pg.dsn, setup=_migrate))
        template_name = psycopg.conninfo.conninfo_to_dict(template)["dbname"]
        with reclaim.Fixture("test") as fx:
            by_dsn = fx.acquire(PostgresDatabase(pg.dsn, template=template))
            by_name = fx.acquire(
                PostgresDatabase(pg.dsn, template=str(template_name), strategy="file_copy")
            )
            for dsn in (by_dsn, by_name):
                with psycopg.connect(dsn) as conn:
                    rows = conn.execute("SELECT name FROM plans ORDER BY id").fetchall()
                assert rows == [("free",), ("pro",)]
                with psycopg.connect(dsn) as conn:
                    conn.execute("INSERT INTO plans (name) VALUES ('mine')")
            with psycopg.connect(template) as conn:
                assert conn.execute("SELECT count(*) FROM plans").fetchone() == (2,)
        assert template_name in pg.databases()
    assert template_name not in pg.databases()


def test_database_template_busy_waits_then_names_the_sessions(pg: Server) -> None:
    with reclaim.Fixture("session") as session:
        template = session.acquire(PostgresDatabase(pg.dsn, setup=_migrate))
        # Our own cached connection to the template does not count: reclaim closes it.
        session.acquire(PostgresSchema(template))
        clone = session.acquire(PostgresDatabase(pg.dsn, template=template))
        assert clone
        holder = psycopg.connect(template, application_name="held-by-test")
        try:
            with pytest.raises(AcquireError) as info, reclaim.Fixture("test") as fx:
                fx.acquire(PostgresDatabase(pg.dsn, template=template, template_wait=0.3))
            message = str(info.value)
            assert f"pid {holder.info.backend_pid}" in message
            assert "held-by-test" in message
            assert "other sessions are connected to the template" in message
        finally:
            holder.close()
        with reclaim.Fixture("test") as fx:
            assert fx.acquire(PostgresDatabase(pg.dsn, template=template, template_wait=5))


def test_database_template_that_does_not_exist(pg: Server) -> None:
    missing = "there is no database 'no_such_template_db'"
    with pytest.raises(AcquireError, match=missing), reclaim.Fixture("t") as fx:
        fx.acquire(PostgresDatabase(pg.dsn, template="no_such_template_db"))


KILLED_TEMPLATE = """
import json, sys, time
import psycopg
import reclaim
from reclaim.backends.postgres import PostgresDatabase
from reclaim._run import current_run

def migrate(conn):
    conn.execute("CREATE TABLE plans (id int)")

with reclaim.Fixture("session") as session:
    template = session.acquire(PostgresDatabase(sys.argv[1], setup=migrate))
    clone = session.acquire(PostgresDatabase(sys.argv[1], template=template))
    print(json.dumps({"run": current_run().id, "template": template, "clone": clone}), flush=True)
    time.sleep(600)
"""


def test_a_killed_runs_template_does_not_block_the_next_run(
    pg: Server, spawn: Spawner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest-postgresql's fixed ``tests_tmpl`` makes the next run fail with DuplicateDatabase
    after a kill. Here the killed run's template stays (no watchdog), the next run makes its own
    and clones it, and ``reclaim sweep`` removes the old one."""
    monkeypatch.setenv("RECLAIM_WATCHDOG", "0")
    proc, held = spawn(KILLED_TEMPLATE, pg.dsn)
    pg.run_ids.add(held["run"])
    kill(proc)
    old = {psycopg.conninfo.conninfo_to_dict(held[k])["dbname"] for k in ("template", "clone")}
    assert old <= pg.databases()
    with reclaim.Fixture("next-run") as session:
        template = session.acquire(PostgresDatabase(pg.dsn, setup=_migrate))
        clone = session.acquire(PostgresDatabase(pg.dsn, template=template))
        with psycopg.connect(clone) as conn:
            assert conn.execute("SELECT count(*) FROM plans").fetchone() == (2,)
    swept = json.loads(reclaim_cli("sweep", "--grace", "0", "--json").stdout)
    assert swept["released"] == 2
    assert not old & pg.databases()


def test_database_release_unmarks_a_template_database(pg: Server) -> None:
    name = fresh_name()
    value, record = PostgresDatabase(pg.dsn).acquire(name)
    pg.track(name)
    pg.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(name)))
    with psycopg.connect(value):  # a session in it: FORCE ends it
        PostgresDatabase.release(record)
    assert name not in pg.databases()


# --- PostgresTables ------------------------------------------------------------------------


def test_tables_drops_only_what_carries_its_prefix(pg: Server) -> None:
    run = uuid.uuid4().hex[:8]
    ours, neighbour = make_name(run, 1), make_name(run, 10)  # "..._1_" must not match "..._10_"
    pg.run_ids.add(run)
    strangers = [f"{neighbour}_users", ours, f"x{ours}_users"]
    for table in strangers:
        pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(table)))
        pg.finally_run.append(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    prefix, record = PostgresTables(pg.dsn).acquire(ours)
    assert prefix == f"{ours}_"
    with pg.connect() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY)").format(
                sql.Identifier(f"{prefix}users")
            )
        )
        conn.execute(
            sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                sql.Identifier(f"{prefix}v"), sql.Identifier(f"{prefix}users")
            )
        )
        conn.execute(
            sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT 1").format(sql.Identifier(f"{prefix}mv"))
        )
        conn.execute(sql.SQL("CREATE SEQUENCE {}").format(sql.Identifier(f"{prefix}seq")))
        conn.execute(
            sql.SQL("CREATE TYPE {} AS ENUM ('happy')").format(sql.Identifier(f"{prefix}mood"))
        )
        conn.execute(
            sql.SQL("CREATE DOMAIN {} AS int CHECK (VALUE > 0)").format(
                sql.Identifier(f"{prefix}posint")
            )
        )
    assert PostgresTables.exists(record)
    PostgresTables.release(record)
    assert not PostgresTables.exists(record)
    left = pg.relations()
    assert not {r for r in left if r.startswith(prefix)}
    assert set(strangers) <= left
    types = {r[0] for r in pg.query(r"SELECT typname FROM pg_type WHERE typname ~ '^rc_'")}
    assert f"{prefix}mood" not in types
    assert f"{prefix}posint" not in types


def test_tables_truncates_listed_tables(pg: Server, shared_table: str) -> None:
    other = f"{shared_table}_other"
    pg.execute(sql.SQL("CREATE TABLE {} (id serial, v text)").format(sql.Identifier(other)))
    try:
        for table in (shared_table, other):
            pg.execute(
                sql.SQL("INSERT INTO {} (v) VALUES ('seed'), ('seed')").format(
                    sql.Identifier(table)
                )
            )
        with reclaim.Fixture("truncate") as fx:
            fx.acquire(PostgresTables(pg.dsn, truncate=[f"public.{shared_table}", "no_such_table"]))
        assert pg.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(other))) == [(2,)]
        assert pg.query(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(shared_table))
        ) == [(0,)]
        pg.execute(sql.SQL("INSERT INTO {} (v) VALUES ('x')").format(sql.Identifier(shared_table)))
        assert pg.query(sql.SQL("SELECT id FROM {}").format(sql.Identifier(shared_table))) == [
            (1,)
        ], "RESTART IDENTITY"
    finally:
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(other)))


def test_tables_truncate_refused_by_a_foreign_key_unless_cascade(
    pg: Server, shared_table: str
) -> None:
    child = f"{shared_table}_child"
    pg.execute(
        sql.SQL("CREATE TABLE {} (parent int REFERENCES {} (id))").format(
            sql.Identifier(child), sql.Identifier(shared_table)
        )
    )
    try:
        pg.execute(sql.SQL("INSERT INTO {} (v) VALUES ('p')").format(sql.Identifier(shared_table)))
        pg.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(child)))
        _, record = PostgresTables(pg.dsn, truncate=[shared_table]).acquire(fresh_name())
        with pytest.raises(ReleaseError, match=child):
            PostgresTables.release(record)
        _, record = PostgresTables(pg.dsn, truncate=[shared_table], cascade=True).acquire(
            fresh_name()
        )
        PostgresTables.release(record)
        assert pg.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(child))) == [(0,)]
    finally:
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(child)))


def test_tables_truncate_names_with_dots_are_not_confused(pg: Server) -> None:
    """("x.y", "t") and ("x", "y.t") are two different tables; only the one that exists is
    truncated, and the other is skipped."""
    base = fresh_name()
    pg.track(base)
    dotted = f"{base}.y"
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(dotted)))
    pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(dotted, "t")))
    pg.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(dotted, "t")))
    backend = PostgresTables(pg.dsn, truncate=[(dotted, "t"), (base, "y.t")])
    _, record = backend.acquire(fresh_name())
    PostgresTables.release(record)
    assert pg.query(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(dotted, "t"))) == [
        (0,)
    ]


def test_tables_in_another_schema(pg: Server) -> None:
    with reclaim.Fixture("own-schema") as fx:
        schema = fx.acquire(PostgresSchema(pg.dsn))
        with reclaim.Fixture("tables") as inner:
            prefix = inner.acquire(
                PostgresTables(pg.dsn, schema=schema, setup=_make_prefixed_table)
            )
            assert f"{prefix}items" in pg.relations(schema)
        assert not pg.relations(schema)
        assert schema in pg.schemas()


# --- PostgresRole --------------------------------------------------------------------------


def _verifier_matches(stored: str, password: str) -> bool:
    """Check a SCRAM-SHA-256 verifier the server stores against a password (RFC 5802)."""
    method, rest = stored.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, _server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


def test_role_logs_in_with_its_password_then_is_gone(pg: Server) -> None:
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(reader)))
    try:
        with reclaim.Fixture("role") as fx:
            login = fx.acquire(PostgresRole(pg.secret_dsn, member_of=[reader], createdb=True))
            assert isinstance(login, RoleLogin)
            assert login.password not in repr(login)
            assert str(login) == login.dsn
            with psycopg.connect(login.dsn) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (login.role,)
                assert conn.execute("SELECT pg_has_role(%s, 'MEMBER')", (reader,)).fetchone() == (
                    True,
                )
            (stored,) = pg.query(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login.role,)
            )[0]
            assert _verifier_matches(stored, login.password)
            assert not _verifier_matches(stored, login.password + "x")
            # What it owns: a database, a schema with a table, a grant in another database.
            pg.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(pg.dsn)["dbname"])),
                    sql.Identifier(login.role),
                )
            )
            with psycopg.connect(login.dsn, autocommit=True) as conn:
                for command, suffix in (("CREATE DATABASE {}", "_db"), ("CREATE SCHEMA {}", "_s")):
                    conn.execute(sql.SQL(command).format(sql.Identifier(login.role + suffix)))
                conn.execute(
                    sql.SQL("CREATE TABLE {}.t (id int)").format(sql.Identifier(f"{login.role}_s"))
                )
            with psycopg.connect(login.dsn.rsplit("/", 1)[0] + f"/{login.role}_db") as conn:
                conn.execute("CREATE TABLE owned_elsewhere (id int)")
            still_open = psycopg.connect(login.dsn)
        assert login.role not in pg.roles()
        assert f"{login.role}_db" not in pg.databases()
        assert f"{login.role}_s" not in pg.schemas()
        with pytest.raises(psycopg.OperationalError):
            still_open.execute("SELECT 1")  # its session was ended
        still_open.close()
    finally:
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


# --- hostile names -------------------------------------------------------------------------


HOSTILE = [
    'x"; DROP TABLE {canary}; --',
    "x'; DROP TABLE {canary}; --",
    "x$$; DROP TABLE {canary}; $$",
    'rc_00000000_a_1" CASCADE; DROP TABLE {canary}; --',
]


@pytest.fixture
def canary(pg: Server) -> Iterator[str]:
    name = f"canary_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def _canary_alive(pg: Server, canary: str) -> bool:
    return bool(pg.query("SELECT 1 FROM pg_tables WHERE tablename = %s", (canary,)))


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_names_inject_nothing(pg: Server, canary: str, template: str) -> None:
    hostile = template.format(canary=canary)
    base = {"dsn": psycopg.conninfo.make_conninfo(pg.dsn), "password": None}
    # Records with hostile names (a forged or damaged registry): refused, nothing is sent.
    tables = {**base, "name": hostile, "schema": hostile, "truncate": [[hostile, hostile]]}
    records: list[tuple[type[Backend[Any]], Record]] = [
        (PostgresSchema, {**base, "name": hostile}),
        (PostgresDatabase, {**base, "name": hostile}),
        (PostgresRole, {**base, "name": hostile}),
        (PostgresTables, {**tables, "prefix": f"{hostile}_"}),
    ]
    for cls, record in records:
        with pytest.raises(ForeignNameError, match="refused"):
            cls.release(record)
        with pytest.raises(ForeignNameError, match="refused"):
            cls.exists(record)
    # Hostile arguments of the backends.
    with reclaim.Fixture("hostile") as fx:
        fx.acquire(PostgresTables(pg.dsn, schema=hostile, truncate=[hostile, (hostile, hostile)]))
    with pytest.raises(AcquireError, match="does not exist"), reclaim.Fixture("h") as fx:
        fx.acquire(PostgresRole(pg.dsn, member_of=[hostile]))
    with pytest.raises(AcquireError, match="there is no database"), reclaim.Fixture("h") as fx:
        fx.acquire(PostgresDatabase(pg.dsn, template=hostile))
    assert _canary_alive(pg, canary)


def test_invalid_arguments_are_refused_before_anything_is_created(pg: Server) -> None:
    with pytest.raises(ValueError, match="strategy"):
        PostgresDatabase(pg.dsn, strategy="copy; DROP")
    with pytest.raises(ValueError, match="not a valid PostgreSQL connection string") as info:
        PostgresSchema(f"host=x password={SECRET} =broken")
    assert SECRET not in str(info.value)
    with pytest.raises(TypeError, match="list of table names"):
        PostgresTables(pg.dsn, truncate="users")
    for cls in KINDS:
        with pytest.raises(ValueError, match="not a name reclaim makes"):
            cls(pg.dsn).adapt_name("rc_" + "a" * 70)
        with pytest.raises(ValueError, match="not a name reclaim makes"):
            cls(pg.dsn).adapt_name("public")
        name = fresh_name()
        assert cls(pg.dsn).adapt_name(name) == name


def test_names_fit_postgres_identifiers() -> None:
    """The 63-byte limit lives in each kind's NameStyle; a table prefix leaves room for the
    table's own part."""
    for cls in (PostgresSchema, PostgresDatabase, PostgresRole):
        assert cls.name_style.max_length == 63
    assert PostgresTables.name_style.max_length == 63 - 1 - 16
    assert PostgresTables.prefix_separator == "_"
    longest = make_name("0" * 8, 10**20 - 1, now=36**8 - 1)
    assert len(longest) + 1 + 16 <= 63
    assert all(cls.name_style.parse(longest) for cls in KINDS)


# --- only our own (I8): records naming what reclaim did not create --------------------------


def test_a_record_naming_a_users_schema_is_refused(pg: Server) -> None:
    """The backend's own drop runs ``DROP SCHEMA ... CASCADE`` on whatever name it is given (a
    record naming ``public`` dropped it): the guard in front of release refuses such a record,
    and the schema and its table are still there. Proven on a copy, never on ``public``."""
    copy = f"public_copy_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(copy)))
    pg.finally_run.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(copy)))
    pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(copy, "users")))
    record = {**PostgresSchema(pg.dsn).plan(fresh_name()), "name": copy}
    with pytest.raises(ForeignNameError, match="refused") as info:
        PostgresSchema.release(dict(record))
    assert "not a whole reclaim name" in str(info.value)
    with pytest.raises(ForeignNameError):
        PostgresSchema.exists(dict(record))
    assert copy in pg.schemas()
    assert "users" in pg.relations(copy)
    # Without the guard, the backend's own code drops it: what the guard is there for.
    PostgresSchema.release.__wrapped__(PostgresSchema, dict(record))  # type: ignore[attr-defined]
    assert copy not in pg.schemas()


def test_a_tables_record_owns_exactly_its_prefix(pg: Server) -> None:
    """The record's prefix is the name and "_", exactly: a record whose prefix is a user's
    (``myapp_``), empty, or not its name's is refused, and the user's tables stay."""
    mine = f"myapp_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(f"{mine}_orders")))
    pg.finally_run.append(
        sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"{mine}_orders"))
    )
    name = fresh_name()
    _, record = PostgresTables(pg.dsn).acquire(name)
    assert record["prefix"] == f"{name}_"
    assert PostgresTables.owned_prefix(record) == f"{name}_"
    for prefix in (f"{mine}_", "", name, f"{name}_x", None, f"{fresh_name()}_"):
        with pytest.raises(ForeignNameError, match="prefix"):
            PostgresTables.release({**record, "prefix": prefix})
        with pytest.raises(ForeignNameError, match="prefix"):
            PostgresTables.exists({**record, "prefix": prefix})
    with pytest.raises(ForeignNameError, match="name"):
        PostgresTables.release({**record, "name": mine, "prefix": f"{mine}_"})
    assert f"{mine}_orders" in pg.relations()
    PostgresTables.release(record)


def test_a_database_record_naming_a_foreign_template_is_refused(pg: Server) -> None:
    """Release never touches the template, but a record that names one names a reclaim
    resource there, or it is refused (``template1``, a user's database)."""
    name = fresh_name()
    record = PostgresDatabase(pg.dsn).plan(name)
    assert "template" not in record
    for foreign in ("template1", "postgres", f"{name}_backup"):
        with pytest.raises(ForeignNameError, match="template"):
            PostgresDatabase.release({**record, "template": foreign})
    for ours in (None, fresh_name(2)):
        PostgresDatabase.release({**record, "template": ours})  # nothing there: a no-op
    with pytest.raises(ForeignNameError, match="name"):
        PostgresDatabase.release({**record, "name": "template1"})
    assert {"template1", "postgres"} <= pg.databases()


# --- leftovers: only reclaim's names -------------------------------------------------------


def test_list_leftovers_finds_only_reclaim_names(pg: Server) -> None:
    run = uuid.uuid4().hex[:8]
    pg.run_ids.add(run)
    ours = make_name(run, 1)
    lookalikes = [
        f"x{ours}",  # something before
        f"{ours}x",  # something after
        f"{ours}_backup",
        f"rc_A{run[1:]}_zz_1",  # not lower-case hex (a quoted identifier keeps the case)
        f"rc_{run}_zz",  # no sequence number
        f"rcx{run}_zz_1",
    ]
    for name in [ours, *lookalikes]:
        ident = sql.Identifier(name)
        pg.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        pg.execute(sql.SQL("CREATE ROLE {}").format(ident))
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(ours)))
    pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{ours}_backup")))
    for table in (f"{ours}_items", f"{ours}_", f"x{ours}_items", ours):
        pg.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(table)))
    try:
        for cls in (PostgresSchema, PostgresDatabase, PostgresRole, PostgresTables):
            found = [lo for lo in cls.list_leftovers(pg.secret_dsn) if lo.run_id == run]
            assert [lo.record["name"] for lo in found] == [ours], cls.kind
            (leftover,) = found
            parsed = parse_name(ours)
            assert parsed is not None
            assert (leftover.run_id, leftover.created_at) == (parsed.run_id, parsed.created_at)
            assert leftover.record["password"] == SECRET
            assert check_leftover(cls, leftover) == parsed
            assert cls.exists(leftover.record)
            cls.release(json.loads(json.dumps(leftover.record)))
            assert not cls.exists(leftover.record)
        assert set(lookalikes) <= pg.schemas()
        assert set(lookalikes) <= pg.roles()
        assert f"{ours}_backup" in pg.databases()
        assert {f"x{ours}_items", ours} <= pg.relations()
        assert not {f"{ours}_items", f"{ours}_"} & pg.relations()
    finally:
        for name in lookalikes:
            pg.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(name)))
            pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        for table in (f"x{ours}_items", ours):
            pg.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


# --- secrets (crashes and a server that goes down: tests/test_crash_kit.py) ------------------


def test_secrets_never_in_errors_nor_records_shown(pg: Server) -> None:
    name = fresh_name()
    backend = PostgresSchema(pg.secret_dsn)
    record = backend.plan(name)
    assert record["password"] == SECRET
    assert SECRET not in record["dsn"]
    assert SECRET not in PostgresSchema.describe(record)
    assert SECRET not in repr(backend)
    backend.acquire(name)
    pg.track(name)
    with pytest.raises(AcquireError) as info, reclaim.Fixture("dup") as fx:
        fx.acquire(_Fixed(pg.secret_dsn, name))  # already exists: CREATE SCHEMA fails
    assert "already exists" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in str(info.value.__cause__)
    PostgresSchema.release(record)


class _Fixed(PostgresSchema):
    """A schema backend that always proposes one name (to provoke a duplicate)."""

    def __init__(self, dsn: str, name: str) -> None:
        super().__init__(dsn)
        self.fixed = name

    def adapt_name(self, proposed: str) -> str:
        return self.fixed


def test_password_from_the_environment_is_captured_secretly(
    pg: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    record = PostgresSchema(pg.dsn).plan(fresh_name())
    assert record["password"] == SECRET
    assert SECRET not in record["dsn"]


def test_module_imports_without_psycopg_and_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from reclaim.backends.postgres import PostgresSchema\n"
        "try:\n"
        "    PostgresSchema('postgresql://localhost/x')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.startswith("MissingExtraError")
    assert "pip install 'reclaim[postgres]'" in out


# --- an acquire that fails: what it leaves -------------------------------------------------


def _tables_with_setup(dsn: str) -> PostgresTables:
    return PostgresTables(dsn, setup=_make_prefixed_table)


#: Each kind in the form that talks to the server in ``acquire`` (tables only with a set-up).
CONNECTING: dict[str, Callable[[str], Backend[Any]]] = {
    "schema": PostgresSchema,
    "schema-setup": lambda dsn: PostgresSchema(dsn, setup=lambda conn: None),
    "database": PostgresDatabase,
    "tables-setup": _tables_with_setup,
    "role": PostgresRole,
}


def _assert_not_created(
    make: Callable[[str], Backend[Any]], dsn: str, registry_path: str, cause: str
) -> None:
    """Through a Fixture: an AcquireError naming ``cause``, no password, no entry left; the
    backend's own acquire says NotCreatedError."""
    with pytest.raises(AcquireError) as info, reclaim.Fixture("down") as fx:
        fx.acquire(make(dsn))
    assert not isinstance(info.value, ReleaseError)
    assert cause in str(info.value)
    for text in (str(info.value), str(info.value.__cause__), repr(info.value.__cause__)):
        assert SECRET not in text
    assert registry_is_empty(registry_path), "the planned entry is closed as never created"
    with pytest.raises(NotCreatedError) as own:
        make(dsn).acquire(fresh_name())
    assert cause in str(own.value)
    assert SECRET not in str(own.value)


@pytest.mark.parametrize("kind", sorted(CONNECTING))
def test_acquire_against_a_closed_port_leaves_no_entry(
    pg: Server, registry_path: str, kind: str
) -> None:
    dsn = with_port(pg.secret_dsn, closed_port())
    _assert_not_created(CONNECTING[kind], dsn, registry_path, "cannot be reached")


@pytest.mark.parametrize("kind", sorted(CONNECTING))
def test_acquire_with_a_login_the_server_refuses_leaves_no_entry(
    pg: Server, registry_path: str, kind: str
) -> None:
    """The test server trusts 127.0.0.1 (it checks no password), so the login it refuses is a
    role that does not exist; a password is in the DSN all the same, and never shown."""
    user = f"nobody_{uuid.uuid4().hex[:8]}"
    dsn = pg.secret_dsn.replace("://postgres:", f"://{user}:", 1)
    assert user in dsn
    _assert_not_created(CONNECTING[kind], dsn, registry_path, "refused the connection")
    assert user not in pg.roles()


def _pin(backend: Backend[Any], name: str) -> Backend[Any]:
    """``backend`` proposing ``name`` to the Fixture, as a name collision would."""
    backend.adapt_name = lambda proposed: name  # type: ignore[method-assign]
    return backend


@pytest.mark.parametrize("kind", ["schema", "schema-setup", "database", "role"])
def test_acquire_of_a_name_that_exists_leaves_the_stranger_alone(
    pg: Server, registry_path: str, kind: str
) -> None:
    """CREATE fails with "already exists": the object is not ours, so the Fixture must not
    release it (it would have dropped it, its tables and rows with it)."""
    name = fresh_name()
    pg.track(name)
    ident = sql.Identifier(name)
    if kind.startswith("schema"):
        pg.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        pg.execute(sql.SQL("CREATE TABLE {}.precious (id int)").format(ident))
        there = pg.schemas
    elif kind == "database":
        pg.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        there = pg.databases
    else:
        pg.execute(sql.SQL("CREATE ROLE {}").format(ident))
        there = pg.roles
    with pytest.raises(AcquireError, match="already exists") as info, reclaim.Fixture("dup") as fx:
        fx.acquire(_pin(CONNECTING[kind](pg.secret_dsn), name))
    assert SECRET not in str(info.value)
    assert name in there(), "the stranger's object was left alone"
    assert registry_is_empty(registry_path)
    with pytest.raises(NotCreatedError):
        CONNECTING[kind](pg.secret_dsn).acquire(name)
    if kind.startswith("schema"):
        assert "precious" in pg.relations(name)


def test_acquire_refused_for_lack_of_a_privilege_leaves_no_entry(
    pg: Server, registry_path: str
) -> None:
    """A login without CREATEDB: "permission denied to create database", nothing made."""
    user = f"reclaim_t_{uuid.uuid4().hex[:8]}"
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(user)))
    pg.finally_run.append(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))
    dsn = pg.secret_dsn.replace("://postgres:", f"://{user}:", 1)
    before = pg.databases()
    with pytest.raises(AcquireError, match="permission denied") as info, reclaim.Fixture("f") as fx:
        fx.acquire(PostgresDatabase(dsn))
    assert SECRET not in str(info.value)
    assert registry_is_empty(registry_path)
    with pytest.raises(NotCreatedError, match="permission denied"):
        PostgresDatabase(dsn).acquire(fresh_name())
    assert pg.databases() == before


def test_a_refused_grant_undoes_the_role_and_leaves_no_entry(
    pg: Server, registry_path: str
) -> None:
    """CREATE ROLE and its GRANT are one transaction: a group that does not exist refuses both."""
    backend = PostgresRole(pg.dsn, member_of=[f"no_group_{uuid.uuid4().hex[:8]}"])
    with pytest.raises(AcquireError, match="does not exist"), reclaim.Fixture("f") as fx:
        fx.acquire(backend)
    assert registry_is_empty(registry_path)
    name = fresh_name()
    with pytest.raises(NotCreatedError):
        backend.acquire(name)
    assert name not in pg.roles()


def test_a_create_that_may_have_run_stays_an_acquire_error(pg: Server) -> None:
    """The cached connection was cut, the retry could not connect: the CREATE may have reached
    the server on the first try, so the error is a plain AcquireError (the entry is released)."""
    with pg.proxy() as proxy:
        backend = PostgresSchema(with_port(pg.secret_dsn, proxy.port))
        first, record = backend.acquire(fresh_name(1))  # caches a connection through the proxy
        pg.track(first)
        proxy.stop()  # cuts it, and refuses the retry's new connection
        name = fresh_name(2)
        pg.track(name)
        with pytest.raises(AcquireError, match="cannot be reached") as info:
            backend.acquire(name)
        assert not isinstance(info.value, NotCreatedError)
        assert SECRET not in str(info.value)
        proxy.start()
        PostgresSchema.release(record)

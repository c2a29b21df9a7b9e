"""Adversaries of the PostgreSQL kinds: schemas, databases, roles and prefixed tables on the real
server, made with plain SQL (never through reclaim), and records naming what is not reclaim's:
the ``public`` schema, the ``postgres`` and ``template1`` databases, the ``postgres`` role, a
user's role, schema, database and table prefix."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from _services import require
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import NAMES, Record
from reclaim.backends.postgres import (
    PostgresDatabase,
    PostgresRole,
    PostgresSchema,
    PostgresTables,
)

#: A valid reclaim name of nobody's run: what a record with a foreign identity field carries.
GOOD = "rc_0badf00d_t0a1b2_1"

#: What the prefixed-tables adversary appends to a name to make a table under its prefix.
TABLE = "_items"


class _Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, query: Any, params: Any = None, *, dbname: str | None = None) -> list[Any]:
        dsn = (
            self.url if dbname is None else psycopg.conninfo.make_conninfo(self.url, dbname=dbname)
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def do(self, query: Any) -> None:
        self.run(query)

    def has(self, catalog: str, column: str, name: str) -> bool:
        query = sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(
            sql.Identifier(catalog), sql.Identifier(column)
        )
        return bool(self.run(query, (name,)))

    def quietly(self, query: Any) -> Callable[[], None]:
        def run() -> None:
            with contextlib.suppress(psycopg.Error):
                self.run(query)

        return run


def _fits(name: str) -> bool:
    return len(name.encode()) <= 63 and "\x00" not in name


def _server(request: pytest.FixtureRequest) -> _Server:
    return _Server(require("postgres"))


def _record(backend: Any, **fields: Any) -> Record:
    return {**backend.plan(GOOD), **fields}


def schema(request: pytest.FixtureRequest) -> Adversary:
    pg = _server(request)
    copy = f"public_copy_{secrets.token_hex(4)}"
    backup = f"{GOOD}_backup"
    base = PostgresSchema(pg.url)

    def make(name: str) -> Callable[[], None]:
        def run() -> None:
            pg.run(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            pg.run(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name, "keep")))

        return run

    def drop(name: str) -> Any:
        return sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))

    return Adversary(
        kind="postgres.schema",
        leftovers_url=pg.url,
        create=lambda name: pg.do(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name))),
        present=lambda name: pg.has("pg_namespace", "nspname", name),
        remove=lambda name: pg.do(drop(name)),
        valid=_fits,
        foreign=[
            Foreign(
                "the public schema",
                _record(base, name="public"),
                present=lambda: pg.has("pg_namespace", "nspname", "public"),
            ),
            Foreign(
                "a user's schema (a copy of public)",
                _record(base, name=copy),
                present=lambda: pg.has("pg_namespace", "nspname", copy),
                create=make(copy),
                remove=pg.quietly(drop(copy)),
            ),
            Foreign(
                "a user's schema whose name only contains a reclaim name",
                _record(base, name=backup),
                present=lambda: pg.has("pg_namespace", "nspname", backup),
                create=make(backup),
                remove=pg.quietly(drop(backup)),
            ),
        ],
    )


def database(request: pytest.FixtureRequest) -> Adversary:
    pg = _server(request)
    app = f"app_{secrets.token_hex(4)}"
    base = PostgresDatabase(pg.url)

    def drop(name: str) -> Any:
        return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))

    def has(name: str) -> Callable[[], bool]:
        return lambda: pg.has("pg_database", "datname", name)

    return Adversary(
        kind="postgres.database",
        leftovers_url=pg.url,
        create=lambda name: pg.do(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))),
        present=lambda name: pg.has("pg_database", "datname", name),
        remove=lambda name: pg.do(drop(name)),
        valid=_fits,
        foreign=[
            Foreign(
                "the postgres database", _record(base, name="postgres"), present=has("postgres")
            ),
            Foreign(
                "the template1 database", _record(base, name="template1"), present=has("template1")
            ),
            Foreign(
                "a user's database",
                _record(base, name=app),
                present=has(app),
                create=lambda: pg.do(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(app))),
                remove=pg.quietly(drop(app)),
            ),
            Foreign(
                "a reclaim name cloned from template1 (the template is not reclaim's)",
                _record(base, template="template1"),
                present=has("template1"),
            ),
            Foreign(
                "a reclaim name cloned from a user's database",
                _record(base, template=app),
                present=has(app),
            ),
        ],
    )


def role(request: pytest.FixtureRequest) -> Adversary:
    pg = _server(request)
    user = f"app_user_{secrets.token_hex(4)}"
    base = PostgresRole(pg.url)

    def drop(name: str) -> Any:
        return sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))

    return Adversary(
        kind="postgres.role",
        leftovers_url=pg.url,
        create=lambda name: pg.do(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name))),
        present=lambda name: pg.has("pg_roles", "rolname", name),
        remove=lambda name: pg.do(drop(name)),
        valid=_fits,
        foreign=[
            Foreign(
                "the postgres superuser",
                _record(base, name="postgres"),
                present=lambda: pg.has("pg_roles", "rolname", "postgres"),
            ),
            Foreign(
                "a user's role",
                _record(base, name=user),
                present=lambda: pg.has("pg_roles", "rolname", user),
                create=lambda: pg.do(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user))),
                remove=pg.quietly(drop(user)),
            ),
        ],
    )


#: A name's parts as PostgresTables' prefix sees them (rc, run, time, sequence, then the rest).
_UNDER_A_PREFIX = re.compile(r"([^_]*_[^_]*_[^_]*_[^_]*)_.*", re.DOTALL)


def _under_a_reclaim_prefix(table: str) -> bool:
    """Is ``table`` under some reclaim name's prefix (``rc_<run>_<time>_<seq>_``)?"""
    match = _UNDER_A_PREFIX.fullmatch(table)
    return match is not None and NAMES.parse(match.group(1)) is not None


def tables(request: pytest.FixtureRequest) -> Adversary:
    """An object ``name`` is a table ``name + "_items"`` in ``public``: the exact reclaim name's
    table is under its prefix; a look-alike's is under none (look-alikes that put their table
    under the exact name's prefix, ``<exact>_backup_items``, are reclaim's and not tried)."""
    pg = _server(request)
    mine = f"myapp_{secrets.token_hex(4)}"
    user_tables = [f"{mine}_orders", f"{mine}_users"]
    base = PostgresTables(pg.url)

    def table(name: str) -> Any:
        return sql.Identifier("public", name)

    def make_user_tables() -> None:
        for t in user_tables:
            pg.run(sql.SQL("CREATE TABLE {} (id int)").format(table(t)))
            pg.run(sql.SQL("INSERT INTO {} VALUES (1)").format(table(t)))

    def user_tables_there() -> bool:
        query = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)"
        rows = pg.run(query, (user_tables,))
        return bool(rows) and rows[0][0] == len(user_tables)

    def drop_user_tables() -> None:
        for t in user_tables:
            pg.quietly(sql.SQL("DROP TABLE IF EXISTS {}").format(table(t)))()

    def has(name: str) -> bool:
        query = "SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = %s"
        return bool(pg.run(query, (name + TABLE,)))

    def users(label: str, record: Record, *, first: bool = False) -> Foreign:
        return Foreign(
            label,
            record,
            present=user_tables_there,
            create=make_user_tables if first else None,
            remove=drop_user_tables if first else None,
        )

    return Adversary(
        kind="postgres.tables",
        leftovers_url=pg.url,
        create=lambda name: pg.do(sql.SQL("CREATE TABLE {} (id int)").format(table(name + TABLE))),
        present=has,
        remove=lambda name: pg.do(sql.SQL("DROP TABLE IF EXISTS {}").format(table(name + TABLE))),
        valid=lambda name: _fits(name + TABLE) and not _under_a_reclaim_prefix(name + TABLE),
        foreign=[
            users(
                "a user's table prefix",
                _record(base, name=mine, prefix=f"{mine}_"),
                first=True,
            ),
            users("a reclaim name with a user's table prefix", _record(base, prefix=f"{mine}_")),
            users("a reclaim name with an empty prefix (every table)", _record(base, prefix="")),
            users(
                "a reclaim name with a prefix without its separator",
                _record(base, prefix=GOOD),
            ),
        ],
    )


KINDS: dict[str, Factory] = {
    "postgres.schema": schema,
    "postgres.database": database,
    "postgres.tables": tables,
    "postgres.role": role,
}

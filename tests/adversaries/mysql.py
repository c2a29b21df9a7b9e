"""Adversaries of ``mysql.database``: databases on the real MariaDB server, made with plain SQL
(never through reclaim), and records naming what is not reclaim's: ``mysql``, a user's
database, a database whose name only contains a reclaim name."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest

from _services import require
from adversaries import Adversary, Factory, Foreign
from reclaim.backends import Record
from reclaim.backends.mysql import MysqlDatabase

#: A valid reclaim name of nobody's run.
GOOD = "rc_0badf00d_t0a1b2_1"


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def database(request: pytest.FixtureRequest) -> Adversary:
    url = require("mysql")
    parts = urlsplit(url)
    app = f"app_{secrets.token_hex(4)}"
    backup = f"{GOOD}_backup"

    def run(statement: str, args: Any = None) -> list[Any]:
        with (
            pymysql.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=parts.username or "root",
                password=parts.password or "",
                autocommit=True,
                connect_timeout=10,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(statement, args)
            return list(cur.fetchall())

    def present(name: str) -> bool:
        query = "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s"
        return bool(run(query, (name,))[0][0])

    def create(name: str) -> None:
        run(f"CREATE DATABASE {_quote(name)}")
        run(f"CREATE TABLE {_quote(name)}.keep (id INT)")

    def remove(name: str) -> None:
        with contextlib.suppress(pymysql.err.MySQLError):
            run(f"DROP DATABASE IF EXISTS {_quote(name)}")

    def user_db(label: str, name: str) -> Foreign:
        return Foreign(
            label,
            record(name),
            present=lambda: present(name),
            create=lambda: create(name),
            remove=lambda: remove(name),
        )

    def record(name: str) -> Record:
        return {**MysqlDatabase(url).plan(GOOD), "name": name}

    def exists(name: str) -> Callable[[], bool]:
        return lambda: present(name)

    return Adversary(
        kind="mysql.database",
        leftovers_url=url,
        create=create,
        present=present,
        remove=remove,
        # MariaDB's database names: at most 64 characters, no trailing space, no "." or "/".
        valid=lambda name: (
            len(name) <= 64 and not name.endswith(" ") and not set("./\\") & set(name)
        ),
        foreign=[
            Foreign("the mysql database", record("mysql"), present=exists("mysql")),
            Foreign(
                "information_schema",
                record("information_schema"),
                present=exists("information_schema"),
            ),
            user_db("a user's database", app),
            user_db("a user's database whose name only contains a reclaim name", backup),
        ],
    )


KINDS: dict[str, Factory] = {"mysql.database": database}

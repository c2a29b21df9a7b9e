"""The conformance kit, ``reclaim.testing.check_backend``, over every built-in kind through one
parametrisation, each on its real server (issue 12). A case gives the backend to check and a
way to delete its resource behind reclaim's back with the server's own driver (never the
backend under test), as an operator would.

The SaaS kinds and S3 (stand-in servers and moto inside the test process) keep their calls in
their own modules for now; ``test_every_built_in_kind_is_checked_or_said_not_to_be`` keeps the
two lists complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from _services import require
from conftest import alive
from reclaim.backends import ENTRY_POINT_GROUP, Backend, Record
from reclaim.testing import check_backend

Make = Callable[[], Backend[Any]]
Delete = Callable[[Record], None]
Case = Callable[[Path], contextlib.AbstractContextManager[tuple[Make, Delete]]]

CASES: dict[str, Case] = {}


def case(*ids: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        for one in ids:
            CASES[one] = fn
        return fn

    return register


# --- local kinds -----------------------------------------------------------------------------


@case("path.tempdir")
@contextlib.contextmanager
def _tempdir(scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from reclaim.backends.path import TempDir  # noqa: PLC0415  (each case loads its driver)

    yield (lambda: TempDir(parent=scratch)), (lambda r: os.rmdir(r["path"]))


@case("process")
@contextlib.contextmanager
def _process(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from reclaim.backends.process import Process  # noqa: PLC0415  (each case loads its driver)

    def kill(record: Record) -> None:
        os.kill(record["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.01)

    yield (lambda: Process(["sleep", "600"], grace=2)), kill


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_execute(url: str, statement: Any) -> None:
    import psycopg  # noqa: PLC0415  (each case loads its driver)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def _postgres_case(kind: str) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        from psycopg import sql  # noqa: PLC0415  (each case loads its driver)

        from reclaim.backends import postgres as pg  # noqa: PLC0415  (each case loads its driver)

        url = require("postgres")
        ident = sql.Identifier
        if kind == "postgres.schema":
            yield (
                (lambda: pg.PostgresSchema(url)),
                lambda r: _pg_execute(
                    url, sql.SQL("DROP SCHEMA {} CASCADE").format(ident(r["name"]))
                ),
            )
        elif kind == "postgres.database":
            yield (
                (lambda: pg.PostgresDatabase(url)),
                lambda r: _pg_execute(
                    url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident(r["name"]))
                ),
            )
        elif kind == "postgres.role":
            yield (
                (lambda: pg.PostgresRole(url)),
                lambda r: _pg_execute(url, sql.SQL("DROP ROLE {}").format(ident(r["name"]))),
            )
        elif kind == "postgres.tables":

            def table(conn: Any, prefix: str) -> None:
                conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident(f"{prefix}items")))

            yield (
                (lambda: pg.PostgresTables(url, setup=table)),
                lambda r: _pg_execute(
                    url, sql.SQL("DROP TABLE {}").format(ident(r["schema"], f"{r['name']}_items"))
                ),
            )
        else:  # a table of the user's that reclaim empties (truncate=), made for this case
            shared = f"shared_{secrets.token_hex(4)}"
            _pg_execute(url, sql.SQL("CREATE TABLE {} (v text)").format(ident(shared)))
            try:

                def insert(conn: Any, _prefix: str) -> None:
                    conn.execute(sql.SQL("INSERT INTO {} VALUES ('x')").format(ident(shared)))

                yield (
                    lambda: pg.PostgresTables(url, truncate=[shared], setup=insert),
                    lambda _r: _pg_execute(url, sql.SQL("TRUNCATE {}").format(ident(shared))),
                )
            finally:
                _pg_execute(url, sql.SQL("DROP TABLE IF EXISTS {}").format(ident(shared)))

    return make_case


for _kind in ("postgres.schema", "postgres.database", "postgres.role", "postgres.tables"):
    CASES[_kind] = _postgres_case(_kind)
CASES["postgres.tables[truncate]"] = _postgres_case("postgres.tables[truncate]")


# --- MariaDB, Redis ---------------------------------------------------------------------------


@case("mysql.database")
@contextlib.contextmanager
def _mysql(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    import pymysql  # noqa: PLC0415  (each case loads its driver)

    from reclaim.backends.mysql import MysqlDatabase  # noqa: PLC0415  (each case loads its driver)

    url = require("mysql")
    parts = urlsplit(url)

    def drop(record: Record) -> None:
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
        )
        try:
            with conn.cursor() as cur:
                cur.execute("DROP DATABASE `{}`".format(record["name"].replace("`", "``")))
        finally:
            conn.close()

    yield (lambda: MysqlDatabase(url)), drop


def _redis_case(variant: str) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        import redis as redis_py  # noqa: PLC0415  (each case loads its driver)

        from reclaim.backends import redis as r  # noqa: PLC0415  (each case loads its driver)

        url = require("redis")
        client = redis_py.Redis.from_url(url)
        try:
            if variant == "redis.database":

                def flush(record: Record) -> None:
                    with redis_py.Redis.from_url(url, db=record["db"]) as db:
                        db.flushdb()
                    client.delete(f"reclaim:db:{record['db']}")  # the claim, in db 0

                yield (lambda: r.RedisDatabase(url)), flush
            else:
                prefix = f"t{secrets.token_hex(3)}." if variant.endswith("[prefix]") else None

                def unlink(record: Record) -> None:
                    pattern = r.glob_escape(record["prefix"].encode()) + b"*"
                    for key in list(client.scan_iter(match=pattern, count=1000)):
                        client.unlink(key)

                make: Make = (
                    (lambda: r.RedisNamespace(url, prefix=prefix))
                    if prefix
                    else (lambda: r.RedisNamespace(url))
                )
                yield make, unlink
        finally:
            client.close()

    return make_case


for _kind in ("redis.namespace", "redis.namespace[prefix]", "redis.database"):
    CASES[_kind] = _redis_case(_kind)


# --- RabbitMQ, NATS, MQTT ----------------------------------------------------------------------


def _rabbit_case(kind: str) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        import httpx  # noqa: PLC0415  (each case loads its driver)

        from reclaim.backends import rabbitmq as mq  # noqa: PLC0415  (each case loads its driver)

        amqp = require("rabbitmq")
        api = require("rabbitmq_api") if kind == "rabbitmq.vhost" else None
        api_parts = urlsplit(api or "http://guest:guest@127.0.0.1:15672")
        admin = httpx.Client(
            base_url=f"{api_parts.scheme}://{api_parts.hostname}:{api_parts.port or 15672}",
            auth=(api_parts.username or "guest", api_parts.password or "guest"),
        )
        vhost = urlsplit(amqp).path.lstrip("/") or "%2F"

        def delete(record: Record) -> None:
            # Behind reclaim's back, as an operator would: through the management API.
            if kind == "rabbitmq.vhost":
                path = f"/api/vhosts/{quote(record['name'], safe='')}"
            else:
                collection = f"{kind.split('.')[1]}s"
                path = f"/api/{collection}/{vhost}/{quote(record['name'], safe='')}"
            response = admin.delete(path)
            assert response.status_code == 204, response.text

        makers: dict[str, Make] = {
            "rabbitmq.queue": lambda: mq.RabbitQueue(amqp),
            "rabbitmq.exchange": lambda: mq.RabbitExchange(amqp, "direct"),
            "rabbitmq.vhost": lambda: mq.RabbitVhost(api or "", amqp_url=amqp),
        }
        try:
            yield makers[kind], delete
        finally:
            admin.close()

    return make_case


for _kind in ("rabbitmq.queue", "rabbitmq.exchange", "rabbitmq.vhost"):
    CASES[_kind] = _rabbit_case(_kind)


def _nats_case(variant: str) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        import asyncio  # noqa: PLC0415  (each case loads its driver)

        import nats  # noqa: PLC0415  (each case loads its driver)
        import nats.js.api  # noqa: PLC0415  (each case loads its driver)

        from reclaim.backends import nats as n  # noqa: PLC0415  (each case loads its driver)

        url = require("nats")

        def delete(record: Record) -> None:
            stream = record["name"] if variant != "nats.kv" else f"KV_{record['name']}"

            async def work() -> None:
                nc = await nats.connect(url)
                try:
                    await nc.jetstream().delete_stream(stream)
                finally:
                    await nc.close()

            asyncio.run(work())

        makers: dict[str, Make] = {
            "nats.stream": lambda: n.NatsStream(url),
            "nats.stream[subjects]": lambda: n.NatsStream(
                url,
                subjects=["orders.{name}.>"],
                storage=nats.js.api.StorageType.MEMORY,
                max_age=60,
            ),
            "nats.kv": lambda: n.NatsKeyValue(url, history=3),
        }
        yield makers[variant], delete

    return make_case


for _kind in ("nats.stream", "nats.stream[subjects]", "nats.kv"):
    CASES[_kind] = _nats_case(_kind)


@case("mqtt.topic")
@contextlib.contextmanager
def _mqtt(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from reclaim.backends.mqtt import MqttTopic  # noqa: PLC0415  (each case loads its driver)
    from test_backend_mqtt import clear  # noqa: PLC0415  (the oracle: paho, not the backend)

    url = require("mqtt")
    yield (lambda: MqttTopic(url)), (lambda r: clear(url, r["name"]))


#: Built-in kinds checked in their own modules, and why.
ELSEWHERE: dict[str, str] = {
    **{
        kind: "its stand-in server (or moto) runs inside the test process; its module calls the kit"
        for kind in (
            "account.rest", "account.scim", "email.mailsac", "email.mailtm", "oauth.github",
            "oauth.grant", "openfga.store", "openfga.tuples", "phone.smsactivate",
            "phone.twilio", "s3.bucket",
        )
    },
    **{
        kind: "its module's calls add make_lookalike and leftovers_url on the engine"
        for kind in ("docker.container", "docker.network", "docker.volume")
    },
}  # fmt: skip


def _kind_of(case_id: str) -> str:
    return case_id.partition("[")[0]


def test_every_built_in_kind_is_checked_or_said_not_to_be() -> None:
    built_in = {
        ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("reclaim.")
    }
    checked = {_kind_of(c) for c in CASES}
    assert built_in - set(ELSEWHERE) <= checked, built_in - set(ELSEWHERE) - checked
    assert not checked & set(ELSEWHERE)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_every_kind_keeps_the_contract(case_id: str, scratch: Path, tmp_path: Path) -> None:
    with CASES[case_id](scratch) as (make, delete_outside):
        check_backend(make, registry=tmp_path / "kit.sqlite3", delete_outside=delete_outside)

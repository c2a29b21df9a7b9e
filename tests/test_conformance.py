"""The conformance kit, ``reclaim.testing.check_backend``, over every built-in kind through one
parametrisation, each on its real server (issue 12). A case gives the backend to check and a
way to delete its resource behind reclaim's back with the server's own driver, or the
stand-in's own state (never the backend under test), as an operator would.

The SaaS kinds run on their stand-ins (``tests/providers``) and S3 on moto's server, each
started in this process by its case. Docker's calls are in its own module (they pass more
arguments), and the OAuth grants cannot pass the kit as written (``ELSEWHERE`` says why);
``test_every_built_in_kind_is_checked_or_said_not_to_be`` keeps the two lists complete.
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


# --- the SaaS kinds, on their stand-ins in this process (tests/providers) ---------------------
#
# The stand-in is started by the case and stopped whatever happens; ``delete_outside`` changes
# its state directly, as the provider's own console would. After the kit, the stand-in holds
# nothing of the kit's.

REST_FLAVOURS: dict[str, dict[str, Any]] = {
    "account.rest": {},
    "account.rest[envelope]": {"envelope": True},  # {"data": {...}}, lookups {"items": [...]}
    "account.rest[location-only]": {"location_only": True},  # 201, no body: id from Location
    "account.rest[gone-410]": {"gone_status": 410},
}


def _rest_case(flavour: str) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        from providers.scim import RestUsers  # noqa: PLC0415  (each case loads its stand-in)
        from reclaim.backends.accounts import RestAccount  # noqa: PLC0415

        id_field = "data.id" if flavour.endswith("[envelope]") else "id"
        body = {"username": "{name}", "email": "{name}@example.test"}
        with RestUsers(**REST_FLAVOURS[flavour]) as server:

            def delete(record: Record) -> None:
                del server.users[record["id"]]

            yield (
                lambda: RestAccount(server.collection, body, token=server.token, id_field=id_field),
                delete,
            )
            assert server.users == {}

    return make_case


for _kind in REST_FLAVOURS:
    CASES[_kind] = _rest_case(_kind)


def _scim_case(domain: str | None) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        from providers.scim import ScimServer  # noqa: PLC0415  (each case loads its stand-in)
        from reclaim.backends.accounts import ScimUser  # noqa: PLC0415

        with ScimServer() as server:

            def delete(record: Record) -> None:
                del server.users[record["id"]]

            yield (
                lambda: ScimUser(server.base_url, token=server.token, email_domain=domain),
                delete,
            )
            assert server.users == {}

    return make_case


CASES["account.scim"] = _scim_case(None)
CASES["account.scim[email]"] = _scim_case("example.test")


@case("email.mailtm")
@contextlib.contextmanager
def _mailtm(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from providers.mailtm import MailTmServer  # noqa: PLC0415  (each case loads its stand-in)
    from reclaim.backends.email import MailTmInbox  # noqa: PLC0415

    MailTmInbox._domains.clear()  # an earlier stand-in on this port may have had other domains
    with MailTmServer() as server:
        yield (
            (lambda: MailTmInbox(base_url=server.url)),
            lambda r: server.delete_account(r["address"]),
        )
        assert server.addresses() == set()


@case("email.mailsac")
@contextlib.contextmanager
def _mailsac(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from providers.mailsac import MailsacServer  # noqa: PLC0415  (each case loads its stand-in)
    from reclaim.backends.email import MailsacInbox  # noqa: PLC0415

    with MailsacServer() as server:
        yield (
            lambda: MailsacInbox(server.api_key, base_url=server.api_url, reserve=True),
            lambda r: server.unreserve(r["address"]),
        )
        assert server.owners == {}


FGA_TOKEN = "fga-preshared-key-4c3b2a"


def _fga_store_case(with_model: bool) -> Case:
    @contextlib.contextmanager
    def make_case(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
        from providers.openfga import MODEL, OpenFgaServer  # noqa: PLC0415  (its stand-in)
        from reclaim.backends.openfga import OpenFgaStore  # noqa: PLC0415

        model = MODEL if with_model else None
        with OpenFgaServer(token=FGA_TOKEN) as server:

            def delete(record: Record) -> None:
                server.stores[record["id"]]["deleted"] = True

            yield (lambda: OpenFgaStore(server.url, api_token=FGA_TOKEN, model=model)), delete
            assert server.live_stores() == {}

    return make_case


CASES["openfga.store"] = _fga_store_case(with_model=False)
CASES["openfga.store[with-model]"] = _fga_store_case(with_model=True)


@case("openfga.tuples")
@contextlib.contextmanager
def _fga_tuples(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    """Our tuples in a store others share, whose tuples (one carrying a look-alike of a name)
    stay."""
    from providers.openfga import OpenFgaServer  # noqa: PLC0415  (each case loads its stand-in)
    from reclaim.backends.openfga import OpenFgaTuples, TupleLike  # noqa: PLC0415

    mine: list[TupleLike] = [
        ("user:{name}", "owner", "document:{name}-1"),
        {"user": "user:anne", "relation": "viewer", "object": "document:{name}-1"},
    ]
    with OpenFgaServer(token=FGA_TOKEN) as server:
        shared = server.make_store("shared-e2e")
        server.put(
            shared,
            ("user:anne", "viewer", "document:budget"),
            ("user:carl", "viewer", "document:xrc_0a1b2c3d_tsq0g0_1"),
        )
        others = server.keys(shared)

        def delete(_record: Record) -> None:
            for key in server.keys(shared) - others:
                del server.tuples[shared][key]

        yield (
            (lambda: OpenFgaTuples(shared, api_url=server.url, api_token=FGA_TOKEN, tuples=mine)),
            delete,
        )
        assert server.keys(shared) == others, "only our tuples went, the others' stayed"


@case("phone.twilio")
@contextlib.contextmanager
def _twilio(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    from providers.twilio import TwilioServer  # noqa: PLC0415  (each case loads its stand-in)
    from reclaim.backends.phone import TwilioNumber  # noqa: PLC0415

    with TwilioServer() as server:
        yield (
            lambda: TwilioNumber(server.account_sid, server.auth_token, base_url=server.url),
            lambda r: server.release_number(r["sid"]),
        )
        assert server.owned() == {}


@case("phone.smsactivate")
@contextlib.contextmanager
def _smsactivate(_scratch: Path) -> Iterator[tuple[Make, Delete]]:
    """With ``find_unrecorded`` the planned record finds the activation too (I1)."""
    from providers.smsactivate import SmsActivateServer  # noqa: PLC0415  (its stand-in)
    from reclaim.backends.phone import SmsActivateNumber  # noqa: PLC0415

    with SmsActivateServer() as server:
        yield (
            lambda: SmsActivateNumber(
                server.api_key, base_url=server.api_url, find_unrecorded=True
            ),
            lambda r: server.cancel(r["activation_id"]),
        )
        assert server.active() == {}


# --- S3, on moto's server in this process ----------------------------------------------------


def _s3_case(region: str | None) -> Case:
    @contextlib.contextmanager
    def make_case(scratch: Path) -> Iterator[tuple[Make, Delete]]:
        from reclaim.backends.s3 import S3Bucket  # noqa: PLC0415
        from test_backend_s3 import (  # noqa: PLC0415  (boto3 and moto only for this case)
            KEY_ID,
            REGION,
            SECRET,
            bucket_names,
            moto_server,
            no_aws_environment,
            raw_client,
            wipe,
        )

        where = region or REGION
        with pytest.MonkeyPatch.context() as monkeypatch, moto_server() as url:
            no_aws_environment(monkeypatch, scratch)  # only what the backend is given
            observer = raw_client(url, where)
            before = bucket_names(observer)

            def delete(record: Record) -> None:
                observer.delete_bucket(Bucket=record["name"])

            try:
                yield (
                    lambda: S3Bucket(
                        endpoint_url=url,
                        region=where,
                        access_key_id=KEY_ID,
                        secret_access_key=SECRET,
                    ),
                    delete,
                )
                assert bucket_names(observer) == before, "the kit left a bucket behind"
            finally:  # moto keeps its buckets per process, not per server: none for later tests
                for name in bucket_names(observer) - before:
                    wipe(observer, name)

    return make_case


CASES["s3.bucket"] = _s3_case(None)
CASES["s3.bucket[us-east-1]"] = _s3_case("us-east-1")


#: Built-in kinds whose ``check_backend`` calls are in their own modules, or that cannot pass
#: it, and why.
ELSEWHERE: dict[str, str] = {
    "oauth.grant": (
        "cannot pass check_backend as written: a given token is live before acquire (check 2:"
        " 'exists() is true before acquire()'), and a client-credentials token is not in the"
        " planned record (check 3, I1: the gap the README names); test_backend_oauth checks"
        " each rule that applies"
    ),
    "oauth.github": (
        "cannot pass check_backend as written: the user's token is live before acquire (check"
        " 2: 'exists() is true before acquire()'); test_backend_oauth checks each rule that"
        " applies"
    ),
    **{
        kind: "its module's calls add make_lookalike and leftovers_url on the engine"
        for kind in ("docker.container", "docker.network", "docker.volume")
    },
}


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
